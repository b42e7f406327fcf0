"""DbtTaskGroup run with real dbt through ``dag.test()``: examples/shop on DuckDB in one process and per node, a
failing model (its task failed, its children upstream failed, other branches green), a failing test (its
model's task fails), each retry rule, and a failing model on a real PostgreSQL server."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dag_runner import run_dag_file
from dlh_airflow_common.task_graph.build import ensure_graph, find_graph
from dlh_airflow_common.task_graph.cli import hook_lister
from dlh_airflow_common.task_graph.graph_file import Selection
from dlh_airflow_common.task_graph.operators import GRAPH_RESULTS_XCOM, NODE_XCOM
from pg_faults import dbt_processes
from pg_server import PostgresServer

pytestmark = pytest.mark.integration

CONN = "graph_duckdb"
DAG = textwrap.dedent(
    """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.task_graph import DbtTaskGroup

    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtTaskGroup(group_id="shop", dbt_project_dir={project!r}, conn_id={conn!r}, execution_mode={mode!r},
                     operator_args={{"check_interval": 0.5, "deferrable": {deferrable!r}, "retries": {retries},
                                    "retry_delay": 1}}, {extra})
    """
)


@pytest.fixture
def shop(example_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    database = tmp_path / "graph.duckdb"
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps({"conn_type": "duckdb", "host": str(database)}))
    return example_project


def _graph(project: Path, **selection: tuple[str, ...]) -> None:
    """What ``dlh-dbt graph <project> --conn-id ...`` does, before the DAG is parsed."""
    lister = hook_lister(dbt_project_dir=project, conn_id=CONN)
    ensure_graph(project, Selection(**selection), lister, project / "target" / ".dlh_cache")


def _run(tmp_path: Path, airflow_db: Path, dag_id: str, project: Path, *, mode: str = "one_process",
         deferrable: bool = True, retries: int = 0, extra: str = "") -> object:  # fmt: skip
    path = tmp_path / f"{dag_id}.py"
    path.write_text(DAG.format(dag_id=dag_id, project=str(project), conn=CONN, mode=mode, deferrable=deferrable,
                               retries=retries, extra=extra))  # fmt: skip
    return run_dag_file(path, airflow_db / "dags", dag_id)


def test_shop_in_one_process(shop: Path, airflow_db: Path, tmp_path: Path) -> None:
    _graph(shop)
    run = _run(tmp_path, airflow_db, "graph_one", shop)
    states = run.task_states  # type: ignore[attr-defined]
    assert run.state == "success", states  # type: ignore[attr-defined]
    assert states["shop.dbt_build"] == "success"
    node_tasks = {task: state for task, state in states.items() if task != "shop.dbt_build"}
    # 10 models, seeds and snapshots; 2 relationships tests between independent staging models get tasks of their own
    assert len(node_tasks) == 12 and set(node_tasks.values()) == {"success"}, node_tasks
    assert len([task for task in node_tasks if task.startswith("shop.test_relationships_")]) == 2
    final = run.xcom("shop.dbt_build", GRAPH_RESULTS_XCOM)  # type: ignore[attr-defined]
    assert len(final["results"]) == 36 and final["success"] is True
    orders = run.xcom("shop.orders", NODE_XCOM)  # type: ignore[attr-defined]
    assert orders["verdict"] == "success" and orders["node_id"] == "model.shop.orders"
    assert {uid for uid, _ in orders["results"]} >= {"model.shop.orders"} and len(orders["results"]) > 1
    assert dbt_processes(str(shop)) == []
    assert not list((shop / "target").glob("run_*")), "the build's run dir is removed"


def test_a_successful_build_refreshes_a_stale_graph(shop: Path, airflow_db: Path, tmp_path: Path) -> None:
    _graph(shop)
    (shop / "models" / "marts" / "order_count.sql").write_text("select count(*) as n from {{ ref('orders') }}\n")
    cache = shop / "target" / ".dlh_cache"
    assert find_graph(shop, Selection(), cache) is None, "a new model makes the graph file stale"
    run = _run(tmp_path, airflow_db, "graph_refresh", shop, extra="allow_stale_graph=True")
    states = run.task_states  # type: ignore[attr-defined]
    assert run.state == "success", states  # type: ignore[attr-defined]
    assert "shop.order_count" not in states, "the DAG was parsed from the last graph file"
    refreshed = find_graph(shop, Selection(), cache)
    assert refreshed is not None and "model.shop.order_count" in refreshed.by_id()
    assert len(list((cache / "task_graph").glob("*/*.json"))) == 1, "the stale file is pruned"


def test_shop_per_node(shop: Path, airflow_db: Path, tmp_path: Path) -> None:
    _graph(shop)
    run = _run(tmp_path, airflow_db, "graph_nodes", shop, mode="per_node", deferrable=False)
    states = run.task_states  # type: ignore[attr-defined]
    assert run.state == "success", states  # type: ignore[attr-defined]
    assert "shop.dbt_build" not in states and len(states) == 12
    summary = run.xcom("shop.orders", "dbt_summary")  # type: ignore[attr-defined]
    # the model and the tests placed with it, nothing else
    assert summary["status_counts"].get("success") == 1 and summary["node_count"] > 1


def test_failing_model_fails_its_task_and_its_children(shop: Path, airflow_db: Path, tmp_path: Path) -> None:
    broken = "select * from {{ ref('raw_payments') }} where nope\n"
    (shop / "models" / "staging" / "stg_payments.sql").write_text(broken)
    _graph(shop)
    run = _run(tmp_path, airflow_db, "graph_fail", shop)
    states = run.task_states  # type: ignore[attr-defined]
    assert run.state == "failed"  # type: ignore[attr-defined]
    assert states["shop.stg_payments"] == "failed"
    assert states["shop.orders"] == "upstream_failed" and states["shop.customers"] == "upstream_failed"
    assert states["shop.stg_customers"] == "success" and states["shop.stg_orders"] == "success"
    assert states["shop.dbt_build"] == "failed"
    final = run.xcom("shop.dbt_build", GRAPH_RESULTS_XCOM)  # type: ignore[attr-defined]
    assert final["results"]["model.shop.stg_payments"]["status"] == "error"
    assert "nope" in final["results"]["model.shop.stg_payments"]["message"]
    assert "nope" in final["compiled_sql"]["model.shop.stg_payments"]


FLAKY = """\
{{ config(materialized='table', pre_hook=[before_begin("create table if not exists main.flaky_attempts (n integer)"),
                                          before_begin("insert into main.flaky_attempts values (1)")]) }}
-- fails the first time it is built, succeeds from the second time on (the attempts count outside its transaction)
select case when (select count(*) from main.flaky_attempts) < 2 then error('flaky: first attempt fails') else 1 end
    as attempt_ok, order_id
from {{ ref('stg_orders') }}
"""


def _add_flaky(project: Path) -> None:
    (project / "models" / "marts" / "flaky.sql").write_text(FLAKY)
    (project / "models" / "marts" / "flaky_child.sql").write_text("select * from {{ ref('flaky') }}\n")


def test_a_retried_build_resumes_with_dbt_retry_and_waiting_node_tasks_follow_it(
    shop: Path, airflow_db: Path, tmp_path: Path
) -> None:
    _add_flaky(shop)
    _graph(shop)
    run = _run(tmp_path, airflow_db, "graph_build_retry", shop, retries=1)
    states = run.task_states  # type: ignore[attr-defined]
    assert run.state == "success", states  # type: ignore[attr-defined]
    assert states["shop.flaky"] == "success" and states["shop.flaky_child"] == "success"
    final = run.xcom("shop.dbt_build", GRAPH_RESULTS_XCOM)  # type: ignore[attr-defined]
    assert final["try_number"] == 2 and final["success"] is True
    # dbt retry ran only what failed or was skipped; what try 1 built was carried over, not run again
    assert final["results"]["model.shop.flaky"]["status"] == "success"
    assert final["results"]["model.shop.orders"]["status"] == "success"
    summary = run.xcom("shop.dbt_build", "dbt_summary")  # type: ignore[attr-defined]
    assert summary["command"] == "retry" and summary["node_count"] < 10, summary


def test_a_node_task_retried_after_the_build_ended_runs_its_node_on_its_own(
    shop: Path, airflow_db: Path, tmp_path: Path
) -> None:
    _add_flaky(shop)
    _graph(shop)
    run = _run(tmp_path, airflow_db, "graph_node_retry", shop, retries=1, extra='build_args={"retries": 0}')
    states = run.task_states  # type: ignore[attr-defined]
    assert states["shop.dbt_build"] == "failed", states
    assert states["shop.flaky"] == "success", "its second try ran dbt build of the node itself"
    flaky = run.xcom("shop.flaky", "dbt_summary")  # type: ignore[attr-defined]
    assert flaky["success"] is True and flaky["status_counts"] == {"success": 1}
    # dbt skipped the child in the build; nobody retried it: it ends as dbt ended it
    assert states["shop.flaky_child"] == "skipped"


def test_a_failing_test_fails_its_models_task(shop: Path, airflow_db: Path, tmp_path: Path) -> None:
    (shop / "tests").mkdir(exist_ok=True)
    (shop / "tests" / "orders_are_empty.sql").write_text("select * from {{ ref('orders') }}\n")
    _graph(shop)
    run = _run(tmp_path, airflow_db, "graph_test_fail", shop)
    states = run.task_states  # type: ignore[attr-defined]
    assert states["shop.orders"] == "failed", "never green while one of its tests failed"
    assert states["shop.customers"] == "upstream_failed" and states["shop.stg_orders"] == "success"
    node = run.xcom("shop.orders", NODE_XCOM)  # type: ignore[attr-defined]
    assert node["verdict"] == "failed"
    assert ["test.shop.orders_are_empty", "fail"] in node["results"] and ["model.shop.orders", "success"] in node[
        "results"
    ]


def test_failing_model_on_postgres(
    example_project: Path, pg_server: PostgresServer, pg_conn_json: Any, airflow_db: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    schema = "task_graph_pg"
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps(pg_conn_json(dbt_schema=schema)))
    (example_project / "models" / "marts" / "customers.sql").write_text("select 1 / 0 as boom\n")  # division by zero
    _graph(example_project)
    run = _run(tmp_path, airflow_db, "graph_pg", example_project)
    states = run.task_states  # type: ignore[attr-defined]
    assert states["shop.customers"] == "failed" and states["shop.dbt_build"] == "failed"
    assert states["shop.orders"] == "success" and states["shop.daily_revenue"] == "success"
    final = run.xcom("shop.dbt_build", GRAPH_RESULTS_XCOM)  # type: ignore[attr-defined]
    assert "division by zero" in final["results"]["model.shop.customers"]["message"]
    built = pg_server.psql(
        f"select count(*) from information_schema.tables where table_schema = '{schema}' and table_name = 'orders'",
        dbname=pg_server.database,
    )
    assert built.strip() == "1"
    assert dbt_processes(str(example_project)) == []
