"""Unit tests for dlh_airflow_common.hooks.dbt_profiles: Airflow Connection -> dbt target."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from dlh_airflow_common.exceptions.dbt import DbtProfileException
from dlh_airflow_common.hooks.dbt_profiles import (
    DuckDBProfile,
    PostgresProfile,
    RenderedTarget,
    mapping_for,
    render_target,
    secret_env_name,
    supported_conn_types,
)

PASSWORD_REF = "{{ env_var('DBT_ENV_SECRET_PASSWORD') }}"


@dataclass
class FakeConnection:
    """Stands in for airflow.sdk.Connection (the module's ``ConnectionLike`` protocol)."""

    conn_id: str = "warehouse"
    conn_type: str = "postgres"
    host: str | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    port: int | str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def extra_dejson(self) -> dict[str, Any]:
        return self.extra


def pg(**overrides: Any) -> FakeConnection:
    values: dict[str, Any] = {
        "conn_id": "pg_main",
        "conn_type": "postgres",
        "host": "db.internal",
        "login": "dbt_user",
        "password": "s3cr3t-Pa55",
        "schema": "analytics",
        "port": None,
        "extra": {},
    }
    values.update(overrides)
    return FakeConnection(**values)


# ---------------------------------------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------------------------------------


def test_postgres_basic_mapping() -> None:
    rendered = render_target(pg())
    assert isinstance(rendered, RenderedTarget)
    assert rendered.target == {
        "type": "postgres",
        "host": "db.internal",
        "user": "dbt_user",
        "password": PASSWORD_REF,
        "port": 5432,
        "dbname": "analytics",
        "schema": "public",
    }
    assert rendered.secret_env == {"DBT_ENV_SECRET_PASSWORD": "s3cr3t-Pa55"}


def test_postgres_password_only_in_secret_env() -> None:
    rendered = render_target(pg(password="hunter2-xyz", extra={"schema": "dbt", "sslmode": "require"}))
    assert "hunter2-xyz" not in json.dumps(rendered.target)
    assert rendered.target["password"] == PASSWORD_REF
    assert rendered.secret_env == {"DBT_ENV_SECRET_PASSWORD": "hunter2-xyz"}


@pytest.mark.parametrize("password", [None, ""])
def test_postgres_without_password(password: str | None) -> None:
    rendered = render_target(pg(password=password))
    assert rendered.target.get("password") in (None, "")  # no env_var reference to an unset variable
    assert rendered.secret_env == {}


def test_postgres_extra_schema() -> None:
    assert render_target(pg(extra={"schema": "dbt_marts"})).target["schema"] == "dbt_marts"


@pytest.mark.parametrize(
    ("port", "expected"),
    [(None, 5432), ("", 5432), (6543, 6543), ("6543", 6543), (" 15432 ", 15432)],
)
def test_postgres_port(port: Any, expected: int) -> None:
    target = render_target(pg(port=port)).target
    assert target["port"] == expected
    assert type(target["port"]) is int


@pytest.mark.parametrize("port", ["abc", "54.32", [5432]])
def test_postgres_bad_port(port: Any) -> None:
    with pytest.raises(DbtProfileException) as excinfo:
        render_target(pg(port=port))
    message = str(excinfo.value)
    assert "'pg_main'" in message
    assert "port must be an integer" in message
    assert repr(port) in message
    assert excinfo.value.conn_id == "pg_main"


def test_postgres_passthrough_extras_kept_unknown_dropped() -> None:
    extra = {
        "schema": "dbt",
        "sslmode": "verify-full",
        "keepalives_idle": 30,
        "connect_timeout": 10,
        "search_path": "dbt,public",
        "role": "transformer",
        "application_name": "airflow-dbt",
        "threads": "6",
        "cursor": "realdictcursor",
        "iam": True,
        "sslmode_typo": "x",
        "empty_pass": "",
    }
    target = render_target(pg(extra=extra)).target
    assert target["sslmode"] == "verify-full"
    assert target["keepalives_idle"] == 30
    assert target["connect_timeout"] == 10
    assert target["search_path"] == "dbt,public"
    assert target["role"] == "transformer"
    assert target["application_name"] == "airflow-dbt"
    assert target["threads"] == 6
    for dropped in ("cursor", "iam", "sslmode_typo", "empty_pass"):
        assert dropped not in target


def test_postgres_empty_passthrough_values_skipped() -> None:
    target = render_target(pg(extra={"sslmode": "", "role": None})).target
    assert "sslmode" not in target
    assert "role" not in target


def test_postgres_bad_threads_extra() -> None:
    with pytest.raises(DbtProfileException, match="threads must be an integer, got 'four'"):
        render_target(pg(extra={"threads": "four"}))


@pytest.mark.parametrize(
    ("schema", "extra", "expected"),
    [
        ("analytics", {"dbname": "other"}, "analytics"),
        (None, {"dbname": "from_extra"}, "from_extra"),
        ("", {"database": "from_database"}, "from_database"),
        (None, {"dbname": "first", "database": "second"}, "first"),
    ],
)
def test_postgres_dbname_sources(schema: str | None, extra: dict[str, Any], expected: str) -> None:
    assert render_target(pg(schema=schema, extra=extra)).target["dbname"] == expected


@pytest.mark.parametrize("extra_schema", [None, "dbt_from_extra"])
def test_postgres_schema_override(extra_schema: str | None) -> None:
    extra = {"schema": extra_schema} if extra_schema else {}
    target = render_target(pg(extra=extra), schema_override="pr_1234").target
    assert target["schema"] == "pr_1234"
    assert target["dbname"] == "analytics"


@pytest.mark.parametrize("conn_type", ["postgres", "postgresql", "Postgres", "POSTGRESQL"])
def test_postgres_conn_type_aliases(conn_type: str) -> None:
    assert mapping_for(pg(conn_type=conn_type)) is PostgresProfile
    assert render_target(pg(conn_type=conn_type)).target["type"] == "postgres"


@pytest.mark.parametrize(
    ("overrides", "missing", "help_text"),
    [
        ({"host": None}, "host", "Host field"),
        ({"host": ""}, "host", "Host field"),
        ({"login": None}, "user", "Login field"),
        ({"schema": None}, "dbname", "Schema field"),
    ],
)
def test_postgres_missing_required_field(overrides: dict[str, Any], missing: str, help_text: str) -> None:
    with pytest.raises(DbtProfileException) as excinfo:
        render_target(pg(**overrides))
    message = str(excinfo.value)
    assert "'pg_main'" in message
    assert "type postgres" in message
    assert f"missing required field {missing} " in message
    assert help_text in message
    assert "dbt-postgres" in message
    assert excinfo.value.conn_id == "pg_main"
    assert excinfo.value.retryable is False


def test_postgres_several_missing_fields_listed() -> None:
    with pytest.raises(DbtProfileException) as excinfo:
        render_target(pg(host=None, login=None))
    message = str(excinfo.value)
    assert "missing required fields host, user" in message
    assert "s3cr3t-Pa55" not in message


# ---------------------------------------------------------------------------------------------------------
# DuckDB
# ---------------------------------------------------------------------------------------------------------


def duck(**overrides: Any) -> FakeConnection:
    values: dict[str, Any] = {"conn_id": "duck", "conn_type": "duckdb"}
    values.update(overrides)
    return FakeConnection(**values)


def test_duckdb_path_from_host() -> None:
    rendered = render_target(duck(host="/data/shop.duckdb"))
    assert rendered.target == {"type": "duckdb", "path": "/data/shop.duckdb", "schema": "main"}
    assert rendered.secret_env == {}


def test_duckdb_extra_path_wins_over_host() -> None:
    target = render_target(duck(host="/data/host.duckdb", extra={"path": "/data/extra.duckdb"})).target
    assert target["path"] == "/data/extra.duckdb"


@pytest.mark.parametrize(
    ("schema", "extra", "expected"),
    [
        (None, {}, "main"),
        ("conn_schema", {}, "conn_schema"),
        ("conn_schema", {"schema": "extra_schema"}, "extra_schema"),
    ],
)
def test_duckdb_schema(schema: str | None, extra: dict[str, Any], expected: str) -> None:
    extra = {"path": ":memory:", **extra}
    assert render_target(duck(schema=schema, extra=extra)).target["schema"] == expected


def test_duckdb_schema_override() -> None:
    target = render_target(duck(host="x.duckdb", extra={"schema": "s"}), schema_override="ci").target
    assert target["schema"] == "ci"


def test_duckdb_passthrough_and_threads() -> None:
    extra = {"path": "a.duckdb", "threads": "2", "extensions": ["httpfs"], "settings": {"s3_region": "eu"}, "x": 1}
    target = render_target(duck(extra=extra)).target
    assert target["threads"] == 2
    assert target["extensions"] == ["httpfs"]
    assert target["settings"] == {"s3_region": "eu"}
    assert "x" not in target


def test_duckdb_port_not_used() -> None:
    target = render_target(duck(host="a.duckdb", port="not-a-number")).target
    assert "port" not in target


def test_duckdb_missing_path() -> None:
    with pytest.raises(DbtProfileException) as excinfo:
        render_target(duck(conn_id="local_duck"))
    message = str(excinfo.value)
    assert "'local_duck'" in message
    assert "type duckdb" in message
    assert "path" in message
    assert "extra.path or the connection's Host field" in message
    assert excinfo.value.conn_id == "local_duck"


def test_duckdb_mapping_class() -> None:
    assert mapping_for(duck()) is DuckDBProfile


# ---------------------------------------------------------------------------------------------------------
# Unknown types and helpers
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conn_type", ["mysql", "snowflake", "", "http"])
def test_unknown_conn_type_lists_supported(conn_type: str) -> None:
    conn = FakeConnection(conn_id="odd_conn", conn_type=conn_type, host="h")
    with pytest.raises(DbtProfileException) as excinfo:
        render_target(conn)
    message = str(excinfo.value)
    assert "'odd_conn'" in message
    assert repr(conn_type) in message
    assert "Supported connection types: duckdb, postgres, postgresql" in message
    assert "profiles_dir" in message
    assert excinfo.value.conn_id == "odd_conn"


def test_supported_conn_types() -> None:
    assert supported_conn_types() == ["duckdb", "postgres", "postgresql"]


@pytest.mark.parametrize(
    ("field_name", "env_name"),
    [
        ("password", "DBT_ENV_SECRET_PASSWORD"),
        ("private-key", "DBT_ENV_SECRET_PRIVATE_KEY"),
        ("a.b", "DBT_ENV_SECRET_A_B"),
    ],
)
def test_secret_env_name(field_name: str, env_name: str) -> None:
    assert secret_env_name(field_name) == env_name


def test_render_does_not_mutate_connection_extra() -> None:
    conn = pg(extra={"schema": "dbt", "threads": "4"})
    render_target(conn)
    assert conn.extra == {"schema": "dbt", "threads": "4"}


# ---------------------------------------------------------------------------------------------------------
# Real airflow.sdk.Connection
# ---------------------------------------------------------------------------------------------------------


def test_real_airflow_connection() -> None:
    from airflow.sdk import Connection

    conn = Connection(
        conn_id="pg_real",
        conn_type="postgres",
        host="pg.example.com",
        login="loader",
        password="real-Secret-99",
        schema="warehouse",
        port=5433,
        extra=json.dumps({"schema": "dbt_prod", "sslmode": "require", "keepalives_idle": 60, "unknown": "x"}),
    )
    rendered = render_target(conn)
    assert rendered.target == {
        "type": "postgres",
        "host": "pg.example.com",
        "user": "loader",
        "password": PASSWORD_REF,
        "port": 5433,
        "dbname": "warehouse",
        "schema": "dbt_prod",
        "sslmode": "require",
        "keepalives_idle": 60,
    }
    assert rendered.secret_env == {"DBT_ENV_SECRET_PASSWORD": "real-Secret-99"}
