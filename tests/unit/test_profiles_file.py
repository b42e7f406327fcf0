"""Unit tests for dlh_airflow_common.dbt.profiles_file: the generated profiles.yml inside a run dir."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from dlh_airflow_common.dbt.profiles_file import PROFILES_FILE, write_profiles_file

TARGET = {
    "type": "postgres",
    "host": "db.internal",
    "user": "dbt",
    "password": "{{ env_var('DBT_ENV_SECRET_PASSWORD') }}",
    "port": 5432,
    "dbname": "analytics",
    "schema": "public",
}


@pytest.fixture
def into(tmp_path: Path) -> Path:
    """Where the hook writes it: ``<run dir>/profile``."""
    run_dir = tmp_path / "run_20260101_000000_dag_task_try1_abcd"
    run_dir.mkdir(mode=0o700)
    return run_dir / "profile"


def test_file_and_directory_permissions(into: Path) -> None:
    directory = write_profiles_file(into, "shop", "dev", TARGET)
    assert directory == into
    profiles = directory / PROFILES_FILE
    assert profiles.is_file()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == [PROFILES_FILE]


def test_permissions_hold_under_a_permissive_umask(into: Path) -> None:
    old = os.umask(0)
    try:
        directory = write_profiles_file(into, "shop", "dev", TARGET)
    finally:
        os.umask(old)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / PROFILES_FILE).stat().st_mode) == 0o600


def test_yaml_content_shape(into: Path) -> None:
    text = (write_profiles_file(into, "shop", "prod", TARGET) / PROFILES_FILE).read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    assert document == {"shop": {"target": "prod", "outputs": {"prod": TARGET}}}
    assert list(document["shop"]) == ["target", "outputs"]


def test_an_existing_profile_is_never_overwritten(into: Path) -> None:
    """O_EXCL: a file planted at the path (or a second write) is refused, not followed or replaced."""
    write_profiles_file(into, "a", "dev", TARGET)
    with pytest.raises(FileExistsError):
        write_profiles_file(into, "b", "dev", TARGET)
    assert "a" in yaml.safe_load((into / PROFILES_FILE).read_text())


def test_unserialisable_target_raises(into: Path) -> None:
    with pytest.raises(yaml.YAMLError):
        write_profiles_file(into, "shop", "dev", {"bad": object()})


def test_target_mapping_not_mutated(into: Path) -> None:
    target = dict(TARGET)
    write_profiles_file(into, "shop", "dev", target)
    assert target == TARGET
