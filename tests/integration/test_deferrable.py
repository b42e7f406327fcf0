"""Deferrable mode end to end: detached dbt, DbtExecutionTrigger, execute_complete; DuckDB and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from dag_runner import run_dag_file
from dlh_airflow_common.dbt.channel import ChannelReader, RunStatus
from dlh_airflow_common.operators.dbt import XCOM_SUMMARY_KEY, DbtOperator
from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger
from pg_faults import AUDIT, builds, dbt_processes, fault_conn, sleeping_queries, sql, wait_for
from pg_server import PostgresServer

pytestmark = pytest.mark.integration

DAG = textwrap.dedent(
    """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtOperator(task_id="dbt", dbt_project_dir={project!r}, dbt_command={command!r}, conn_id={conn!r},
                    deferrable=True, check_interval=0.5, {extra})
    """
)


def _dag(tmp_path: Path, dag_id: str, project: Path, command: str, conn: str, extra: str = "") -> Path:
    path = tmp_path / f"{dag_id}.py"
    path.write_text(DAG.format(dag_id=dag_id, project=str(project), command=command, conn=conn, extra=extra))
    return path


@pytest.fixture
def duckdb_env(example_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    database = tmp_path / "deferred.duckdb"
    monkeypatch.setenv("AIRFLOW_CONN_DEFER_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(database)}))
    return database


def test_deferred_build_on_duckdb_matches_sync_summary(
    duckdb_env: Path, example_project: Path, airflow_db: Path, tmp_path: Path
) -> None:
    run = run_dag_file(_dag(tmp_path, "defer_duck", example_project, "build", "defer_duckdb"),
                       airflow_db / "dags", "defer_duck")  # fmt: skip
    assert run.state == "success", run.task_states
    summary = run.xcom("dbt")
    assert summary == run.xcom("dbt", XCOM_SUMMARY_KEY)
    assert summary["success"] is True and summary["command"] == "build"
    assert summary["node_count"] == 36 and summary["failed_nodes"] == []
    assert summary["status_counts"] == {"pass": 26, "success": 10}
    assert "_defer_duck_dbt_try1_" in summary["run_dir"]
    assert not list((example_project / "target").glob("run_*")), "run dir removed after execute_complete"
    assert dbt_processes(str(example_project)) == []


def test_deferred_failing_model_raises_typed_error(
    duckdb_env: Path, example_project: Path, airflow_db: Path, tmp_path: Path
) -> None:
    (example_project / "models" / "marts" / "broken.sql").write_text("select * from {{ ref('orders') }} where nope\n")
    run = run_dag_file(_dag(tmp_path, "defer_fail", example_project, "build", "defer_duckdb"),
                       airflow_db / "dags", "defer_fail")  # fmt: skip
    assert run.state == "failed"
    summary = run.xcom("dbt", XCOM_SUMMARY_KEY)
    assert summary["error"]["type"] == "DbtRuntimeException"
    assert summary["error"]["node_id"] == "model.shop.broken"
    assert [n["unique_id"] for n in summary["failed_nodes"]] == ["model.shop.broken"]


def test_deferred_run_on_postgres(
    fault_project: Path, pg_server: PostgresServer, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DEFER_PG", fault_conn(pg_server))
    run = run_dag_file(_dag(tmp_path, "defer_pg", fault_project, "run", "defer_pg"), airflow_db / "dags", "defer_pg")
    assert run.state == "success", run.task_states
    assert run.xcom("dbt")["status_counts"] == {"success": 3}
    assert builds(pg_server) == {"a": 1, "b": 1, "c": 1}


TIMEOUT_S = 40


def test_deferred_timeout_stops_dbt_and_its_query(
    fault_project: Path, pg_server: PostgresServer, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DEFER_PG", fault_conn(pg_server))
    sql(pg_server, f"update {AUDIT}.control set seconds = 600")
    # Long enough for a slow machine to parse and build a and b; c sleeps far longer.
    dag = _dag(tmp_path, "defer_timeout", fault_project, "run", "defer_pg", f"execution_timeout={TIMEOUT_S}")
    started = time.monotonic()
    run = run_dag_file(dag, airflow_db / "dags", "defer_timeout")
    assert run.state == "failed"
    summary = run.xcom("dbt", XCOM_SUMMARY_KEY)
    assert summary["error"]["type"] == "DbtExecutionTimeoutException"
    assert "2 of 3 nodes had succeeded" in summary["error"]["message"]
    assert sleeping_queries(pg_server) == 0
    assert dbt_processes(str(fault_project)) == []
    print(f"\ndeferred timeout: {TIMEOUT_S}s limit, task failed after {time.monotonic() - started:.2f}s")


def _context(dag_id: str, task_id: str) -> dict[str, Any]:
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(dag_id=dag_id, task_id=task_id, try_number=1, map_index=-1, pushed=pushed,
                         xcom_push=lambda key, value: pushed.__setitem__(key, value))  # fmt: skip
    return {"ti": ti, "run_id": "manual__test"}


def test_killing_a_deferred_task_stops_dbt_and_its_query(
    fault_project: Path, pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Airflow 3.3 does when a user marks a deferred task failed: the trigger's on_kill."""
    monkeypatch.setenv("AIRFLOW_CONN_DEFER_PG", fault_conn(pg_server))
    sql(pg_server, f"update {AUDIT}.control set seconds = 600")
    operator = DbtOperator(task_id="dbt", dbt_project_dir=str(fault_project), dbt_command="run", conn_id="defer_pg",
                           deferrable=True, check_interval=0.5, kill_grace_period=20)  # fmt: skip
    context = _context("kill_test", "dbt")
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, DbtExecutionTrigger)
    _classpath, kwargs = trigger.serialize()
    json.dumps(kwargs)  # plain JSON only
    wait_for(lambda: sleeping_queries(pg_server) > 0, 120, "model c to start sleeping")
    assert dbt_processes(str(fault_project)), "dbt is running detached"
    started = time.monotonic()
    asyncio.run(trigger.on_kill())
    stopped = time.monotonic() - started
    assert sleeping_queries(pg_server) == 0, "the query was cancelled"
    assert dbt_processes(str(fault_project)) == [], "no dbt process or zombie is left"
    assert not Path(kwargs["run_dir"]).exists(), "execute_complete never runs after a kill: on_kill removed it"
    assert builds(pg_server) == {"a": 1, "b": 1}
    print(f"\ndeferred kill: dbt and its query gone {stopped:.2f}s after on_kill")


async def _first_event(trigger: DbtExecutionTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def test_fast_run_completes_without_deferring(
    duckdb_env: Path, example_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If dbt is done before the task would defer, it completes in execute."""
    import dlh_airflow_common.operators.dbt as operator_module

    class FinishedReader(ChannelReader):
        """Reads the status only once the detached run has finished, as a very fast run would be."""

        def status(self) -> RunStatus | None:
            wait_for(lambda: (super(FinishedReader, self).status() or RunStatus()).finished, 120, "the run to finish")
            return super().status()

    monkeypatch.setattr(operator_module, "ChannelReader", FinishedReader)
    operator = DbtOperator(task_id="dbt", dbt_project_dir=str(example_project), dbt_command="parse",
                           conn_id="defer_duckdb", deferrable=True)  # fmt: skip
    context = _context("fast_test", "dbt")
    summary = operator.execute(context)
    assert summary["success"] is True and summary["command"] == "parse"
    assert context["ti"].pushed[XCOM_SUMMARY_KEY] == summary
