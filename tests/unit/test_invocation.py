"""Unit tests for dlh_airflow_common.dbt.invocation: locating dbt, subprocess and in-process runs."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dlh_airflow_common.dbt import invocation as invocation_module
from dlh_airflow_common.dbt.event_runner import RUNNER_LOG_ARGS
from dlh_airflow_common.dbt.invocation import (
    BASE_ENV,
    CLI_LOG_ARGS,
    DbtInvocation,
    InvocationResult,
    _patched_environ,
    dbt_executable,
)
from dlh_airflow_common.exceptions.dbt import DbtException
from fake_dbt_runner import FakeDbtRunner, install_fake_runner

FAKE_DBT = textwrap.dedent(
    """\
    #!{python}
    import json
    import os
    import sys

    args = sys.argv[1:]


    def emit(name, level, msg, /, **data):
        print(json.dumps({{"info": {{"name": name, "level": level, "msg": msg}}, "data": data}}), flush=True)


    if "--log-format" not in args or args[args.index("--log-format") + 1] != "json":
        print("fake dbt: --log-format json missing", flush=True)
        sys.exit(3)

    emit("MainReportArgs", "info", "args", args=args)
    emit(
        "EnvEcho",
        "info",
        os.environ.get("FAKE_ECHO", "<unset>"),
        anonymous=os.environ.get("DBT_SEND_ANONYMOUS_USAGE_STATS"),
        version_check=os.environ.get("DBT_VERSION_CHECK"),
        unbuffered=os.environ.get("PYTHONUNBUFFERED"),
        parent=os.environ.get("FAKE_PARENT_ONLY", "<unset>"),
    )
    print("plain text from a package", flush=True)
    print("{{not json at all", flush=True)
    print(json.dumps({{"no_info_key": True}}), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    print("", flush=True)
    emit(
        "RunResultError",
        "error",
        "  Database Error in model orders",
        msg="Database Error in model orders",
        node_info={{"unique_id": "model.shop.orders"}},
    )
    for i in range(int(os.environ.get("FAKE_EXTRA_ERRORS", "0"))):
        node = {{"unique_id": f"model.p.m{{i}}"}}
        emit("RunResultError", "error", f"error {{i}}", msg=f"error {{i}}", node_info=node)
    sys.exit(int(os.environ.get("FAKE_EXIT", "1")))
    """
)


@pytest.fixture
def fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    script = venv / "bin" / "dbt"
    script.write_text(FAKE_DBT.format(python=sys.executable), encoding="utf-8")
    script.chmod(0o755)
    return venv


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["info"]["name"] for e in events]


# ---------------------------------------------------------------------------------------------------------
# dbt_executable
# ---------------------------------------------------------------------------------------------------------


def test_dbt_executable_found(fake_venv: Path) -> None:
    assert dbt_executable(fake_venv) == fake_venv / "bin" / "dbt"
    assert dbt_executable(str(fake_venv)) == fake_venv / "bin" / "dbt"


def test_dbt_executable_given_directly(fake_venv: Path) -> None:
    direct = fake_venv / "bin" / "dbt"
    assert dbt_executable(direct) == direct


def test_missing_venv(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_venv"
    with pytest.raises(DbtException, match="does not exist") as excinfo:
        dbt_executable(missing)
    assert str(missing) in str(excinfo.value)


def test_venv_without_dbt(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    with pytest.raises(DbtException, match="has no dbt executable") as excinfo:
        dbt_executable(venv)
    message = str(excinfo.value)
    assert str(venv / "bin" / "dbt") in message
    assert "install dbt-core" in message


def test_venv_with_non_executable_dbt(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "dbt").write_text("#!/bin/sh\n")
    (venv / "bin" / "dbt").chmod(0o644)
    if os.access(venv / "bin" / "dbt", os.X_OK):  # pragma: no cover - root with odd mount options
        pytest.skip("file system reports a 0644 file as executable")
    with pytest.raises(DbtException, match="has no dbt executable"):
        dbt_executable(venv)


def test_venv_with_dbt_directory(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin" / "dbt").mkdir(parents=True)
    with pytest.raises(DbtException, match="has no dbt executable"):
        dbt_executable(venv)


def test_invocation_checks_venv_up_front(tmp_path: Path) -> None:
    with pytest.raises(DbtException, match="does not exist"):
        DbtInvocation(["run"], venv_path=tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------
# Subprocess mode with a fake dbt
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_subprocess_run(fake_venv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_PARENT_ONLY", "inherited")
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "true")  # BASE_ENV must win over the worker's env
    events: list[dict[str, Any]] = []
    output: list[str] = []
    argv = ["run", "--project-dir", "/srv/shop", "--select", "orders"]
    invocation = DbtInvocation(
        argv, env={"FAKE_ECHO": "hello-from-env"}, venv_path=fake_venv, on_event=events.append, on_output=output.append
    )
    assert invocation.mode == "subprocess"

    result = invocation.run()

    assert isinstance(result, InvocationResult)
    assert result.return_code == 1
    assert result.success is False
    assert result.exception is None
    assert names(events) == ["MainReportArgs", "EnvEcho", "RunResultError"]

    child_args = events[0]["data"]["args"]
    assert child_args[: len(argv)] == argv
    assert child_args[child_args.index("--log-format") + 1] == "json"

    env_event = events[1]
    assert env_event["info"]["msg"] == "hello-from-env"
    assert env_event["data"]["anonymous"] == "false"
    assert env_event["data"]["version_check"] == "false"
    assert env_event["data"]["unbuffered"] == "1"
    assert env_event["data"]["parent"] == "inherited"

    assert output == ["plain text from a package", "{not json at all", '{"no_info_key": true}', "to stderr"]

    assert result.error_events == [events[2]]
    assert result.error_events[0]["data"]["node_info"]["unique_id"] == "model.shop.orders"
    assert invocation.error_events is result.error_events
    assert invocation.process is not None
    assert invocation.process.returncode == 1


@pytest.mark.timeout(120)
def test_subprocess_success_exit_code(fake_venv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_EXIT", "0")
    result = DbtInvocation(["debug"], venv_path=fake_venv, on_output=lambda _: None).run()
    assert result.return_code == 0
    assert result.success is True


@pytest.mark.timeout(120)
def test_subprocess_output_to_stderr_without_handler(fake_venv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events: list[dict[str, Any]] = []
    result = DbtInvocation(["run"], venv_path=fake_venv, on_event=events.append).run()
    assert result.return_code == 1
    err = capsys.readouterr().err
    assert "plain text from a package" in err
    assert "{not json at all" in err
    assert "RunResultError" not in err
    assert names(events) == ["MainReportArgs", "EnvEcho", "RunResultError"]


@pytest.mark.timeout(120)
def test_subprocess_error_events_are_capped(fake_venv: Path) -> None:
    events: list[dict[str, Any]] = []
    result = DbtInvocation(
        ["build"], env={"FAKE_EXTRA_ERRORS": "520"}, venv_path=fake_venv, on_event=events.append, on_output=print
    ).run()
    assert len(events) == 3 + 520
    assert len(result.error_events) == 500
    assert result.error_events[0]["data"]["node_info"]["unique_id"] == "model.shop.orders"


def test_base_env() -> None:
    assert BASE_ENV["DBT_SEND_ANONYMOUS_USAGE_STATS"] == "false"
    assert BASE_ENV["DBT_VERSION_CHECK"] == "false"
    invocation = DbtInvocation(["run"], env={"EXTRA": "1"})
    assert invocation.env == {**BASE_ENV, "EXTRA": "1"}
    assert invocation.mode == "subprocess", "subprocess is the default: only it can be stopped reliably"
    # The dbt beside this interpreter runs through the event runner; its log flags come last so they win.
    assert invocation.subprocess_args == [
        sys.executable, "-m", "dlh_airflow_common.dbt.event_runner", "run", *RUNNER_LOG_ARGS
    ]  # fmt: skip


def test_venv_runs_its_own_dbt_cli(fake_venv: Path) -> None:
    invocation = DbtInvocation(["run", "--select", "a"], venv_path=fake_venv)
    assert invocation.subprocess_args == [str(fake_venv / "bin" / "dbt"), "run", "--select", "a", *CLI_LOG_ARGS]
    assert "--log-format" in CLI_LOG_ARGS and "--log-level" not in CLI_LOG_ARGS


def test_dispatch_line_routes_json_events_and_text() -> None:
    events: list[dict[str, Any]] = []
    output: list[str] = []
    invocation = DbtInvocation(["run"], on_event=events.append, on_output=output.append)
    error_event = {"info": {"name": "MainEncounteredError", "level": "error", "msg": "boom"}, "data": {"exc": "boom"}}
    info_event = {"info": {"name": "Note", "level": "info", "msg": "hi"}, "data": {}}
    for line in [json.dumps(info_event) + "\n", "   \n", "text line\n", json.dumps(error_event), "[1, 2]", '{"x": 1}']:
        invocation._dispatch_line(line)
    assert events == [info_event, error_event]
    assert invocation.error_events == [error_event]
    assert output == ["text line", "[1, 2]", '{"x": 1}']


def _interrupted_events() -> list[dict[str, Any]]:
    """What dbt logs when SIGINT ends it while a node runs, in order (real names, levels and shapes)."""
    return [
        {"info": {"name": "LogCancelLine", "level": "error", "msg": "CANCEL query model.shop.slow"}, "data": {}},
        {"info": {"name": "LogModelResult", "level": "error", "msg": "1 of 1 ERROR"},
         "data": {"index": 1, "total": 1, "status": "error", "node_info": {"unique_id": "model.shop.slow"}}},
        {"info": {"name": "EndOfRunSummary", "level": "info", "msg": "Exited because of keyboard interrupt"},
         "data": {"keyboard_interrupt": True}},
        {"info": {"name": "MainEncounteredError", "level": "error", "msg": "Encountered an error:\n"},
         "data": {"exc": ""}},
        {"info": {"name": "MainStackTrace", "level": "error", "msg": "Traceback (most recent call last):\n..."},
         "data": {"stack_trace": "Traceback (most recent call last):\n...KeyboardInterrupt"}},
    ]  # fmt: skip


def test_after_a_stop_the_interrupt_traceback_is_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    events: list[dict[str, Any]] = []
    invocation = DbtInvocation(["run"], on_event=events.append, on_output=lambda _: None)
    invocation.stopped = "timeout"  # stop() sets it before it sends SIGINT
    caplog.set_level("DEBUG", logger=invocation_module.__name__)
    for event in _interrupted_events():
        invocation._dispatch_line(json.dumps(event))

    assert names(events) == ["LogCancelLine", "LogModelResult", "EndOfRunSummary"]
    debug = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert any("Traceback" in line for line in debug) and any("Encountered an error" in line for line in debug)
    assert [r for r in caplog.records if r.levelname not in ("DEBUG",)] == []


def test_without_a_stop_dbt_errors_are_never_swallowed() -> None:
    events: list[dict[str, Any]] = []
    invocation = DbtInvocation(["run"], on_event=events.append, on_output=lambda _: None)
    for event in _interrupted_events():  # e.g. someone else sent dbt SIGINT: a failure we did not cause
        invocation._dispatch_line(json.dumps(event))
    assert names(events) == [e["info"]["name"] for e in _interrupted_events()]
    assert "MainStackTrace" in names(invocation.error_events)


# ---------------------------------------------------------------------------------------------------------
# In-process mode (dbtRunner replaced by a fake that sends real dbt event messages)
# ---------------------------------------------------------------------------------------------------------


def _real_event_messages() -> list[Any]:
    from dbt.adapters.events.types import SQLQuery
    from dbt.events.types import LogModelResult, RunResultError
    from dbt_common.events.base_types import EventLevel, msg_from_base_event

    node_info = {"unique_id": "model.shop.orders", "node_name": "orders"}
    return [
        msg_from_base_event(SQLQuery(conn_name="orders", sql="select 1", node_info=node_info)),  # debug: dropped
        msg_from_base_event(
            LogModelResult(
                description="sql table model main.orders",
                status="error",
                index=1,
                total=1,
                execution_time=0.1,
                node_info=node_info,
            ),
            level=EventLevel.ERROR,
        ),
        msg_from_base_event(RunResultError(msg="Database Error in model orders", node_info=node_info)),
    ]


FakeRunner = FakeDbtRunner


@pytest.fixture
def fake_runner(monkeypatch: pytest.MonkeyPatch) -> type[FakeRunner]:
    monkeypatch.delenv("DBT_ENV_SECRET_PASSWORD", raising=False)
    return install_fake_runner(monkeypatch, _real_event_messages())


@pytest.mark.parametrize(
    ("success", "exception", "code"),
    [(True, None, 0), (False, None, 1), (False, RuntimeError("crash"), 2)],
)
def test_in_process_run(
    fake_runner: type[FakeRunner], monkeypatch: pytest.MonkeyPatch, success: bool, exception: Any, code: int
) -> None:
    monkeypatch.setattr(FakeRunner, "outcome", SimpleNamespace(success=success, exception=exception, result=None))
    events: list[dict[str, Any]] = []
    invocation = DbtInvocation(
        ["run", "--select", "orders"],
        env={"DBT_ENV_SECRET_PASSWORD": "pw-123"},
        on_event=events.append,
        mode="in-process",
    )
    result = invocation.run()

    assert result.return_code == code
    assert result.exception is exception
    assert len(fake_runner.calls) == 1
    call = fake_runner.calls[0]
    assert call["secret"] == "pw-123"  # the env is visible to dbt while it runs
    assert call["args"][:3] == ["run", "--select", "orders"]
    assert call["args"][call["args"].index("--log-level") + 1] == "none"  # events reach us via callbacks only
    assert "DBT_ENV_SECRET_PASSWORD" not in os.environ
    assert names(events) == ["LogModelResult", "RunResultError"]
    assert events[0]["data"]["node_info"]["unique_id"] == "model.shop.orders"
    assert events[0]["info"]["level"] == "error"
    assert result.error_events == events


def test_in_process_stop_keeps_the_interrupt_traceback_out_of_the_events(monkeypatch: pytest.MonkeyPatch) -> None:
    import traceback

    from dbt.events.types import MainEncounteredError, MainStackTrace
    from dbt_common.events.base_types import msg_from_base_event

    class Interrupted(FakeRunner):
        """Stopped while it runs; like dbt, it catches the KeyboardInterrupt and logs it with its traceback."""

        def invoke(self, args: list[str]) -> Any:
            try:
                invocation.stop("timeout")  # on dbt's own thread: raises KeyboardInterrupt here
            except KeyboardInterrupt as interrupt:
                trace = traceback.format_exc()
                for message in (MainEncounteredError(exc=str(interrupt)), MainStackTrace(stack_trace=trace)):
                    for callback in self.callbacks:
                        callback(msg_from_base_event(message))
                return SimpleNamespace(success=False, exception=interrupt, result=None)
            raise AssertionError("stop() did not interrupt dbt")

    install_fake_runner(monkeypatch, [], Interrupted)
    events: list[dict[str, Any]] = []
    invocation = DbtInvocation(["run"], on_event=events.append, mode="in-process")
    result = invocation.run()
    assert result.stopped == "timeout" and result.return_code == 2
    assert events == [] and result.error_events == []


@pytest.mark.timeout(60)
def test_concurrent_in_process_runs_do_not_leak_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import dbt.cli.main

    b_inside = threading.Event()
    a_done = threading.Event()
    threads: list[threading.Thread] = []
    ok = SimpleNamespace(success=True, exception=None, result=None)

    class InterleavingRunner:
        def __init__(self, callbacks: list[Any] | None = None) -> None:
            pass

        def invoke(self, args: list[str]) -> Any:
            if args[0] == "A":
                second = DbtInvocation(["B"], env={"DBT_ENV_SECRET_PASSWORD": "secret-of-b"}, mode="in-process")
                thread = threading.Thread(target=second.run, daemon=True)
                threads.append(thread)
                thread.start()
                b_inside.wait(timeout=2)  # a correct global lock keeps B out until A is finished
            else:
                b_inside.set()
                a_done.wait(timeout=30)
            return ok

    monkeypatch.setattr(dbt.cli.main, "dbtRunner", InterleavingRunner)
    for key in ("DBT_ENV_SECRET_PASSWORD", *BASE_ENV):  # the leak must not reach other tests
        monkeypatch.delenv(key, raising=False)

    DbtInvocation(["A"], env={"DBT_ENV_SECRET_PASSWORD": "secret-of-a"}, mode="in-process").run()
    a_done.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert os.environ.get("DBT_ENV_SECRET_PASSWORD") is None


# ---------------------------------------------------------------------------------------------------------
# _patched_environ
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def env_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    monkeypatch.setenv("DLH_TEST_CHANGED", "original")
    monkeypatch.setenv("DLH_TEST_SAME", "same")
    monkeypatch.setenv("DLH_TEST_EMPTY", "")
    monkeypatch.delenv("DLH_TEST_ABSENT", raising=False)
    monkeypatch.setenv("DLH_TEST_UNTOUCHED", "keep")
    return {
        "DLH_TEST_CHANGED": "original",
        "DLH_TEST_SAME": "same",
        "DLH_TEST_EMPTY": "",
        "DLH_TEST_ABSENT": None,
        "DLH_TEST_UNTOUCHED": "keep",
    }


PATCH = {
    "DLH_TEST_CHANGED": "patched",
    "DLH_TEST_SAME": "same",
    "DLH_TEST_EMPTY": "now-set",
    "DLH_TEST_ABSENT": "appeared",
}


def current(keys: dict[str, str | None]) -> dict[str, str | None]:
    return {key: os.environ.get(key) for key in keys}


def test_patched_environ_sets_and_restores(env_keys: dict[str, str | None]) -> None:
    with _patched_environ(PATCH):
        assert current(env_keys) == {**PATCH, "DLH_TEST_UNTOUCHED": "keep"}
    assert current(env_keys) == env_keys
    assert "DLH_TEST_ABSENT" not in os.environ


def test_patched_environ_restores_when_body_raises(env_keys: dict[str, str | None]) -> None:
    with pytest.raises(ValueError, match="dbt crashed"), _patched_environ(PATCH):
        assert os.environ["DLH_TEST_ABSENT"] == "appeared"
        raise ValueError("dbt crashed")
    assert current(env_keys) == env_keys
    assert "DLH_TEST_ABSENT" not in os.environ


def test_patched_environ_restores_keys_the_body_changed(env_keys: dict[str, str | None]) -> None:
    with _patched_environ(PATCH):
        os.environ["DLH_TEST_CHANGED"] = "changed by dbt"
        del os.environ["DLH_TEST_ABSENT"]
    assert current(env_keys) == env_keys


def test_patched_environ_with_empty_mapping(env_keys: dict[str, str | None]) -> None:
    before = dict(os.environ)
    with _patched_environ({}):
        assert dict(os.environ) == before
    assert dict(os.environ) == before


def test_module_exposes_max_error_events() -> None:
    assert invocation_module._MAX_ERROR_EVENTS == 500


# ---------------------------------------------------------------------------------------------------------
# stopping a subprocess: SIGINT to the group, grace period, then SIGKILL
# ---------------------------------------------------------------------------------------------------------
def _sleepy_dbt(tmp_path: Path, *, ignore_sigint: bool) -> Path:
    venv = tmp_path / ("stubborn" if ignore_sigint else "polite")
    (venv / "bin").mkdir(parents=True)
    script = venv / "bin" / "dbt"
    handler = "signal.signal(signal.SIGINT, signal.SIG_IGN)" if ignore_sigint else ""
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, signal, sys, time\n"
        f"{handler}\n"
        "print(json.dumps({'info': {'name': 'MainReportVersion', 'level': 'info', 'msg': 'started'}, 'data': {}}),"
        " flush=True)\n"
        "try:\n"
        "    time.sleep(600)\n"
        "except KeyboardInterrupt:\n"
        "    print('cancelled', flush=True)\n"
        "    sys.exit(2)\n"
    )
    script.chmod(0o755)
    return venv


@pytest.mark.timeout(60)
def test_timeout_stops_a_polite_dbt_with_sigint(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    invocation = DbtInvocation(["run"], venv_path=_sleepy_dbt(tmp_path, ignore_sigint=False), on_event=events.append,
                               on_output=lambda _: None, grace_period=30)  # fmt: skip
    result = invocation.run(timeout=1)
    assert result.stopped == "timeout"
    assert result.return_code == 2, "exited by itself on SIGINT, well before the 30 s grace period"
    assert [e["info"]["name"] for e in events] == ["MainReportVersion"]


@pytest.mark.timeout(60)
def test_stubborn_dbt_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    invocation = DbtInvocation(["run"], venv_path=_sleepy_dbt(tmp_path, ignore_sigint=True), on_output=lambda _: None,
                               grace_period=0.5)  # fmt: skip
    result = invocation.run(timeout=1)
    assert result.stopped == "timeout"
    assert result.return_code == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_stop_from_another_thread_and_no_zombie(tmp_path: Path) -> None:
    invocation = DbtInvocation(["run"], venv_path=_sleepy_dbt(tmp_path, ignore_sigint=False), on_output=lambda _: None)
    threading.Timer(1.0, invocation.stop).start()
    result = invocation.run()
    assert result.stopped == "killed"
    assert invocation.process is not None
    pid = invocation.process.pid
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left behind
    invocation.stop()  # idempotent


def test_in_process_mode_refuses_a_venv(tmp_path: Path) -> None:
    with pytest.raises(DbtException, match="needs the subprocess mode"):
        DbtInvocation(["run"], venv_path=tmp_path, mode="in-process")
    with pytest.raises(DbtException, match="Unknown invocation mode"):
        DbtInvocation(["run"], mode="thread")  # type: ignore[arg-type]


class FreezeProbeRunner(FakeRunner):
    """Sends dbt's nodes-start event, then records whether the heap was frozen while dbt ran."""

    frozen_during: list[int] = []

    def invoke(self, args: list[str]) -> Any:
        import gc

        from dbt.events.types import ConcurrencyLine
        from dbt_common.events.base_types import msg_from_base_event

        for callback in self.callbacks:
            callback(msg_from_base_event(ConcurrencyLine(num_threads=1, target_name="dev", node_count=1)))
        FreezeProbeRunner.frozen_during.append(gc.get_freeze_count())
        return SimpleNamespace(success=True, exception=None, result=None)


def test_in_process_run_freezes_the_parsed_heap_and_unfreezes_after(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    import dbt.cli.main

    monkeypatch.setattr(dbt.cli.main, "dbtRunner", FreezeProbeRunner)
    monkeypatch.setattr(FreezeProbeRunner, "frozen_during", [])
    assert gc.get_freeze_count() == 0
    assert DbtInvocation(["run"], mode="in-process").run().success
    assert FreezeProbeRunner.frozen_during[0] > 0
    assert gc.get_freeze_count() == 0, "the worker's heap is given back to the collector"


def test_in_process_run_leaves_a_host_freeze_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    import dbt.cli.main

    monkeypatch.setattr(dbt.cli.main, "dbtRunner", FreezeProbeRunner)
    monkeypatch.setattr(FreezeProbeRunner, "frozen_during", [])
    gc.freeze()  # e.g. a host that froze its heap before forking workers
    try:
        host = gc.get_freeze_count()
        assert DbtInvocation(["run"], mode="in-process").run().success
        assert FreezeProbeRunner.frozen_during[0] <= host, "no second freeze on top of the host's"
        assert gc.get_freeze_count() > 0, "the host's freeze is still in place"
    finally:
        gc.unfreeze()
