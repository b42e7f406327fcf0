"""The example ``shop`` dbt project as an Airflow task graph: a task per model, seed and snapshot.

One ``dbt_build`` task runs ``dbt build`` once for the whole project; every node task follows its node's result
(deferred, in the triggerer) and ends as dbt ended it. DAG parsing reads the project's cached graph file and
never runs dbt: build it first (``make demo`` does) with

    dlh-dbt graph examples/shop --conn-id dbt_duckdb
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from dlh_airflow_common.task_graph import DbtTaskGroup

PROJECT_DIR = os.environ.get("DLH_EXAMPLE_DBT_PROJECT_DIR", str(Path(__file__).resolve().parent.parent / "shop"))
CONN_ID = os.environ.get("DLH_EXAMPLE_CONN_ID", "dbt_duckdb")

with DAG(
    dag_id="dbt_shop_task_graph",
    description="The shop dbt project as one task per model, seed and snapshot, built by one dbt process.",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["dbt", "example"],
):
    DbtTaskGroup(
        group_id="shop",
        dbt_project_dir=PROJECT_DIR,
        conn_id=CONN_ID,
        # Node tasks wait in the triggerer; a retry of a node task after the build ended runs that node alone.
        operator_args={"dbt_vars": {"revenue_lookback_days": 7}, "threads": 2, "check_interval": 1, "retries": 1},
        # The build resumes what failed with dbt retry (retry_from_failure is on for it).
        build_args={"retries": 1},
    )
