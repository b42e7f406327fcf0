"""Unit tests for DbtExecutionTrigger against real run dirs and real processes standing in for the dbt runner.

Each "run" is a small Python child in its own session (as the detached runner is), with the run dir's
files written by the test the way the runner writes them. Waits are bounded and fail with a message;
nothing asserts on how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent

import dlh_airflow_common.triggers.dbt as trigger_module
from dlh_airflow_common.dbt.channel import NODE_RING, ChannelSpec, ChannelStore, ChannelWriter, RunStatus
from dlh_airflow_common.dbt.detached import (
    DBT_PROCESS_FILE,
    PROCESS_FILE,
    STATUS_FILE,
    process_alive,
    process_start_ticks,
    write_json_atomic,
)
from dlh_airflow_common.hooks.dbt import DbtHook
from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger

POLL = 0.05
WAIT_SECONDS = 20.0
HOST = socket.gethostname()
CLASSPATH = "dlh_airflow_common.triggers.dbt.DbtExecutionTrigger"
LOGGER = "tests.dbt_trigger"

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
# Stops on SIGINT as dbt does (cancel, then exit), leaving a mark that it got SIGINT and not SIGKILL.
GRACEFUL = textwrap.dedent(
    """\
    import pathlib, signal, sys, time
    def stop(*_):
        pathlib.Path(sys.argv[1]).write_text("SIGINT")
        sys.exit(130)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    time.sleep(60)
    """
)
# Ignores SIGINT, and so does the child it starts in the same process group (think: a hung adapter).
STUBBORN = textwrap.dedent(
    """\
    import signal, subprocess, sys, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(child.pid, flush=True)
    time.sleep(60)
    """
)

# A runner that starts "dbt" in its own process group and prints dbt's pid; dbt stops on SIGINT (leaving a mark).
RUNNER_WITH_DBT = textwrap.dedent(
    """\
    import subprocess, sys, time
    dbt = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True)
    dbt.stdout.readline()
    print(dbt.pid, flush=True)
    time.sleep(60)
    """
)

RUN_RESULT_ERROR = {
    "info": {"name": "RunResultError", "level": "error", "code": "Z024", "msg": "  Database Error in model bad"},
    "data": {
        "msg": "Database Error in model bad (models/bad.sql)\n  division by zero\n  compiled code at target/bad.sql",
        "node_info": {"unique_id": "model.shop.bad", "node_status": "None", "resource_type": "model"},
    },
}


def model_result(index: int, total: int, name: str, status: str = "success") -> dict[str, Any]:
    return {
        "info": {"name": "LogModelResult", "level": "info" if status == "success" else "error", "msg": name},
        "data": {
            "index": index,
            "total": total,
            "status": status,
            "execution_time": 1.25,
            "node_info": {"unique_id": f"model.shop.{name}", "node_status": status},
        },
    }


@dataclass
class FakeRun:
    """A run dir plus the live process playing the detached runner."""

    run_dir: Path
    proc: subprocess.Popen[str]
    ticks: int
    first_line: str
    triggers: list[DbtExecutionTrigger] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    writer: ChannelWriter | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def channel(self) -> ChannelWriter:
        """The real channel writer over this run dir, playing the runner's part."""
        if self.writer is None:
            self.writer = ChannelWriter(ChannelSpec(str(self.run_dir)), command="run")
        return self.writer

    def trigger(self, **overrides: Any) -> DbtExecutionTrigger:
        kwargs: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "pid": self.pid,
            "host": HOST,
            "pgid": self.pid,
            "start_ticks": self.ticks,
            "started_at": self.started_at,
            "poll_interval": POLL,
            "grace_period": 5.0,
            **overrides,
        }
        trigger = DbtExecutionTrigger(**kwargs)
        with_test_logger(trigger)
        self.triggers.append(trigger)
        return trigger

    def write_status(self, exit_code: int, error_events: list[dict[str, Any]] | None = None) -> None:
        for event in error_events or ():
            self.channel.event(event)
        self.channel.finish(exit_code, stopped=None)

    def publish(self, *events: dict[str, Any]) -> None:
        """dbt's events as the runner takes them, then one heartbeat."""
        for event in events:
            self.channel.event(event)
        self.channel.heartbeat()

    def alive(self) -> bool:
        return process_alive(self.pid, self.ticks)

    def reap(self) -> int:
        """waitpid our child, so no zombie is left; fails the test if it does not end."""
        try:
            return self.proc.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {self.pid} still running {WAIT_SECONDS:.0f}s after it should have ended")


def import_string(classpath: str) -> Any:
    """What the triggerer does with a stored classpath."""
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


def with_test_logger(trigger: DbtExecutionTrigger) -> DbtExecutionTrigger:
    """Route the trigger's log (structlog in Airflow 3) to a stdlib logger, so caplog sees it."""
    trigger._log = logging.getLogger(LOGGER)
    return trigger


class Runs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[FakeRun] = []

    def start(self, script: str = SLEEPER, *args: str) -> FakeRun:
        run_dir = self.root / f"run_20260101_000000_dag_task_try1_{len(self.started):04d}"
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "target").mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert proc.stdout is not None
        first_line = proc.stdout.readline().strip()  # the child is set up (signal handlers installed)
        if not first_line:
            pytest.fail(f"the stand-in runner exited at start with {proc.wait(timeout=WAIT_SECONDS)}")
        ticks = process_start_ticks(proc.pid)
        assert ticks is not None
        run = FakeRun(run_dir, proc, ticks, first_line)
        self.started.append(run)
        return run

    def stop_all(self) -> None:
        for run in self.started:
            if run.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.pid, signal.SIGKILL)
                run.proc.wait(timeout=WAIT_SECONDS)
            if run.proc.stdout is not None:
                run.proc.stdout.close()


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    factory = Runs(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def progress(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return caplog


def messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and (level is None or r.levelno == level)]


async def all_events(trigger: DbtExecutionTrigger, timeout: float = WAIT_SECONDS) -> list[TriggerEvent]:
    """Every event ``run()`` yields until it returns; fails the test if it does not return in time."""

    async def drain() -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    try:
        return await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        pytest.fail(f"the trigger yielded no final event within {timeout:.0f}s")


async def the_event(trigger: DbtExecutionTrigger, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
    events = await all_events(trigger, timeout)
    assert len(events) == 1, f"exactly one event per run, got {[e.payload for e in events]}"
    payload = events[0].payload
    assert isinstance(payload, dict)
    return payload


async def until(condition: Any, what: str, timeout: float = WAIT_SECONDS) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"gave up after {timeout:.0f}s waiting for {what}")


async def polls(count: int = 4) -> None:
    """Let the trigger poll a few times (how long does not matter to any assertion)."""
    await asyncio.sleep(POLL * count)


# -- finished runs ----------------------------------------------------------------------------------------------


async def test_success_is_reported_once_when_status_appears(runs: Runs) -> None:
    run = runs.start()
    trigger = run.trigger()
    watching = asyncio.create_task(all_events(trigger))
    await polls()
    assert not watching.done(), "no event while dbt runs and there is no status.json"
    run.write_status(0)
    events = await watching
    assert [e.payload for e in events] == [
        {
            "status": "success",
            "run_dir": str(run.run_dir),
            "pid": run.pid,
            "host": HOST,
            "exit_code": 0,
            "started_at": run.started_at,
            "channel": ChannelSpec(str(run.run_dir)).to_dict(),
        }
    ]
    assert run.alive(), "the trigger only watches; it never stops a run that finished"


async def test_status_left_by_a_runner_that_already_exited_is_a_result_not_lost(runs: Runs) -> None:
    run = runs.start()
    run.write_status(0)
    run.proc.kill()
    run.reap()
    assert (await the_event(run.trigger()))["status"] == "success"


async def test_runtime_error_names_the_exception_and_the_node(runs: Runs) -> None:
    run = runs.start()
    run.write_status(1, [RUN_RESULT_ERROR])
    payload = await the_event(run.trigger())
    assert payload == {
        "status": "error",
        "run_dir": str(run.run_dir),
        "pid": run.pid,
        "host": HOST,
        "started_at": run.started_at,
        "channel": ChannelSpec(str(run.run_dir)).to_dict(),
        "exit_code": 1,
        "reason": "DbtRuntimeException",
        "node_id": "model.shop.bad",
    }
    assert json.loads(json.dumps(payload)) == payload, "the event payload must be plain JSON"


async def test_failure_without_error_events_is_a_generic_error(runs: Runs) -> None:
    run = runs.start()
    run.write_status(2)
    payload = await the_event(run.trigger())
    assert (payload["status"], payload["exit_code"], payload["reason"], payload["node_id"]) == (
        "error",
        2,
        "DbtException",
        None,
    )


# -- timeout ----------------------------------------------------------------------------------------------------


async def test_timeout_stops_dbt_gracefully_with_sigint(runs: Runs, tmp_path: Path, progress: Any) -> None:
    mark = tmp_path / "got-sigint"
    run = runs.start(GRACEFUL, str(mark))
    payload = await the_event(run.trigger(deadline=time.time() - 1, grace_period=WAIT_SECONDS))
    assert payload["status"] == "timeout"
    assert "timeout" in payload["message"]
    assert run.reap() == 130, "dbt ended through its SIGINT handler"
    assert mark.read_text() == "SIGINT"
    assert any("SIGINT sent to process group" in m for m in messages(progress))
    assert not any("SIGKILL" in m for m in messages(progress, logging.WARNING))


async def test_timeout_kills_a_group_that_ignores_sigint_after_the_grace_period(runs: Runs, progress: Any) -> None:
    run = runs.start(STUBBORN)
    grandchild = int(run.first_line)
    grandchild_ticks = process_start_ticks(grandchild)
    assert process_alive(grandchild, grandchild_ticks)

    payload = await the_event(run.trigger(deadline=time.time() - 1, grace_period=0.3))

    assert payload["status"] == "timeout"
    assert run.reap() == -signal.SIGKILL, "SIGINT was ignored, so SIGKILL ended it"
    assert not Path(f"/proc/{run.pid}").exists(), "reaped: no zombie left"
    assert not run.alive()
    await until(lambda: not process_alive(grandchild, grandchild_ticks), "dbt's child to die with the group")
    assert any("sending SIGKILL" in m for m in messages(progress, logging.WARNING))


async def test_no_timeout_before_the_deadline(runs: Runs) -> None:
    run = runs.start()
    watching = asyncio.create_task(all_events(run.trigger(deadline=time.time() + 3600)))
    await polls()
    assert not watching.done()
    assert run.alive()
    run.write_status(0)
    assert [e.payload["status"] for e in await watching] == ["success"]


# -- lost runs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
async def test_runner_killed_without_status_is_lost(runs: Runs, reaped: bool) -> None:
    run = runs.start()
    trigger = run.trigger()
    watching = asyncio.create_task(all_events(trigger))
    await polls()
    assert not watching.done()
    run.proc.kill()
    if reaped:
        run.reap()
    events = await watching
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "lost"
    assert str(run.pid) in payload["message"] and STATUS_FILE in payload["message"]
    run.reap()


async def test_missing_run_dir_on_the_same_host_says_the_filesystem_must_be_shared(runs: Runs) -> None:
    run = runs.start()
    payload = await the_event(run.trigger(run_dir=str(run.run_dir.parent / "run_elsewhere")))
    assert payload["status"] == "lost"
    assert "run_elsewhere" in payload["message"]
    assert "must share this filesystem" in payload["message"]
    assert run.alive(), "a run the trigger cannot see is reported, never stopped"


async def test_run_dir_written_on_another_host_explains_both_hosts(runs: Runs) -> None:
    run = runs.start()
    payload = await the_event(run.trigger(run_dir=str(run.run_dir / "not-here"), host="worker-7.example"))
    assert payload["status"] == "lost"
    assert payload["host"] == "worker-7.example"
    message = payload["message"]
    assert "worker-7.example" in message and HOST in message
    assert "must share this filesystem" in message and "shared volume" in message


async def test_on_another_host_a_shared_run_dir_is_watched_by_its_files(runs: Runs) -> None:
    """The pid means nothing on another host: the trigger must not call the run lost because of it."""
    run = runs.start()
    run.proc.kill()
    run.reap()
    watching = asyncio.create_task(all_events(run.trigger(host="worker-7.example")))
    await polls()
    assert not watching.done(), "a dead local pid says nothing about a process on another host"
    run.write_status(0)
    assert [e.payload["status"] for e in await watching] == ["success"]


async def test_timeout_on_another_host_does_not_claim_dbt_was_stopped(runs: Runs) -> None:
    run = runs.start()
    payload = await the_event(run.trigger(host="worker-7.example", deadline=time.time() - 1))
    assert payload["status"] == "timeout"
    assert run.alive(), "a process on 'another host' is never signalled"
    assert "was stopped" not in payload["message"]


# -- half-written status ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("partial", ['{"exit_code": 0, "ended_', "", "[]"], ids=["half", "empty", "not-an-object"])
async def test_unreadable_status_means_not_finished_while_the_runner_lives(runs: Runs, partial: str) -> None:
    run = runs.start()
    (run.run_dir / STATUS_FILE).write_text(partial, encoding="utf-8")
    watching = asyncio.create_task(all_events(run.trigger()))
    await polls()
    assert not watching.done(), "an unreadable status.json is not a result"
    run.write_status(1, [RUN_RESULT_ERROR])
    events = await watching
    assert [(e.payload["status"], e.payload["reason"]) for e in events] == [("error", "DbtRuntimeException")]


async def test_unreadable_status_left_by_a_dead_runner_is_lost(runs: Runs) -> None:
    run = runs.start()
    (run.run_dir / STATUS_FILE).write_text('{"exit_code": 0, "ended_', encoding="utf-8")
    watching = asyncio.create_task(all_events(run.trigger()))
    await polls()
    assert not watching.done()
    run.proc.kill()
    run.reap()
    events = await watching
    assert [e.payload["status"] for e in events] == ["lost"]


# -- serialisation and triggerer restarts ------------------------------------------------------------------------


def test_serialize_holds_only_plain_json_and_round_trips(tmp_path: Path) -> None:
    trigger = DbtExecutionTrigger(
        str(tmp_path), 4242, "worker-1", pgid=4241, start_ticks=987654, started_at=1_790_000_000.5,
        poll_interval=2.5, deadline=1_790_003_600.5, grace_period=12.0, keep_run_dir=True,
    )  # fmt: skip
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs == {
        "run_dir": str(tmp_path),
        "pid": 4242,
        "host": "worker-1",
        "pgid": 4241,
        "start_ticks": 987654,
        "started_at": 1_790_000_000.5,
        "poll_interval": 2.5,
        "deadline": 1_790_003_600.5,
        "grace_period": 12.0,
        "keep_run_dir": True,
        "channel": {
            "run_dir": str(tmp_path),
            "url": None,
            "conn_id": None,
            "heartbeat_interval": 5.0,
            "node_results": False,
        },
        "heartbeat_timeout": 60.0,
        "min_wait": 0.0,
    }
    again = import_string(classpath)(**json.loads(json.dumps(kwargs)))
    assert isinstance(again, DbtExecutionTrigger)
    assert again.serialize() == (classpath, kwargs)


def test_defaults_serialize_too(tmp_path: Path) -> None:
    classpath, kwargs = DbtExecutionTrigger(str(tmp_path), 10, "h").serialize()
    assert kwargs["pgid"] == 10, "the runner leads its own group unless told otherwise"
    assert kwargs["deadline"] is None and kwargs["start_ticks"] is None
    assert kwargs["keep_run_dir"] is False, "a killed task's run dir is removed unless asked otherwise"
    assert import_string(classpath)(**json.loads(json.dumps(kwargs))).serialize() == (classpath, kwargs)


async def test_triggerer_restart_leaves_dbt_running_and_the_new_trigger_resumes(runs: Runs, progress: Any) -> None:
    run = runs.start()
    first = run.trigger()
    classpath, kwargs = first.serialize()
    stored = json.dumps([classpath, kwargs])  # what the triggerer keeps in the metadata DB

    # The first triggerer is mid-watch (it has logged progress) when it shuts down.
    iterator: AsyncIterator[TriggerEvent] = first.run()
    pending = asyncio.ensure_future(anext(iterator))
    run.publish(model_result(1, 2, "orders"))
    await until(lambda: any("model.shop.orders" in m for m in messages(progress)), "the first progress line")
    assert not pending.done()
    pending.cancel()  # the triggerer shutting down cancels the trigger's task ...
    with pytest.raises(asyncio.CancelledError):
        await pending
    await iterator.aclose()  # type: ignore[attr-defined]
    await first.cleanup()  # ... then always calls cleanup()
    await polls()
    assert run.alive(), "a triggerer restart must not stop dbt"
    assert run.proc.poll() is None

    # Another triggerer re-creates the trigger from what was stored and keeps watching the same run.
    classpath, kwargs = json.loads(stored)
    second = with_test_logger(import_string(classpath)(**kwargs))
    assert second.serialize() == first.serialize()
    watching = asyncio.create_task(all_events(second))
    await polls()
    assert not watching.done()
    run.publish(model_result(2, 2, "customers"))
    await until(lambda: any("model.shop.customers" in m for m in messages(progress)), "progress after the restart")
    run.write_status(0)
    events = await watching
    assert [e.payload for e in events] == [
        {
            "status": "success",
            "run_dir": str(run.run_dir),
            "pid": run.pid,
            "host": HOST,
            "exit_code": 0,
            "started_at": run.started_at,
            "channel": ChannelSpec(str(run.run_dir)).to_dict(),
        }
    ]


# -- on_kill and cleanup ----------------------------------------------------------------------------------------


async def test_on_kill_stops_the_group_gracefully(runs: Runs, tmp_path: Path, progress: Any) -> None:
    mark = tmp_path / "got-sigint"
    run = runs.start(GRACEFUL, str(mark))
    trigger = run.trigger()
    watching = asyncio.create_task(all_events(trigger))
    await polls()
    watching.cancel("__airflow_user_action__")  # what Airflow 3.3 does before it awaits on_kill()
    with pytest.raises(asyncio.CancelledError):
        await watching
    await asyncio.wait_for(trigger.on_kill(), WAIT_SECONDS)
    assert run.reap() == 130
    assert mark.read_text() == "SIGINT"
    assert any("task killed" in m for m in messages(progress))
    assert not any("SIGKILL" in m for m in messages(progress, logging.WARNING))


async def test_on_kill_kills_a_group_that_ignores_sigint(runs: Runs, progress: Any) -> None:
    run = runs.start(STUBBORN)
    grandchild = int(run.first_line)
    grandchild_ticks = process_start_ticks(grandchild)
    await asyncio.wait_for(run.trigger(grace_period=0.3).on_kill(), WAIT_SECONDS)
    assert run.reap() == -signal.SIGKILL
    await until(lambda: not process_alive(grandchild, grandchild_ticks), "dbt's child to die with the group")
    assert any("sending SIGKILL" in m for m in messages(progress, logging.WARNING))


async def test_on_kill_after_dbt_ended_does_nothing(runs: Runs, progress: Any) -> None:
    run = runs.start()
    run.proc.kill()
    run.reap()
    await asyncio.wait_for(run.trigger().on_kill(), WAIT_SECONDS)
    assert not any("SIGINT sent" in m for m in messages(progress))


async def test_on_kill_never_signals_a_process_that_reused_the_pid(runs: Runs) -> None:
    run = runs.start()
    await asyncio.wait_for(run.trigger(start_ticks=run.ticks + 1).on_kill(), WAIT_SECONDS)
    await polls()
    assert run.alive() and run.proc.poll() is None


async def test_on_kill_still_kills_when_the_triggerer_cuts_it_short(runs: Runs) -> None:
    run = runs.start(STUBBORN)
    with pytest.raises(TimeoutError):  # the triggerer: asyncio.wait_for(trigger.on_kill(), on_kill_timeout)
        await asyncio.wait_for(run.trigger(grace_period=5.0).on_kill(), timeout=0.5)
    await until(lambda: not run.alive(), "dbt to be stopped after on_kill was cut short", timeout=3.0)


async def test_cleanup_never_stops_dbt(runs: Runs) -> None:
    run = runs.start()
    trigger = run.trigger(deadline=time.time() + 3600)
    await trigger.cleanup()
    await polls()
    assert run.alive() and run.proc.poll() is None


# -- progress tailing -------------------------------------------------------------------------------------------


async def test_progress_lines_are_logged_once_across_heartbeats(runs: Runs, progress: Any) -> None:
    run = runs.start()
    trigger = run.trigger()
    watching = asyncio.create_task(all_events(trigger))

    noise = {"info": {"name": "MainReportVersion", "level": "info", "msg": "Running with dbt=1.11"}}
    run.publish(noise, model_result(1, 3, "orders"))
    await until(lambda: any("model.shop.orders" in m for m in messages(progress)), "the first node result")
    await polls()
    run.publish(model_result(2, 3, "customers", status="error"))
    run.publish()  # a heartbeat with nothing new
    run.publish(model_result(3, 3, "payments"))
    await until(lambda: any("model.shop.payments" in m for m in messages(progress)), "the last node result")
    run.write_status(0)
    assert [e.payload["status"] for e in await watching] == ["success"]

    lines = [m for m in messages(progress) if "model.shop." in m]
    assert lines == [
        "[1/3] OK model.shop.orders ... 1.25s",
        "[2/3] ERROR model.shop.customers ... 1.25s",
        "[3/3] OK model.shop.payments ... 1.25s",
    ]
    assert not any("Running with dbt" in m for m in messages(progress)), "only node results are logged"


async def test_nodes_in_the_final_status_are_still_logged(runs: Runs, progress: Any) -> None:
    run = runs.start()
    run.channel.event(model_result(1, 1, "last"))
    run.write_status(0)
    assert (await the_event(run.trigger()))["status"] == "success"
    assert messages(progress) == ["[1/1] OK model.shop.last ... 1.25s"]


async def test_nodes_beyond_the_ring_are_counted_not_lost_silently(runs: Runs, progress: Any) -> None:
    run = runs.start()
    total = NODE_RING + 7
    for index in range(1, total + 1):
        run.channel.event(model_result(index, total, f"m{index}"))
    run.write_status(0)
    assert (await the_event(run.trigger()))["status"] == "success"
    logged = messages(progress)
    assert logged[0] == "(7 more nodes finished; see the summary)"
    assert len(logged) == NODE_RING + 1 and logged[-1] == f"[{total}/{total}] OK model.shop.m{total} ... 1.25s"


async def test_no_status_yet_is_fine(runs: Runs, progress: Any) -> None:
    run = runs.start()
    trigger = run.trigger()
    watching = asyncio.create_task(all_events(trigger))
    await polls()
    assert not watching.done(), "no status yet: the run is still starting"
    run.write_status(0)
    assert [e.payload["status"] for e in await watching] == ["success"]
    assert messages(progress) == []


# -- what execute_complete gets -----------------------------------------------------------------------------------


async def test_the_event_lets_execute_complete_report_the_wall_time(runs: Runs, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "dbt_project.yml").write_text("name: shop\nversion: '1.0'\nprofile: shop\n", encoding="utf-8")
    run = runs.start()
    started_at = time.time() - 42.0
    run.write_status(0)
    payload = await the_event(run.trigger(started_at=started_at))
    result = DbtHook(str(project), keep_target_artifacts=True).finish_detached(payload)
    assert result.success
    assert result.to_xcom()["wall_seconds"] >= 42.0


# -- dbt outliving its runner, and the run dir after a kill ---------------------------------------------------


def record_dbt(run: FakeRun, *, pdeathsig: bool) -> tuple[int, int]:
    """Record the runner's child as dbt (dbt_process.json), as the runner does; its pid and start ticks."""
    pid = int(run.first_line)
    ticks = process_start_ticks(pid)
    assert ticks is not None
    write_json_atomic(run.run_dir / DBT_PROCESS_FILE, {"pid": pid, "start_ticks": ticks, "host": HOST,
                                                       "pdeathsig": pdeathsig})  # fmt: skip
    return pid, ticks


async def test_lost_runner_whose_dbt_runs_on_gets_dbt_stopped_first(runs: Runs, tmp_path: Path, progress: Any) -> None:
    mark = tmp_path / "got-sigint"
    run = runs.start(RUNNER_WITH_DBT, GRACEFUL, str(mark))
    dbt, ticks = record_dbt(run, pdeathsig=False)  # e.g. started by a runner without the parent-death signal
    run.proc.kill()
    run.reap()
    assert process_alive(dbt, ticks), "dbt outlived its runner"
    payload = await the_event(run.trigger(grace_period=WAIT_SECONDS))
    assert payload["status"] == "lost"
    assert f"dbt (pid {dbt}) outlived it and was stopped" in payload["message"]
    assert not process_alive(dbt, ticks), "the trigger yields lost only once dbt has ended"
    assert mark.read_text() == "SIGINT", "stopped gracefully: SIGINT to its group"


async def test_a_dbt_the_kernel_interrupted_gets_no_second_sigint_but_sigkill_after_the_grace(
    runs: Runs, tmp_path: Path, progress: Any
) -> None:
    """The runner died, so the kernel already sent dbt SIGINT: a second one would cut its query cancel short."""
    mark = tmp_path / "got-sigint"
    run = runs.start(RUNNER_WITH_DBT, GRACEFUL, str(mark))
    dbt, ticks = record_dbt(run, pdeathsig=True)  # the stand-in was not really armed: it keeps running
    run.proc.kill()
    run.reap()
    payload = await the_event(run.trigger(grace_period=0.3))
    assert payload["status"] == "lost"
    assert not process_alive(dbt, ticks)
    assert not mark.exists(), "no SIGINT from the trigger"
    assert any("got SIGINT then" in m for m in messages(progress))
    assert any("sending SIGKILL" in m for m in messages(progress, logging.WARNING))


async def test_lost_runner_whose_dbt_ended_is_reported_without_stopping_anything(runs: Runs, progress: Any) -> None:
    run = runs.start()
    write_json_atomic(run.run_dir / DBT_PROCESS_FILE, {"pid": run.pid, "start_ticks": run.ticks, "host": HOST})
    run.proc.kill()
    run.reap()
    payload = await the_event(run.trigger())
    assert payload["status"] == "lost" and "outlived" not in payload["message"]
    assert not any("Stopping dbt" in m for m in messages(progress))


def as_detached_run_dir(run: FakeRun) -> None:
    write_json_atomic(run.run_dir / PROCESS_FILE, {"pid": run.pid, "start_ticks": run.ticks, "host": HOST})
    (run.run_dir / "target" / "manifest.json").write_text("{}")


async def test_on_kill_removes_the_run_dir_once_dbt_has_stopped(runs: Runs, tmp_path: Path, progress: Any) -> None:
    run = runs.start(GRACEFUL, str(tmp_path / "got-sigint"))
    as_detached_run_dir(run)
    await asyncio.wait_for(run.trigger().on_kill(), WAIT_SECONDS)
    assert run.reap() == 130
    assert not run.run_dir.exists(), "execute_complete never runs after a kill: on_kill removes the run dir"
    assert any(f"Removed dbt run dir {run.run_dir}" in m for m in messages(progress))


async def test_on_kill_keeps_the_run_dir_when_asked(runs: Runs, tmp_path: Path) -> None:
    run = runs.start(GRACEFUL, str(tmp_path / "got-sigint"))
    as_detached_run_dir(run)
    await asyncio.wait_for(run.trigger(keep_run_dir=True).on_kill(), WAIT_SECONDS)
    assert run.reap() == 130
    assert (run.run_dir / "target" / "manifest.json").is_file()


async def test_on_kill_never_removes_what_is_not_a_detached_run_dir(runs: Runs) -> None:
    run = runs.start()
    run.proc.kill()
    run.reap()
    (run.run_dir / "target" / "keep.txt").write_text("x")  # no process.json: not a run dir the runner made
    await asyncio.wait_for(run.trigger().on_kill(), WAIT_SECONDS)
    assert (run.run_dir / "target" / "keep.txt").is_file()


async def test_on_kill_for_another_host_removes_nothing(runs: Runs) -> None:
    run = runs.start()
    as_detached_run_dir(run)
    await asyncio.wait_for(run.trigger(host="worker-7.example").on_kill(), WAIT_SECONDS)
    assert run.alive() and run.run_dir.is_dir(), "dbt there cannot be stopped from here, so its files stay"


async def test_cleanup_never_removes_the_run_dir(runs: Runs) -> None:
    run = runs.start()
    as_detached_run_dir(run)
    run.proc.kill()
    run.reap()
    await run.trigger().cleanup()  # before Airflow 3.3 also on a triggerer restart
    assert (run.run_dir / PROCESS_FILE).is_file()


async def test_on_kill_fits_its_grace_period_into_the_triggerers_on_kill_timeout(
    runs: Runs, monkeypatch: pytest.MonkeyPatch, progress: Any
) -> None:
    """A dbt that ignores SIGINT with a 60 s grace period: SIGKILL comes early enough to remove the run dir
    before the triggerer cancels on_kill (its [triggerer] on_kill_timeout, here 13 s)."""
    monkeypatch.setenv("AIRFLOW__TRIGGERER__ON_KILL_TIMEOUT", "13")
    run = runs.start(STUBBORN)
    as_detached_run_dir(run)
    await asyncio.wait_for(run.trigger(grace_period=60.0).on_kill(), timeout=13)
    assert run.reap() == -signal.SIGKILL
    assert not run.run_dir.exists(), "SIGKILL and the removal fitted into on_kill_timeout"
    assert any("did not stop within 1s" in m for m in messages(progress, logging.WARNING))


async def test_on_kill_cut_short_still_removes_the_run_dir_once_dbt_has_died(runs: Runs) -> None:
    """The triggerer may cancel on_kill itself (a second cancel): SIGKILL at once, and the run dir still goes."""
    run = runs.start(STUBBORN)
    as_detached_run_dir(run)
    killing = asyncio.create_task(run.trigger(grace_period=30.0).on_kill())
    await polls()
    killing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await killing
    await until(lambda: not run.alive(), "dbt to get SIGKILL when on_kill is cut short", timeout=5.0)
    await until(lambda: not run.run_dir.exists(), "the run dir to be removed after dbt died", timeout=15.0)
    assert run.reap() == -signal.SIGKILL


# -- remote channel: the trigger sees only the channel (a file:// URL here: a real store, no server) ---------------

REMOTE_HOST = "worker-elsewhere"


def remote_trigger(tmp_path: Path, **overrides: Any) -> tuple[DbtExecutionTrigger, ChannelWriter]:
    """A trigger for a run on another host: its run dir does not exist here and its pid means nothing here."""
    run_dir = tmp_path / "on-the-worker" / "run_20260101_000000_dag_task_try1_remote"
    spec = ChannelSpec.for_run(run_dir, f"file://{tmp_path}/shared", heartbeat_interval=0.1)
    kwargs: dict[str, Any] = {"run_dir": str(run_dir), "pid": 2**22 + 17, "host": REMOTE_HOST,
                              "poll_interval": POLL, "grace_period": 0.5, "channel": spec.to_dict(),
                              "heartbeat_timeout": 1.0, **overrides}  # fmt: skip
    return with_test_logger(DbtExecutionTrigger(**kwargs)), ChannelWriter(spec, command="build")


async def runner_obeying_cancel(writer: ChannelWriter) -> str:
    """Plays the remote runner: heartbeats until a cancel request, then publishes its final status."""
    while (reason := writer.cancel_request()) is None:
        writer.heartbeat()
        await asyncio.sleep(0.05)
    writer.finish(130, stopped=reason)
    return reason


async def test_remote_success_is_read_from_the_channel_alone(tmp_path: Path, progress: Any) -> None:
    trigger, writer = remote_trigger(tmp_path)
    writer.event(model_result(1, 1, "orders"))
    writer.finish(0, stopped=None)
    payload = await the_event(trigger)
    assert payload["status"] == "success" and payload["channel"]["url"].endswith(
        "run_20260101_000000_dag_task_try1_remote"
    )
    assert messages(progress) == ["[1/1] OK model.shop.orders ... 1.25s"]
    assert not (tmp_path / "on-the-worker").exists(), "the trigger never looked for the worker's run dir"


async def test_remote_failure_is_classified_from_the_published_error_events(tmp_path: Path) -> None:
    trigger, writer = remote_trigger(tmp_path)
    writer.event(RUN_RESULT_ERROR)
    writer.finish(1, stopped=None)
    payload = await the_event(trigger)
    assert payload["status"] == "error" and payload["exit_code"] == 1
    assert payload["node_id"] == "model.shop.bad"


async def test_a_moving_heartbeat_keeps_the_run_alive_past_the_timeout(tmp_path: Path) -> None:
    trigger, writer = remote_trigger(tmp_path, heartbeat_timeout=0.3)
    watching = asyncio.create_task(all_events(trigger))
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        writer.heartbeat()
        await asyncio.sleep(0.05)
    assert not watching.done(), "a beating runner is never lost"
    writer.finish(0, stopped=None)
    assert [e.payload["status"] for e in await watching] == ["success"]


async def test_a_heartbeat_that_stands_still_is_lost(tmp_path: Path) -> None:
    trigger, writer = remote_trigger(tmp_path, heartbeat_timeout=0.3)
    writer.heartbeat()
    payload = await the_event(trigger)
    assert payload["status"] == "lost"
    assert f"runner {2**22 + 17} on {REMOTE_HOST} sent no heartbeat to file://" in payload["message"]
    assert "(limit 0.3s)" in payload["message"]


async def test_no_status_at_all_is_lost_after_the_startup_allowance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trigger_module, "_FIRST_STATUS_SECONDS", 0.5)
    trigger, _ = remote_trigger(tmp_path, heartbeat_timeout=0.3)
    payload = await the_event(trigger)
    assert payload["status"] == "lost" and "published no status" in payload["message"]
    assert "(limit 0.5s)" in payload["message"], "a runner gets longer for its first status than between beats"


async def test_remote_deadline_writes_a_cancel_request_and_waits_for_the_runner(tmp_path: Path) -> None:
    trigger, writer = remote_trigger(tmp_path, deadline=time.time() - 1)
    runner = asyncio.create_task(runner_obeying_cancel(writer))
    payload = await the_event(trigger)
    assert await runner == "timeout"
    assert payload["status"] == "timeout" and payload["stopped"] is True


async def test_remote_deadline_without_a_confirming_runner_says_so(tmp_path: Path) -> None:
    trigger, writer = remote_trigger(tmp_path, deadline=time.time() - 1, grace_period=0.1)
    writer.heartbeat()
    payload = await the_event(trigger)
    assert payload["status"] == "timeout" and payload["stopped"] is False
    assert f"dbt on {REMOTE_HOST} did not confirm that it stopped" in payload["message"]
    assert writer.cancel_request() == "timeout", "the request stays for a runner that comes back"


async def test_remote_on_kill_cancels_then_removes_the_channel_once_confirmed(tmp_path: Path) -> None:
    trigger, writer = remote_trigger(tmp_path)
    runner = asyncio.create_task(runner_obeying_cancel(writer))
    await trigger.on_kill()
    assert await runner == "killed"
    assert not Path(trigger.channel.url.removeprefix("file://")).exists(), "a confirmed kill leaves no channel"


async def test_remote_on_kill_keeps_the_channel_when_asked_or_unconfirmed(tmp_path: Path) -> None:
    kept, writer = remote_trigger(tmp_path, keep_run_dir=True)
    runner = asyncio.create_task(runner_obeying_cancel(writer))
    await kept.on_kill()
    assert await runner == "killed"
    assert Path(kept.channel.url.removeprefix("file://"), "status.json").is_file()

    silent, other = remote_trigger(tmp_path / "second", grace_period=0.1)
    other.heartbeat()
    await silent.on_kill()
    assert other.cancel_request() == "killed"
    assert Path(silent.channel.url.removeprefix("file://"), "status.json").is_file(), "unconfirmed: kept"


class _FlakyReads:
    """Delegates to a real store but fails every other read, as a loaded object store can (the trigger reads once)."""

    def __init__(self, store: ChannelStore) -> None:
        self.store, self.reads = store, 0

    async def aread(self, name: str) -> bytes | None:
        self.reads += 1
        if self.reads % 2:
            raise ConnectionError("connection reset by the store")
        return await self.store.aread(name)


async def test_failed_reads_neither_keep_a_dead_runner_alive_nor_count_as_its_silence(tmp_path: Path) -> None:
    trigger, writer = remote_trigger(tmp_path, heartbeat_timeout=0.3)
    writer.heartbeat()  # then the runner dies: its heartbeat stands still
    flaky = _FlakyReads(trigger._reader.store)
    trigger._reader._store = flaky  # type: ignore[assignment]
    payload = await the_event(trigger)
    assert payload["status"] == "lost" and "sent no heartbeat" in payload["message"]
    assert flaky.reads >= 4, "it kept polling through the failed reads"


def test_the_heartbeat_clock_stands_while_the_channel_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger, _ = remote_trigger(tmp_path)
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    status = RunStatus(beat=3)
    assert trigger._silent_for(status) == 0
    clock[0] = 110.0
    assert trigger._silent_for(status) == 10
    for clock[0] in (120.0, 150.0):
        assert trigger._silent_for(None, read=False) == 0, "an unreadable store says nothing about the runner"
    clock[0] = 155.0
    assert trigger._silent_for(status) == 20, "the outage (from the first failed read) does not count"
    clock[0] = 160.0
    assert trigger._silent_for(status) == 25, "readable time after it does"
    assert trigger._silent_for(RunStatus(beat=4)) == 0


async def test_a_run_that_ends_at_once_is_reported_no_sooner_than_the_least_wait(tmp_path: Path) -> None:
    trigger, writer = remote_trigger(tmp_path, min_wait=0.5)
    writer.finish(0, stopped=None)
    started = time.monotonic()
    payload = await the_event(trigger)
    assert payload["status"] == "success" and time.monotonic() - started >= 0.5
    assert trigger.serialize()[1]["min_wait"] == 0.5


def test_the_least_wait_is_the_configured_resume_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlh_airflow_common.triggers.dbt import RESUME_SECONDS, resume_delay

    monkeypatch.delenv("AIRFLOW__DLH_DBT__RESUME_DELAY", raising=False)
    assert resume_delay() == RESUME_SECONDS == 5.0
    monkeypatch.setenv("AIRFLOW__DLH_DBT__RESUME_DELAY", "0.2")
    assert resume_delay() == 0.2
