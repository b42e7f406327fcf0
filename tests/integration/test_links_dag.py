"""The ``dbt Docs``, ``dbt Artifacts`` and ``dbt Run Report`` links after a real run, read through Airflow's REST API
(the UI's path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dag_runner import run_dag_file
from operability import write_dag

pytestmark = pytest.mark.integration

DOCS_SITE = "https://dbt-docs.example.test/shop/"
BROWSE = "https://artifacts.example.test/browse"


@pytest.fixture
def api(airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Airflow's own FastAPI app (core API) with the simple auth manager letting every caller in as admin."""
    from fastapi.testclient import TestClient

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    from airflow.api_fastapi.app import create_app

    client = TestClient(create_app(apps="core"))
    token = client.get("/auth/token")  # a token without credentials: only with all_admins
    assert token.status_code == 201, token.text
    client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return client


def _links(api: Any, dag_id: str, run_id: str, task_id: str) -> dict[str, str | None]:
    url = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/links"
    response = api.get(url)
    assert response.status_code == 200, response.text
    body = response.json()
    return dict(body.get("extra_links", body))


def _run_id(dag_id: str) -> str:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).first()
        assert run is not None
        return str(run.run_id)


def test_links_after_a_real_run(
    example_project: Path, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: Any
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DBT_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "x.db")}))
    destination = tmp_path / "artifacts"
    dag_file = write_dag(
        tmp_path,
        "dbt_links",
        example_project,
        [
            (
                "dbt_run",
                "build",
                {
                    "conn_id": "dbt_duckdb",
                    "invocation_mode": "in-process",
                    "dbt_docs_url": DOCS_SITE,
                    "upload_artifacts": True,
                    "artifacts_destination": str(destination),
                    "artifacts_url": BROWSE,
                },
            ),
            ("docs", "docs generate", {"conn_id": "dbt_duckdb", "publish_docs": True,
                                       "artifacts_destination": str(destination)}),
            ("plain", "parse", {"conn_id": "dbt_duckdb", "invocation_mode": "in-process"}),
        ],
    )  # fmt: skip
    run = run_dag_file(dag_file, airflow_db / "dags", "dbt_links")
    assert run.task_states == {"dbt_run": "success", "docs": "success", "plain": "success"}
    run_id = _run_id("dbt_links")

    links = _links(api, "dbt_links", run_id, "dbt_run")
    assert set(links) == {"dbt Docs", "dbt Artifacts", "dbt Run Report"}
    (try_dir,) = (destination / "dbt_links" / "dbt_run").glob("*/try_1")
    results = json.loads((try_dir / "run_results.json").read_text())["results"]
    first_model = next(r["unique_id"] for r in results if r["unique_id"].startswith("model."))
    assert links["dbt Docs"] == f"{DOCS_SITE}#!/model/{first_model}", "deep link to the first model built"
    assert links["dbt Artifacts"] == f"{BROWSE}/{try_dir.relative_to(destination).as_posix()}/"
    assert links["dbt Run Report"] == f"{BROWSE}/{try_dir.relative_to(destination).as_posix()}/run_report.html"
    assert (try_dir / "run_report.html").is_file()

    docs = _links(api, "dbt_links", run_id, "docs")
    (docs_dir,) = (destination / "dbt_links" / "docs").glob("*/try_1")
    assert docs["dbt Docs"] == (docs_dir / "index.html").as_uri(), "no dbt_docs_url: the published docs"
    assert docs["dbt Artifacts"] == docs_dir.as_uri()
    assert docs["dbt Run Report"] == (docs_dir / "run_report.html").as_uri(), "no artifacts_url: the object URI"

    plain = _links(api, "dbt_links", run_id, "plain")
    assert plain == {"dbt Docs": None, "dbt Artifacts": None, "dbt Run Report": None}, "unconfigured: empty links"
    print(f"rendered links: dbt_run={links} docs={docs}")
