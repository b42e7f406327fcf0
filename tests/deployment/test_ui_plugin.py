"""The UI plugin in a real api-server, seen through Debian's headless Chromium as a person sees it.

One DAG run on the deployment: ``dbt build`` of the shop project with one model that fails on DuckDB, its
artifacts uploaded under the plugin's root, then ``docs generate`` publishing the docs there. The browser
logs in on Airflow's login page, opens the failed try's "dbt run report" tab and the "dbt Docs" page; plain
HTTP checks cover anonymous and traversal requests. Screenshots go to the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from airflow_deployment import AirflowDeployment

import report_stand_in
from browser import Chromium, available
from dlh_airflow_common.dbt import storage
from dlh_airflow_common.plugins.dbt_ui import DOCS_VIEW_ROUTE, REPORT_VIEW_ROUTE, report_page_url
from dlh_airflow_common.plugins.roots import REPORT_FILE
from pg_server import PostgresServer
from repo_paths import EXAMPLE_PROJECT, REPO_ROOT
from tests.deployment.conftest import OneAtATime, Projects, _unavailable, local_deployment

DAG_ID = "deploy_ui_report"
DAG = """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    common = dict(dbt_project_dir={project!r}, conn_id={conn!r}, run_dir_root={runs!r}, retries=0,
                  artifacts_destination={destination!r})
    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        build = DbtOperator(task_id="build", dbt_command="build", threads=2, upload_artifacts=True,
                            artifacts_compiled_sql=True, **common)
        docs = DbtOperator(task_id="docs", dbt_command="docs generate", publish_docs=True,
                           trigger_rule="all_done", **common)
        build >> docs
"""
# Fails on DuckDB when the table is built: order statuses are words ('shipped', ...), not numbers.
BROKEN_MODEL = "select order_id, cast(status as integer) as status_code from {{ ref('stg_orders') }}\n"
BROKEN_NODE = "model.shop.order_status_codes"


@pytest.fixture(scope="module")
def ui_run(tmp_path_factory: pytest.TempPathFactory, projects: Projects) -> dict[str, Any]:
    """Where the DAG's project and run dirs live; the run itself is started by the first test."""
    root = tmp_path_factory.mktemp("ui_plugin")
    project = root / "shop"
    shutil.copytree(EXAMPLE_PROJECT, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    (project / "models" / "marts" / "order_status_codes.sql").write_text(BROKEN_MODEL)
    (root / "runs").mkdir()
    return {"project": project, "runs": root / "runs", "destination": (projects.artifacts / "dbt").as_uri()}


@pytest.fixture(scope="module")
def finished_run(deployments: OneAtATime, deploy_pg: PostgresServer, projects: Projects,
                 ui_run: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The DAG run, once for the module: the build try failed, the docs published; the try dir's report."""
    deployment = local_deployment(deployments, deploy_pg, projects)
    source = DAG.format(
        dag_id=DAG_ID, project=str(ui_run["project"]), runs=str(ui_run["runs"]), conn="deploy_duckdb",
        destination=ui_run["destination"],
    )  # fmt: skip
    deployment.write_dag(DAG_ID, source)
    deployment.wait_parsed(DAG_ID)
    run_id = deployment.trigger(DAG_ID)
    build = deployment.wait_task_state(DAG_ID, run_id, "build", ["failed"], limit=600)
    deployment.wait_task_state(DAG_ID, run_id, "docs", ["success"], limit=600)
    relative = storage.try_path(DAG_ID, "build", run_id, int(build["try_number"]))
    try_dir = Path(ui_run["destination"].removeprefix("file://")) / relative
    run_results = json.loads((try_dir / "run_results.json").read_text())
    if not (try_dir / REPORT_FILE).exists():  # until the report generator writes it with the artifacts
        (try_dir / REPORT_FILE).write_text(report_stand_in.render(run_results, "build"))
    return {"run_id": run_id, "try_number": int(build["try_number"]), "try_dir": try_dir, "results": run_results}


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    ok, reason = available()
    if not ok:
        _unavailable(f"Chromium for the browser tests unavailable: {reason}")
    with Chromium() as browser:
        yield browser


def _log_in(browser: Chromium, deployment: AirflowDeployment) -> None:
    """Airflow's login page, filled in and submitted as a person would."""
    browser.goto(f"{deployment.base_url}/auth/login")
    browser.wait_for("!!document.querySelector('input[name=username]')", "the login form")
    browser.evaluate("document.querySelector('input[name=username]').focus()")
    user, password = deployment.admin_login
    browser.type_text(user)
    browser.evaluate("document.querySelector('input[name=password]').focus()")
    browser.type_text(password)
    browser.evaluate("document.querySelector('button[type=submit]').click()")
    browser.wait_for("document.cookie.includes('_token=') && !location.pathname.includes('/auth/login')", "login")


def _screenshot(browser: Chromium, tmp_path: Path, name: str) -> Path:
    """A screenshot under the test's tmp_path; with DLH_UPDATE_SCREENSHOTS=1 also the copy in docs/img/."""
    shot = browser.screenshot(tmp_path / name)
    if os.environ.get("DLH_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, REPO_ROOT / "docs" / "img" / name)
    return shot


def _in_frame(expression: str) -> str:
    """``expression`` evaluated on the plugin iframe's document (``doc``)."""
    frame = "const f = document.querySelector('iframe'); const doc = f && f.contentDocument;"
    return f"(() => {{ {frame} return doc && ({expression}); }})()"


def test_failed_try_report_in_the_task_instance_tab(
    deployment: AirflowDeployment, finished_run: dict[str, Any], chromium: Chromium, tmp_path: Path
) -> None:
    results = finished_run["results"]["results"]
    counts = Counter(r["status"] for r in results)
    threads = {r["thread_id"] for r in results}
    failed = next(r for r in results if r["unique_id"] == BROKEN_NODE)
    assert failed["status"] == "error" and len(threads) == 2, (counts, threads)

    _log_in(chromium, deployment)
    run = quote(finished_run["run_id"], safe="")
    chromium.goto(f"{deployment.base_url}/dags/{DAG_ID}/runs/{run}/tasks/build/plugin/{REPORT_VIEW_ROUTE}")
    chromium.wait_for(_in_frame("!!doc.querySelector('#summary #counts')"), "the report inside the task tab", limit=90)

    seen = chromium.evaluate(
        _in_frame(
            "({counts: Object.fromEntries([...doc.querySelectorAll('#counts dd[data-status]')]"
            ".map(d => [d.dataset.status, Number(d.textContent)])),"
            " result: doc.querySelector('#result').textContent.trim(),"
            " command: doc.querySelector('#command').textContent.trim(),"
            " invocation: doc.querySelector('#invocation-id').textContent.trim(),"
            " lanes: [...doc.querySelectorAll('#timeline .lane')].map(l => l.dataset.thread),"
            " bars: doc.querySelectorAll('#timeline .bar').length,"
            " failedRows: [...doc.querySelectorAll('#nodes tbody tr.failed')].map(r => r.dataset.uniqueId),"
            " failedRowColor: getComputedStyle(doc.querySelector('#nodes tbody tr.failed')).backgroundColor,"
            " plainRowColor: getComputedStyle(doc.querySelector('#nodes tbody tr:not(.failed)')).backgroundColor,"
            " failures: [...doc.querySelectorAll('#failures article.failure')].map(a => ({id: a.dataset.uniqueId,"
            "   message: a.querySelector('.message').innerText, sql: a.querySelector('pre.compiled-sql').innerText,"
            "   visible: a.querySelector('pre.compiled-sql').getBoundingClientRect().height > 0}))})"
        )
    )
    assert seen["counts"] == dict(counts)
    assert seen["result"] == "failed" and seen["command"].startswith("build")
    assert seen["invocation"] == finished_run["results"]["metadata"]["invocation_id"]
    assert sorted(seen["lanes"]) == sorted(threads) and seen["bars"] == len(results)
    assert seen["failedRows"] == [BROKEN_NODE]
    assert seen["failedRowColor"] != seen["plainRowColor"], "the failed node is highlighted"
    failure = next(f for f in seen["failures"] if f["id"] == BROKEN_NODE)
    assert "cast(status as integer)" in failure["sql"] and failure["visible"], failure
    assert "Conversion Error" in failure["message"] or "convert" in failure["message"].lower(), failure
    _screenshot(chromium, tmp_path, "run_report.png")

    # Filter the table by typing, then sort it by a column header.
    chromium.evaluate(_in_frame("doc.querySelector('#node-filter').focus()"))
    chromium.type_text("order_status")
    visible = chromium.wait_for(
        _in_frame(
            "(() => { const v = [...doc.querySelectorAll('#nodes tbody tr')].filter(r => !r.hidden)"
            ".map(r => r.dataset.uniqueId); return v.length && v.every(id => id.includes('order_status')) && v; })()"
        ),
        "the node filter to hide other rows",
    )
    assert BROKEN_NODE in visible and len(visible) < len(results)
    chromium.evaluate(_in_frame("(() => { const i = doc.querySelector('#node-filter'); i.select(); return true; })()"))
    chromium.send("Input.dispatchKeyEvent", type="keyDown", key="Backspace", code="Backspace", windowsVirtualKeyCode=8)
    chromium.send("Input.dispatchKeyEvent", type="keyUp", key="Backspace", code="Backspace", windowsVirtualKeyCode=8)
    chromium.wait_for(_in_frame("[...doc.querySelectorAll('#nodes tbody tr')].every(r => !r.hidden)"), "all rows back")
    order = _in_frame("[...doc.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.uniqueId)")
    before = chromium.evaluate(order)
    chromium.evaluate(_in_frame("(doc.querySelector('#nodes th[data-sort]').click(), true)"))
    after = chromium.evaluate(order)
    assert sorted(after) == sorted(before) and (after == sorted(before) or after == sorted(before, reverse=True))
    chromium.evaluate(_in_frame("(doc.querySelector('#nodes th[data-sort]').click(), true)"))
    assert chromium.evaluate(order) == list(reversed(after)), "a second click reverses the order"


def test_dbt_docs_in_the_navigation(deployment: AirflowDeployment, finished_run: dict[str, Any], chromium: Chromium,
                                    tmp_path: Path) -> None:  # fmt: skip
    _log_in(chromium, deployment)
    chromium.goto(f"{deployment.base_url}/plugin/{DOCS_VIEW_ROUTE}")
    title = chromium.wait_for(_in_frame("doc.title"), "the docs page inside the Airflow UI", limit=90)
    assert "dbt" in title.lower()
    welcome = "doc.body && doc.body.innerText.includes('Welcome to the auto-generated documentation')"
    chromium.wait_for(_in_frame(welcome), "the docs site to render", limit=90)
    chromium.evaluate(_in_frame("(f.contentWindow.location.hash = '#!/model/model.shop.orders', true)"))
    model = "doc.body.innerText.includes('shop.main.orders') && doc.body.innerText.includes('One row per order')"
    chromium.wait_for(_in_frame(model), "the orders model's page", limit=60)
    _screenshot(chromium, tmp_path, "dbt_docs.png")


def test_anonymous_odd_and_outside_requests_are_refused(
    deployment: AirflowDeployment, finished_run: dict[str, Any], tmp_path: Path
) -> None:
    url = report_page_url(DAG_ID, finished_run["run_id"], "build", None, finished_run["try_number"],
                          base_url=deployment.base_url)  # fmt: skip
    token = {"Authorization": f"Bearer {deployment.token()}"}
    plugin = next(p for p in deployment.api("GET", "/plugins")["plugins"] if p["name"] == "dlh_dbt_ui")
    views = {v["url_route"]: v["destination"] for v in plugin["external_views"]}
    assert views == {REPORT_VIEW_ROUTE: "task_instance", DOCS_VIEW_ROUTE: "nav"}
    assert httpx.get(url, timeout=60).status_code == 401
    assert httpx.get(f"{deployment.base_url}/dbt/docs", timeout=60).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer not-a-jwt"}, timeout=60).status_code == 403
    shown = httpx.get(url, headers=token, timeout=60)
    assert shown.status_code == 200 and 'id="summary"' in shown.text

    for params in (
        {"dag_id": "..", "run_id": "r", "task_id": "build"},
        {"dag_id": DAG_ID, "run_id": "../../../etc", "task_id": "build"},
        {"dag_id": DAG_ID, "run_id": finished_run["run_id"], "task_id": "build/../../x"},
        {"dag_id": DAG_ID, "run_id": "r\x00", "task_id": "build"},
    ):
        answer = httpx.get(f"{deployment.base_url}/dbt/report", params=params, headers=token, timeout=60)
        assert answer.status_code == 400, (params, answer.status_code, answer.text[:300])
    missing = httpx.get(url.replace("try_number=1", "try_number=7"), headers=token, timeout=60)
    assert missing.status_code == 404

    # A report that is a symlink to a file outside the root is not served; the page says what is missing.
    report = finished_run["try_dir"] / REPORT_FILE
    kept = tmp_path / REPORT_FILE
    shutil.move(report, kept)
    outside = tmp_path / "outside.html"
    outside.write_text("<p>secret outside the root</p>")
    report.symlink_to(outside)
    try:
        refused = httpx.get(url, headers=token, timeout=60)
    finally:
        report.unlink()
        shutil.move(kept, report)
    assert refused.status_code == 404 and "secret" not in refused.text
    assert "No run report" in refused.text and "artifacts_roots" in refused.text
    assert str(deployment.home) not in refused.text
