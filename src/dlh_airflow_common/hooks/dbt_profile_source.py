"""Where a run's dbt profile comes from: a generated one from an Airflow connection, or the user's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.profiles_file import PROFILES_FILE, temporary_profiles_dir, write_profiles_file
from dlh_airflow_common.dbt.project import DbtProject
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.exceptions.dbt import DbtException, DbtProfileException
from dlh_airflow_common.hooks.dbt_profiles import render_target

GENERATED_PROFILE_NAME = "dlh_airflow"
GENERATED_TARGET_NAME = "airflow"


@dataclass(frozen=True)
class Profile:
    """What dbt needs to find its profile: the dir, the names to select, and the environment (secrets)."""

    profiles_dir: str | None
    profile_name: str | None
    target: str | None
    env: dict[str, str]


@dataclass(frozen=True)
class ProfileSource:
    """The profile settings of a hook; ``get_connection`` is the hook's own Airflow lookup."""

    get_connection: Callable[[str], Any]
    conn_id: str | None = None
    profiles_dir: str | None = None
    target: str | None = None
    schema_override: str | None = None
    env_vars: Mapping[str, str] = field(default_factory=dict)

    @contextmanager
    def open(self, project: DbtProject, into: Path | None = None) -> Iterator[Profile]:
        """The profile for one run; a generated one lives in a temp dir, or in ``into`` (a detached run's dir)."""
        if self.conn_id and self.profiles_dir:
            raise DbtProfileException(
                f"Pass either conn_id ({self.conn_id!r}) or profiles_dir ({self.profiles_dir}), not both.",
                conn_id=self.conn_id,
            )
        env = dict(self.env_vars)
        if not self.conn_id:
            if self.schema_override:
                env["DBT_SCHEMA_OVERRIDE"] = self.schema_override
            profiles_dir = self.profiles_dir
            if profiles_dir is None and (project.path / PROFILES_FILE).is_file():
                profiles_dir = str(project.path)
            if profiles_dir is not None and not (Path(profiles_dir) / PROFILES_FILE).is_file():
                raise DbtProfileException(f"profiles_dir {profiles_dir} has no {PROFILES_FILE}.")
            yield Profile(profiles_dir=profiles_dir, profile_name=None, target=self.target, env=env)
            return
        rendered = render_target(self.connection(), schema_override=self.schema_override)
        profile_name = project.profile or GENERATED_PROFILE_NAME
        target_name = self.target or GENERATED_TARGET_NAME
        env = {**env, **rendered.secret_env}
        if into is not None:
            directory = write_profiles_file(into, profile_name, target_name, rendered.target)
            yield Profile(profiles_dir=str(directory), profile_name=profile_name, target=target_name, env=env)
            return
        with temporary_profiles_dir(profile_name, target_name, rendered.target) as directory:
            yield Profile(profiles_dir=str(directory), profile_name=profile_name, target=target_name, env=env)

    def connection(self) -> Any:
        """The Airflow connection, or a DbtProfileException that says where Airflow looked."""
        conn_id = str(self.conn_id)
        try:
            return self.get_connection(conn_id)
        except Exception as err:
            if type(err).__name__ != "AirflowNotFoundException":
                raise
            raise DbtProfileException(
                f"Airflow connection {conn_id!r} is not defined (neither in the metadata database, "
                f"nor as AIRFLOW_CONN_{conn_id.upper()}, nor in a secrets backend).",
                conn_id=conn_id,
            ) from None

    def redactor(self) -> Redactor:
        """Secrets of the connection, for masking what a detached run reported (rendered again, never stored)."""
        if not self.conn_id:
            return Redactor.from_env(self.env_vars)
        try:
            rendered = render_target(self.connection(), schema_override=self.schema_override)
        except DbtException:
            return Redactor.from_env(self.env_vars)
        return Redactor.from_env({**self.env_vars, **rendered.secret_env})
