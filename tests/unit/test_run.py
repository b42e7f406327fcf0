"""Unit tests for dlh_airflow_common.dbt.run: one task try, sync and detached, against a stand-in dbt process
(``fake_dbt_venv``: a real executable, so every try runs real processes)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt import retry_state
from dlh_airflow_common.dbt.channel import ChannelReader, ChannelSpec
from dlh_airflow_common.dbt.command import DbtCommand
from dlh_airflow_common.dbt.project import DbtProject, load_project
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.dbt.run import PROFILE_DIR, DbtRun, RunSettings, raise_or_return
from dlh_airflow_common.dbt.run_dir import run_dir_name
from dlh_airflow_common.exceptions.dbt import DbtException, DbtRuntimeException
from dlh_airflow_common.hooks.dbt_profile_source import PreparedProfile, Profile
from fake_dbt_venv import fake_dbt_calls, fake_dbt_venv
from tests.unit.conftest import MemoryState

WAIT_SECONDS = 60.0


@pytest.fixture
def project(tmp_path: Path) -> DbtProject:
    path = tmp_path / "proj"
    (path / "models").mkdir(parents=True)
    (path / "dbt_project.yml").write_text("name: proj\nversion: '1.0'\nprofile: proj\n")
    (path / "models" / "m.sql").write_text("select 1 as id\n")
    return load_project(path)


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    return fake_dbt_venv(tmp_path / "venv")


@pytest.fixture
def calls(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


def _profile(calls: Path, mode: str = "ok") -> PreparedProfile:
    """A generated profile (written into the run dir) whose environment carries a secret and the stand-in's mode."""
    env = {"FAKE_DBT_CALLS": str(calls), "FAKE_DBT_MODE": mode, "DBT_ENV_SECRET_PW": "s3cr3t-pw"}
    profile = Profile(profiles_dir=None, profile_name="proj", target="airflow", env=env)
    return PreparedProfile(profile, generated={"type": "duckdb", "password": "{{ env_var('DBT_ENV_SECRET_PW') }}"})


def _settings(venv: Path, **overrides: Any) -> RunSettings:
    return RunSettings(venv_path=str(venv), retry_limit=1, grace_period=5.0, orphan_run_dir_age=None, **overrides)


class _Log:
    """A logger stand-in keeping every line (the task logger in production)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.lines.append(str(msg) % args if args else str(msg))

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._keep(msg, *args)

    info = warning = error = debug = exception = _keep


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    end = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"gave up after {WAIT_SECONDS:.0f}s waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- sync --------------------------------------------------------------------------------------------------------


def test_a_successful_try_removes_its_run_dir_and_keeps_the_artifacts(
    project: DbtProject, venv: Path, calls: Path
) -> None:
    run = DbtRun(project.path, _settings(venv), log=_Log(), run_name=run_dir_name("dag", "task", 1))
    assert not run.started
    result = run.run(project, DbtCommand("run"), _profile(calls))

    assert result.success and result.error is None and result.attempts == 1
    (call,) = fake_dbt_calls(calls)
    assert call["args"][0] == "run" and call["secret"] == "s3cr3t-pw", "the profile's environment reaches dbt"
    assert call["profile_written"], "the generated profile is in the run dir while dbt runs"
    assert result.run_dir is not None and not Path(result.run_dir).exists(), "the run dir goes with the run"
    assert run.started and run.target_path is None and run.invocation is None
    assert run.artifact("run_results.json")["results"][0]["unique_id"] == "model.proj.m"
    assert "model.proj.m" in run.artifact("manifest.json")["nodes"]
    assert run.artifact("catalog.json") == {}


def test_kept_artifacts_stay_in_the_run_dir_without_its_profile(project: DbtProject, venv: Path, calls: Path) -> None:
    run = DbtRun(project.path, _settings(venv, keep_target_artifacts=True), log=_Log())
    result = run.run(project, DbtCommand("run"), _profile(calls))

    run_dir = Path(str(result.run_dir))
    assert (run_dir / "target" / "run_results.json").is_file()
    assert not (run_dir / PROFILE_DIR).exists(), "dbt has ended: its profile is removed"
    assert run.target_path == str(run_dir / "target") and run.kept is None
    assert "s3cr3t-pw" not in "".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())


def test_a_failed_try_keeps_its_resume_state_and_the_next_try_resumes_with_dbt_retry(
    project: DbtProject, venv: Path, calls: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = DbtRun(project.path, _settings(venv), log=_Log(), resume_state=state)
    failed = first.run(project, DbtCommand("run"), _profile(calls, mode="fail"))

    assert not failed.success and isinstance(failed.error, DbtRuntimeException)
    assert failed.error.result is failed, "the error carries its result"
    assert "model.proj.m" in str(failed.error)
    assert (state / "run_results.json").is_file()

    log = _Log()
    second = DbtRun(project.path, _settings(venv), log=log, resume_state=state)
    resumed = second.run(project, DbtCommand("run"), _profile(calls, mode="fail"))
    assert [c["args"][0] for c in fake_dbt_calls(calls)] == ["run", "retry"]
    assert resumed.success and any("dbt retry" in line for line in log.lines)
    assert not (state / "run_results.json").exists(), "a successful try drops the state"


def test_resume_state_under_a_url_is_found_by_a_try_on_another_worker(
    project: DbtProject, venv: Path, calls: Path, tmp_path: Path, memory_state: MemoryState
) -> None:
    """Each try has its own run-dir root (another worker); the state is in the object store under the channel."""
    fs, opened = memory_state.fs, memory_state.opened
    url = "s3://bucket/runs/.dlh_state/dag/task/run/map-1"
    settings = {"run_channel": "s3://bucket/runs", "run_channel_conn_id": "aws"}
    first = DbtRun(project.path, _settings(venv, run_dir_root=str(tmp_path / "w1"), **settings), log=_Log(),
                   resume_state=url)  # fmt: skip
    assert not first.run(project, DbtCommand("run"), _profile(calls, mode="fail")).success
    assert sorted(fs.ls("/bucket/runs/.dlh_state/dag/task/run/map-1", detail=False)) == [
        "/bucket/runs/.dlh_state/dag/task/run/map-1/resume.json",
        "/bucket/runs/.dlh_state/dag/task/run/map-1/run_results.json",
    ]
    assert not (tmp_path / "w1" / ".dlh_state").exists(), "nothing is kept on the worker"
    assert {conn for _, conn in opened} == {"aws"}, "the state is reached with the channel's connection"

    log = _Log()
    second = DbtRun(project.path, _settings(venv, run_dir_root=str(tmp_path / "w2"), **settings), log=log,
                    resume_state=url)  # fmt: skip
    assert second.run(project, DbtCommand("run"), _profile(calls, mode="fail")).success
    assert [c["args"][0] for c in fake_dbt_calls(calls)] == ["run", "retry"]
    assert any("dbt retry" in line for line in log.lines)
    assert not fs.exists("/bucket/runs/.dlh_state/dag/task/run/map-1"), "the state goes once the task succeeds"


def test_a_detached_try_keeps_its_state_where_it_is_collected_and_the_next_resumes(
    project: DbtProject, venv: Path, calls: Path, tmp_path: Path, memory_state: MemoryState
) -> None:
    """launch() on one worker, collect() (execute_complete) on another keeps the state; the next try resumes."""
    fs = memory_state.fs
    url = "s3://bucket/runs/.dlh_state/dag/det/run/map-1"
    run = DbtRun(project.path, _settings(venv, run_dir_root=str(tmp_path / "w1")), log=_Log(),
                 run_name=run_dir_name("dag", "det", 1), resume_state=url)  # fmt: skip
    process = run.launch(project, DbtCommand("build"), _profile(calls, "fail"))
    reader = ChannelReader(ChannelSpec.from_dict(process.channel) or ChannelSpec(process.run_dir))
    wait_for(lambda: (s := reader.status()) is not None and s.finished, "the detached run to finish")
    collector = DbtRun(project.path, _settings(venv, run_dir_root=str(tmp_path / "w2")), log=_Log(), resume_state=url)
    failed = collector.collect({"status": "finished", **process.to_dict()}, redactor=lambda: Redactor(["s3cr3t-pw"]))
    assert not failed.success
    kept = fs.cat_file("/bucket/runs/.dlh_state/dag/det/run/map-1/run_results.json")
    assert json.loads(kept)["results"][0]["status"] == "error"

    log = _Log()
    resumed = DbtRun(project.path, _settings(venv, run_dir_root=str(tmp_path / "w3")), log=log,
                     run_name=run_dir_name("dag", "det", 2), resume_state=url)  # fmt: skip
    second = resumed.launch(project, DbtCommand("build"), _profile(calls, "fail"))
    assert any("dbt retry" in line for line in log.lines)
    reader = ChannelReader(ChannelSpec.from_dict(second.channel) or ChannelSpec(second.run_dir))
    wait_for(lambda: (s := reader.status()) is not None and s.finished, "the resumed run to finish")
    final = DbtRun(project.path, _settings(venv, run_dir_root=str(tmp_path / "w4")), log=_Log(), resume_state=url)
    assert final.collect({"status": "finished", **second.to_dict()}, redactor=lambda: Redactor([])).success
    assert [c["args"][0] for c in fake_dbt_calls(calls)] == ["build", "retry"]
    assert not fs.exists("/bucket/runs/.dlh_state/dag/det/run/map-1"), "the state goes once the task succeeds"


def test_unreachable_resume_state_runs_the_full_command_with_a_warning(
    project: DbtProject, venv: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(url: str, conn_id: str | None) -> Any:
        raise ConnectionError("could not connect to the endpoint")

    monkeypatch.setattr(retry_state, "open_url", unreachable)
    log = _Log()
    run = DbtRun(project.path, _settings(venv), log=log, resume_state="s3://bucket/state/dag/task")
    assert not run.run(project, DbtCommand("run"), _profile(calls, mode="fail")).success
    assert [c["args"][0] for c in fake_dbt_calls(calls)] == ["run"]
    warnings = [line for line in log.lines if "Could not open the dbt retry state at s3://bucket/state" in line]
    assert len(warnings) == 2, "one at the start (full command), one at the end (state not kept)"
    assert any("running the full command" in line for line in log.lines)


def test_raise_or_return_raises_the_typed_error_with_its_result(project: DbtProject, venv: Path, calls: Path) -> None:
    result = DbtRun(project.path, _settings(venv), log=_Log()).run(project, DbtCommand("run"), _profile(calls, "fail"))
    assert raise_or_return(result, False) is result
    with pytest.raises(DbtRuntimeException) as raised:
        raise_or_return(result, True)
    assert raised.value.result is result


def test_each_try_has_its_own_cancel(project: DbtProject, venv: Path, calls: Path) -> None:
    """A cancelled try never starts dbt; another try (its own state) runs normally."""
    cancelled = DbtRun(project.path, _settings(venv), log=_Log())
    cancelled.cancel()
    stopped = cancelled.run(project, DbtCommand("run"), _profile(calls))
    assert not stopped.success and stopped.error is not None and "killed" in str(stopped.error)
    assert fake_dbt_calls(calls) == [], "dbt never started"

    other = DbtRun(project.path, _settings(venv), log=_Log()).run(project, DbtCommand("run"), _profile(calls))
    assert other.success and len(fake_dbt_calls(calls)) == 1


def test_cancel_stops_a_running_dbt_and_leaves_no_process(project: DbtProject, venv: Path, calls: Path) -> None:
    run = DbtRun(project.path, _settings(venv), log=_Log())

    def cancel_once_dbt_runs() -> None:
        wait_for(lambda: fake_dbt_calls(calls), "dbt to start")
        run.cancel()

    stopper = threading.Thread(target=cancel_once_dbt_runs, daemon=True)
    stopper.start()
    result = run.run(project, DbtCommand("run"), _profile(calls, mode="sleep"))
    stopper.join(timeout=WAIT_SECONDS)

    assert not result.success and result.error is not None and "killed" in str(result.error)
    (call,) = fake_dbt_calls(calls)
    assert not _alive(call["pid"]), "dbt is gone once run() returns"
    assert result.run_dir is not None and not Path(result.run_dir).exists()


def test_a_user_target_path_is_never_removed(project: DbtProject, venv: Path, calls: Path) -> None:
    run = DbtRun(project.path, _settings(venv, target_path="artifacts"), log=_Log())
    result = run.run(project, DbtCommand("run"), _profile(calls))
    assert result.success and not Path(str(result.run_dir)).exists()
    assert run.target_path == str(project.path / "artifacts")
    assert run.artifact("run_results.json")["results"], "read from the user's target path"


def test_a_target_path_that_cannot_be_created_fails_before_dbt(
    project: DbtProject, venv: Path, calls: Path, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    run = DbtRun(project.path, _settings(venv, target_path=str(tmp_path / "file" / "t")), log=_Log())
    with pytest.raises(DbtException, match=r"target_path .* cannot be created"):
        run.run(project, DbtCommand("run"), _profile(calls))
    assert not run.started and fake_dbt_calls(calls) == []


# -- detached ----------------------------------------------------------------------------------------------------


def _launched(project: DbtProject, venv: Path, calls: Path, mode: str, **settings: Any) -> tuple[DbtRun, Any]:
    run = DbtRun(project.path, _settings(venv, **settings), log=_Log(), run_name=run_dir_name("dag", "det", 1))
    process = run.launch(project, DbtCommand("build"), _profile(calls, mode))
    reader = ChannelReader(ChannelSpec.from_dict(process.channel) or ChannelSpec(process.run_dir))
    wait_for(lambda: (s := reader.status()) is not None and s.finished, "the detached run to finish")
    return run, process


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_launch_then_collect_in_another_try_object(project: DbtProject, venv: Path, calls: Path, mode: str) -> None:
    """``collect`` runs where ``execute_complete`` runs: a new DbtRun, knowing only the trigger's event."""
    _, process = _launched(project, venv, calls, mode)
    assert Path(process.run_dir).is_dir() and (Path(process.run_dir) / PROFILE_DIR / "profiles.yml").is_file()

    seen: list[bool] = []
    collector = DbtRun(project.path, _settings(venv), log=_Log())
    event = {"status": "finished", **process.to_dict()}
    result = collector.collect(
        event,
        redactor=lambda: Redactor(["s3cr3t-pw"]),
        post_run=lambda r: seen.append(Path(str(r.run_dir)).is_dir()),
    )

    assert seen == [True], "post_run sees the run dir"
    assert not Path(process.run_dir).exists(), "collected and removed"
    assert result.success is (mode == "ok")
    if mode == "fail":
        assert isinstance(result.error, DbtRuntimeException) and result.error.result is result
        assert "model.proj.m" in str(result.error)
    assert collector.artifact("run_results.json")["results"][0]["unique_id"] == "model.proj.m"
    assert [c["args"][0] for c in fake_dbt_calls(calls)] == ["build"]


def test_collect_of_a_lost_run_fails_and_cleans_up(project: DbtProject, venv: Path, calls: Path) -> None:
    _, process = _launched(project, venv, calls, "ok")
    event = {"status": "lost", "message": "runner gone", **process.to_dict()}
    result = DbtRun(project.path, _settings(venv), log=_Log()).collect(event, redactor=lambda: Redactor([]))
    assert not result.success and str(result.error) == "runner gone"
    assert not Path(process.run_dir).exists()


def test_a_launch_that_fails_leaves_no_run_dir(project: DbtProject, venv: Path, calls: Path) -> None:
    def no_connection(conn_id: str) -> str:
        raise LookupError(f"no connection {conn_id}")

    settings = _settings(venv, run_channel="s3://bucket/prefix", run_channel_conn_id="aws")
    run = DbtRun(project.path, settings, log=_Log(), run_name=run_dir_name("dag", "det", 1))
    with pytest.raises(LookupError, match="no connection aws"):
        run.launch(project, DbtCommand("build"), _profile(calls), channel_connection=no_connection)
    assert run.target_path is not None and not Path(run.target_path).parent.exists(), "its run dir is removed"
    assert fake_dbt_calls(calls) == []
