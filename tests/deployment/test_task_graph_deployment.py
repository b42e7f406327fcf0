"""A DbtTaskGroup on a real Airflow deployment (LocalExecutor scheduler, dag-processor, triggerer, api-server),
driven through the REST API: the dag-processor parses the group from the cached graph file, one dbt build runs
detached, node tasks wait in the triggerer and end as dbt ended their node."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from airflow_deployment import AirflowDeployment

from dlh_airflow_common.dbt.partial_parse import cache_root
from dlh_airflow_common.task_graph.build import ensure_graph
from dlh_airflow_common.task_graph.cli import hook_lister
from dlh_airflow_common.task_graph.graph_file import Selection
from pg_faults import dbt_processes
from repo_paths import EXAMPLE_PROJECT
from tests.deployment.conftest import DUCKDB_CONN_ID, Projects

DAG = """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.task_graph import DbtTaskGroup

    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtTaskGroup(group_id="shop", dbt_project_dir={project!r}, conn_id={conn!r}, run_dir_root={runs!r},
                     operator_args={{"check_interval": 1, "retries": 0}})
"""
NODE_TASKS = 12  # 10 models, seeds and snapshots; 2 relationships tests of independent staging models


def test_task_graph_with_a_failing_model_through_the_rest_api(
    deployment: AirflowDeployment, projects: Projects, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = Path(shutil.copytree(EXAMPLE_PROJECT, projects.root / "graph_shop",
                                   ignore=shutil.ignore_patterns("target", "logs", "dbt_packages")))  # fmt: skip
    (project / "models" / "staging" / "stg_payments.sql").write_text(
        "select * from {{ ref('raw_payments') }} where x\n"
    )
    runs = projects.root / "graph_runs"
    runs.mkdir(exist_ok=True)
    # What `dlh-dbt graph <project> --conn-id deploy_duckdb --run-dir-root <runs>` does, before the DAG is parsed.
    conn = {"conn_type": "duckdb", "host": str(projects.shop.parent / "shop.duckdb")}
    monkeypatch.setenv(f"AIRFLOW_CONN_{DUCKDB_CONN_ID.upper()}", json.dumps(conn))
    lister = hook_lister(dbt_project_dir=project, conn_id=DUCKDB_CONN_ID, run_dir_root=str(runs))
    ensure_graph(project, Selection(), lister, cache_root(runs))

    dag_id = "deploy_task_graph"
    deployment.write_dag(dag_id, DAG.format(dag_id=dag_id, project=str(project), conn=DUCKDB_CONN_ID, runs=str(runs)))
    deployment.wait_parsed(dag_id)
    run_id = deployment.trigger(dag_id)
    seen: dict[str, set[str]] = {}  # every state each task was seen in, polled through the REST API
    ended = {"success", "failed", "upstream_failed", "skipped"}
    final: dict[str, str] = {}
    run: dict[str, object] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        listed = deployment.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        for ti in listed:
            seen.setdefault(ti["task_id"], set()).add(str(ti["state"]))
        final = {ti["task_id"]: str(ti["state"]) for ti in listed}
        run = deployment.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        # The run fails once its leaves have ended; node tasks of other branches may still be finishing.
        if run["state"] in ("success", "failed") and set(final.values()) <= ended:
            break
        time.sleep(0.5)
    failures = {
        task: deployment.task_errors(dag_id, run_id, task) for task, state in final.items() if state == "failed"
    }
    assert run["state"] == "failed", final
    assert len(final) == NODE_TASKS + 1
    assert final["shop.dbt_build"] == "failed", failures
    assert final["shop.stg_payments"] == "failed", final
    assert final["shop.orders"] == "upstream_failed" and final["shop.customers"] == "upstream_failed"
    green = ["shop.raw_orders", "shop.raw_payments", "shop.raw_customers", "shop.stg_orders", "shop.stg_customers",
             "shop.customers_snapshot"]  # fmt: skip
    assert all(final[task] == "success" for task in green), (final, failures)
    waited = sorted(task for task, states in seen.items() if "deferred" in states and task != "shop.dbt_build")
    assert waited, f"node tasks wait in the triggerer: states seen {seen}"
    errors = deployment.task_errors(dag_id, run_id, "shop.stg_payments")
    assert any("DbtRuntimeException" in e and "model.shop.stg_payments" in e for e in errors), errors
    log = deployment.task_log_text(dag_id, run_id, "shop.stg_payments")
    assert "ERROR model.shop.stg_payments" in log, log[-3000:]
    # Each green model, seed and snapshot task emitted its relation's asset, named as OpenLineage names it.
    events = deployment.api("GET", "/assets/events", params={"source_dag_id": dag_id, "source_run_id": run_id})
    emitted = {event["source_task_id"]: event["name"] for event in events["asset_events"]}
    namespace = f"duckdb://{projects.shop.parent / 'shop.duckdb'}"
    assert emitted == {task: f"{namespace}/shop/main/{task.removeprefix('shop.')}" for task in green}, emitted
    assert dbt_processes(str(project)) == []
    assert not list(runs.glob("run_*")), "the build's run dir is removed after its try"
