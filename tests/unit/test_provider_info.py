"""The provider registration Airflow sees: schema-valid provider info, discovered connection types, form metadata."""

from __future__ import annotations

import json
import warnings
from importlib.resources import files
from typing import Any

import jsonschema
import pytest

from airflow_compat import FORMS_FROM_PROVIDER_INFO, forget_discovered_providers
from dlh_airflow_common import get_provider_info
from dlh_airflow_common.hooks.connection_forms import CONNECTION_TYPES, ui_field_behaviour
from dlh_airflow_common.hooks.dbt_connection_types import (
    ClickHouseConnectionHook,
    DbtConnectionHook,
    DremioConnectionHook,
    DuckDBConnectionHook,
)
from dlh_airflow_common.hooks.dbt_profiles import supported_conn_types

OUR_TYPES = {"dbt", "duckdb", "dremio", "clickhouse"}
# Owned by Airflow providers (postgres, trino, amazon, snowflake, mssql, apache-spark, apache-hive, oracle,
# databricks): registering them too would only earn a "already registered" warning, or win over the real one.
PROVIDER_OWNED = {"postgres", "trino", "redshift", "snowflake", "mssql", "spark", "hiveserver2", "oracle", "databricks"}


@pytest.fixture(scope="module")
def providers_manager() -> Any:
    from airflow.providers_manager import ProvidersManager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ProvidersManager.hooks deprecation notes
        manager = ProvidersManager()
        manager.initialize_providers_hooks()
    return manager


def test_provider_info_matches_airflows_schema() -> None:
    schema = json.loads(files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_registered_types_are_ours_and_all_render_profiles() -> None:
    registered = {entry["connection-type"] for entry in get_provider_info()["connection-types"]}
    assert registered == OUR_TYPES
    assert not registered & PROVIDER_OWNED
    assert registered | PROVIDER_OWNED <= set(supported_conn_types())


@pytest.mark.parametrize("entry", CONNECTION_TYPES, ids=lambda e: e["connection-type"])
def test_hook_class_matches_its_connection_type(entry: dict[str, Any]) -> None:
    module, _, name = entry["hook-class-name"].rpartition(".")
    hook_class = getattr(__import__(module, fromlist=[name]), name)
    assert hook_class.conn_type == entry["connection-type"]
    assert hook_class.hook_name == entry["hook-name"]
    hook = hook_class(conn_id="from_the_form")  # what Connection.get_hook() does for the Test button
    assert hook.conn_id == "from_the_form"
    assert callable(hook.test_connection)


def test_hooks_default_to_their_default_connection() -> None:
    for hook_class in (DbtConnectionHook, DuckDBConnectionHook, DremioConnectionHook, ClickHouseConnectionHook):
        assert hook_class().conn_id == hook_class.default_conn_name


def test_providers_manager_discovers_the_provider_and_its_hooks(providers_manager: Any) -> None:
    assert "dlh-airflow-common" in providers_manager.providers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hooks property is deprecated for task code, not for the API server
        hooks = providers_manager.hooks
    for conn_type in OUR_TYPES:
        info = hooks[conn_type]
        assert info is not None, conn_type
        assert info.package_name == "dlh-airflow-common"
        assert info.connection_testable is True
        assert info.hook_class_name.startswith("dlh_airflow_common.hooks.dbt_connection_types.")


@pytest.mark.skipif(not FORMS_FROM_PROVIDER_INFO, reason="Airflow < 3.2 reads the form from the hook classes")
def test_connection_form_metadata(providers_manager: Any) -> None:
    meta = {m.connection_type: m for m in providers_manager.iter_connection_type_hook_ui_metadata()}
    assert meta["duckdb"].hook_name == "DuckDB (dbt)"
    assert meta["duckdb"].field_behaviour["hidden_fields"] == ["port", "login"]
    assert meta["duckdb"].field_behaviour["relabeling"]["host"] == "Database path"
    assert json.loads(meta["dbt"].field_behaviour["placeholders"]["extra"])["type"] == "bigquery"
    widgets = providers_manager._connection_form_widgets_from_metadata
    assert {"extra__dremio__cloud_project_id", "extra__dremio__method", "extra__clickhouse__driver"} <= set(widgets)
    assert widgets["extra__dremio__method"].field["schema"]["enum"] == ["password", "pat", "cloud", None]


@pytest.mark.parametrize("hook_class", [DbtConnectionHook, DuckDBConnectionHook, DremioConnectionHook])
def test_hook_classes_carry_the_form_only_where_airflow_reads_them(hook_class: type) -> None:
    own = {"get_ui_field_behaviour", "get_connection_form_widgets"} & set(hook_class.__dict__)
    assert own == (set() if FORMS_FROM_PROVIDER_INFO else {"get_ui_field_behaviour", "get_connection_form_widgets"})


def test_ui_field_behaviour_is_the_provider_infos() -> None:
    assert ui_field_behaviour("duckdb") == {
        "hidden_fields": ["port", "login"],
        "relabeling": {"host": "Database path", "schema": "Schema", "password": "MotherDuck token"},
        "placeholders": {"host": "/data/warehouse.duckdb or md:my_db", "schema": "main"},
    }


def test_api_server_form_metadata() -> None:
    """What the connection form of the Airflow 3 UI receives from the API server."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    forget_discovered_providers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_type = {m.connection_type: m for m in HookMetaService.hook_meta_data()}
    dremio = by_type["dremio"]
    assert dremio.hook_name == "Dremio (dbt)"
    assert dremio.standard_fields is not None and dremio.standard_fields.password is not None
    assert dremio.standard_fields.password.title == "Password or personal access token"
    assert dremio.extra_fields is not None
    assert dremio.extra_fields["use_ssl"]["schema"]["type"] == ["boolean", "null"]
    assert by_type["duckdb"].standard_fields is not None
    assert by_type["duckdb"].standard_fields.login is not None and by_type["duckdb"].standard_fields.login.hidden
