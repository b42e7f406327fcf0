"""The plugin's routes: Airflow's real auth (SimpleAuthManager tokens) in front, files only below the roots.

The task instance and summary rows come from a fake session; the auth manager, its JWTs (checked against the
migrated SQLite metadata DB's revoked tokens) and the routes are the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.api_fastapi.app import get_auth_manager, init_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.api_fastapi.common.db.common import _get_session
from fastapi.testclient import TestClient

from dlh_airflow_common.plugins import app as plugin_app
from dlh_airflow_common.plugins.app import create_app, parse_map_index

RUN_ID = "manual__2026-12-02T04:00:00+00:00"
TRY_DIR = ("shop", "build", "manual__2026-12-02T04_00_00_00_00", "try_1")


@dataclass
class FakeSession:
    """Answers the plugin's two kinds of query: one task instance / summary value, and summary rows."""

    ti: Any = None
    summary: Any = None
    rows: list[Any] = field(default_factory=list)

    def scalar(self, statement: Any) -> Any:
        return self.ti if "task_instance" in str(statement) else self.summary

    def execute(self, statement: Any) -> Any:
        return SimpleNamespace(all=lambda: self.rows)


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, airflow_db: Path) -> FakeSession:
    monkeypatch.setenv("AIRFLOW__DLH_DBT__ARTIFACTS_ROOTS", (tmp_path / "root").as_uri())
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    return FakeSession()


@pytest.fixture
def client(session: FakeSession) -> Iterator[TestClient]:
    init_auth_manager()
    app = create_app()
    app.dependency_overrides[_get_session] = lambda: session
    with TestClient(app) as test_client:
        yield test_client


def _token(role: str | None) -> dict[str, str]:
    user = SimpleAuthManagerUser(username="someone", role=role)
    return {"Authorization": f"Bearer {get_auth_manager().generate_jwt(user)}"}


def _report(client: TestClient, headers: dict[str, str] | None = None, **params: Any) -> Any:
    query = {"dag_id": "shop", "run_id": RUN_ID, "task_id": "build", **params}
    return client.get("/report", params=query, headers=headers or {})


def _write_report(tmp_path: Path, *parts: str, text: str = "<html>the report</html>") -> Path:
    folder = tmp_path.joinpath("root", *parts)
    folder.mkdir(parents=True)
    (folder / "run_report.html").write_text(text)
    return folder


def test_anonymous_requests_get_401(client: TestClient) -> None:
    assert _report(client).status_code == 401
    assert client.get("/docs").status_code == 401


def test_a_bad_token_gets_403_from_the_header_and_the_cookie(client: TestClient) -> None:
    assert _report(client, {"Authorization": "Bearer nope"}).status_code == 403
    client.cookies.set("_token", "nope")
    assert _report(client).status_code == 403


def test_a_user_without_dag_access_gets_403(client: TestClient, session: FakeSession, tmp_path: Path) -> None:
    _write_report(tmp_path, *TRY_DIR)
    session.ti = SimpleNamespace(try_number=1, state="failed")
    assert _report(client, _token(None)).status_code == 403


def test_the_ui_cookie_of_a_viewer_shows_the_report(client: TestClient, session: FakeSession, tmp_path: Path) -> None:
    _write_report(tmp_path, *TRY_DIR)
    session.ti = SimpleNamespace(try_number=1, state="failed")
    client.cookies.set("_token", _token("viewer")["Authorization"].split()[1])
    answer = _report(client, map_index="{MAP_INDEX}")
    assert answer.status_code == 200 and answer.text == "<html>the report</html>"
    assert answer.headers["cache-control"] == "private, no-store"


@pytest.mark.parametrize(
    "params",
    [{"dag_id": ".."}, {"run_id": "../../etc/passwd"}, {"task_id": "a/b"}, {"run_id": "x\x00"}, {"dag_id": "d%2F.."}],
)
def test_odd_ids_get_400(client: TestClient, session: FakeSession, params: dict[str, str]) -> None:
    session.ti = SimpleNamespace(try_number=1, state="failed")
    assert _report(client, _token("viewer"), **params).status_code == 400


def test_an_unknown_task_or_try_gets_404(client: TestClient, session: FakeSession) -> None:
    assert "No such task try" in _report(client, _token("viewer")).text
    session.ti = SimpleNamespace(try_number=1, state="failed")
    answer = _report(client, _token("viewer"), try_number=2)
    assert answer.status_code == 404 and "try 2" in answer.text


def test_a_running_try_says_so_without_internal_paths(client: TestClient, session: FakeSession, tmp_path: Path) -> None:
    session.ti = SimpleNamespace(try_number=1, state="running")
    answer = _report(client, _token("viewer"))
    assert answer.status_code == 404
    assert "has not finished" in answer.text and "[dlh_dbt] artifacts_roots" in answer.text
    assert str(tmp_path) not in answer.text


def test_a_failed_upload_is_named(client: TestClient, session: FakeSession) -> None:
    session.ti = SimpleNamespace(try_number=1, state="failed")
    session.summary = json.dumps({"artifacts": {"error": "Uploading dbt artifacts to s3://b/p failed: denied"}})
    assert "upload of this try failed: Uploading dbt artifacts" in _report(client, _token("viewer")).text


def test_no_roots_configured_names_the_option(
    client: TestClient, session: FakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW__DLH_DBT__ARTIFACTS_ROOTS")
    session.ti = SimpleNamespace(try_number=1, state="success")
    answer = _report(client, _token("viewer"))
    assert answer.status_code == 404 and "no artifact roots" in answer.text


def test_a_destination_nested_under_a_root_is_found_through_the_summary(
    client: TestClient, session: FakeSession, tmp_path: Path
) -> None:
    folder = _write_report(tmp_path, "team_a", *TRY_DIR, text="nested")
    session.ti = SimpleNamespace(try_number=1, state="failed")
    session.summary = {"artifacts": {"location": folder.as_uri()}}
    assert _report(client, _token("viewer")).text == "nested"
    session.summary = {"artifacts": {"location": (tmp_path / "elsewhere").as_uri()}}
    assert "outside the configured roots" in _report(client, _token("viewer")).text


def _docs_row(tmp_path: Path, dag_id: str, task_id: str, text: str) -> Any:
    folder = tmp_path / "root" / dag_id / task_id / "r" / "try_1"
    folder.mkdir(parents=True)
    (folder / "index.html").write_text(text)
    value = {"artifacts": {"docs_location": (folder / "index.html").as_uri()}}
    return SimpleNamespace(dag_id=dag_id, task_id=task_id, timestamp=datetime(2026, 12, 2, tzinfo=UTC), value=value)


def test_docs_published_by_one_task_are_served(client: TestClient, session: FakeSession, tmp_path: Path) -> None:
    session.rows = [_docs_row(tmp_path, "shop", "docs", "<title>dbt Docs</title>")]
    answer = client.get("/docs", headers=_token("viewer"))
    assert answer.status_code == 200 and answer.text == "<title>dbt Docs</title>"


def test_docs_of_several_tasks_get_a_chooser(client: TestClient, session: FakeSession, tmp_path: Path) -> None:
    session.rows = [_docs_row(tmp_path, "shop", "docs", "a"), _docs_row(tmp_path, "fin", "docs", "b")]
    chooser = client.get("/docs", headers=_token("viewer"))
    assert 'id="projects"' in chooser.text and "dag_id=fin&amp;task_id=docs" in chooser.text
    assert client.get("/docs", params={"dag_id": "fin"}, headers=_token("viewer")).status_code == 200
    assert client.get("/docs", params={"dag_id": "fin"}, headers=_token(None)).status_code == 403


def test_no_docs_and_configured_docs(
    client: TestClient, session: FakeSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = client.get("/docs", headers=_token("viewer"))
    assert missing.status_code == 404 and "publish_docs=True" in missing.text
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("configured site")
    monkeypatch.setattr(plugin_app, "configured", lambda option: str(tmp_path / "site"))
    assert client.get("/docs", headers=_token("viewer")).text == "configured site"


@pytest.mark.parametrize(("value", "index"), [(None, -1), ("{MAP_INDEX}", -1), ("3", 3), ("-1", -1), ("-7", -1)])
def test_parse_map_index(value: str | None, index: int) -> None:
    assert parse_map_index(value) == index


def test_the_report_location_the_summary_names_is_used_when_under_a_root(
    client: TestClient, session: FakeSession, tmp_path: Path
) -> None:
    folder = _write_report(tmp_path, "team_b", "elsewhere", text="named")
    session.ti = SimpleNamespace(try_number=1, state="failed")
    session.summary = {"artifacts": {"report_location": (folder / "run_report.html").as_uri()}}
    assert _report(client, _token("viewer")).text == "named"
    (tmp_path / "outside.html").write_text("outside")
    session.summary = {"artifacts": {"report_location": (tmp_path / "outside.html").as_uri()}}
    assert "outside" not in _report(client, _token("viewer")).text


def test_a_report_that_cannot_be_read_gets_a_page(
    client: TestClient, session: FakeSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_report(tmp_path, *TRY_DIR)
    session.ti = SimpleNamespace(try_number=1, state="failed")
    monkeypatch.setattr("dlh_airflow_common.plugins.roots._MAX_HTML_BYTES", 5)
    answer = _report(client, _token("viewer"))
    assert answer.status_code == 502 and "Could not read" in answer.text and "larger than" in answer.text
