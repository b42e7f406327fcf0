"""The Airflow UI plugin (Airflow >= 3.1): a "dbt run report" tab on task instances and a "dbt Docs" page.

Registered through the package's ``airflow.plugins`` entry point. The FastAPI app is built on the first
request the api-server routes to it, so other processes that load plugins (scheduler, workers) never import
the api-server's modules for it. The pages themselves are in :mod:`dlh_airflow_common.plugins.app`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/dbt"
REPORT_ROUTE = "report"
DOCS_ROUTE = "docs"
REPORT_VIEW_ROUTE = "dbt-run-report"
DOCS_VIEW_ROUTE = "dbt-docs"


def report_page_url(
    dag_id: str, run_id: str, task_id: str, map_index: int | None, try_number: int, *, base_url: str | None = None
) -> str:
    """The plugin's page for one try's run report, absolute under ``[api] base_url`` when that is set.

    :param dag_id: The task's DAG.
    :param run_id: The DAG run.
    :param task_id: The task.
    :param map_index: The map index of a mapped task (None or -1 when unmapped).
    :param try_number: The try whose report to show.
    :param base_url: The api-server's public URL (default: ``[api] base_url``).
    """
    if base_url is None:
        from airflow.configuration import conf

        base_url = conf.get("api", "base_url", fallback="") or ""
    query = {
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "map_index": map_index if map_index is not None else -1,
    }
    query["try_number"] = int(try_number)
    return f"{base_url.rstrip('/')}{URL_PREFIX}/{REPORT_ROUTE}?{urlencode(query)}"


def served_report_url(
    location: str, dag_id: str, run_id: str, task_id: str, map_index: int | None, try_number: int
) -> str | None:
    """:func:`report_page_url` when the plugin serves a report uploaded to ``location``, else None.

    For the "dbt Run Report" link on the worker: the plugin serves only files under ``[dlh_dbt]
    artifacts_roots``, so a report uploaded elsewhere keeps its storage URL.

    :param location: Where the report was uploaded (``storage.display_uri`` form, no ``conn_id@``).
    :param dag_id: The task's DAG.
    :param run_id: The DAG run.
    :param task_id: The task.
    :param map_index: The map index of a mapped task (None or -1 when unmapped).
    :param try_number: The try the report belongs to.
    """
    from dlh_airflow_common.plugins.roots import ROOTS_OPTION, parse_roots, shown_uri
    from dlh_airflow_common.settings import configured

    for root in parse_roots(configured(ROOTS_OPTION)):
        if location.startswith(shown_uri(root).rstrip("/") + "/"):
            return report_page_url(dag_id, run_id, task_id, map_index, try_number)
    return None


class LazyApp:
    """An ASGI app that builds the plugin's FastAPI app on its first request."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            from dlh_airflow_common.plugins.app import create_app

            self.app = create_app()
        await self.app(scope, receive, send)


class DbtUiPlugin(AirflowPlugin):
    """Serves run reports and dbt docs from ``[dlh_dbt] artifacts_roots`` behind Airflow's own auth."""

    name = "dlh_dbt_ui"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "dbt run reports and docs"}]
    # Relative hrefs resolve against the UI's <base href> ([api] base_url); the UI fills in the placeholders.
    external_views = [
        {
            "name": "dbt run report",
            "href": f"{URL_PREFIX.lstrip('/')}/{REPORT_ROUTE}?dag_id={{DAG_ID}}&run_id={{RUN_ID}}"
            "&task_id={TASK_ID}&map_index={MAP_INDEX}",
            "destination": "task_instance",
            "url_route": REPORT_VIEW_ROUTE,
        },
        {
            "name": "dbt Docs",
            "href": f"{URL_PREFIX.lstrip('/')}/{DOCS_ROUTE}",
            "destination": "nav",
            "category": "browse",
            "url_route": DOCS_VIEW_ROUTE,
        },
    ]
