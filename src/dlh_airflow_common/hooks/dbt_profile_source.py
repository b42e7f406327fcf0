"""Where a run's dbt profile comes from: a generated one from an Airflow connection, or the user's own."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.profiles_file import PROFILES_FILE, write_profiles_file
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
class PreparedProfile:
    """A checked profile; a generated one (``generated``, secrets only as ``env_var``) is not written yet."""

    profile: Profile
    generated: Mapping[str, Any] | None = None

    def write(self, into: Path) -> Profile:
        """The profile for one run; a generated one goes into ``into`` (``<run dir>/profile``), made 0700."""
        if self.generated is None:
            return self.profile
        assert self.profile.profile_name is not None and self.profile.target is not None
        directory = write_profiles_file(into, self.profile.profile_name, self.profile.target, self.generated)
        return dataclasses.replace(self.profile, profiles_dir=str(directory))


@dataclass(frozen=True)
class ProfileSource:
    """The profile settings of a hook; ``get_connection`` is the hook's own Airflow lookup."""

    get_connection: Callable[[str], Any]
    conn_id: str | None = None
    profiles_dir: str | None = None
    target: str | None = None
    schema_override: str | None = None
    env_vars: Mapping[str, str] = field(default_factory=dict)

    def prepare(self, project: DbtProject) -> PreparedProfile:
        """Every check and the rendering of a generated profile, before anything is written."""
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
            return PreparedProfile(Profile(profiles_dir=profiles_dir, profile_name=None, target=self.target, env=env))
        rendered = render_target(self.connection(), schema_override=self.schema_override)
        profile = Profile(
            profiles_dir=None,
            profile_name=project.profile or GENERATED_PROFILE_NAME,
            target=self.target or GENERATED_TARGET_NAME,
            env={**env, **rendered.secret_env},
        )
        return PreparedProfile(profile, generated=rendered.target)

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
