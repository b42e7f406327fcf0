"""Every profile mapping, loaded the way dbt loads a profile: through the adapter's own credentials class.

For each case a realistic Airflow ``Connection`` is rendered, written to profiles.yml by the same code the
hook uses, read back by dbt's ``read_profile``, its ``env_var()`` secrets filled in by dbt's renderer, and
turned into the adapter's ``Credentials``. A field the adapter does not know, a value it does not take, or a
secret that does not arrive fails here. No warehouse is contacted.

Adapters in the ``adapters`` extra must be installed (a missing one fails under CI=true); the others are
checked when present.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.profiles_file import PROFILES_FILE, write_profiles_file
from dlh_airflow_common.hooks.dbt_profiles import (
    PROFILE_MAPPINGS,
    GenericDbtProfile,
    ProfileMapping,
    RenderedTarget,
    mapping_for,
    render_target,
)

pytestmark = pytest.mark.integration

# The adapters `make test` installs (pyproject's `adapters` extra) and the ones only checked when present.
REQUIRED_ADAPTERS = frozenset(
    {"postgres", "duckdb", "dremio", "trino", "redshift", "snowflake", "sqlserver", "spark", "clickhouse", "oracle"}
)
OPTIONAL_ADAPTERS = frozenset({"databricks"})
SECRET = "Zx9-secret-Q7w"


@dataclass
class Case:
    """One connection, what the adapter must end up with, and a change the adapter must refuse."""

    conn: dict[str, Any]
    expect: dict[str, Any]
    method: str | None = None
    bad: dict[str, Any] = field(default_factory=lambda: {"port": "not-a-port"})
    check: Callable[[Any], None] | None = None


def _rsa_pem(passphrase: str | None) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


def _snowflake_key_loaded(credentials: Any) -> None:
    """dbt-snowflake itself decrypts the key with the passphrase: the auth args carry DER bytes."""
    private_key = credentials.auth_args()["private_key"]
    assert isinstance(private_key, bytes) and len(private_key) > 1000


def _trino_auth(kind: str | None) -> Callable[[Any], None]:
    def check(credentials: Any) -> None:
        auth = credentials.trino_auth()
        assert (type(auth).__name__ if auth is not None else None) == kind

    return check


def _oracle_dsn(*parts: str) -> Callable[[Any], None]:
    def check(credentials: Any) -> None:
        dsn = credentials.get_dsn()
        for part in parts:
            assert part in dsn, dsn

    return check


PEM_ENCRYPTED = _rsa_pem(SECRET)
PEM_PLAIN = _rsa_pem(None)

CASES: dict[str, Case] = {
    "postgres": Case(
        {"conn_type": "postgres", "host": "pg.internal", "port": 5433, "login": "loader", "password": SECRET,
         "schema": "analytics", "extra": {"schema": "dbt", "sslmode": "require", "keepalives_idle": 30,
                                          "connect_timeout": "15", "role": "transformer", "threads": 4}},
        {"host": "pg.internal", "port": 5433, "user": "loader", "password": SECRET, "database": "analytics",
         "schema": "dbt", "sslmode": "require", "keepalives_idle": 30, "connect_timeout": 15, "role": "transformer"},
    ),
    "postgres-uri": Case(
        {"uri": "postgresql://loader:Zx9-secret-Q7w@pg.internal:5432/analytics?schema=dbt&retries=3&search_path=dbt"},
        {"host": "pg.internal", "port": 5432, "database": "analytics", "schema": "dbt", "retries": 3,
         "search_path": "dbt", "password": SECRET},
    ),
    "duckdb": Case(
        {"conn_type": "duckdb", "host": "/data/shop.duckdb",
         "extra": {"threads": "2", "settings": {"memory_limit": "1GB"}, "extensions": ["parquet"]}},
        {"path": "/data/shop.duckdb", "schema": "main", "settings": {"memory_limit": "1GB"}, "extensions": ["parquet"]},
        bad={"path": 123},
    ),
    "duckdb-motherduck": Case(
        {"conn_type": "duckdb", "host": "md:analytics", "password": SECRET, "schema": "marts"},
        {"path": "md:analytics", "schema": "marts", "motherduck_token": SECRET},
        bad={"path": 123},
    ),
    "dremio-software-password": Case(
        {"conn_type": "dremio", "host": "dremio.internal", "port": 9047, "login": "dbt", "password": SECRET,
         "extra": {"object_storage_source": "lake", "object_storage_path": "dbt.tables", "dremio_space": "analytics",
                   "dremio_space_folder": "marts", "use_ssl": "false"}},
        {"software_host": "dremio.internal", "port": 9047, "UID": "dbt", "PWD": SECRET, "datalake": "lake",
         "root_path": "dbt.tables", "database": "analytics", "schema": "marts", "use_ssl": False},
        method="password",
    ),
    "dremio-software-pat": Case(
        {"conn_type": "dremio", "host": "dremio.internal", "login": "dbt", "password": SECRET,
         "extra": {"method": "pat", "use_ssl": True}},
        {"software_host": "dremio.internal", "port": 9047, "UID": "dbt", "pat": SECRET, "PWD": None, "use_ssl": True},
        method="pat",
    ),
    "dremio-cloud": Case(
        {"conn_type": "dremio", "login": "dbt@example.com", "password": SECRET,
         "extra": {"cloud_project_id": "4f1c2b9e-0000-4a5b-8c7d-1234567890ab", "dremio_space": "@dbt@example.com"}},
        {"cloud_host": "api.dremio.cloud", "cloud_project_id": "4f1c2b9e-0000-4a5b-8c7d-1234567890ab", "pat": SECRET,
         "port": 443, "use_ssl": True, "software_host": None},
        method="cloud",
    ),
    "trino-none": Case(
        {"conn_type": "trino", "host": "trino.internal", "port": 8080, "login": "airflow", "schema": "marts",
         "extra": {"catalog": "iceberg", "protocol": "http", "session_properties": {"query_max_run_time": "1h"},
                   "client_tags": ["dbt"], "timezone": "UTC"}},
        {"host": "trino.internal", "port": 8080, "user": "airflow", "database": "iceberg", "schema": "marts",
         "session_properties": {"query_max_run_time": "1h"}, "client_tags": ["dbt"], "timezone": "UTC"},
        method="none",
        check=_trino_auth(None),
    ),
    "trino-ldap": Case(
        {"conn_type": "trino", "host": "trino.example.com", "login": "airflow", "password": SECRET, "schema": "marts",
         "extra": {"verify": "false", "roles": {"system": "analyst"}}},
        {"host": "trino.example.com", "port": 443, "user": "airflow", "password": SECRET, "database": "hive",
         "cert": False, "roles": {"system": "analyst"}},
        method="ldap",
        check=_trino_auth("BasicAuthentication"),
    ),
    "trino-jwt": Case(
        {"conn_type": "trino", "host": "trino.example.com", "port": 8443, "schema": "marts",
         "extra": {"auth": "jwt", "jwt__token": SECRET, "catalog": "delta"}},
        {"port": 8443, "jwt_token": SECRET, "database": "delta", "user": None},
        method="jwt",
        check=_trino_auth("JWTAuthentication"),
    ),
    "trino-certificate": Case(
        {"conn_type": "trino", "host": "trino.example.com", "login": "airflow", "schema": "marts",
         "extra": {"auth": "certs", "certs__client_cert_path": "/certs/c.pem",
                   "certs__client_key_path": "/certs/k.pem"}},
        {"client_certificate": "/certs/c.pem", "client_private_key": "/certs/k.pem", "port": 443},
        method="certificate",
        check=_trino_auth("CertificateAuthentication"),
    ),
    "redshift-password": Case(
        {"conn_type": "redshift", "host": "cluster.abc.eu-west-1.redshift.amazonaws.com", "login": "awsuser",
         "password": SECRET, "schema": "dev", "extra": {"schema": "dbt", "sslmode": "verify-full", "ra3_node": "true"}},
        {"host": "cluster.abc.eu-west-1.redshift.amazonaws.com", "port": 5439, "user": "awsuser", "password": SECRET,
         "database": "dev", "schema": "dbt", "ra3_node": True, "method": "database"},
        method="database",
    ),
    "redshift-iam": Case(
        {"conn_type": "redshift", "host": "cluster.abc.eu-west-1.redshift.amazonaws.com", "port": 5439,
         "schema": "dev", "extra": {"iam": True, "cluster_identifier": "cluster", "region": "eu-west-1",
                                    "profile": "etl", "db_user": "dbt_iam", "db_groups": ["transformers"],
                                    "auto_create": "true", "secret_access_key": SECRET, "access_key_id": "AKIAX"}},
        {"user": "dbt_iam", "cluster_id": "cluster", "region": "eu-west-1", "iam_profile": "etl",
         "db_groups": ["transformers"], "autocreate": True, "secret_access_key": SECRET, "password": None,
         "method": "iam"},
        method="iam",
    ),
    "snowflake-password": Case(
        {"conn_type": "snowflake", "login": "DBT_USER", "password": SECRET, "schema": "MARTS",
         "extra": {"account": "xy12345", "region": "eu-west-1", "warehouse": "TRANSFORMING", "database": "ANALYTICS",
                   "role": "TRANSFORMER", "insecure_mode": "false", "client_session_keep_alive": True}},
        {"account": "xy12345.eu-west-1", "user": "DBT_USER", "password": SECRET, "warehouse": "TRANSFORMING",
         "database": "ANALYTICS", "role": "TRANSFORMER", "schema": "MARTS", "insecure_mode": False,
         "client_session_keep_alive": True},
        method="password",
        bad={"client_session_keep_alive": "sometimes"},
    ),
    "snowflake-keypair-pem": Case(
        {"conn_type": "snowflake", "login": "DBT_USER", "password": SECRET, "schema": "MARTS",
         "extra": {"account": "xy12345.eu-west-1", "database": "ANALYTICS", "private_key_content": PEM_ENCRYPTED}},
        {"private_key": PEM_ENCRYPTED, "private_key_passphrase": SECRET, "password": None},
        method="keypair",
        bad={"connect_retries": "many"},
        check=_snowflake_key_loaded,
    ),
    "snowflake-keypair-base64": Case(
        {"conn_type": "snowflake", "login": "DBT_USER", "schema": "MARTS",
         "extra": {"account": "xy12345", "database": "ANALYTICS",
                   "private_key_content": base64.b64encode(PEM_PLAIN.encode()).decode()}},
        {"private_key": PEM_PLAIN, "private_key_passphrase": None},
        method="keypair",
        bad={"connect_retries": "many"},
        check=_snowflake_key_loaded,
    ),
    "sqlserver": Case(
        {"conn_type": "mssql", "host": "sql.internal", "login": "dbt", "password": SECRET, "schema": "warehouse",
         "extra": {"schema": "marts", "encrypt": "true", "trust_cert": True,
                   "driver": "ODBC Driver 17 for SQL Server"}},
        {"host": "sql.internal", "port": 1433, "UID": "dbt", "PWD": SECRET, "database": "warehouse",
         "schema": "marts", "encrypt": True, "trust_cert": True, "driver": "ODBC Driver 17 for SQL Server"},
    ),
    "spark-thrift": Case(
        {"conn_type": "spark", "host": "spark-thrift.internal", "login": "dbt", "schema": "analytics",
         "extra": {"server_side_parameters": {"spark.sql.shuffle.partitions": "64"}}},
        {"host": "spark-thrift.internal", "port": 10000, "user": "dbt", "schema": "analytics", "method": "thrift"},
        method="thrift",
    ),
    "spark-hiveserver2": Case(
        {"conn_type": "hiveserver2", "host": "hive.internal", "port": 10001, "login": "dbt", "password": SECRET,
         "schema": "analytics", "extra": {"auth_mechanism": "LDAP"}},
        {"host": "hive.internal", "port": 10001, "auth": "LDAP", "password": SECRET, "method": "thrift"},
        method="thrift",
    ),
    "spark-http": Case(
        {"conn_type": "spark", "host": "dbc-1234.cloud.databricks.com", "password": SECRET, "schema": "analytics",
         "extra": {"cluster": "0101-123456-abcdef", "connect_retries": "3"}},
        {"host": "dbc-1234.cloud.databricks.com", "port": 443, "token": SECRET, "cluster": "0101-123456-abcdef",
         "connect_retries": 3, "method": "http"},
        method="http",
    ),
    "clickhouse": Case(
        {"conn_type": "clickhouse", "host": "ch.internal", "port": 8443, "login": "dbt", "password": SECRET,
         "schema": "analytics", "extra": {"driver": "http", "secure": "true", "verify": False,
                                          "custom_settings": {"max_threads": 4}}},
        {"host": "ch.internal", "port": 8443, "user": "dbt", "password": SECRET, "schema": "analytics",
         "driver": "http", "secure": True, "verify": False, "custom_settings": {"max_threads": 4}},
    ),
    "oracle-service": Case(
        {"conn_type": "oracle", "host": "ora.internal", "login": "DBT", "password": SECRET,
         "extra": {"service_name": "XEPDB1"}},
        {"host": "ora.internal", "port": 1521, "user": "DBT", "password": SECRET, "service": "XEPDB1",
         "schema": "DBT", "protocol": "tcp", "database": "XEPDB1"},
        bad={"retry_count": "often"},
        check=_oracle_dsn("tcp://ora.internal:1521/XEPDB1"),
    ),
    "oracle-sid": Case(
        {"conn_type": "oracle", "host": "ora.internal", "port": 1522, "login": "DBT", "password": SECRET,
         "schema": "MARTS", "extra": {"sid": "ORCL"}},
        {"schema": "MARTS", "port": 1522},
        bad={"retry_count": "often"},
        check=_oracle_dsn("(SID=ORCL)", "(HOST=ora.internal)(PORT=1522)"),
    ),
    "oracle-dsn": Case(
        {"conn_type": "oracle", "login": "DBT", "password": SECRET, "schema": "MARTS",
         "extra": {"dsn": "db.example.com:1521/ORCLPDB1"}},
        {"connection_string": "db.example.com:1521/ORCLPDB1", "host": None},
        bad={"retry_count": "often"},
        check=_oracle_dsn("db.example.com:1521/ORCLPDB1"),
    ),
    "databricks": Case(
        {"conn_type": "databricks", "host": "https://dbc-1234.cloud.databricks.com/", "password": SECRET,
         "schema": "marts", "extra": {"http_path": "/sql/1.0/warehouses/abc", "catalog": "main"}},
        {"host": "dbc-1234.cloud.databricks.com", "http_path": "/sql/1.0/warehouses/abc", "token": SECRET,
         "database": "main", "schema": "marts"},
        bad={"connect_retries": "many"},
    ),
    "generic-postgres": Case(
        {"conn_type": "dbt", "host": "pg.internal", "login": "loader", "password": SECRET, "port": 5432,
         "extra": {"type": "postgres", "dbname": "analytics", "schema": "dbt", "sslmode": "prefer"}},
        {"host": "pg.internal", "user": "loader", "password": SECRET, "database": "analytics", "sslmode": "prefer"},
    ),
    "generic-trino-jwt": Case(
        {"conn_type": "dbt", "extra": {"type": "trino", "method": "jwt", "host": "trino.example.com", "port": 443,
                                       "database": "iceberg", "schema": "marts", "jwt_token": SECRET}},
        {"jwt_token": SECRET, "database": "iceberg"},
        method=None,
        check=_trino_auth("JWTAuthentication"),
    ),
}  # fmt: skip


def _adapter(case: Case) -> str:
    rendered = render_target(_connection("probe", case.conn))
    return str(rendered.target["type"])


def _connection(conn_id: str, spec: dict[str, Any]) -> Any:
    from airflow.sdk import Connection

    if "uri" in spec:
        return Connection.from_uri(spec["uri"], conn_id=conn_id)
    values = dict(spec)
    if isinstance(values.get("extra"), dict):
        values["extra"] = json.dumps(values["extra"])
    return Connection(conn_id=conn_id, **values)


def _require_adapter(adapter: str) -> None:
    if importlib.util.find_spec(f"dbt.adapters.{adapter}") is not None:
        return
    if adapter in REQUIRED_ADAPTERS and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"dbt-{adapter} is part of the `adapters` extra but is not installed", pytrace=False)
    pytest.skip(f"dbt-{adapter} is not installed")


@pytest.fixture
def load_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, Any], dict[str, str]], Any]]:
    """Write a target as the hook does, then load it exactly as dbt does (read, render env vars, validate)."""
    from dbt.adapters.factory import load_plugin
    from dbt.config.profile import Profile, read_profile
    from dbt.config.renderer import ProfileRenderer
    from dbt_common.context import set_invocation_context

    def load(target: dict[str, Any], secret_env: dict[str, str]) -> Any:
        with tempfile.TemporaryDirectory() as parent:
            directory = write_profiles_file(Path(parent) / "profile", "validation", "airflow", target)
            assert SECRET not in (directory / PROFILES_FILE).read_text()
            raw = read_profile(str(directory))
        for key, value in secret_env.items():
            monkeypatch.setenv(key, value)
        set_invocation_context(os.environ)
        _, data = Profile.render_profile(raw["validation"], "validation", None, ProfileRenderer({}))
        data.pop("threads", None)  # dbt takes threads off before building the credentials
        credentials_class = load_plugin(data.pop("type"))
        data = credentials_class.translate_aliases(data)
        credentials_class.validate(data)
        return credentials_class.from_dict(data)

    yield load
    set_invocation_context(os.environ)


def unknown_fields(credentials: Any, target: dict[str, Any], mapping: type[ProfileMapping]) -> set[str]:
    """Target keys the adapter has no field (or alias) for: dbt would accept and silently ignore them."""
    known = {f.name for f in dataclasses.fields(credentials)} | set(getattr(credentials, "_ALIASES", {}))
    known |= {"type", "threads"}
    if mapping.method_field:
        known.add(mapping.method_field)  # dbt-trino chooses its credentials class by `method`
    if mapping is GenericDbtProfile:
        known.add("method")
    return set(target) - known


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


@pytest.mark.parametrize("name", CASES)
def test_adapter_loads_rendered_target(name: str, load_credentials: Callable[..., Any]) -> None:
    case = CASES[name]
    adapter = _adapter(case)
    _require_adapter(adapter)
    conn = _connection(f"conn_{name.replace('-', '_')}", case.conn)
    mapping = mapping_for(conn)
    rendered = render_target(conn)
    assert rendered.method == case.method

    credentials = load_credentials(rendered.target, rendered.secret_env)

    assert credentials.type == adapter
    assert unknown_fields(credentials, rendered.target, mapping) == set(), "fields the adapter would ignore"
    for key, expected in case.expect.items():
        assert _plain(getattr(credentials, key)) == expected, key
    if case.check is not None:
        case.check(credentials)


@pytest.mark.parametrize("name", CASES)
def test_adapter_rejects_a_wrong_value(name: str, load_credentials: Callable[..., Any]) -> None:
    from dbt_common.dataclass_schema import ValidationError
    from dbt_common.exceptions import DbtRuntimeError

    case = CASES[name]
    _require_adapter(_adapter(case))
    rendered = render_target(_connection("bad", case.conn))
    with pytest.raises((ValidationError, DbtRuntimeError)) as info:
        load_credentials({**rendered.target, **case.bad}, rendered.secret_env)
    assert str(next(iter(case.bad.values()))) in str(info.value)


@pytest.mark.parametrize("name", CASES)
def test_unknown_field_check_notices_a_misspelt_field(name: str, load_credentials: Callable[..., Any]) -> None:
    case = CASES[name]
    _require_adapter(_adapter(case))
    conn = _connection("typo", case.conn)
    rendered = render_target(conn)
    credentials = load_credentials({**rendered.target, "hostname_typo": "x"}, rendered.secret_env)
    assert unknown_fields(credentials, {**rendered.target, "hostname_typo": "x"}, mapping_for(conn)) == {
        "hostname_typo"
    }


ADAPTER_MAPPINGS = [m for m in PROFILE_MAPPINGS if m is not GenericDbtProfile]


@pytest.mark.parametrize("mapping", ADAPTER_MAPPINGS, ids=lambda m: m.__name__)
def test_every_declared_field_is_an_adapter_field(mapping: type[ProfileMapping]) -> None:
    """Each field a declaration can emit (fields, methods, passthrough extras, defaults) exists in the adapter."""
    _require_adapter(mapping.dbt_type)
    from dbt.adapters.factory import load_plugin

    plugin_credentials = load_plugin(mapping.dbt_type)
    common = {*mapping.fields, *mapping.defaults, *mapping.passthrough_extras, *mapping.schema_fields}
    for name, method in (mapping.methods or {None: None}).items():  # type: ignore[dict-item]
        declared = common | (
            {k for k, sources in method.fields.items() if sources} | set(method.defaults) if method else set()
        )
        declared -= {"threads", mapping.method_field}
        credentials = plugin_credentials
        if not dataclasses.is_dataclass(credentials):  # dbt-trino: a factory choosing one class per method
            credentials = plugin_credentials._create_trino_profile({"method": name})
        known = {f.name for f in dataclasses.fields(credentials)} | set(getattr(credentials, "_ALIASES", {}))
        assert declared - known == set(), f"{mapping.__name__} ({name}) declares fields {credentials.__name__} lacks"


def test_cases_cover_every_mapping_and_method() -> None:
    covered: dict[type[ProfileMapping], set[str | None]] = {}
    for case in CASES.values():
        conn = _connection("cover", case.conn)
        covered.setdefault(mapping_for(conn), set()).add(render_target(conn).method)
    assert set(covered) == set(PROFILE_MAPPINGS)
    for mapping, methods in covered.items():
        assert set(mapping.methods or {None}) <= methods, mapping.__name__
    assert {m.dbt_type for m in PROFILE_MAPPINGS if m.dbt_type} == REQUIRED_ADAPTERS | OPTIONAL_ADAPTERS


def test_rendered_profile_keeps_secrets_out_of_the_file(tmp_path: Path) -> None:
    for index, (name, case) in enumerate(CASES.items()):
        rendered: RenderedTarget = render_target(_connection("file", case.conn))
        directory = write_profiles_file(tmp_path / f"profile{index}", "p", "t", rendered.target)
        text = (directory / PROFILES_FILE).read_text()
        assert SECRET not in text, name
        if SECRET in json.dumps(case.conn) or SECRET in case.conn.get("uri", ""):
            assert SECRET in rendered.secret_env.values(), name
