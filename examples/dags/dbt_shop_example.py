"""Run the example ``shop`` dbt project with DbtOperator: seed, then build, then generate the docs.

The dbt profile is generated from an Airflow connection (``DLH_EXAMPLE_CONN_ID``, default ``dbt_duckdb``),
so the same DAG runs on DuckDB or PostgreSQL. ``make demo`` runs it once with ``airflow dags test``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from dlh_airflow_common.operators.dbt import DbtOperator

PROJECT_DIR = os.environ.get("DLH_EXAMPLE_DBT_PROJECT_DIR", str(Path(__file__).resolve().parent.parent / "shop"))
CONN_ID = os.environ.get("DLH_EXAMPLE_CONN_ID", "dbt_duckdb")

with DAG(
    dag_id="dbt_shop_example",
    description="Seed, build and document the example shop dbt project.",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["dbt", "example"],
):
    dbt_seed = DbtOperator(
        task_id="dbt_seed",
        dbt_project_dir=PROJECT_DIR,
        dbt_command="seed",
        conn_id=CONN_ID,
    )
    dbt_build = DbtOperator(
        task_id="dbt_build",
        dbt_project_dir=PROJECT_DIR,
        dbt_command="build",
        conn_id=CONN_ID,
        # Project vars: the incremental daily_revenue model re-checks this many recent days.
        dbt_vars={"revenue_lookback_days": 7},
        threads=2,
    )
    dbt_docs_generate = DbtOperator(
        task_id="dbt_docs_generate",
        dbt_project_dir=PROJECT_DIR,
        dbt_command="docs generate",
        conn_id=CONN_ID,
    )

    dbt_seed >> dbt_build >> dbt_docs_generate
