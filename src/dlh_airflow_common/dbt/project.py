"""Checks on the dbt project directory made before dbt starts, so bad input fails with a clear message."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from dlh_airflow_common.exceptions.dbt import DbtCompilationException, DbtException

PROJECT_FILE = "dbt_project.yml"


@dataclass(frozen=True)
class DbtProject:
    """The project directory and the two names we need from dbt_project.yml."""

    path: Path
    name: str | None
    profile: str | None


def load_project(project_dir: str | os.PathLike[str]) -> DbtProject:
    """Validate ``project_dir`` and read its name and profile; never writes anything."""
    path = Path(project_dir).expanduser()
    if not path.is_dir():
        raise DbtException(f"dbt project directory {path} does not exist or is not a directory.")
    project_file = path / PROJECT_FILE
    if not project_file.is_file():
        raise DbtException(f"{path} is not a dbt project: {PROJECT_FILE} not found there.")
    try:
        content = yaml.safe_load(project_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DbtCompilationException(f"Cannot read {project_file}: {err}") from None
    if not isinstance(content, dict):
        raise DbtCompilationException(f"{project_file} must hold a YAML mapping.")
    name, profile = content.get("name"), content.get("profile")
    return DbtProject(
        path=path.resolve(),
        name=str(name) if name else None,
        profile=str(profile) if profile and "{" not in str(profile) else None,
    )
