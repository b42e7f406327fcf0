"""DbtHook input checks: every bad input fails with one clear error before anything is written."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.command import DbtCommandError
from dlh_airflow_common.dbt.run_dir import run_dir_name
from dlh_airflow_common.exceptions.dbt import DbtException, DbtProfileException
from dlh_airflow_common.hooks.dbt import DbtHook


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "proj"
    (path / "models").mkdir(parents=True)
    (path / "dbt_project.yml").write_text("name: proj\nversion: '1.0'\nprofile: proj\n")
    (path / "models" / "m.sql").write_text("select 1 as id\n")
    return path


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_GOOD_DUCKDB", json.dumps({"conn_type": "duckdb", "host": "/tmp/x.duckdb"}))
    monkeypatch.setenv("AIRFLOW_CONN_WEIRD", json.dumps({"conn_type": "mongo", "host": "h"}))
    monkeypatch.setenv("AIRFLOW_CONN_PG_NO_HOST", json.dumps({"conn_type": "postgres", "login": "u", "schema": "db"}))


def _no_venv(tmp: Path) -> dict[str, Any]:
    (tmp / "empty_venv" / "bin").mkdir(parents=True, exist_ok=True)
    return {"venv_path": str(tmp / "empty_venv"), "conn_id": "good_duckdb"}


# (case, hook kwargs (project dir filled in), run_dbt_task kwargs, exception type, words the message must hold)
BAD_INPUT: list[tuple[str, Callable[[Path], dict[str, Any]], dict[str, Any], type[Exception], tuple[str, ...]]] = [
    ("missing connection", lambda t: {"conn_id": "nope"}, {}, DbtProfileException, ("'nope'", "not defined")),
    ("unknown connection type", lambda t: {"conn_id": "weird"}, {}, DbtProfileException,
     ("'weird'", "mongo", "Supported connection types", "duckdb", "postgres")),
    ("connection missing a required field", lambda t: {"conn_id": "pg_no_host"}, {}, DbtProfileException,
     ("'pg_no_host'", "postgres", "host")),
    ("conn_id and profiles_dir together", lambda t: {"conn_id": "good_duckdb", "profiles_dir": str(t)}, {},
     DbtProfileException, ("either conn_id", "not both")),
    ("profiles_dir without profiles.yml", lambda t: {"profiles_dir": str(t)}, {}, DbtProfileException,
     ("profiles.yml",)),
    ("venv_path without a dbt executable", _no_venv, {}, DbtException, ("empty_venv", "no dbt executable")),
    ("venv_path that does not exist", lambda t: {"venv_path": str(t / "nowhere"), "conn_id": "good_duckdb"}, {},
     DbtException, ("nowhere", "does not exist")),
    ("unknown dbt command", lambda t: {"conn_id": "good_duckdb"}, {"command": "deploy"}, DbtCommandError,
     ("'deploy'", "Supported commands")),
    ("option the command does not take", lambda t: {"conn_id": "good_duckdb"},
     {"command": "test", "full_refresh": True}, DbtCommandError, ("dbt test", "full_refresh")),
    ("vars that cannot be serialised", lambda t: {"conn_id": "good_duckdb"}, {"vars": {"when": object()}},
     DbtCommandError, ("dbt_vars", "not JSON serialisable")),
    ("vars holding NaN", lambda t: {"conn_id": "good_duckdb"}, {"vars": {"ratio": float("nan")}}, DbtCommandError,
     ("dbt_vars",)),
    ("selection with shell metacharacters", lambda t: {"conn_id": "good_duckdb"},
     {"select": "orders; rm -rf /"}, DbtCommandError, ("shell metacharacters", "';'")),
    ("selection with command substitution", lambda t: {"conn_id": "good_duckdb"}, {"exclude": "$(whoami)"},
     DbtCommandError, ("'$'",)),
]  # fmt: skip


def _profile_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("dlh-dbt-profile-")}


@pytest.mark.parametrize(
    ("case", "hook_kwargs", "run_kwargs", "error", "words"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_fails_before_anything_is_written(
    case: str,
    hook_kwargs: Callable[[Path], dict[str, Any]],
    run_kwargs: dict[str, Any],
    error: type[Exception],
    words: tuple[str, ...],
    project: Path,
    tmp_path: Path,
) -> None:
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    profiles_before = _profile_dirs()
    hook = DbtHook(project, **hook_kwargs(tmp_path))
    with pytest.raises(error) as info:
        hook.run_dbt_task(**{"command": "run", **run_kwargs})
    message = str(info.value)
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"
    assert "Traceback" not in message
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before, "nothing written in the project"
    assert _profile_dirs() <= profiles_before, "no profile dir left behind"


@pytest.mark.parametrize(
    ("project_dir", "words"),
    [("missing", ("does not exist",)), ("not_a_project", ("not a dbt project", "dbt_project.yml"))],
)
def test_bad_project_dir(project_dir: str, words: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "not_a_project").mkdir()
    with pytest.raises(DbtException) as info:
        DbtHook(tmp_path / project_dir, conn_id="good_duckdb").run_dbt_task("run")
    assert all(word in str(info.value) for word in words)
    assert str(tmp_path / project_dir) in str(info.value)


def test_ids_with_path_characters_stay_inside_the_root(project: Path) -> None:
    name = run_dir_name("../../etc", "task/../../x", 1, map_index=2)
    assert "/" not in name and ".." not in name
    hook = DbtHook(project, conn_id="good_duckdb", keep_target_artifacts=True)
    with pytest.raises(DbtCommandError):  # still bad input, but the name itself is accepted
        hook.run_dbt_task("deploy", run_name=name)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"retry_limit": -1}, ("retry_limit",)),
        ({"retry_delay": -2}, ("retry_delay",)),
        ({"invocation_mode": "threads"}, ("invocation_mode", "subprocess")),
        ({"invocation_mode": "in-process", "venv_path": "/opt/dbt"}, ("venv_path", "in-process")),
    ],
)
def test_bad_hook_settings_fail_when_the_hook_is_built(kwargs: dict[str, Any], words: tuple[str, ...]) -> None:
    with pytest.raises((ValueError, DbtException)) as info:
        DbtHook("/nonexistent", **kwargs)
    assert all(word in str(info.value) for word in words)


def test_arguments_after_the_project_are_keyword_only(project: Path) -> None:
    with pytest.raises(TypeError):
        DbtHook(project, "/opt/venvs/dbt")  # type: ignore[misc]
    hook = DbtHook(project, target_path="artifacts", run_dir_root=project / "runs")
    assert (hook.target_path, hook.run_dir_root) == ("artifacts", str(project / "runs"))


# -- finish_detached and a dbt that still runs -------------------------------------------------------------------


def _detached_run_dir(project: Path, dbt_pid: int) -> Path:
    import socket

    from dlh_airflow_common.dbt.detached import DBT_PROCESS_FILE, write_json_atomic
    from dlh_airflow_common.dbt.processes import process_start_ticks
    from dlh_airflow_common.dbt.run_dir import create_run_dir

    run_dir = create_run_dir("run_20260101_000000_dag_task_try1_live", project).path
    record = {"pid": dbt_pid, "start_ticks": process_start_ticks(dbt_pid), "host": socket.gethostname()}
    write_json_atomic(run_dir / DBT_PROCESS_FILE, record)
    return run_dir


def test_finish_detached_keeps_the_run_dir_of_a_dbt_that_still_runs(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import subprocess
    import sys
    import time

    dbt = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = _detached_run_dir(project, dbt.pid)
        event = {"status": "lost", "run_dir": str(run_dir), "started_at": time.time(), "message": "runner gone"}
        caplog.set_level("WARNING", logger="tests.hook")
        hook = DbtHook(project, logger=logging.getLogger("tests.hook"))
        result = hook.finish_detached(event, raise_on_failure=False)
    finally:
        dbt.kill()
        dbt.wait(timeout=30)
    assert not result.success
    assert f"dbt (pid {dbt.pid}) was still running" in str(result.error)
    assert run_dir.is_dir(), "never remove the files of a dbt that still runs"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(dbt.pid) in m and str(run_dir) in m for m in warnings), warnings


def test_finish_detached_removes_the_run_dir_once_dbt_has_ended(project: Path) -> None:
    import subprocess
    import sys
    import time

    dbt = subprocess.Popen([sys.executable, "-c", "pass"])
    run_dir = _detached_run_dir(project, dbt.pid)
    dbt.wait(timeout=30)
    event = {"status": "lost", "run_dir": str(run_dir), "started_at": time.time(), "message": "runner gone"}
    with pytest.raises(DbtException) as raised:
        DbtHook(project).finish_detached(event)
    result = raised.value.result
    assert result is not None and not result.success and "still running" not in str(result.error)
    assert not run_dir.exists()


# -- the hook's current try: cancel and the artifact getters -----------------------------------------------------


def _fake_dbt_hook(project: Path | str, tmp_path: Path, mode: str, **kwargs: Any) -> tuple[DbtHook, Path]:
    """A hook whose dbt is the stand-in (``fake_dbt_venv``), with the connection profile generated as usual."""
    from fake_dbt_venv import fake_dbt_venv

    calls = tmp_path / "calls.jsonl"
    env = {"FAKE_DBT_CALLS": str(calls), "FAKE_DBT_MODE": mode}
    venv = fake_dbt_venv(tmp_path / f"venv_{mode}")
    return DbtHook(project, venv_path=venv, conn_id="good_duckdb", env_vars=env, retry_limit=1, **kwargs), calls


def test_cancel_stops_the_try_in_progress_and_is_safe_without_one(project: Path, tmp_path: Path) -> None:
    import threading
    import time

    from fake_dbt_venv import fake_dbt_calls

    hook, calls = _fake_dbt_hook(project, tmp_path, "sleep", grace_period=5.0)
    hook.cancel()  # no try yet: nothing to stop, and the next try is not affected by it

    def cancel_once_dbt_runs() -> None:
        end = time.monotonic() + 60
        while not fake_dbt_calls(calls) and time.monotonic() < end:
            time.sleep(0.05)
        hook.cancel()

    stopper = threading.Thread(target=cancel_once_dbt_runs, daemon=True)
    stopper.start()
    result = hook.run_dbt_task("run", raise_on_failure=False)
    stopper.join(timeout=60)
    assert len(fake_dbt_calls(calls)) == 1, "the earlier cancel did not stop this try before dbt started"
    assert not result.success and "killed" in str(result.error)
    assert hook.invocation is None


def test_getters_read_the_last_try_that_got_a_run_dir(project: Path, tmp_path: Path) -> None:
    hook, _ = _fake_dbt_hook(project, tmp_path, "ok")
    assert hook.get_run_results() == {}, "no run yet and nothing in <project>/target"
    first = hook.run_dbt_task("run")
    assert first.run_dir is not None and not Path(first.run_dir).exists()
    invocation_id = hook.get_run_results()["metadata"]["invocation_id"]
    assert "model.proj.m" in hook.get_manifest()["nodes"]

    hook.conn_id = "nope"  # the next try fails before it has a run dir
    with pytest.raises(DbtProfileException):
        hook.run_dbt_task("run")
    assert hook.get_run_results()["metadata"]["invocation_id"] == invocation_id, "still the last run's"


# -- a remote project: fetched into the project cache, its version in the result -----------------------------------


def test_a_remote_project_runs_from_the_cache_and_reports_its_version(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fake_dbt_venv import fake_dbt_calls
    from remote_sources import tar_bytes

    bundle = tmp_path / "proj.tar.gz"
    files = {str(p.relative_to(project)): p.read_bytes() for p in project.rglob("*") if p.is_file()}
    bundle.write_bytes(tar_bytes(files))
    monkeypatch.setenv("AIRFLOW__DLH_DBT__PROJECT_CACHE_DIR", str(tmp_path / "configured"))
    hook, calls = _fake_dbt_hook(bundle.as_uri(), tmp_path, "ok", run_dir_root=str(tmp_path / "runs"),
                                 project_cache_dir=str(tmp_path / "cache"))  # fmt: skip
    first = hook.run_dbt_task("run")
    second = hook.run_dbt_task("run")
    expected = {"url": bundle.as_uri(), "kind": "archive", "version": first.project["version"]}
    assert first.project == second.project == expected
    assert first.to_xcom()["project"]["version"].startswith("size:")
    project_dirs = {call["args"][call["args"].index("--project-dir") + 1] for call in fake_dbt_calls(calls)}
    assert len(project_dirs) == 1 and Path(project_dirs.pop()).is_relative_to(tmp_path / "cache")
    assert not (tmp_path / "configured").exists(), "the argument wins over [dlh_dbt] project_cache_dir"
    assert Path(first.run_dir).parent == tmp_path / "runs"
    assert hook.last_checkout is not None and hook.last_checkout.version == first.project["version"]


def test_a_remote_project_defaults_its_run_dirs_and_cache_outside_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlh_airflow_common.dbt.run_dir import private_temp_root

    monkeypatch.delenv("AIRFLOW__DLH_DBT__PROJECT_CACHE_DIR", raising=False)
    hook = DbtHook("git+https://git.example.com/shop.git@main", conn_id="good_duckdb")
    assert hook.run_root() == str(private_temp_root())
    assert hook.project_cache_root() == private_temp_root() / ".dlh_cache" / "projects"
    assert hook.get_manifest() == {}, "no run yet: nothing to read, and nothing fetched for it"
    monkeypatch.setenv("AIRFLOW__DLH_DBT__PROJECT_CACHE_DIR", str(tmp_path / "configured"))
    assert hook.project_cache_root() == tmp_path / "configured"
    local = DbtHook(tmp_path, conn_id="good_duckdb")
    assert local.run_root() is None, "a local project keeps <project>/target"
