"""The hooks behind the connection types this provider registers (see ``connection_forms``).

Airflow builds the hook of a connection's type from the connection id alone when a user presses Test in the
connection form; these are DbtHooks that allow that. Airflow 3.1 reads the form's fields from the hook
classes themselves (3.2+ from provider info), so there each class also gets ``get_ui_field_behaviour`` and
``get_connection_form_widgets``.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from packaging.version import Version

from dlh_airflow_common.hooks.connection_forms import connection_form_widgets, ui_field_behaviour
from dlh_airflow_common.hooks.dbt import DbtHook

# Airflow reads conn-fields and ui-field-behaviour from provider info from 3.2 on.
_FORM_FROM_PROVIDER_INFO = Version(version("apache-airflow-core")) >= Version("3.2")


class _ConnectionTypeHook(DbtHook):
    """A DbtHook Airflow can build from a connection id alone (the connection form's Test button).

    ``test_connection`` brings its own throwaway dbt project, so no project directory is needed here.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if _FORM_FROM_PROVIDER_INFO:
            return
        # Airflow takes these only from the class's own __dict__, never inherited ones.
        conn_type = cls.__dict__["conn_type"]
        setattr(cls, "get_ui_field_behaviour", classmethod(lambda _cls: ui_field_behaviour(conn_type)))  # noqa: B010
        setattr(cls, "get_connection_form_widgets", classmethod(lambda _cls: connection_form_widgets(conn_type)))  # noqa: B010

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
