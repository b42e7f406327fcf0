"""The example DAGs and DbtOperator failure paths, run by Airflow itself under ``dag.test()``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import duckdb
import pytest

from dag_runner import run_dag_file
from repo_paths import EXAMPLE_DAGS

pytestmark = pytest.mark.integration


@pytest.fixture
def shop_env(example_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    database = tmp_path / "shop.duckdb"
    monkeypatch.setenv("DLH_EXAMPLE_DBT_PROJECT_DIR", str(example_project))
    monkeypatch.setenv("AIRFLOW_CONN_DBT_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(database)}))
    return database


def test_example_dag_seed_build_docs(shop_env: Path, airflow_db: Path, example_project: Path) -> None:
    run = run_dag_file(EXAMPLE_DAGS / "dbt_shop_example.py", airflow_db / "dags", "dbt_shop_example")
    assert run.state == "success", run.task_states
    assert run.task_states == {"dbt_seed": "success", "dbt_build": "success", "dbt_docs_generate": "success"}
    build = run.xcom("dbt_build")
    assert build["success"] is True and build["command"] == "build"
    assert build["failed_nodes"] == [] and build["node_count"] >= 30
    assert build["run_dir"].startswith("run_") and "_dbt_shop_example_dbt_build_try1_" in build["run_dir"]
    assert run.xcom("dbt_build", "dbt_summary") == build
    assert run.xcom("dbt_seed")["status_counts"] == {"success": 3}
    assert len(json.dumps(build)) < 20_000, "XCom summary must stay small"
    with duckdb.connect(str(shop_env), read_only=True) as con:
        customers = con.execute("select count(*) from main.customers").fetchone()
    assert customers is not None and customers[0] > 0
    leftovers = list((example_project / "target").glob("run_*"))
    assert leftovers == [], f"run dirs left behind: {leftovers}"


def test_example_task_graph_dag(
    shop_env: Path, airflow_db: Path, example_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlh_airflow_common.task_graph.build import ensure_graph
    from dlh_airflow_common.task_graph.cli import hook_lister
    from dlh_airflow_common.task_graph.graph_file import Selection

    lister = hook_lister(dbt_project_dir=example_project, conn_id="dbt_duckdb")  # what `dlh-dbt graph` runs
    ensure_graph(example_project, Selection(), lister, example_project / "target" / ".dlh_cache")
    run = run_dag_file(EXAMPLE_DAGS / "dbt_shop_task_graph.py", airflow_db / "dags", "dbt_shop_task_graph")
    assert run.state == "success", run.task_states
    assert set(run.task_states.values()) == {"success"} and len(run.task_states) == 13
    assert run.xcom("shop.dbt_build")["node_count"] == 36
    assert run.xcom("shop.customers", "dbt_node")["verdict"] == "success"
    with duckdb.connect(str(shop_env), read_only=True) as con:
        revenue = con.execute("select count(*) from main.daily_revenue").fetchone()
    assert revenue is not None and revenue[0] > 0


FAILING_DAG = textwrap.dedent(
    """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id="dbt_failing_{suffix}", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtOperator(
            task_id="dbt_build",
            dbt_project_dir={project!r},
            dbt_command="{{{{ params.command }}}}",
            conn_id="dbt_duckdb",
            invocation_mode={mode!r},
            params={{"command": "build"}},
        )
    """
)


@pytest.mark.parametrize("mode", ["in-process", "subprocess"])
def test_failing_model_fails_task_with_typed_error(
    mode: str, shop_env: Path, airflow_db: Path, example_project: Path, tmp_path: Path
) -> None:
    (example_project / "models" / "marts" / "broken.sql").write_text(
        "select 1 / 'x' as nope from {{ ref('orders') }}\n"
    )
    suffix = mode.replace("-", "_")
    dag_file = tmp_path / f"dbt_failing_{suffix}.py"
    dag_file.write_text(FAILING_DAG.format(suffix=suffix, project=str(example_project), mode=mode))
    run = run_dag_file(dag_file, airflow_db / "dags", f"dbt_failing_{suffix}")
    assert run.state == "failed"
    assert run.task_states == {"dbt_build": "failed"}
    summary = run.xcom("dbt_build", "dbt_summary")
    assert summary is not None, "the summary is pushed even when dbt fails"
    assert summary["success"] is False and summary["command"] == "build"
    assert summary["error"]["type"] == "DbtRuntimeException"
    assert summary["error"]["node_id"] == "model.shop.broken"
    assert [n["unique_id"] for n in summary["failed_nodes"]] == ["model.shop.broken"]
    assert run.xcom("dbt_build") is None, "no return value on failure"
