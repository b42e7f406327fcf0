"""One short declaration per dbt adapter: which Airflow connection fields feed which dbt profile fields.

Connection fields keep the meaning their Airflow provider gives them; the docs table for each adapter is
docs/connections.md. Every declaration here is loaded through the adapter's own credentials class in
tests/integration/test_adapter_profiles.py, so a field name or type the adapter would reject fails a test.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlh_airflow_common.exceptions.dbt import DbtProfileException
from dlh_airflow_common.hooks.dbt_profiles.base import AuthMethod, ConnectionLike, ProfileMapping


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
    integers = ("port", "threads", "keepalives_idle", "connect_timeout", "retries")
    passthrough_extras = frozenset(
        {
            "keepalives_idle", "connect_timeout", "retries", "search_path", "role", "sslmode",
            "sslcert", "sslkey", "sslrootcert", "application_name",
        }
    )  # fmt: skip
    field_help = {"dbname": "the connection's Schema field (the database name) or extra.dbname"}


class DuckDBProfile(ProfileMapping):
    """dbt-duckdb: the database file comes from ``extra.path`` or the Host field; Password is a MotherDuck token."""

    conn_types = ("duckdb",)
    dbt_type = "duckdb"
    fields = {
        "path": ("extra.path", "host"),
        "schema": ("extra.schema", "schema"),
        "motherduck_token": ("extra.motherduck_token", "password"),
    }
    required = ("path",)
    secrets = ("motherduck_token",)
    defaults = {"schema": "main"}
    integers = ("threads",)
    passthrough_extras = frozenset(
        {"extensions", "settings", "attach", "filesystems", "external_root", "database", "plugins", "module_paths"}
    )
    field_help = {"path": "extra.path or the connection's Host field (path of the .duckdb file)"}


class DremioProfile(ProfileMapping):
    """dbt-dremio: Software with user/password or a personal access token, or Dremio Cloud (token only).

    Host is the Software host or the Cloud API host; Password holds the password or the token.
    """

    conn_types = ("dremio",)
    dbt_type = "dremio"
    fields = {
        "user": ("login",),
        "port": ("port",),
        "object_storage_source": ("extra.object_storage_source",),
        "object_storage_path": ("extra.object_storage_path", "schema"),
        "dremio_space": ("extra.dremio_space",),
        "dremio_space_folder": ("extra.dremio_space_folder", "schema"),
    }
    booleans = ("use_ssl", "verify_ssl")
    passthrough_extras = frozenset({"use_ssl", "verify_ssl", "environment"})
    methods = {
        "password": AuthMethod(
            fields={"software_host": ("host",), "password": ("password",)},
            required=("software_host", "user", "password"),
            secrets=("password",),
            defaults={"port": 9047, "use_ssl": False},
        ),
        "pat": AuthMethod(
            fields={"software_host": ("host",), "pat": ("extra.pat", "password")},
            required=("software_host", "user", "pat"),
            secrets=("pat",),
            defaults={"port": 9047, "use_ssl": False},
            when=("extra.pat",),
        ),
        "cloud": AuthMethod(
            fields={
                "cloud_host": ("host",),
                "cloud_project_id": ("extra.cloud_project_id",),
                "pat": ("extra.pat", "password"),
            },
            required=("cloud_host", "cloud_project_id", "pat"),
            secrets=("pat",),
            defaults={"cloud_host": "api.dremio.cloud", "port": 443, "use_ssl": True},
            when=("extra.cloud_project_id",),
        ),
    }
    schema_fields = ("object_storage_path", "dremio_space_folder")


class TrinoProfile(ProfileMapping):
    """dbt-trino as the Airflow Trino provider reads the connection: catalog in extra (default hive).

    Methods: none, ldap (Password set), jwt (extra.jwt__token / jwt__file), certificate (extra.auth certs).
    """

    conn_types = ("trino",)
    dbt_type = "trino"
    fields = {
        "host": ("host",),
        "port": ("port",),
        "user": ("login",),
        "database": ("extra.catalog", "extra.database"),
        "schema": ("schema", "extra.schema"),
        "cert": ("extra.cert", "extra.verify"),
    }
    required = ("host", "port", "database", "schema")
    defaults = {"database": "hive"}
    integers = ("port", "threads", "retries")
    booleans = ("prepared_statements_enabled", "suppress_cert_warning")
    passthrough_extras = frozenset(
        {"session_properties", "client_tags", "roles", "timezone", "retries", "prepared_statements_enabled",
         "http_headers", "suppress_cert_warning"}
    )  # fmt: skip
    methods = {
        "none": AuthMethod(fields={"http_scheme": ("extra.http_scheme", "extra.protocol")}, required=("user",)),
        "ldap": AuthMethod(
            fields={"password": ("password",), "impersonation_user": ("extra.impersonation_user",)},
            required=("user", "password"),
            secrets=("password",),
            when=("password",),
        ),
        "jwt": AuthMethod(
            fields={"jwt_token": ("extra.jwt_token", "extra.jwt__token")},
            required=("jwt_token",),
            secrets=("jwt_token",),
            when=("extra.jwt_token", "extra.jwt__token", "extra.jwt__file"),
        ),
        "certificate": AuthMethod(
            fields={
                "client_certificate": ("extra.client_certificate", "extra.certs__client_cert_path"),
                "client_private_key": ("extra.client_private_key", "extra.certs__client_key_path"),
            },
            required=("client_certificate", "client_private_key"),
        ),
    }
    method_field = "method"
    method_sources = ("extra.method", "extra.auth")
    method_aliases = {"certs": "certificate", "basic": "ldap"}

    @classmethod
    def transform(cls, target: dict[str, Any], extra: Mapping[str, Any], conn: ConnectionLike) -> None:
        """Default port by scheme, ``verify`` as a boolean or CA path, a JWT read from extra.jwt__file."""
        scheme = str(target.get("http_scheme") or ("http" if target.get("method") == "none" else "https"))
        target.setdefault("port", 443 if scheme.lower() == "https" else 8080)
        cert = target.get("cert")
        if isinstance(cert, str) and cert.strip().lower() in ("true", "false"):
            target["cert"] = cert.strip().lower() == "true"
        if target.get("method") == "jwt" and not target.get("jwt_token") and extra.get("jwt__file"):
            target["jwt_token"] = _read_text(conn, "jwt__file", str(extra["jwt__file"]))


class RedshiftProfile(ProfileMapping):
    """dbt-redshift as the Airflow Amazon provider's ``redshift`` connection: Schema is the database.

    Methods: database (user/password), iam (``extra.iam`` true: temporary credentials for extra.db_user/login).
    """

    conn_types = ("redshift",)
    dbt_type = "redshift"
    fields = {
        "host": ("host",),
        "port": ("port",),
        "user": ("extra.db_user", "login"),
        "dbname": ("schema", "extra.dbname", "extra.database"),
        "schema": ("extra.schema",),
        "cluster_id": ("extra.cluster_identifier", "extra.cluster_id"),
        "region": ("extra.region", "extra.region_name"),
        "iam_profile": ("extra.profile", "extra.iam_profile"),
        "autocreate": ("extra.auto_create", "extra.autocreate"),
        "serverless_work_group": ("extra.serverless_work_group",),
    }
    required = ("host", "dbname", "schema")
    defaults = {"port": 5439, "schema": "public"}
    integers = ("port", "threads", "connect_timeout", "retries")
    booleans = ("autocreate", "is_serverless", "ra3_node", "autocommit", "retry_all", "tcp_keepalive")
    passthrough_extras = frozenset(
        {"db_groups", "is_serverless", "serverless_acct_id", "sslmode", "connect_timeout", "role", "retries",
         "retry_all", "ra3_node", "autocommit", "tcp_keepalive", "query_group"}
    )  # fmt: skip
    methods = {
        "database": AuthMethod(
            fields={"password": ("password",)}, required=("user", "password"), secrets=("password",)
        ),
        "iam": AuthMethod(
            fields={"access_key_id": ("extra.access_key_id",), "secret_access_key": ("extra.secret_access_key",)},
            required=("user",),
            secrets=("secret_access_key",),
            when=("extra.iam",),
        ),
    }
    method_field = "method"


class SnowflakeProfile(ProfileMapping):
    """dbt-snowflake as the Airflow Snowflake provider: account/warehouse/database/role in extra.

    Methods: password, keypair (extra.private_key_file or private_key_content; Password is then the passphrase).
    """

    conn_types = ("snowflake",)
    dbt_type = "snowflake"
    fields = {
        "account": ("extra.account",),
        "user": ("login",),
        "database": ("extra.database",),
        "warehouse": ("extra.warehouse",),
        "role": ("extra.role",),
        "schema": ("schema", "extra.schema"),
    }
    required = ("account", "user", "database", "schema")
    integers = ("port", "threads", "proxy_port", "connect_retries", "connect_timeout")
    booleans = (
        "insecure_mode",
        "client_session_keep_alive",
        "retry_on_database_errors",
        "retry_all",
        "reuse_connections",
    )
    passthrough_extras = frozenset(
        {"authenticator", "host", "port", "protocol", "proxy_host", "proxy_port", "insecure_mode", "query_tag",
         "client_session_keep_alive", "connect_retries", "connect_timeout", "retry_on_database_errors", "retry_all",
         "reuse_connections"}
    )  # fmt: skip
    methods = {
        "password": AuthMethod(fields={"password": ("password",)}, required=("password",), secrets=("password",)),
        "keypair": AuthMethod(
            fields={
                "password": (),
                "private_key_path": ("extra.private_key_file", "extra.private_key_path"),
                "private_key": ("extra.private_key_content", "extra.private_key"),
                "private_key_passphrase": ("extra.private_key_passphrase", "password"),
            },
            required=("private_key|private_key_path",),
            secrets=("private_key", "private_key_passphrase"),
            when=("extra.private_key_file", "extra.private_key_path", "extra.private_key_content", "extra.private_key"),
        ),
    }

    @classmethod
    def transform(cls, target: dict[str, Any], extra: Mapping[str, Any], conn: ConnectionLike) -> None:
        """Fold Airflow's extra.region into the account; a base64-wrapped PEM key becomes the PEM itself."""
        region, account = extra.get("region"), target.get("account")
        if region and account and not str(account).endswith(f".{region}"):
            target["account"] = f"{account}.{region}"
        key = target.get("private_key")
        if isinstance(key, str) and not key.lstrip().startswith("-"):
            try:
                decoded = base64.b64decode(key, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return  # base64 DER: dbt-snowflake reads that form itself
            if decoded.lstrip().startswith("-----BEGIN"):
                target["private_key"] = decoded


class SQLServerProfile(ProfileMapping):
    """dbt-sqlserver as the Airflow Microsoft SQL Server provider: Schema is the database."""

    conn_types = ("mssql", "sqlserver")
    dbt_type = "sqlserver"
    fields = {
        "server": ("host",),
        "port": ("port",),
        "user": ("login",),
        "password": ("password",),
        "database": ("schema", "extra.database"),
        "schema": ("extra.schema",),
        "client_secret": ("extra.client_secret",),
    }
    required = ("server", "database", "schema", "driver")
    secrets = ("password", "client_secret")
    defaults = {"port": 1433, "schema": "dbo", "driver": "ODBC Driver 18 for SQL Server"}
    integers = ("port", "threads", "retries", "login_timeout", "query_timeout")
    booleans = ("encrypt", "trust_cert", "windows_login")
    passthrough_extras = frozenset(
        {"driver", "authentication", "encrypt", "trust_cert", "windows_login", "retries", "login_timeout",
         "query_timeout", "schema_authorization", "tenant_id", "client_id"}
    )  # fmt: skip


class SparkProfile(ProfileMapping):
    """dbt-spark over Thrift (a Spark Thrift / HiveServer2 endpoint) or HTTP (Databricks-style clusters).

    ``hiveserver2`` connections (Airflow Hive provider) map as Thrift: Schema is the database, extra.auth_mechanism
    the SASL mechanism.
    """

    conn_types = ("spark", "hiveserver2")
    dbt_type = "spark"
    fields = {
        "host": ("host",),
        "port": ("port",),
        "user": ("login",),
        "schema": ("schema", "extra.schema"),
        "auth": ("extra.auth", "extra.auth_mechanism"),
    }
    required = ("host", "schema")
    integers = ("port", "threads", "connect_retries", "connect_timeout", "query_timeout", "poll_interval")
    booleans = ("use_ssl", "retry_all")
    passthrough_extras = frozenset(
        {"kerberos_service_name", "use_ssl", "connect_retries", "connect_timeout", "retry_all",
         "server_side_parameters", "query_timeout", "poll_interval", "organization"}
    )  # fmt: skip
    methods = {
        "thrift": AuthMethod(fields={"password": ("password",)}, secrets=("password",), defaults={"port": 10000}),
        "http": AuthMethod(
            fields={
                "token": ("extra.token", "password"),
                "cluster": ("extra.cluster",),
                "endpoint": ("extra.endpoint",),
            },
            required=("token", "cluster|endpoint"),
            secrets=("token",),
            defaults={"port": 443},
            when=("extra.cluster", "extra.endpoint", "extra.token"),
        ),
    }
    method_field = "method"

    @classmethod
    def transform(cls, target: dict[str, Any], extra: Mapping[str, Any], conn: ConnectionLike) -> None:
        """HiveServer2's PLAIN mechanism is what PyHive calls NONE."""
        if str(target.get("auth", "")).upper() == "PLAIN":
            target["auth"] = "NONE"


class ClickHouseProfile(ProfileMapping):
    """dbt-clickhouse: Schema (or extra.database) is the ClickHouse database; extra.driver http or native."""

    conn_types = ("clickhouse",)
    dbt_type = "clickhouse"
    fields = {
        "host": ("host",),
        "port": ("port",),
        "user": ("login",),
        "password": ("password",),
        "schema": ("schema", "extra.schema", "extra.database"),
    }
    required = ("host", "schema")
    secrets = ("password",)
    defaults = {"schema": "default"}
    integers = ("port", "threads", "retries", "connect_timeout", "send_receive_timeout", "sync_request_timeout")
    booleans = ("secure", "verify", "cluster_mode", "use_lw_deletes", "check_exchange", "reuse_connections")
    passthrough_extras = frozenset(
        {"driver", "secure", "verify", "cluster", "cluster_mode", "database_engine", "retries", "connect_timeout",
         "send_receive_timeout", "sync_request_timeout", "compression", "custom_settings", "use_lw_deletes",
         "check_exchange", "local_suffix", "reuse_connections", "client_cert", "client_cert_key"}
    )  # fmt: skip


class OracleProfile(ProfileMapping):
    """dbt-oracle as the Airflow Oracle provider: extra.service_name, extra.sid or extra.dsn; Schema is the schema."""

    conn_types = ("oracle",)
    dbt_type = "oracle"
    fields = {
        "user": ("login",),
        "password": ("password",),
        "host": ("host",),
        "port": ("port",),
        "service": ("extra.service_name", "extra.service"),
        "database": ("extra.database", "extra.service_name", "extra.service"),
        "schema": ("schema", "extra.schema"),
        "connection_string": ("extra.connection_string", "extra.dsn"),
    }
    required = ("user", "password", "schema", "host|tns_name|connection_string")
    secrets = ("password",)
    integers = ("port", "threads", "retry_count", "retry_delay")
    passthrough_extras = frozenset({"tns_name", "protocol", "retry_count", "retry_delay", "cclass", "purity"})

    @classmethod
    def transform(cls, target: dict[str, Any], extra: Mapping[str, Any], conn: ConnectionLike) -> None:
        """The login's own schema by default; a host needs a protocol and port; a SID becomes a descriptor."""
        if target.get("user"):
            target.setdefault("schema", target["user"])
        if target.get("host") and not target.get("connection_string"):
            target.setdefault("protocol", "tcp")
            target.setdefault("port", 1521)
            if extra.get("sid") and not target.get("service"):
                target["connection_string"] = (
                    f"(DESCRIPTION=(ADDRESS=(PROTOCOL={target['protocol']})(HOST={target['host']})"
                    f"(PORT={target['port']}))(CONNECT_DATA=(SID={extra['sid']})))"
                )


class DatabricksProfile(ProfileMapping):
    """dbt-databricks as the Airflow Databricks provider: Host the workspace, Password the token."""

    conn_types = ("databricks",)
    dbt_type = "databricks"
    fields = {
        "host": ("host",),
        "http_path": ("extra.http_path",),
        "token": ("extra.token", "password"),
        "catalog": ("extra.catalog",),
        "schema": ("schema", "extra.schema"),
        "client_secret": ("extra.client_secret",),
    }
    required = ("host", "http_path", "schema", "token|client_secret")
    secrets = ("token", "client_secret")
    integers = ("threads", "connect_retries", "connect_timeout")
    passthrough_extras = frozenset(
        {"client_id", "auth_type", "session_properties", "connect_retries", "connect_timeout"}
    )

    @classmethod
    def transform(cls, target: dict[str, Any], extra: Mapping[str, Any], conn: ConnectionLike) -> None:
        """dbt wants the bare workspace host name, Airflow users often paste the URL."""
        if isinstance(target.get("host"), str):
            target["host"] = target["host"].removeprefix("https://").removeprefix("http://").rstrip("/")


# Secret-looking keys of a generic ``dbt`` connection's extra: never written to profiles.yml in clear.
GENERIC_SECRET_KEYS = (
    "password", "pass", "token", "private_key", "private_key_passphrase", "client_secret", "secret_access_key",
    "jwt_token", "pat", "access_token", "motherduck_token", "oauth_client_secret", "refresh_token",
)  # fmt: skip


class GenericDbtProfile(ProfileMapping):
    """Connection type ``dbt``: extra *is* the dbt target (any adapter, ``type`` included).

    The standard fields fill in what extra leaves out (Host -> host, Login -> user, Password -> password,
    Port -> port, Schema -> schema); the password and secret-looking extra keys are hidden as env vars.
    """

    conn_types = ("dbt",)
    fields = {
        "type": ("extra.type",),
        "host": ("extra.host", "host"),
        "user": ("extra.user", "login"),
        "password": ("extra.password", "password"),
        "port": ("extra.port", "port"),
        "schema": ("extra.schema", "schema"),
    }
    required = ("type",)
    secrets = GENERIC_SECRET_KEYS
    passthrough_all = True


def _read_text(conn: ConnectionLike, key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise DbtProfileException(
            f"Connection {conn.conn_id!r} (type {conn.conn_type}): cannot read extra.{key} {path}: {err.strerror}.",
            conn_id=conn.conn_id,
        ) from None
