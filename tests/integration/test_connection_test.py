"""The connection form's Test button: ``dbt debug --connection`` against real DuckDB and PostgreSQL.

Runs through ``DbtHook.test_connection`` in both invocation modes, and once the way Airflow's API server does
it (``Connection.test_connection()`` -> the registered hook class built from the connection id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.hooks.dbt import DbtHook
from modes import MODES
from pg_server import PostgresServer

pytestmark = pytest.mark.integration
WRONG_PASSWORD = "Wrong-TestBtn-Pw-3a9d"


def _pg(server: PostgresServer, **changes: Any) -> dict[str, Any]:
    conn = {"conn_type": "postgres", "host": server.host, "port": server.port, "login": server.user,
            "password": server.password, "schema": server.database, "extra": {"schema": "conn_test"}}  # fmt: skip
    return {**conn, **changes}


def _define(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn: dict[str, Any]) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


@pytest.mark.parametrize("mode", MODES)
def test_duckdb_connection_ok(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = _define(monkeypatch, "duck_ok", {"conn_type": "duckdb", "host": str(tmp_path / "ok.duckdb")})
    ok, message = DbtHook(tmp_path, conn_id=conn_id, **MODES[mode]).test_connection()
    assert ok, message
    assert message == "dbt debug --connection succeeded for connection 'duck_ok'."


@pytest.mark.parametrize("mode", MODES)
def test_postgres_connection_ok(
    mode: str, pg_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = _define(monkeypatch, "pg_ok", _pg(pg_server))
    ok, message = DbtHook(tmp_path, conn_id=conn_id, **MODES[mode]).test_connection()
    assert ok, message


@pytest.mark.parametrize("mode", MODES)
def test_postgres_wrong_password_fails_with_dbts_reason_and_no_secret(
    mode: str, pg_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = _define(monkeypatch, "pg_wrong", _pg(pg_server, password=WRONG_PASSWORD))
    ok, message = DbtHook(tmp_path, conn_id=conn_id, **MODES[mode]).test_connection()
    assert not ok
    assert message.startswith("dbt debug --connection failed:")
    assert 'password authentication failed for user "dbt_user"' in message
    assert WRONG_PASSWORD not in message and pg_server.password not in message


def test_closed_port_is_reported(pg_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn_id = _define(monkeypatch, "pg_closed", _pg(pg_server, port=port))
    ok, message = DbtHook(tmp_path, conn_id=conn_id).test_connection()
    assert not ok
    assert "Connection refused" in message


def test_incomplete_connection_names_the_missing_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = _define(monkeypatch, "pg_half", {"conn_type": "postgres", "host": "h", "password": "Half-Pw-77"})
    ok, message = DbtHook(tmp_path, conn_id=conn_id).test_connection()
    assert not ok
    assert "DbtProfileException" in message and "'pg_half' (type postgres)" in message and "user" in message
    assert "Half-Pw-77" not in message


def test_undefined_connection(tmp_path: Path) -> None:
    ok, message = DbtHook(tmp_path, conn_id="no_such_conn_here").test_connection()
    assert not ok
    assert "'no_such_conn_here' is not defined" in message


def test_without_conn_id(tmp_path: Path) -> None:
    assert DbtHook(tmp_path).test_connection() == (
        False,
        "No conn_id: the connection test renders an Airflow connection into a dbt profile.",
    )


def _airflow_test_button(monkeypatch: pytest.MonkeyPatch, conn_id: str, spec: dict[str, Any]) -> tuple[bool, str]:
    """What the API server does: export the form's values as AIRFLOW_CONN_<id>, build the type's hook, test."""
    from airflow.models.connection import Connection

    _define(monkeypatch, conn_id, spec)
    extra = spec.get("extra")
    conn = Connection(conn_id=conn_id, **{**spec, "extra": json.dumps(extra) if extra is not None else None})
    status, message = conn.test_connection()
    return bool(status), str(message)


def test_airflow_test_button_duckdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok, message = _airflow_test_button(
        monkeypatch, "ui_duck", {"conn_type": "duckdb", "host": str(tmp_path / "ui.duckdb"), "extra": {"threads": 2}}
    )
    assert (ok, message) == (True, "dbt debug --connection succeeded for connection 'ui_duck'.")


def test_airflow_test_button_generic_dbt_type(
    pg_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = {"type": "postgres", "host": pg_server.host, "port": pg_server.port, "user": pg_server.user,
              "dbname": pg_server.database, "schema": "conn_test"}  # fmt: skip
    ok, message = _airflow_test_button(
        monkeypatch, "ui_dbt", {"conn_type": "dbt", "password": pg_server.password, "extra": target}
    )
    assert ok, message
    ok, message = _airflow_test_button(
        monkeypatch, "ui_dbt_wrong", {"conn_type": "dbt", "password": WRONG_PASSWORD, "extra": target}
    )
    assert not ok
    assert "password authentication failed" in message and WRONG_PASSWORD not in message
