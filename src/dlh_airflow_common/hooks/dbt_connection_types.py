"""The hooks behind the connection types this provider registers (see ``connection_forms``).

Airflow builds the hook of a connection's type from the connection id alone when a user presses Test in the
connection form; these are DbtHooks that allow that.
"""

from __future__ import annotations

from typing import Any

from dlh_airflow_common.hooks.dbt import DbtHook


class _ConnectionTypeHook(DbtHook):
    """A DbtHook Airflow can build from a connection id alone (the connection form's Test button).

    ``test_connection`` brings its own throwaway dbt project, so no project directory is needed here.
    """

    def __init__(self, conn_id: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("dbt_project_dir", ".")
        super().__init__(conn_id=conn_id or self.default_conn_name, **kwargs)


class DbtConnectionHook(_ConnectionTypeHook):
    conn_type = "dbt"
    hook_name = "dbt (any adapter)"
    default_conn_name = "dbt_default"


class DuckDBConnectionHook(_ConnectionTypeHook):
    conn_type = "duckdb"
    hook_name = "DuckDB (dbt)"
    default_conn_name = "duckdb_default"


class DremioConnectionHook(_ConnectionTypeHook):
    conn_type = "dremio"
    hook_name = "Dremio (dbt)"
    default_conn_name = "dremio_default"


class ClickHouseConnectionHook(_ConnectionTypeHook):
    conn_type = "clickhouse"
    hook_name = "ClickHouse (dbt)"
    default_conn_name = "clickhouse_default"
