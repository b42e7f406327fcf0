"""One real Airflow deployment per test session (see airflow_deployment.py); its tests are marked `deployment`.

The services get their connections at start-up, so the projects and databases the tests use are made here:
the example ``shop`` project on DuckDB (``AIRFLOW_CONN_DEPLOY_DUCKDB``) and the PostgreSQL fault project
(``AIRFLOW_CONN_FAULT_PG``) on the same server as the metadata DB.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):  # airflow_deployment, pg_server, pg_faults are plain modules
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from airflow_deployment import AirflowDeployment  # noqa: E402

from pg_faults import fault_conn, make_fault_project  # noqa: E402
from pg_server import PostgresServer, started_server  # noqa: E402
from repo_paths import EXAMPLE_PROJECT, REPO_ROOT  # noqa: E402

DUCKDB_CONN_ID = "deploy_duckdb"
PG_CONN_ID = "fault_pg"


def _server_unavailable(reason: str) -> NoReturn:
    """Fail in CI (a missing server must not pass silently), skip elsewhere; as tests/integration does."""
    message = f"PostgreSQL server for the Airflow deployment unavailable: {reason}"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class Projects:
    """The dbt projects and run-dir roots the deployment's connections point at."""

    root: Path
    shop: Path
    shop_runs: Path
    faults: Path
    faults_runs: Path
    duckdb_conn: str = DUCKDB_CONN_ID
    pg_conn: str = PG_CONN_ID


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.deployment)


# Package scope: the services stop once this tier is done (left idle, they slow every later test).
@pytest.fixture(scope="package")
def deploy_pg() -> Iterator[PostgresServer]:
    with started_server(_server_unavailable) as server:
        yield server


@pytest.fixture(scope="package")
def projects(tmp_path_factory: pytest.TempPathFactory, deploy_pg: PostgresServer) -> Projects:
    root = tmp_path_factory.mktemp("deployment")
    shop = root / "shop"
    shutil.copytree(EXAMPLE_PROJECT, shop, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    faults = make_fault_project(root, deploy_pg)
    found = Projects(root, shop, root / "shop_runs", faults, root / "faults_runs")
    for runs in (found.shop_runs, found.faults_runs):
        runs.mkdir()
    return found


@pytest.fixture(scope="package")
def deployment(deploy_pg: PostgresServer, projects: Projects) -> Iterator[AirflowDeployment]:
    env = {
        f"AIRFLOW_CONN_{DUCKDB_CONN_ID.upper()}": json.dumps(
            {"conn_type": "duckdb", "host": str(projects.shop.parent / "shop.duckdb")}
        ),
        f"AIRFLOW_CONN_{PG_CONN_ID.upper()}": fault_conn(deploy_pg),
    }
    with AirflowDeployment(deploy_pg, env=env, pythonpath=[REPO_ROOT / "src"]) as running:
        yield running
