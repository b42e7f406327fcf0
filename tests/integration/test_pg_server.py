"""The throwaway PostgreSQL server behaves like a real one: auth, privileges, outages."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from pg_server import PostgresServer, PostgresServerError

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def _connect(server: PostgresServer, **kwargs: Any) -> Any:
    """Open a psycopg2 connection over TCP with a short timeout."""
    return psycopg2.connect(server.dsn(**kwargs), connect_timeout=5)


def test_server_is_running_on_loopback(pg_server: PostgresServer) -> None:
    assert pg_server.is_running()
    assert pg_server.host == "127.0.0.1"
    assert pg_server.data_dir.is_dir()
    assert pg_server.socket_dir.is_dir()
    assert pg_server.psql("SHOW listen_addresses;") == "127.0.0.1"
    assert pg_server.psql("SHOW port;") == str(pg_server.port)
    assert pg_server.psql("SHOW fsync;") == "off"


def test_owner_password_auth_over_tcp(pg_server: PostgresServer) -> None:
    with _connect(pg_server) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), inet_server_addr()::text")
        assert cur.fetchone() == (pg_server.user, pg_server.database, "127.0.0.1/32")
        table = f"t_{uuid.uuid4().hex[:8]}"
        cur.execute(f"CREATE TABLE public.{table} (id int)")
        cur.execute(f"DROP TABLE public.{table}")
    conn.close()


def test_password_is_actually_checked(pg_server: PostgresServer) -> None:
    """TCP uses scram-sha-256: a wrong password is rejected (trust is only on the unix socket)."""
    methods = pg_server.psql("SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules")
    assert "scram-sha-256" in methods
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        _connect(pg_server, password="not-the-password")


def test_readonly_role_connects_but_cannot_create(pg_server: PostgresServer) -> None:
    conn = _connect(pg_server, user=pg_server.readonly_user)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == (pg_server.readonly_user,)
            denied = psycopg2.errors.InsufficientPrivilege
            with pytest.raises(denied, match="permission denied for schema public"):
                cur.execute("CREATE TABLE public.should_not_exist (id int)")
            conn.rollback()
            with pytest.raises(denied, match="permission denied for database"):
                cur.execute("CREATE SCHEMA should_not_exist")
    finally:
        conn.close()
    leftovers = "SELECT count(*) FROM pg_tables WHERE tablename = 'should_not_exist'"
    assert pg_server.psql(leftovers, dbname=pg_server.database) == "0"


@pytest.fixture
def private_server() -> Iterator[PostgresServer]:
    """A server of our own, so stopping it cannot disturb tests sharing the session server."""
    ok, reason = PostgresServer.available()
    if not ok:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        server.start()
    except PostgresServerError as exc:
        pytest.skip(f"could not start: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


def test_stop_refuses_connections_and_start_again_restores_same_port(private_server: PostgresServer) -> None:
    server = private_server
    port = server.port
    with _connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE survives_restart (id int); INSERT INTO survives_restart VALUES (42)")
    conn.close()

    server.stop()
    assert not server.is_running()
    with pytest.raises(psycopg2.OperationalError, match="Connection refused"):
        _connect(server)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((server.host, port), timeout=2):
        pass

    server.start_again()
    assert server.is_running()
    assert server.port == port
    with _connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM survives_restart")
        assert cur.fetchone() == (42,)
    conn.close()


def test_cleanup_removes_everything() -> None:
    ok, reason = PostgresServer.available()
    if not ok:
        pytest.skip(reason)
    with PostgresServer() as server:
        root = server.root_dir
        data_dir = server.data_dir
        assert root is not None and data_dir.is_dir()
    assert not root.exists()
    assert not server.is_running()


def test_airflow_conn_dicts_log_in(
    pg_airflow_conn: dict[str, Any],
    pg_airflow_conn_readonly: dict[str, Any],
) -> None:
    """The Airflow-style dicts carry working credentials: ``schema`` is the database, extra the dbt schema."""
    assert pg_airflow_conn["extra"] == {"schema": "dlh_dbt"}
    assert pg_airflow_conn_readonly["extra"] == {"schema": "public"}
    for conn_fields in (pg_airflow_conn, pg_airflow_conn_readonly):
        assert conn_fields["conn_type"] == "postgres"
        conn = psycopg2.connect(
            host=conn_fields["host"],
            port=conn_fields["port"],
            user=conn_fields["login"],
            password=conn_fields["password"],
            dbname=conn_fields["schema"],
            connect_timeout=5,
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_user")
                assert cur.fetchone() == (conn_fields["login"],)
        finally:
            conn.close()
