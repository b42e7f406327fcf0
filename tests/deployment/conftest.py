"""Real Airflow deployments for this tier (airflow_deployment.py, celery_deployment.py); its tests are `deployment`.

Two kinds, each started once for the package and never both at once (on 2 cores two idle deployments slow
each other; tests of one kind come module by module): ``deployment`` (LocalExecutor, every service on this
machine) and ``celery_deployment`` (CeleryExecutor; two Celery workers and the triggerer as separate hosts,
with a Redis broker and a moto S3 server). The services get their connections at start-up, so the projects
and databases the tests use are made here: the example ``shop`` project on DuckDB (``AIRFLOW_CONN_DEPLOY_DUCKDB``),
the PostgreSQL fault project (``AIRFLOW_CONN_FAULT_PG``) on the same server as the metadata DB, and (Celery)
``AIRFLOW_CONN_AWS_CHANNEL`` for the S3 server.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):  # airflow_deployment, pg_server, pg_faults are plain modules
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from airflow_deployment import AirflowDeployment  # noqa: E402
from backing_services import MotoS3, RedisServer  # noqa: E402
from celery_deployment import CeleryDeployment  # noqa: E402
from hosts import namespaces_available  # noqa: E402

from pg_faults import fault_conn, make_fault_project  # noqa: E402
from pg_server import PostgresServer, started_server  # noqa: E402
from repo_paths import EXAMPLE_PROJECT, REPO_ROOT  # noqa: E402

DUCKDB_CONN_ID = "deploy_duckdb"
PG_CONN_ID = "fault_pg"


def _unavailable(message: str) -> NoReturn:
    """Fail in CI (a missing server must not pass silently), skip elsewhere; as tests/integration does."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _server_unavailable(reason: str) -> NoReturn:
    _unavailable(f"PostgreSQL server for the Airflow deployment unavailable: {reason}")


def _require(check: Callable[[], tuple[bool, str]], what: str) -> None:
    ok, reason = check()
    if not ok:
        _unavailable(f"{what} for the CeleryExecutor deployment unavailable: {reason}")


@dataclass(frozen=True)
class Projects:
    """The dbt projects and run-dir roots the deployment's connections point at."""

    root: Path
    shop: Path
    shop_runs: Path
    faults: Path
    faults_runs: Path
    artifacts: Path  # the UI plugin's [dlh_dbt] artifacts_roots: uploads under it are served in the UI
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
    found = Projects(root, shop, root / "shop_runs", faults, root / "faults_runs", root / "artifacts")
    for runs in (found.shop_runs, found.faults_runs, found.artifacts):
        runs.mkdir()
    return found


class OneAtATime:
    """The tier's deployments by kind, each started on first use; starting one stops the one that runs."""

    def __init__(self) -> None:
        self.running: dict[str, AirflowDeployment] = {}
        self.failed: dict[str, str] = {}  # a kind that did not start is not tried again for every test

    def get(self, kind: str, start: Callable[[], AirflowDeployment]) -> AirflowDeployment:
        if kind in self.failed:
            pytest.fail(f"the {kind} deployment did not start (see the first test that used it):\n{self.failed[kind]}")
        if kind not in self.running:
            self.stop()
            try:
                self.running[kind] = start()
            except Exception as err:
                self.failed[kind] = f"{type(err).__name__}: {str(err)[-3000:]}"
                raise
        return self.running[kind]

    def stop(self) -> None:
        while self.running:
            kind, running = self.running.popitem()
            running.stop()
            print(f"\n{kind} deployment timings: {running.timings}")


@pytest.fixture(scope="package")
def deployments() -> Iterator[OneAtATime]:
    manager = OneAtATime()
    try:
        yield manager
    finally:
        manager.stop()


def _connections(deploy_pg: PostgresServer, projects: Projects) -> dict[str, str]:
    """The services' connections, and the artifact root the UI plugin reads."""
    return {
        f"AIRFLOW_CONN_{DUCKDB_CONN_ID.upper()}": json.dumps(
            {"conn_type": "duckdb", "host": str(projects.shop.parent / "shop.duckdb")}
        ),
        f"AIRFLOW_CONN_{PG_CONN_ID.upper()}": fault_conn(deploy_pg),
        "AIRFLOW__DLH_DBT__ARTIFACTS_ROOTS": projects.artifacts.as_uri(),
    }


def plugin_entry_points(root: Path) -> list[Path]:
    """A metadata-only distribution with pyproject.toml's ``airflow.plugins`` entry points, for the services.

    Only when the installed (editable) metadata predates them: ``make install`` reinstalls after pyproject.toml
    changes, a checkout tested with an older install would otherwise start the api-server without the plugin.
    """
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["airflow.plugins"]
    installed = {ep.name for ep in importlib.metadata.entry_points(group="airflow.plugins")}
    if set(declared) <= installed:
        return []
    info = root / "plugin-metadata" / "dlh_airflow_common_plugins_under_test-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dlh-airflow-common-plugins-under-test\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text("[airflow.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    return [info.parent]


def local_deployment(deployments: OneAtATime, deploy_pg: PostgresServer, projects: Projects) -> AirflowDeployment:
    """The LocalExecutor deployment, started on first use (for module-scoped fixtures too)."""
    env = _connections(deploy_pg, projects)
    pythonpath = [REPO_ROOT / "src", *plugin_entry_points(projects.root)]
    return deployments.get("local", lambda: AirflowDeployment(deploy_pg, env=env, pythonpath=pythonpath).start())


@pytest.fixture
def deployment(deployments: OneAtATime, deploy_pg: PostgresServer, projects: Projects) -> AirflowDeployment:
    """api-server, scheduler (LocalExecutor), dag-processor and triggerer, all on this machine."""
    return local_deployment(deployments, deploy_pg, projects)


@pytest.fixture(scope="package")
def redis_server() -> Iterator[RedisServer]:
    _require(RedisServer.available, "Redis")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="package")
def s3_server() -> Iterator[MotoS3]:
    _require(MotoS3.available, "moto S3")
    with MotoS3() as server:
        yield server


@pytest.fixture
def celery_deployment(
    deployments: OneAtATime, deploy_pg: PostgresServer, projects: Projects, redis_server: RedisServer,
    s3_server: MotoS3,
) -> CeleryDeployment:  # fmt: skip
    """CeleryExecutor: api-server, scheduler, dag-processor here; worker-a, worker-b, triggerer-host as hosts."""
    _require(namespaces_available, "Linux namespaces (unshare as root)")
    env = _connections(deploy_pg, projects)
    # The remote run channel at test pace: a 2 s heartbeat, lost after 20 s without one (defaults: 5 s, 60 s).
    env |= {
        "AIRFLOW__DLH_DBT__RUN_CHANNEL_HEARTBEAT_INTERVAL": "2",
        "AIRFLOW__DLH_DBT__RUN_CHANNEL_HEARTBEAT_TIMEOUT": "20",
    }

    def start() -> CeleryDeployment:
        pythonpath = [REPO_ROOT / "src", *plugin_entry_points(projects.root)]
        return CeleryDeployment(deploy_pg, redis_server, s3=s3_server, env=env, pythonpath=pythonpath).start()

    running = deployments.get("celery", start)
    assert isinstance(running, CeleryDeployment)
    return running
