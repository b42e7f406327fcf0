"""Fixtures for integration tests that run real dbt against real databases.

Sections are self-contained so several people can add fixtures here; keep new ones in their own section.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn

import pytest

# tests/pg_server.py is a plain module (tests/ is not a package): make it importable.
_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from pg_server import PostgresServer, started_server  # noqa: E402
from s3_server import MotoS3  # noqa: E402


@pytest.fixture(autouse=True)
def _no_resume_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """dag.test() has no scheduler to race (triggers.dbt.RESUME_SECONDS): deferred tasks need not wait 5 s."""
    monkeypatch.setenv("AIRFLOW__DLH_DBT__RESUME_DELAY", "0.1")


# =====================================================================================================
# PostgreSQL: one real throwaway server per test session (see tests/pg_server.py)
# Tests using `pg_server` (directly or through `pg_airflow_conn*`) are auto-marked `postgres`.
# =====================================================================================================
PG_DBT_SCHEMA = "dlh_dbt"
PgRole = Literal["owner", "readonly"]


def _running_in_ci() -> bool:
    """CI must not silently skip the Postgres tests: a missing server there is a failure."""
    return os.environ.get("CI", "").strip().lower() == "true"


def _pg_unavailable(reason: str) -> NoReturn:
    """Fail in CI, skip elsewhere."""
    message = f"PostgreSQL test server unavailable: {reason}"
    if _running_in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pg_conn_dict(
    server: PostgresServer,
    role: PgRole = "owner",
    dbt_schema: str = PG_DBT_SCHEMA,
) -> dict[str, Any]:
    """Airflow connection fields: ``schema`` is the database, ``extra.schema`` the dbt schema."""
    if role == "owner":
        login, password = server.user, server.password
    elif role == "readonly":
        login, password = server.readonly_user, server.readonly_password
    else:
        raise ValueError(f"unknown role {role!r}; expected 'owner' or 'readonly'")
    return {
        "conn_type": "postgres",
        "host": server.host,
        "port": server.port,
        "login": login,
        "password": password,
        "schema": server.database,
        "extra": {"schema": dbt_schema},
    }


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A started PostgresServer shared by the session; skipped (or failed when CI=true) if unavailable.

    Tests that stop the server must call ``start_again()`` before they finish.
    """
    with started_server(_pg_unavailable) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """moto's S3 on 127.0.0.1, one bucket: the remote run channel of deferred runs."""
    with MotoS3(bucket="dlh-integration-channel") as server:
        yield server


@pytest.fixture
def pg_airflow_conn(pg_server: PostgresServer) -> dict[str, Any]:
    """Airflow connection dict for the owner role (``dbt_user``) on ``dlh_test``."""
    if not pg_server.is_running():
        pg_server.start_again()
    return pg_conn_dict(pg_server, "owner")


@pytest.fixture
def pg_airflow_conn_readonly(pg_server: PostgresServer) -> dict[str, Any]:
    """Airflow connection dict for ``dbt_readonly`` (dbt schema ``public``, where it may not create)."""
    if not pg_server.is_running():
        pg_server.start_again()
    return pg_conn_dict(pg_server, "readonly", dbt_schema="public")


@pytest.fixture
def pg_conn_json(pg_server: PostgresServer) -> Callable[..., dict[str, Any]]:
    """Factory: ``pg_conn_json(role="owner"|"readonly", dbt_schema=...)`` -> Airflow connection dict."""

    def make(role: PgRole = "owner", dbt_schema: str = PG_DBT_SCHEMA) -> dict[str, Any]:
        return pg_conn_dict(pg_server, role, dbt_schema)

    return make


_PG_FIXTURES = frozenset({"pg_server", "pg_airflow_conn", "pg_airflow_conn_readonly", "pg_conn_json", "fault_project"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the Postgres server `postgres` (and `integration`) for -m selection."""
    for item in items:
        if _PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
            item.add_marker(pytest.mark.integration)


# =====================================================================================================
# The PostgreSQL fault lab (see tests/pg_faults.py)
# =====================================================================================================
@pytest.fixture
def fault_project(tmp_path: Path, pg_server: PostgresServer) -> Iterator[Path]:
    """The ``faults`` project on the session's server; the server is running again afterwards."""
    from pg_faults import make_fault_project

    if not pg_server.is_running():
        pg_server.start_again()
    yield make_fault_project(tmp_path, pg_server)
    if not pg_server.is_running():
        pg_server.start_again()
