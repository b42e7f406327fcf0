"""The plugin class as Airflow loads it (entry point, views, app) and the report URL the links use."""

from __future__ import annotations

import tomllib
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount

from airflow_compat import import_string, is_valid_plugin
from dlh_airflow_common.plugins import dbt_ui
from repo_paths import REPO_ROOT


def test_pyproject_registers_the_plugin_class() -> None:
    points = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["airflow.plugins"]
    plugin = import_string(points["dlh_dbt_ui"].replace(":", "."))
    assert plugin is dbt_ui.DbtUiPlugin and is_valid_plugin(plugin)


def test_views_and_app_are_where_the_ui_looks_for_them() -> None:
    views = {v["url_route"]: v for v in dbt_ui.DbtUiPlugin.external_views}
    report = views[dbt_ui.REPORT_VIEW_ROUTE]
    assert report["destination"] == "task_instance" and not report["href"].startswith("/")
    assert all(f"{{{name}}}" in report["href"] for name in ("DAG_ID", "RUN_ID", "TASK_ID", "MAP_INDEX"))
    assert views[dbt_ui.DOCS_VIEW_ROUTE]["destination"] == "nav"
    [app] = dbt_ui.DbtUiPlugin.fastapi_apps
    assert app["url_prefix"] == dbt_ui.URL_PREFIX and isinstance(app["app"], dbt_ui.LazyApp)


def test_the_lazy_app_builds_the_real_one_on_its_first_request() -> None:
    lazy = dbt_ui.LazyApp()
    assert lazy.app is None
    with TestClient(Starlette(routes=[Mount(dbt_ui.URL_PREFIX, app=lazy)])) as client:
        assert client.get(f"{dbt_ui.URL_PREFIX}/docs").status_code == 401
    assert lazy.app is not None


@pytest.mark.parametrize(("map_index", "shown"), [(None, "-1"), (-1, "-1"), (4, "4")])
def test_report_page_url(map_index: int | None, shown: str) -> None:
    url = dbt_ui.report_page_url("shop", "manual__2026+00:00", "build", map_index, 2, base_url="https://af.example/x/")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://af.example/x/dbt/report"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {"dag_id": "shop", "run_id": "manual__2026+00:00", "task_id": "build", "map_index": shown,
                     "try_number": "2"}  # fmt: skip


def test_report_page_url_defaults_to_the_api_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow:8080")
    assert dbt_ui.report_page_url("d", "r", "t", None, 1).startswith("http://airflow:8080/dbt/report?dag_id=d&")


def test_served_report_url_only_for_reports_under_a_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__DLH_DBT__ARTIFACTS_ROOTS", "s3://aws_art@acme/dbt, file:///srv/artifacts")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow:8080")
    url = dbt_ui.served_report_url("s3://acme/dbt/d/t/r/try_1/run_report.html", "d", "r", "t", None, 1)
    assert url is not None and url.startswith("http://airflow:8080/dbt/report?dag_id=d&run_id=r&task_id=t")
    assert dbt_ui.served_report_url("s3://acme/dbt-other/run_report.html", "d", "r", "t", None, 1) is None
    assert dbt_ui.served_report_url("file:///srv/artifacts/x/run_report.html", "d", "r", "t", 2, 1) is not None
