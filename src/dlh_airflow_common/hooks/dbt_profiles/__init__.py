"""Airflow Connection -> dbt target: one short declaration per adapter and the registry by connection type.

``render_target(conn)`` picks the declaration for ``conn.conn_type`` and renders the target; secrets come
back separately, as the environment the target's ``env_var()`` references need.
"""

from __future__ import annotations

from dlh_airflow_common.exceptions.dbt import DbtProfileException
from dlh_airflow_common.hooks.dbt_profiles.adapters import (
    GENERIC_SECRET_KEYS,
    ClickHouseProfile,
    DatabricksProfile,
    DremioProfile,
    DuckDBProfile,
    GenericDbtProfile,
    OracleProfile,
    PostgresProfile,
    RedshiftProfile,
    SnowflakeProfile,
    SparkProfile,
    SQLServerProfile,
    TrinoProfile,
)
from dlh_airflow_common.hooks.dbt_profiles.base import (
    AuthMethod,
    ConnectionLike,
    ProfileMapping,
    RenderedTarget,
    secret_env_name,
)

__all__ = [
    "GENERIC_SECRET_KEYS",
    "PROFILE_MAPPINGS",
    "AuthMethod",
    "ClickHouseProfile",
    "ConnectionLike",
    "DatabricksProfile",
    "DremioProfile",
    "DuckDBProfile",
    "GenericDbtProfile",
    "OracleProfile",
    "PostgresProfile",
    "ProfileMapping",
    "RedshiftProfile",
    "RenderedTarget",
    "SQLServerProfile",
    "SnowflakeProfile",
    "SparkProfile",
    "TrinoProfile",
    "mapping_for",
    "render_target",
    "secret_env_name",
    "supported_conn_types",
]

PROFILE_MAPPINGS: tuple[type[ProfileMapping], ...] = (
    GenericDbtProfile,
    PostgresProfile,
    DuckDBProfile,
    DremioProfile,
    TrinoProfile,
    RedshiftProfile,
    SnowflakeProfile,
    SQLServerProfile,
    SparkProfile,
    ClickHouseProfile,
    OracleProfile,
    DatabricksProfile,
)
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
            "use type dbt (extra = the dbt target) for any other adapter, "
            "or pass profiles_dir to use your own profiles.yml.",
            conn_id=conn.conn_id,
        ) from None


def render_target(conn: ConnectionLike, *, schema_override: str | None = None) -> RenderedTarget:
    return mapping_for(conn).render(conn, schema_override=schema_override)
