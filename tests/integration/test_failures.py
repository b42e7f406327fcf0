"""Each kind of real dbt failure surfaces as its typed exception, in the invocation modes that read it differently.

Failures before dbt's events flow (a compile error, a bad profile) run in every mode, since the venv's dbt CLI
and the event runner report those each their own way; node and connection failures, which both report as the
same events, run once per way of reading dbt (modes.READING_MODES).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.exceptions.dbt import (
    DbtCompilationException,
    DbtConnectionException,
    DbtException,
    DbtProfileException,
    DbtRuntimeException,
)
from dlh_airflow_common.hooks.dbt import DbtHook
from modes import MODES, READING_MODES
from pg_server import PostgresServer

pytestmark = pytest.mark.integration

GOOD_MODEL = "select 1 as id\n"
TEST_YML = """
version: 2
models:
  - name: first_model
    columns:
      - name: id
        data_tests: [not_null]
"""


def _project(root: Path, models: dict[str, str], extra_yml: str = "") -> Path:
    project = root / "proj"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: failures\nversion: '1.0'\nprofile: failures\n")
    for name, sql in models.items():
        (project / "models" / f"{name}.sql").write_text(sql)
    if extra_yml:
        (project / "models" / "schema.yml").write_text(extra_yml)
    return project


def _run(project: Path, mode: str, conn: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch, **hook: Any) -> Any:
    if conn is not None:
        monkeypatch.setenv("AIRFLOW_CONN_FAILCONN", json.dumps(conn))
        hook.setdefault("conn_id", "failconn")
    with pytest.raises(DbtException) as raised:  # the documented contract: a dbt failure raises
        DbtHook(project, **MODES[mode], **hook).run_dbt_task("build")
    result = raised.value.result
    assert result is not None, "the failed run's result travels on the exception"
    assert not result.success
    assert result.error is raised.value
    return result


DUCKDB_CASES = {
    "compile_error": ({"first_model": GOOD_MODEL, "broken": "select * from {{ ref('first_model' }}"}, "",
                      DbtCompilationException, None),
    "missing_ref": ({"first_model": GOOD_MODEL, "orphan": "select * from {{ ref('nope') }}"}, "",
                    DbtCompilationException, None),
    "sql_runtime_error": ({"first_model": GOOD_MODEL, "bad_sql": "select * from no_such_table"}, "",
                          DbtRuntimeException, "model.failures.bad_sql"),
    "failing_data_test": ({"first_model": "select null as id"}, TEST_YML, DbtRuntimeException,
                          "test.failures.not_null_first_model_id"),
}  # fmt: skip


EARLY_CASES = ("compile_error", "missing_ref")  # dbt stops while parsing, before any node runs


@pytest.mark.parametrize(
    ("case", "mode"),
    [(case, mode) for case in DUCKDB_CASES for mode in (MODES if case in EARLY_CASES else READING_MODES)],
)
def test_duckdb_failures(case: str, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models, yml, expected, node_prefix = DUCKDB_CASES[case]
    project = _project(tmp_path, models, yml)
    result = _run(project, mode, {"conn_type": "duckdb", "host": str(tmp_path / "f.duckdb")}, monkeypatch)
    assert type(result.error) is expected, result.error
    assert result.error.retryable is False
    assert result.error.conn_id == "failconn"
    if node_prefix:
        assert result.error.node_id is not None and result.error.node_id.startswith(node_prefix)
        assert result.error.node_id in str(result.error)
    assert str(result.error).startswith("dbt build failed")


@pytest.mark.parametrize("mode", MODES)
def test_bad_profile_file(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path, {"first_model": GOOD_MODEL})
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(
        "failures:\n  target: dev\n  outputs:\n    dev:\n      type: postgres\n      user: x\n      port: 5432\n"
    )
    result = _run(project, mode, None, monkeypatch, profiles_dir=profiles)
    assert type(result.error) is DbtProfileException
    assert "required property" in str(result.error)


def test_unknown_connection_is_refused_before_dbt_starts(tmp_path: Path) -> None:
    project = _project(tmp_path, {"first_model": GOOD_MODEL})
    with pytest.raises(DbtProfileException, match="'no_such_conn' is not defined") as info:
        DbtHook(project, conn_id="no_such_conn").run_dbt_task("run")
    assert info.value.conn_id == "no_such_conn"
    assert not list((project / "target").glob("run_*")), "the run dir is removed after a refused run"


def _pg(server: PostgresServer, **changes: Any) -> dict[str, Any]:
    conn = {"conn_type": "postgres", "host": server.host, "port": server.port, "login": server.user,
            "password": server.password, "schema": server.database, "extra": {"schema": "failures"}}  # fmt: skip
    conn.update(changes)
    return conn


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PG_CASES = {
    "wrong_password": (lambda s: _pg(s, password="Wrong-Pw-5d1e08"), DbtProfileException, "password authentication"),
    "unknown_database": (lambda s: _pg(s, schema="dlh_no_such_db"), DbtProfileException, "does not exist"),
    "connection_refused": (lambda s: _pg(s, port=_closed_port()), DbtConnectionException, "Connection refused"),
    "permission_denied": (lambda s: _pg(s, login=s.readonly_user, password=s.readonly_password,
                                        extra={"schema": "public"}), DbtRuntimeException, "permission denied"),
}  # fmt: skip


@pytest.mark.parametrize("mode", READING_MODES)
@pytest.mark.parametrize("case", PG_CASES)
def test_postgres_failures(
    case: str, mode: str, pg_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_conn, expected, text = PG_CASES[case]
    project = _project(tmp_path, {"first_model": GOOD_MODEL, "second_model": "select * from {{ ref('first_model') }}"})
    # One attempt: the typed error is this test's subject; retrying a retryable one is test_resilience.py's.
    result = _run(project, mode, make_conn(pg_server), monkeypatch, retry_limit=1)
    assert type(result.error) is expected, result.error
    assert isinstance(result.error, DbtException)
    assert text in str(result.error)
    assert result.error.retryable is (expected is DbtConnectionException)
    assert result.error.conn_id == "failconn"
    for secret in (pg_server.password, pg_server.readonly_password, "Wrong-Pw-5d1e08"):
        assert secret not in str(result.error)
        assert secret not in json.dumps(result.to_xcom())


def test_raise_on_failure_false_returns_the_failed_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path, {"first_model": GOOD_MODEL, "bad_sql": "select * from no_such_table"})
    monkeypatch.setenv("AIRFLOW_CONN_FAILCONN", json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "f.duckdb")}))
    hook = DbtHook(project, conn_id="failconn")
    result = hook.run_dbt_task("build", raise_on_failure=False)
    assert not result.success
    assert type(result.error) is DbtRuntimeException
    assert result.error.result is result
    assert result.error.node_id == "model.failures.bad_sql"
    # The run dir is gone, yet the getters still give this run's artifacts.
    assert not Path(result.run_dir).exists()
    statuses = {r["unique_id"]: r["status"] for r in hook.get_run_results()["results"]}
    assert statuses == {"model.failures.first_model": "success", "model.failures.bad_sql": "error"}
    assert "model.failures.bad_sql" in hook.get_manifest()["nodes"]
    assert hook.get_catalog() == {} and hook.get_sources() == {}, "dbt build writes neither"


def test_documented_except_clause_catches_a_refused_connection(
    pg_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example of docs/errors.md: ``except DbtConnectionException`` around ``dbt debug`` on a closed port."""
    project = _project(tmp_path, {"first_model": GOOD_MODEL})
    monkeypatch.setenv("AIRFLOW_CONN_FAILCONN", json.dumps(_pg(pg_server, port=_closed_port())))
    hook = DbtHook(project, conn_id="failconn", retry_limit=1)
    caught = None
    try:
        hook.run_dbt_task("debug")
    except DbtConnectionException as err:
        caught = err
    except DbtCompilationException:  # pragma: no cover - the wrong branch
        pytest.fail("a refused connection is not a compilation error")
    assert caught is not None and caught.retryable
    assert caught.result is not None and caught.result.command == "debug" and not caught.result.success
    assert caught.conn_id == "failconn"
