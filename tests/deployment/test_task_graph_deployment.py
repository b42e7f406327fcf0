"""A DbtTaskGroup on a real Airflow deployment (LocalExecutor scheduler, dag-processor, triggerer, api-server),
driven through the REST API: the dag-processor parses the group from the cached graph file, one dbt build runs
detached, node tasks wait in the triggerer and end as dbt ended their node."""

from __future__ import annotations

import json
import shutil
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
                     operator_args={{"check_interval": 1, "retries": {retries}, "retry_delay": 1}}{extra})
"""
NODE_TASKS = 12  # 10 models, seeds and snapshots; 2 relationships tests of independent staging models
# Fails the first time it is built, succeeds from then on: its pre-hook counts attempts in a table of its own,
# outside the model's transaction.
FLAKY = """\
{{{{ config(materialized='table', pre_hook=[before_begin("create table if not exists main.{table} (n integer)"),
                                            before_begin("insert into main.{table} values (1)")]) }}}}
select case when (select count(*) from main.{table}) < 2 then error('flaky: first attempt fails') else 1 end
    as attempt_ok, order_id
from {{{{ ref('stg_orders') }}}}
"""


def _deploy(deployment: AirflowDeployment, projects: Projects, monkeypatch: pytest.MonkeyPatch, dag_id: str, *,
            change: dict[str, str], retries: int = 0, extra: str = "") -> tuple[Path, Path, str]:  # fmt: skip
    """A copy of examples/shop with ``change`` (relative path: content), its graph file built, the DAG parsed by
    the dag-processor and triggered: the project, its run-dir root and the run id."""
    project = Path(shutil.copytree(EXAMPLE_PROJECT, projects.root / dag_id,
                                   ignore=shutil.ignore_patterns("target", "logs", "dbt_packages")))  # fmt: skip
    for relative, content in change.items():
        (project / relative).write_text(content)
    runs = projects.root / f"{dag_id}_runs"
    runs.mkdir(exist_ok=True)
    # What `dlh-dbt graph <project> --conn-id deploy_duckdb --run-dir-root <runs>` does, before the DAG is parsed.
    conn = {"conn_type": "duckdb", "host": str(projects.shop.parent / "shop.duckdb")}
    monkeypatch.setenv(f"AIRFLOW_CONN_{DUCKDB_CONN_ID.upper()}", json.dumps(conn))
    lister = hook_lister(dbt_project_dir=project, conn_id=DUCKDB_CONN_ID, run_dir_root=str(runs))
    ensure_graph(project, Selection(), lister, cache_root(runs))
    source = DAG.format(dag_id=dag_id, project=str(project), conn=DUCKDB_CONN_ID, runs=str(runs), retries=retries,
                        extra=extra)  # fmt: skip
    deployment.write_dag(dag_id, source)
    deployment.wait_parsed(dag_id)
    return project, runs, deployment.trigger(dag_id)


def test_task_graph_with_a_failing_model_through_the_rest_api(
    deployment: AirflowDeployment, projects: Projects, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = {"models/staging/stg_payments.sql": "select * from {{ ref('raw_payments') }} where x\n"}
    dag_id = "deploy_task_graph"
    project, runs, run_id = _deploy(deployment, projects, monkeypatch, dag_id, change=broken)
    final, seen, run = deployment.follow_run(dag_id, run_id)
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


@pytest.mark.parametrize("retried", ["build", "node"])
def test_task_graph_retry_rules_through_the_rest_api(
    retried: str, deployment: AirflowDeployment, projects: Projects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``build``: the build's second try resumes with ``dbt retry`` and every node task ends green, whichever of
    the build's tries it followed (a node task retried while the build is up for retry runs no dbt). ``node``: the
    build is not retried; the node task's retry, once the build ended, runs its own node in a try of its own."""
    dag_id = f"deploy_graph_retry_{retried}"
    flaky = {"models/marts/flaky.sql": FLAKY.format(table=f"{dag_id}_attempts")}
    extra = ", build_args={'retries': 0}" if retried == "node" else ""
    _, runs, run_id = _deploy(deployment, projects, monkeypatch, dag_id, change=flaky, retries=1, extra=extra)
    final, _, run = deployment.follow_run(dag_id, run_id, limit=400)
    last_try = {task: deployment.task_instance(dag_id, run_id, task)["try_number"] for task in final}
    errors = {task: deployment.task_errors(dag_id, run_id, task, try_number=last_try[task])
              for task, state in final.items() if state == "failed"}  # fmt: skip
    assert final["shop.flaky"] == "success", (final, errors)
    tries = last_try["shop.flaky"]
    if tries == 2:  # it saw the first build try fail its node
        first = deployment.task_errors(dag_id, run_id, "shop.flaky", try_number=1)
        assert any("model.shop.flaky" in error and "flaky: first attempt fails" in error for error in first), first
    if retried == "build":
        assert run["state"] == "success" and set(final.values()) == {"success"}, (final, errors)
        assert deployment.xcom(dag_id, run_id, "shop.dbt_build", "dbt_summary")["command"] == "retry"
        # A node task that first looked while the build's second try ran only ever saw that try (one try); one
        # that saw the first try fail its node waited in its retry for the second try's verdict, running no dbt.
        if tries == 2:
            second = deployment.task_log_text(dag_id, run_id, "shop.flaky", try_number=2)
            assert "in a try of its own" not in second and "SUCCESS model.shop.flaky" in second, second[-3000:]
    else:
        assert final["shop.dbt_build"] == "failed" and tries == 2, final
        second = deployment.task_log_text(dag_id, run_id, "shop.flaky", try_number=2)
        assert "running model.shop.flaky in a try of its own" in second, second[-3000:]
        assert deployment.xcom(dag_id, run_id, "shop.flaky", "dbt_summary")["status_counts"] == {"success": 1}
    assert not list(runs.glob("run_*")), "every try's run dir is removed"
