"""Airflow Connection -> dbt target, one short declaration per adapter.

Secret fields never reach the profile file: they become ``env_var('DBT_ENV_SECRET_<FIELD>')`` references
(dbt scrubs such values from its logs) and their values travel only in the dbt process's environment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from dlh_airflow_common.dbt.redact import SECRET_ENV_PREFIX
from dlh_airflow_common.exceptions.dbt import DbtProfileException


class ConnectionLike(Protocol):
    """The parts of ``airflow.sdk.Connection`` a mapping reads (kept structural so tests need no DB)."""

    conn_id: str
    conn_type: str
    host: str | None
    login: str | None
    password: str | None
    schema: str | None
    port: int | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RenderedTarget:
    """A dbt target ready for profiles.yml plus the environment its secret references need."""

    target: dict[str, Any]
    secret_env: dict[str, str]


def secret_env_name(field_name: str) -> str:
    return SECRET_ENV_PREFIX + "".join(ch if ch.isalnum() else "_" for ch in field_name).upper()


def _extra(conn: ConnectionLike) -> dict[str, Any]:
    try:
        extra = conn.extra_dejson
    except (ValueError, json.JSONDecodeError) as err:  # pragma: no cover - Airflow logs and returns {}
        raise DbtProfileException(f"Connection {conn.conn_id!r} has an extra that is not valid JSON: {err}") from None
    return dict(extra) if isinstance(extra, Mapping) else {}


class ProfileMapping:
    """Declarative mapping of one Airflow connection type onto one dbt adapter's target fields.

    ``fields`` maps a dbt field to its sources in order of preference: a Connection attribute
    (``host``, ``login``, ``password``, ``schema``, ``port``) or ``extra.<key>``.
    """

    conn_types: ClassVar[tuple[str, ...]] = ()
    dbt_type: ClassVar[str] = ""
    fields: ClassVar[dict[str, tuple[str, ...]]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    secrets: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}
    integers: ClassVar[tuple[str, ...]] = ("port", "threads")
    passthrough_extras: ClassVar[frozenset[str]] = frozenset()
    # Where a user sets each field in the Airflow UI, for error messages.
    field_help: ClassVar[dict[str, str]] = {}

    @classmethod
    def _source_value(cls, conn: ConnectionLike, extra: Mapping[str, Any], source: str) -> Any:
        if source.startswith("extra."):
            return extra.get(source.removeprefix("extra."))
        return getattr(conn, source, None)

    @classmethod
    def render(cls, conn: ConnectionLike, *, schema_override: str | None = None) -> RenderedTarget:
        extra = _extra(conn)
        target: dict[str, Any] = {"type": cls.dbt_type}
        for key in cls.passthrough_extras:
            if extra.get(key) not in (None, ""):
                target[key] = extra[key]
        for dbt_field, sources in cls.fields.items():
            for source in sources:
                value = cls._source_value(conn, extra, source)
                if value not in (None, ""):
                    target[dbt_field] = value
                    break
        for key, value in cls.defaults.items():
            target.setdefault(key, value)
        if schema_override:
            target["schema"] = schema_override
        for key in cls.integers:
            if key in target:
                target[key] = cls._integer(conn, key, target[key])
        missing = [f for f in cls.required if target.get(f) in (None, "")]
        if missing:
            where = "; ".join(f"{f}: {cls.field_help.get(f, 'extra.' + f)}" for f in missing)
            raise DbtProfileException(
                f"Connection {conn.conn_id!r} (type {conn.conn_type}) is missing required "
                f"field{'s' if len(missing) > 1 else ''} {', '.join(missing)} for dbt-{cls.dbt_type} ({where}).",
                conn_id=conn.conn_id,
            )
        secret_env: dict[str, str] = {}
        for key in cls.secrets:
            if target.get(key) not in (None, ""):
                env_name = secret_env_name(key)
                secret_env[env_name] = str(target[key])
                target[key] = "{{ env_var('" + env_name + "') }}"
        return RenderedTarget(target=target, secret_env=secret_env)

    @classmethod
    def _integer(cls, conn: ConnectionLike, key: str, value: Any) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise DbtProfileException(
                f"Connection {conn.conn_id!r} (type {conn.conn_type}): {key} must be an integer, got {value!r}.",
                conn_id=conn.conn_id,
            ) from None


class PostgresProfile(ProfileMapping):
    """dbt-postgres. Airflow's ``schema`` field holds the database; the dbt schema comes from extra."""

    conn_types = ("postgres", "postgresql")
    dbt_type = "postgres"
    fields = {
        "host": ("host",),
        "user": ("login",),
        "password": ("password",),
        "port": ("port",),
        "dbname": ("schema", "extra.dbname", "extra.database"),
        "schema": ("extra.schema",),
    }
    required = ("host", "user", "dbname", "schema")
    secrets = ("password",)
    # dbt-postgres requires the key even for trust/peer authentication.
    defaults = {"port": 5432, "schema": "public", "password": ""}
    passthrough_extras = frozenset(
        {
            "threads", "keepalives_idle", "connect_timeout", "retries", "search_path", "role", "sslmode",
            "sslcert", "sslkey", "sslrootcert", "application_name", "sslcontext",
        }
    )  # fmt: skip
    field_help = {
        "host": "the connection's Host field",
        "user": "the connection's Login field",
        "dbname": "the connection's Schema field (the database name) or extra.dbname",
        "schema": "extra.schema",
    }


class DuckDBProfile(ProfileMapping):
    """dbt-duckdb: the database file comes from ``extra.path`` or the Host field."""

    conn_types = ("duckdb",)
    dbt_type = "duckdb"
    fields = {"path": ("extra.path", "host"), "schema": ("extra.schema", "schema")}
    required = ("path",)
    secrets = ()
    defaults = {"schema": "main"}
    integers = ("threads",)
    passthrough_extras = frozenset(
        {"threads", "extensions", "settings", "attach", "filesystems", "external_root", "database", "plugins"}
    )
    field_help = {"path": "extra.path or the connection's Host field (path of the .duckdb file)"}


PROFILE_MAPPINGS: tuple[type[ProfileMapping], ...] = (PostgresProfile, DuckDBProfile)
_BY_CONN_TYPE: dict[str, type[ProfileMapping]] = {
    conn_type: mapping for mapping in PROFILE_MAPPINGS for conn_type in mapping.conn_types
}


def supported_conn_types() -> list[str]:
    return sorted(_BY_CONN_TYPE)


def mapping_for(conn: ConnectionLike) -> type[ProfileMapping]:
    """The mapping for a connection's type, or an error that lists the supported types."""
    conn_type = (conn.conn_type or "").lower()
    try:
        return _BY_CONN_TYPE[conn_type]
    except KeyError:
        raise DbtProfileException(
            f"Connection {conn.conn_id!r} has type {conn.conn_type!r}, which has no dbt profile mapping. "
            f"Supported connection types: {', '.join(supported_conn_types())}; "
            "or pass profiles_dir to use your own profiles.yml.",
            conn_id=conn.conn_id,
        ) from None


def render_target(conn: ConnectionLike, *, schema_override: str | None = None) -> RenderedTarget:
    return mapping_for(conn).render(conn, schema_override=schema_override)
