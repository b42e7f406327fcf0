"""OpenLineage: a real DAG run with the OpenLineage provider's file transport, then the events it wrote are read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.lineage import DbtLineage, build_lineage
from dlh_airflow_common.hooks.dbt import DbtHook, DbtTaskResult
from operability import run_dag_in_subprocess, write_dag

pytestmark = pytest.mark.integration

NAMESPACE = "dlh_lineage_test"


def _complete_events(path: Path) -> dict[str, dict[str, Any]]:
    """The COMPLETE/FAIL event of each task, keyed by task id (job name is ``<dag_id>.<task_id>``)."""
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    finished = {}
    for event in events:
        job = event["job"]["name"]
        if event["eventType"] in ("COMPLETE", "FAIL") and "." in job:
            finished[job.split(".", 1)[1]] = event
    return finished


def _names(datasets: list[dict[str, Any]]) -> set[str]:
    return {d["name"] for d in datasets}


def test_lineage_events_of_a_real_run(example_project: Path, airflow_db: Path, tmp_path: Path) -> None:
    database = tmp_path / "shop.duckdb"
    events_file = tmp_path / "openlineage.jsonl"
    env = {
        "AIRFLOW_CONN_DBT_DUCKDB": json.dumps({"conn_type": "duckdb", "host": str(database)}),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": NAMESPACE,
        "AIRFLOW__OPENLINEAGE__DISABLED": "False",
    }
    conn = {"conn_id": "dbt_duckdb", "invocation_mode": "in-process"}
    dag_file = write_dag(
        tmp_path,
        "dbt_lineage",
        example_project,
        [
            ("seed", "seed", conn),
            ("run", "run", conn),
            ("snapshot", "snapshot", conn),
            ("docs", "docs generate", conn),
            # Deferred: the generated profile is gone when execute_complete runs; the namespace must not need it.
            (
                "deferred",
                "run",
                {"conn_id": "dbt_duckdb", "dbt_models": "orders", "deferrable": True, "check_interval": 1},
            ),
        ],
    )
    run, output = run_dag_in_subprocess(dag_file, airflow_db / "dags", "dbt_lineage", env)
    assert set(run.task_states.values()) == {"success"}, output
    assert events_file.is_file(), f"the OpenLineage provider wrote no events:\n{output[-4000:]}"
    finished = _complete_events(events_file)
    assert set(finished) == {"seed", "run", "snapshot", "docs", "deferred"}
    namespace = f"duckdb://{database}"  # OpenLineage's naming for DuckDB: the database file

    seed = finished["seed"]
    assert seed["eventType"] == "COMPLETE" and seed["job"]["namespace"] == NAMESPACE
    assert _names(seed["outputs"]) == {"shop.main.raw_customers", "shop.main.raw_orders", "shop.main.raw_payments"}
    assert seed["inputs"] == []

    models = finished["run"]
    assert {d["namespace"] for d in models["inputs"] + models["outputs"]} == {namespace}
    assert _names(models["inputs"]) == {"shop.main.raw_customers", "shop.main.raw_orders", "shop.main.raw_payments"}
    assert {"shop.main.stg_orders", "shop.main.orders", "shop.main.customers"} <= _names(models["outputs"])
    stg_orders = next(d for d in models["outputs"] if d["name"] == "shop.main.stg_orders")
    order_id = stg_orders["facets"]["columnLineage"]["fields"]["order_id"]["inputFields"]
    assert {"namespace": namespace, "name": "shop.main.raw_orders", "field": "id"}.items() <= order_id[0].items()
    assert {f["name"] for f in stg_orders["facets"]["schema"]["fields"]} >= {"order_id", "customer_id", "status"}
    assert models["run"]["facets"]["dbt_run"]["invocation_id"]

    snapshot = finished["snapshot"]
    assert _names(snapshot["outputs"]) == {"shop.main.customers_snapshot"}
    assert _names(snapshot["inputs"]) == {"shop.main.stg_customers"}

    assert finished["docs"]["inputs"] == [] and finished["docs"]["outputs"] == [], "docs generate has no lineage"

    deferred = finished["deferred"]
    assert [(d["namespace"], d["name"]) for d in deferred["outputs"]] == [(namespace, "shop.main.orders")]
    assert _names(deferred["inputs"]) == {"shop.main.stg_orders", "shop.main.stg_payments"}
    print("lineage event (run task, abridged):", json.dumps(_abridged(models), indent=1))


def test_task_datasets_folded_from_openlineage_dbt_processing(
    example_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "shop.duckdb"
    monkeypatch.setenv("AIRFLOW_CONN_LINEAGE_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(database)}))
    (example_project / "models" / "marts" / "broken.sql").write_text(
        "select 1 / 'x' as nope from {{ ref('orders') }}\n"
    )
    hook = DbtHook(example_project, conn_id="lineage_duckdb", retry_limit=1, invocation_mode="in-process")
    seen: dict[str, DbtLineage] = {}

    def keep(result: DbtTaskResult) -> None:  # the profile and artifacts exist only while the run does
        seen[result.command] = build_lineage(project_dir=example_project, target_path=result.target_path)

    assert hook.run_dbt_task("seed", post_run=keep).success
    assert hook.run_dbt_task("run", select="stg_payments").success  # upstream of orders, built earlier
    failed = hook.run_dbt_task("run", select="stg_orders orders broken", post_run=keep, raise_on_failure=False)
    assert not failed.success
    assert hook.run_dbt_task(
        "build", select="raw_customers stg_customers", extra_args=["--indirect-selection", "cautious"], post_run=keep
    ).success

    inputs, outputs = seen["run"].names()
    prefix = f"duckdb://{database}/shop.main."
    assert sorted(inputs) == [f"{prefix}raw_orders", f"{prefix}stg_payments"], "sources/seeds and upstream models"
    assert sorted(outputs) == [f"{prefix}orders", f"{prefix}stg_orders"], "the failed model wrote nothing"
    assert seen["run"].run_facets["dbt_run"].invocation_id

    inputs, outputs = seen["build"].names()
    assert sorted(outputs) == [f"{prefix}raw_customers", f"{prefix}stg_customers"], "a seed the run loaded is output"
    assert inputs == [], "the source table is the seed this build loaded, so it is no input"


def _abridged(event: dict[str, Any]) -> dict[str, Any]:
    def dataset(d: dict[str, Any]) -> dict[str, Any]:
        return {"namespace": d["namespace"], "name": d["name"], "facets": sorted(d.get("facets", {}))}

    return {
        "eventType": event["eventType"],
        "job": {"namespace": event["job"]["namespace"], "name": event["job"]["name"]},
        "run": {"runId": event["run"]["runId"], "facets": sorted(event["run"]["facets"])},
        "inputs": [dataset(d) for d in event["inputs"]],
        "outputs": [dataset(d) for d in event["outputs"]],
    }
