"""Unit tests for dlh_airflow_common.hooks.dbt_profiles: Airflow Connection -> dbt target."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from dlh_airflow_common.exceptions.dbt import DbtProfileException
from dlh_airflow_common.hooks.dbt_profiles import (
    PROFILE_MAPPINGS,
    ClickHouseProfile,
    DatabricksProfile,
    DremioProfile,
    DuckDBProfile,
    GenericDbtProfile,
    OracleProfile,
    PostgresProfile,
    ProfileMapping,
    RedshiftProfile,
    RenderedTarget,
    SnowflakeProfile,
    SparkProfile,
    SQLServerProfile,
    TrinoProfile,
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


@pytest.mark.parametrize("conn_type", ["mysql", "bigquery", "", "http"])
def test_unknown_conn_type_lists_supported(conn_type: str) -> None:
    conn = FakeConnection(conn_id="odd_conn", conn_type=conn_type, host="h")
    with pytest.raises(DbtProfileException) as excinfo:
        render_target(conn)
    message = str(excinfo.value)
    assert "'odd_conn'" in message
    assert repr(conn_type) in message
    assert "Supported connection types: " + ", ".join(supported_conn_types()) in message
    assert "use type dbt" in message
    assert "profiles_dir" in message
    assert excinfo.value.conn_id == "odd_conn"


def test_supported_conn_types() -> None:
    assert supported_conn_types() == [
        "clickhouse", "databricks", "dbt", "dremio", "duckdb", "hiveserver2", "mssql", "oracle", "postgres",
        "postgresql", "redshift", "snowflake", "spark", "sqlserver", "trino",
    ]  # fmt: skip


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


# ---------------------------------------------------------------------------------------------------------
# Every mapping: missing fields, schema override, secrets
# ---------------------------------------------------------------------------------------------------------

# A minimal valid connection per mapping (the adapter-level checks live in tests/integration).
MINIMAL: dict[type[ProfileMapping], dict[str, Any]] = {
    GenericDbtProfile: {"conn_type": "dbt", "extra": {"type": "postgres", "host": "h"}},
    PostgresProfile: {"conn_type": "postgres", "host": "h", "login": "u", "schema": "db"},
    DuckDBProfile: {"conn_type": "duckdb", "host": "x.duckdb"},
    DremioProfile: {"conn_type": "dremio", "host": "h", "login": "u", "password": "pw-123"},
    TrinoProfile: {"conn_type": "trino", "host": "h", "login": "u", "schema": "s"},
    RedshiftProfile: {"conn_type": "redshift", "host": "h", "login": "u", "password": "pw-123", "schema": "db"},
    SnowflakeProfile: {"conn_type": "snowflake", "login": "u", "password": "pw-123", "schema": "s",
                       "extra": {"account": "a", "database": "d"}},
    SQLServerProfile: {"conn_type": "mssql", "host": "h", "login": "u", "password": "pw-123", "schema": "db"},
    SparkProfile: {"conn_type": "spark", "host": "h", "schema": "s"},
    ClickHouseProfile: {"conn_type": "clickhouse", "host": "h"},
    OracleProfile: {"conn_type": "oracle", "host": "h", "login": "u", "password": "pw-123"},
    DatabricksProfile: {"conn_type": "databricks", "host": "h", "password": "tok-123", "schema": "s",
                        "extra": {"http_path": "/sql"}},
}  # fmt: skip


def conn_of(spec: dict[str, Any], **overrides: Any) -> FakeConnection:
    return FakeConnection(**{"conn_id": "c1", **spec, **overrides})


def test_minimal_connections_cover_every_mapping() -> None:
    assert set(MINIMAL) == set(PROFILE_MAPPINGS)


@pytest.mark.parametrize("mapping", PROFILE_MAPPINGS, ids=lambda m: m.__name__)
def test_every_mapping_renders_its_minimal_connection(mapping: type[ProfileMapping]) -> None:
    conn = conn_of(MINIMAL[mapping])
    assert mapping_for(conn) is mapping
    rendered = render_target(conn)
    assert rendered.target["type"] == (mapping.dbt_type or "postgres")
    for value in rendered.secret_env.values():
        assert value not in json.dumps(rendered.target)


@pytest.mark.parametrize("mapping", PROFILE_MAPPINGS, ids=lambda m: m.__name__)
def test_every_mapping_names_conn_id_type_and_field_when_empty(mapping: type[ProfileMapping]) -> None:
    conn = FakeConnection(conn_id="empty_conn", conn_type=mapping.conn_types[0])
    with pytest.raises(DbtProfileException) as excinfo:
        render_target(conn)
    message = str(excinfo.value)
    assert "'empty_conn'" in message
    assert f"(type {mapping.conn_types[0]})" in message
    assert "missing required field" in message
    match = re.search(r"missing required fields? (\w+)", message)
    assert match is not None
    assert match.group(1) in {f for entry in mapping.required for f in entry.split("|")} | {
        f for method in mapping.methods.values() for entry in method.required for f in entry.split("|")
    }
    assert excinfo.value.conn_id == "empty_conn"


@pytest.mark.parametrize("mapping", PROFILE_MAPPINGS, ids=lambda m: m.__name__)
def test_every_mapping_applies_schema_override(mapping: type[ProfileMapping]) -> None:
    target = render_target(conn_of(MINIMAL[mapping]), schema_override="pr_42").target
    for key in mapping.schema_fields:
        assert target[key] == "pr_42"


@pytest.mark.parametrize("mapping", PROFILE_MAPPINGS, ids=lambda m: m.__name__)
def test_every_mapping_hides_the_password_field(mapping: type[ProfileMapping]) -> None:
    conn = conn_of(MINIMAL[mapping], password="Very-Secret-81")
    rendered = render_target(conn)
    if mapping in (SparkProfile, ClickHouseProfile, DuckDBProfile) or "Very-Secret-81" in rendered.secret_env.values():
        assert "Very-Secret-81" not in json.dumps(rendered.target)
    assert "Very-Secret-81" in rendered.secret_env.values()


# ---------------------------------------------------------------------------------------------------------
# Methods, coercion and the small transforms
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "method"),
    [
        ({}, "none"),
        ({"password": "pw-123"}, "ldap"),
        ({"extra": {"jwt__token": "t-123"}}, "jwt"),
        ({"extra": {"auth": "certs", "certs__client_cert_path": "c", "certs__client_key_path": "k"}}, "certificate"),
        ({"password": "pw-123", "extra": {"method": "none"}}, "none"),
    ],
)
def test_trino_method_choice(overrides: dict[str, Any], method: str) -> None:
    rendered = render_target(conn_of(MINIMAL[TrinoProfile], **overrides))
    assert rendered.method == method
    assert rendered.target["method"] == method
    if method == "none":
        assert "password" not in rendered.target and rendered.secret_env == {}


def test_unknown_method_lists_the_mapped_ones() -> None:
    with pytest.raises(DbtProfileException, match=r"extra.method 'kerberos'.*Methods: none, ldap, jwt, certificate"):
        render_target(conn_of(MINIMAL[TrinoProfile], extra={"method": "kerberos"}))


@pytest.mark.parametrize(("scheme", "port"), [(None, 8080), ("http", 8080), ("https", 443)])
def test_trino_default_port_follows_scheme(scheme: str | None, port: int) -> None:
    extra = {"protocol": scheme} if scheme else {}
    assert render_target(conn_of(MINIMAL[TrinoProfile], extra=extra)).target["port"] == port


def test_trino_ldap_defaults_to_https_port_and_drops_scheme() -> None:
    target = render_target(conn_of(MINIMAL[TrinoProfile], password="pw-123", extra={"protocol": "https"})).target
    assert target["port"] == 443
    assert "http_scheme" not in target


def test_trino_jwt_from_file(tmp_path: Any) -> None:
    token_file = tmp_path / "jwt"
    token_file.write_text("eyJ-token-from-file\n")
    rendered = render_target(conn_of(MINIMAL[TrinoProfile], extra={"auth": "jwt", "jwt__file": str(token_file)}))
    assert rendered.secret_env == {"DBT_ENV_SECRET_JWT_TOKEN": "eyJ-token-from-file"}


def test_trino_jwt_file_missing() -> None:
    with pytest.raises(DbtProfileException, match=r"cannot read extra\.jwt__file /no/such/jwt"):
        render_target(conn_of(MINIMAL[TrinoProfile], extra={"auth": "jwt", "jwt__file": "/no/such/jwt"}))


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("False", False), ("1", True), (True, True)])
def test_booleans_from_uri_strings(value: Any, expected: bool) -> None:
    target = render_target(conn_of(MINIMAL[ClickHouseProfile], extra={"secure": value})).target
    assert target["secure"] is expected


def test_bad_boolean_names_the_field() -> None:
    with pytest.raises(DbtProfileException, match="secure must be true or false, got 'maybe'"):
        render_target(conn_of(MINIMAL[ClickHouseProfile], extra={"secure": "maybe"}))


def test_redshift_iam_chosen_by_extra_iam_and_not_by_false() -> None:
    iam = render_target(conn_of(MINIMAL[RedshiftProfile], password=None, extra={"iam": "true", "db_user": "x"}))
    assert iam.method == "iam" and iam.target["user"] == "x" and "password" not in iam.target
    plain = render_target(conn_of(MINIMAL[RedshiftProfile], extra={"iam": "false"}))
    assert plain.method == "database"


def test_redshift_password_required_for_database_method() -> None:
    with pytest.raises(
        DbtProfileException, match=r"missing required field password for dbt-redshift \(method database\)"
    ):
        render_target(conn_of(MINIMAL[RedshiftProfile], password=None))


def test_snowflake_region_folded_into_account() -> None:
    extra = {"account": "xy12345", "region": "eu-west-1", "database": "d"}
    assert render_target(conn_of(MINIMAL[SnowflakeProfile], extra=extra)).target["account"] == "xy12345.eu-west-1"
    extra = {"account": "xy12345.eu-west-1", "region": "eu-west-1", "database": "d"}
    assert render_target(conn_of(MINIMAL[SnowflakeProfile], extra=extra)).target["account"] == "xy12345.eu-west-1"


def test_snowflake_keypair_password_becomes_passphrase() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIabc\n-----END PRIVATE KEY-----\n"
    extra = {"account": "a", "database": "d", "private_key_content": base64.b64encode(pem.encode()).decode()}
    rendered = render_target(conn_of(MINIMAL[SnowflakeProfile], extra=extra))
    assert rendered.method == "keypair"
    assert "password" not in rendered.target
    assert rendered.secret_env == {"DBT_ENV_SECRET_PRIVATE_KEY": pem, "DBT_ENV_SECRET_PRIVATE_KEY_PASSPHRASE": "pw-123"}


def test_snowflake_key_file_is_a_path_not_a_secret() -> None:
    extra = {"account": "a", "database": "d", "private_key_file": "/keys/rsa.p8"}
    rendered = render_target(conn_of(MINIMAL[SnowflakeProfile], password=None, extra=extra))
    assert rendered.target["private_key_path"] == "/keys/rsa.p8"
    assert rendered.secret_env == {}


def test_snowflake_keypair_needs_a_key() -> None:
    with pytest.raises(DbtProfileException, match="missing required field private_key or private_key_path"):
        render_target(conn_of(MINIMAL[SnowflakeProfile], extra={"account": "a", "database": "d", "method": "keypair"}))


def test_legacy_prefixed_extra_keys() -> None:
    extra = {"extra__snowflake__account": "old", "extra__snowflake__database": "d", "warehouse": "w"}
    target = render_target(conn_of(MINIMAL[SnowflakeProfile], extra=extra)).target
    assert (target["account"], target["database"], target["warehouse"]) == ("old", "d", "w")
    extra = {"extra__snowflake__account": "old", "account": "new", "database": "d"}
    assert render_target(conn_of(MINIMAL[SnowflakeProfile], extra=extra)).target["account"] == "new"


def test_dremio_methods() -> None:
    software = render_target(conn_of(MINIMAL[DremioProfile]))
    assert software.method == "password" and software.target["software_host"] == "h"
    pat = render_target(conn_of(MINIMAL[DremioProfile], extra={"method": "pat"}))
    assert pat.target["pat"] == "{{ env_var('DBT_ENV_SECRET_PAT') }}" and "password" not in pat.target
    cloud = render_target(
        FakeConnection(conn_id="c", conn_type="dremio", password="p-123", extra={"cloud_project_id": "x"})
    )
    assert cloud.method == "cloud"
    assert cloud.target["cloud_host"] == "api.dremio.cloud" and "software_host" not in cloud.target


def test_spark_plain_mechanism_and_http() -> None:
    hive = render_target(conn_of(MINIMAL[SparkProfile], conn_type="hiveserver2", extra={"auth_mechanism": "PLAIN"}))
    assert hive.target["auth"] == "NONE" and hive.target["port"] == 10000
    with pytest.raises(DbtProfileException, match="missing required field cluster or endpoint"):
        render_target(conn_of(MINIMAL[SparkProfile], extra={"method": "http", "token": "t-123"}))


def test_oracle_schema_defaults_to_login_and_sid_becomes_descriptor() -> None:
    target = render_target(conn_of(MINIMAL[OracleProfile], extra={"sid": "ORCL"})).target
    assert target["schema"] == "u"
    assert target["connection_string"].endswith("(CONNECT_DATA=(SID=ORCL)))")
    with pytest.raises(DbtProfileException, match="host or tns_name or connection_string"):
        render_target(conn_of(MINIMAL[OracleProfile], host=None))


def test_databricks_host_from_url() -> None:
    target = render_target(conn_of(MINIMAL[DatabricksProfile], host="https://dbc-1.cloud.databricks.com/")).target
    assert target["host"] == "dbc-1.cloud.databricks.com"


def test_sqlserver_conn_type_aliases() -> None:
    for conn_type in ("mssql", "sqlserver"):
        target = render_target(conn_of(MINIMAL[SQLServerProfile], conn_type=conn_type)).target
        assert (target["type"], target["database"], target["schema"]) == ("sqlserver", "db", "dbo")


# ---------------------------------------------------------------------------------------------------------
# Generic connection type `dbt`
# ---------------------------------------------------------------------------------------------------------


def test_generic_extra_is_the_target_and_secrets_are_hidden() -> None:
    conn = FakeConnection(
        conn_id="any",
        conn_type="dbt",
        password="conn-Pass-1",
        extra={"type": "snowflake", "account": "a", "user": "u", "private_key": "PEM-xyz", "token": "t-123", "n": 3},
    )
    rendered = render_target(conn)
    assert rendered.target["type"] == "snowflake" and rendered.target["n"] == 3
    assert rendered.secret_env == {
        "DBT_ENV_SECRET_PASSWORD": "conn-Pass-1",
        "DBT_ENV_SECRET_PRIVATE_KEY": "PEM-xyz",
        "DBT_ENV_SECRET_TOKEN": "t-123",
    }
    for secret in rendered.secret_env.values():
        assert secret not in json.dumps(rendered.target)


def test_generic_extra_wins_over_standard_fields() -> None:
    conn = FakeConnection(conn_id="any", conn_type="dbt", host="std", login="std_user", port=1,
                          extra={"type": "postgres", "host": "from_extra", "port": "5433"})  # fmt: skip
    target = render_target(conn).target
    assert (target["host"], target["user"], target["port"]) == ("from_extra", "std_user", 5433)


def test_generic_needs_a_type() -> None:
    with pytest.raises(DbtProfileException, match=r"'any' \(type dbt\) is missing required field type"):
        render_target(FakeConnection(conn_id="any", conn_type="dbt", extra={"host": "h"}))


def test_generic_secret_must_be_a_string() -> None:
    with pytest.raises(DbtProfileException, match="secret field token must be a string"):
        render_target(FakeConnection(conn_id="any", conn_type="dbt", extra={"type": "x", "token": {"a": 1}}))


def test_real_uri_connection_strings_are_coerced() -> None:
    from airflow.sdk import Connection

    conn = Connection.from_uri(
        "redshift://u:p%40ss-123@cluster.example.com:5439/dev?schema=dbt&ra3_node=true&connect_timeout=30",
        conn_id="rs",
    )
    rendered = render_target(conn)
    assert rendered.target["ra3_node"] is True and rendered.target["connect_timeout"] == 30
    assert rendered.secret_env == {"DBT_ENV_SECRET_PASSWORD": "p@ss-123"}
