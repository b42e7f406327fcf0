"""Deferred DbtOperator runs on a real Airflow deployment, driven through the REST API only.

The scheduler (LocalExecutor) runs ``execute`` in a worker, the triggerer watches dbt, a worker resumes in
``execute_complete``; a run marked failed while deferred is stopped by the trigger's ``on_kill``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from airflow_deployment import AirflowDeployment, wait_until

from pg_faults import AUDIT, dbt_processes, sleeping_queries, sql
from pg_server import PostgresServer
from tests.deployment.conftest import Projects

DAG = """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtOperator(task_id="dbt", dbt_project_dir={project!r}, dbt_command={command!r}, conn_id={conn!r},
                    run_dir_root={runs!r}, deferrable=True, check_interval=0.5, retries=0)
"""
STOP_LIMIT = 60  # seconds for on_kill to stop dbt (SIGINT, grace period, SIGKILL) after "mark failed"


def _eventually(condition: Callable[[], bool], limit: float) -> None:
    """Wait up to ``limit`` seconds for ``condition``; the caller asserts it afterwards."""
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def _deploy_dag(deployment: AirflowDeployment, dag_id: str, project: Path, runs: Path, command: str, conn: str) -> None:
    source = DAG.format(dag_id=dag_id, project=str(project), runs=str(runs), command=command, conn=conn)
    deployment.write_dag(dag_id, source)
    deployment.wait_parsed(dag_id)


def test_deferred_build_on_duckdb_succeeds_through_the_rest_api(
    deployment: AirflowDeployment, projects: Projects
) -> None:
    _deploy_dag(deployment, "deploy_shop_build", projects.shop, projects.shop_runs, "build", projects.duckdb_conn)
    run_id = deployment.trigger("deploy_shop_build")
    deployment.wait_task_state("deploy_shop_build", run_id, "dbt", ["deferred"], limit=300)
    ti = deployment.wait_task_state("deploy_shop_build", run_id, "dbt", ["success"], limit=300)
    run = deployment.wait_run_state("deploy_shop_build", run_id, ["success", "failed"])
    assert run["state"] == "success"
    assert ti["try_number"] == 1
    summary = deployment.xcom("deploy_shop_build", run_id, "dbt", "dbt_summary")
    assert summary["success"] is True and summary["command"] == "build"
    assert summary["node_count"] == 36 and summary["failed_nodes"] == []
    assert summary["status_counts"] == {"pass": 26, "success": 10}
    log = deployment.task_log_text("deploy_shop_build", run_id, "dbt")
    assert "model.shop.orders" in log, log[-3000:]
    assert not list(projects.shop_runs.glob("run_*")), "the run dir is removed after execute_complete"
    assert dbt_processes(str(projects.root)) == []


def test_deferred_run_marked_failed_stops_dbt_and_its_query(
    deployment: AirflowDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    sql(deploy_pg, f"update {AUDIT}.control set seconds = 600")
    try:
        _deploy_dag(deployment, "deploy_pg_kill", projects.faults, projects.faults_runs, "run", projects.pg_conn)
        run_id = deployment.trigger("deploy_pg_kill")
        deployment.wait_task_state("deploy_pg_kill", run_id, "dbt", ["deferred"], limit=300)
        wait_until(lambda: sleeping_queries(deploy_pg) > 0, 180, "model c to start sleeping")
        assert dbt_processes(str(projects.root)), "dbt runs detached while the task is deferred"

        deployment.mark_failed("deploy_pg_kill", run_id, "dbt")

        wait_until(lambda: sleeping_queries(deploy_pg) == 0, STOP_LIMIT, "the pg_sleep query to be cancelled")
        wait_until(lambda: not dbt_processes(str(projects.root)), STOP_LIMIT, "no dbt process to remain")
        assert deployment.task_instance("deploy_pg_kill", run_id, "dbt")["state"] == "failed"
        assert deployment.leftover_processes() == [], "nothing outside the services is left running"
        _eventually(lambda: not list(projects.faults_runs.glob("run_*")), STOP_LIMIT)
        left = list(projects.faults_runs.glob("run_*"))
        assert not left, (
            f"the trigger's on_kill removes the run dir; left {[sorted(map(str, d.rglob('*'))) for d in left]}; "
            "triggerer log:\n"
            f"{deployment.services['triggerer'].log_tail(80)}\ntask log:\n"
            f"{deployment.task_log_text('deploy_pg_kill', run_id, 'dbt')[-6000:]}"
        )
    finally:
        sql(deploy_pg, f"update {AUDIT}.control set seconds = 0")


@pytest.fixture(autouse=True)
def _services_still_up(deployment: AirflowDeployment) -> None:
    """A test that crashed a service must not leave the next test a broken deployment without saying so."""
    deployment.check_alive()
