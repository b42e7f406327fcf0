"""The FastAPI app the plugin mounts in the api-server: a task try's run report and the published dbt docs.

Every route goes through Airflow's own auth: the user comes from the UI's ``_token`` cookie or a bearer
token (``airflow.api_fastapi.core_api.security.get_user``; none is 401, a bad one 403) and a report needs
read access to the DAG's task instances. Files are read only below ``[dlh_dbt] artifacts_roots``
(:mod:`dlh_airflow_common.plugins.roots`); ``[dlh_dbt] docs_location`` names a docs site the admin chose.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from dlh_airflow_common.dbt import storage
from dlh_airflow_common.links.dbt import SUMMARY_XCOM_KEY
from dlh_airflow_common.plugins import pages, roots
from dlh_airflow_common.settings import SECTION, configured

_UNFINISHED = frozenset(
    {"scheduled", "queued", "running", "deferred", "up_for_retry", "up_for_reschedule", "restarting"}
)
_DOCS_SCAN_LIMIT = 2000  # newest dbt summaries looked at for published docs
# The report and docs are whole pages: no caching of another user's view, no type sniffing.
_HEADERS = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
_MISSING_HINT = (
    f"The report is uploaded with the artifacts: give the task <code>upload_artifacts=True</code> and an "
    f"<code>artifacts_destination</code> at or under one of <code>[{SECTION}] {roots.ROOTS_OPTION}</code>."
)


def _html(body: str | bytes, code: int = status.HTTP_200_OK) -> HTMLResponse:
    return HTMLResponse(body, status_code=code, headers=_HEADERS)


def parse_map_index(value: str | None) -> int:
    """The map index the UI put into the URL; an unmapped task's is missing or the unreplaced ``{MAP_INDEX}``."""
    if value is None or not value.lstrip("-").isdigit():
        return -1
    return max(int(value), -1)


def _summary(session: Any, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any]:
    """The ``dbt_summary`` XCom the try pushed (a task's latest try only), or ``{}``."""
    value = session.scalar(
        select(XComModel.value).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == task_id,
            XComModel.map_index == map_index,
            XComModel.key == SUMMARY_XCOM_KEY,
        )
    )
    return _as_dict(value)


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _reported_file(found_roots: Sequence[roots.Root], summary: dict[str, Any], name: str) -> Any | None:
    """The report the summary says was uploaded (or ``name`` next to the artifacts), when under a root."""
    uploaded = summary.get("artifacts") or {}
    folder = uploaded.get("location")
    for location in (uploaded.get("report_location"), f"{folder}/{name}" if folder else None):
        placed = roots.under_root(found_roots, str(location)) if location else None
        if placed is not None and placed[1].is_file():
            return placed[1]
    return None


def run_report(
    session: SessionDep,
    dag_id: Annotated[str, Query()],
    run_id: Annotated[str, Query()],
    task_id: Annotated[str, Query()],
    map_index: Annotated[str | None, Query()] = None,
    try_number: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    """The run report of one try (default: the task instance's latest), or a page saying why there is none."""
    try:
        roots.check_ids(dag_id, run_id, task_id)
    except roots.RefusedPath as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from None
    index = parse_map_index(map_index)
    ti = session.scalar(
        select(TaskInstance).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == index,
        )
    )
    latest = int(ti.try_number or 0) if ti is not None else 0
    number = try_number or latest
    what = pages.describe_try(dag_id, run_id, task_id, index, number)
    if ti is None or number < 1 or number > latest:
        return _html(pages.page("No such task try", f"Airflow has no {what}."), status.HTTP_404_NOT_FOUND)
    found_roots = roots.configured_roots()
    if not found_roots:
        reason = "The Airflow UI plugin has no artifact roots to read reports from."
        hint = f"Set <code>{roots.roots_hint()}</code> in the api-server's Airflow config."
        return _html(pages.report_missing(what, None, reason, hint), status.HTTP_404_NOT_FOUND)
    identity = roots.TryIdentity(dag_id, run_id, task_id, number, index)
    summary = _summary(session, dag_id, run_id, task_id, index) if number == latest else {}
    try:
        report = roots.find_file(found_roots, identity.relative_path(), roots.REPORT_FILE) or _reported_file(
            found_roots, summary, roots.REPORT_FILE
        )
        if report is not None:
            return _html(roots.read_html(report))
    except Exception as err:  # storage unreachable, permissions, too large: a page, not a traceback
        return _unreadable(what, err)
    state = str(ti.state) if ti.state is not None and number == latest else None
    return _html(pages.report_missing(what, state, _why_missing(state, summary), _MISSING_HINT), 404)


def _unreadable(what: str, err: Exception) -> HTMLResponse:
    """The file is there but could not be read; the error's type (and, when ours, its message)."""
    detail = str(err) if isinstance(err, roots.RefusedPath) else type(err).__name__
    return _html(pages.page("dbt page not readable", f"Could not read {what}: {escape(detail)}."), 502)


def _why_missing(state: str | None, summary: dict[str, Any]) -> str:
    if state in _UNFINISHED:
        return "The try has not finished: its report is written and uploaded when dbt ends."
    error = (summary.get("artifacts") or {}).get("error")
    if error:
        return f"The artifact upload of this try failed: {error}"
    if (summary.get("artifacts") or {}).get("location"):
        return "This try's artifacts were uploaded outside the configured roots, or without a report."
    return "No run report was uploaded for this try under the configured roots."


def _published(session: Any, dag_ids: set[str], found_roots: Sequence[roots.Root]) -> list[tuple[Any, Any]]:
    """(XCom row, docs file) of the newest published docs per DAG task, newest first, readable DAGs only."""
    rows = session.execute(
        select(XComModel.dag_id, XComModel.task_id, XComModel.timestamp, XComModel.value)
        .where(XComModel.key == SUMMARY_XCOM_KEY, XComModel.dag_id.in_(dag_ids))
        .order_by(XComModel.timestamp.desc())
        .limit(_DOCS_SCAN_LIMIT)
    ).all()
    newest: dict[tuple[str, str], tuple[Any, Any]] = {}
    for row in rows:
        if (row.dag_id, row.task_id) in newest:
            continue
        location = (_as_dict(row.value).get("artifacts") or {}).get("docs_location")
        placed = roots.under_root(found_roots, str(location)) if location else None
        if placed is not None:
            newest[(row.dag_id, row.task_id)] = (row, placed[1])
    return list(newest.values())


def _configured_docs() -> Any | None:
    """``[dlh_dbt] docs_location``: a docs site's ``index.html`` or the folder holding it."""
    uri = configured(roots.DOCS_OPTION)
    if not uri:
        return None
    path = storage.open_destination(storage.destination_uri(uri, None))
    return path if str(path).endswith(".html") else path / storage.DOCS_INDEX


def _may_read_xcom(request: Request, user: Any, dag_id: str) -> bool:
    """Airflow's own check (``requires_access_dag``) for reading the DAG's XComs, where docs are recorded."""
    try:
        requires_access_dag("GET", DagAccessEntity.XCOM, param_dag_id=dag_id)(request, user)
    except HTTPException:
        return False
    return True


def dbt_docs(
    request: Request,
    session: SessionDep,
    user: GetUserDep,
    dag_id: Annotated[str | None, Query()] = None,
    task_id: Annotated[str | None, Query()] = None,
) -> HTMLResponse:
    """The configured docs site, else the newest docs a DbtOperator published (a chooser when several did)."""
    configured_site = _configured_docs() if dag_id is None else None
    if configured_site is not None:
        try:
            if configured_site.is_file():
                return _html(roots.read_html(configured_site))
        except Exception as err:
            return _unreadable(f"the docs site of <code>[{SECTION}] {roots.DOCS_OPTION}</code>", err)
        hint = f"<code>[{SECTION}] {roots.DOCS_OPTION}</code> names no docs page that exists."
        return _html(pages.docs_missing(hint), status.HTTP_404_NOT_FOUND)
    if dag_id is not None and not _may_read_xcom(request, user, dag_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
    readable = {dag_id} if dag_id is not None else get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
    published = [
        (row, path)
        for row, path in _published(session, readable, roots.configured_roots())
        if (task_id is None or row.task_id == task_id)
        and (dag_id is not None or _may_read_xcom(request, user, row.dag_id))
    ]
    if not published:
        hint = (
            'Run a DbtOperator with <code>dbt_command="docs generate"</code> and <code>publish_docs=True</code> '
            f"into a destination under <code>{roots.roots_hint()}</code>, or set "
            f"<code>[{SECTION}] {roots.DOCS_OPTION}</code>."
        )
        return _html(pages.docs_missing(hint), status.HTTP_404_NOT_FOUND)
    if len(published) > 1:
        choices = [pages.PublishedDocs(r.dag_id, r.task_id, f"{r.timestamp:%Y-%m-%d %H:%M} UTC") for r, _ in published]
        return _html(pages.docs_chooser(choices))
    row, path = published[0]
    try:
        return _html(roots.read_html(path))
    except Exception as err:
        return _unreadable(f"the docs published by <code>{escape(row.dag_id)}.{escape(row.task_id)}</code>", err)


def create_app() -> FastAPI:
    """The plugin's FastAPI app (mounted under the plugin's URL prefix; no OpenAPI pages of its own)."""
    app = FastAPI(title="dbt in Airflow", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route(
        "/report",
        run_report,
        methods=["GET"],
        response_class=HTMLResponse,
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))],
    )
    app.add_api_route("/docs", dbt_docs, methods=["GET"], response_class=HTMLResponse)
    return app
