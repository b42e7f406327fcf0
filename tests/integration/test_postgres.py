"""The example project on a real PostgreSQL server started by the tests, in both invocation modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.hooks.dbt import DbtHook
from modes import MODES
from pg_server import PostgresServer


@pytest.mark.parametrize("mode", MODES)
def test_example_project_on_postgres(
    mode: str,
    example_project: Path,
    pg_server: PostgresServer,
    pg_conn_json: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = f"shop_{mode.replace('-', '_')}"
    monkeypatch.setenv("AIRFLOW_CONN_TEST_PG", json.dumps(pg_conn_json(dbt_schema=schema)))
    hook = DbtHook(example_project, conn_id="test_pg", **MODES[mode])
    for command in ("seed", "build", "snapshot", "source freshness", "docs generate"):
        result = hook.run_dbt_task(command)
        assert result.success, f"dbt {command} on PostgreSQL ({mode}) failed: {result.error}"
    build_again = hook.run_dbt_task("build", select="daily_revenue")
    assert build_again.success and "model.shop.daily_revenue" in {n.unique_id for n in build_again.summary.nodes}

    def sql(query: str) -> str:
        return pg_server.psql(query, dbname=pg_server.database).strip()

    tables = sql(f"select table_name from information_schema.tables where table_schema = '{schema}'").split()
    assert {"customers", "orders", "daily_revenue", "raw_orders", "stg_orders"} <= set(tables)
    customers = int(sql(f"select count(*) from {schema}.customers"))
    raw = int(sql(f"select count(*) from {schema}.raw_customers"))
    assert customers == raw > 0
    assert int(sql(f"select count(*) from {schema}.customers_snapshot")) == raw


def test_schema_override_sets_the_target_schema(
    example_project: Path, pg_server: PostgresServer, pg_conn_json: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TEST_PG", json.dumps(pg_conn_json(dbt_schema="ignored_schema")))
    hook = DbtHook(example_project, conn_id="test_pg", schema_override="override_schema")
    result = hook.run_dbt_task("seed", select="raw_customers")
    assert result.success, result.error
    db = pg_server.database
    assert pg_server.psql("select count(*) from override_schema.raw_customers", dbname=db).strip() == "20"
    ignored = "select count(*) from information_schema.schemata where schema_name = 'ignored_schema'"
    assert pg_server.psql(ignored, dbname=db).strip() == "0"
