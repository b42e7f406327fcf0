"""Unit tests for dlh_airflow_common.dbt.detached: atomic status files, liveness checks, the detached launcher."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dlh_airflow_common.dbt.detached as detached_module
from dlh_airflow_common.dbt.channel import ChannelReader, ChannelSpec, ChannelWriter, RunStatus
from dlh_airflow_common.dbt.detached import (
    DBT_PROCESS_FILE,
    EVENTS_FILE,
    PROCESS_FILE,
    SPEC_FILE,
    STATUS_FILE,
    DetachedProcess,
    launch,
    process_alive,
    process_start_ticks,
    read_dbt_process,
    read_json,
    read_runner_process,
    reap_runners,
    stop_group,
    write_json_atomic,
)

WAIT_SECONDS = 30.0

RUN_RESULT_ERROR = {
    "info": {"name": "RunResultError", "level": "error", "code": "Z024", "msg": "  Database Error in model bad"},
    "data": {
        "msg": "Database Error in model bad (models/bad.sql)\n  division by zero",
        "node_info": {"unique_id": "model.shop.bad", "node_status": "None", "resource_type": "model"},
    },
}
MODEL_OK = {
    "info": {"name": "LogModelResult", "level": "info", "code": "Q012", "msg": "1 of 2 OK created model"},
    "data": {
        "index": 1,
        "total": 2,
        "status": "success",
        "execution_time": 0.5,
        "node_info": {"unique_id": "model.shop.good", "node_status": "success"},
    },
}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test (not hang) after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"gave up after {timeout:.0f}s waiting for {what}")


def proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def status_of(run_dir: Path) -> RunStatus | None:
    return RunStatus.from_bytes((run_dir / STATUS_FILE).read_bytes()) if (run_dir / STATUS_FILE).is_file() else None


def finished_status(run_dir: Path) -> RunStatus | None:
    status = status_of(run_dir)
    return status if status is not None and status.finished else None


def zombie_children() -> list[int]:
    """Children of this test process that exited but were never reaped."""
    me = str(os.getpid())
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] == "Z":
            zombies.append(int(entry.name))
    return zombies


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run_20260101_000000_dag_task_try1_abcd"
    (path / "logs").mkdir(parents=True)
    (path / "target").mkdir()
    return path


# -- write_json_atomic / read_json -------------------------------------------------------------------------


def test_write_json_atomic_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    write_json_atomic(target, {"exit_code": 0, "error_events": [RUN_RESULT_ERROR]})
    assert read_json(target) == {"exit_code": 0, "error_events": [RUN_RESULT_ERROR]}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_write_json_atomic_keeps_the_old_file_when_serialisation_fails(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    write_json_atomic(target, {"exit_code": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"exit_code": object()})
    assert read_json(target) == {"exit_code": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"], "the temp file must be removed on failure"


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """A reader loops while a writer rewrites a ~1 MB JSON many times: every read is None or a whole object."""
    target = tmp_path / "status.json"
    payload = ["x" * 100] * 10_000  # ~1 MB, so a non-atomic write would be caught half-way
    rewrites = 60
    stop = threading.Event()
    reads: list[dict[str, Any] | None] = []
    failures: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            content = read_json(target)
            reads.append(content)
            if content is not None and (len(content.get("payload", ())) != len(payload) or "n" not in content):
                failures.append(f"partial object with keys {sorted(content)}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(rewrites):
            write_json_atomic(target, {"n": n, "payload": payload})
    finally:
        stop.set()
        thread.join(timeout=WAIT_SECONDS)
    assert not thread.is_alive()
    assert failures == []
    whole = [r for r in reads if r is not None]
    assert whole, "the reader never saw the file: the test proved nothing"
    seen = [r["n"] for r in whole]
    assert seen == sorted(seen), "a reader must never see an older version after a newer one"
    first_whole = next(i for i, r in enumerate(reads) if r is not None)
    assert all(r is not None for r in reads[first_whole:]), "once written, the file never disappears"
    assert read_json(target) == {"n": rewrites - 1, "payload": payload}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_read_json_missing_file_is_none(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    "text",
    ['{"exit_code": 0, "error_ev', "", "not json at all", "[1, 2, 3]", '"a string"', "\x00\x01"],
    ids=["half-written", "empty", "garbage", "list", "string", "binary"],
)
def test_read_json_corrupt_or_not_an_object_is_none(tmp_path: Path, text: str) -> None:
    target = tmp_path / "status.json"
    target.write_text(text, encoding="utf-8")
    assert read_json(target) is None


def test_read_json_invalid_utf8_is_none(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_bytes(b'{"msg": "\xff\xfe"}')
    assert read_json(target) is None


# -- process_start_ticks / process_alive --------------------------------------------------------------------


def test_start_ticks_of_this_process_and_of_a_missing_one() -> None:
    ticks = process_start_ticks(os.getpid())
    assert isinstance(ticks, int) and ticks > 0
    assert process_start_ticks(os.getpid()) == ticks, "the start time of a running process never changes"
    assert process_start_ticks(2**22 + 12345) is None  # above pid_max: never a live pid


def test_start_ticks_survive_a_process_name_with_parentheses_and_spaces(tmp_path: Path) -> None:
    odd = tmp_path / "dbt (a) b)"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        ticks = process_start_ticks(child.pid)
        assert isinstance(ticks, int) and ticks >= process_start_ticks(os.getpid())  # type: ignore[operator]
        assert process_alive(child.pid, ticks)
    finally:
        child.kill()
        child.wait(timeout=WAIT_SECONDS)


def test_process_alive_checks_pid_and_start_time() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        ticks = process_start_ticks(child.pid)
        assert ticks is not None
        assert process_alive(child.pid, ticks)
        assert process_alive(child.pid, None), "without a recorded start time, the pid alone decides"
        assert not process_alive(child.pid, ticks + 1), "a reused pid (other start time) is not our process"
    finally:
        child.kill()
        child.wait(timeout=WAIT_SECONDS)
    assert not process_alive(child.pid, ticks)


def test_a_zombie_counts_as_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    ticks = process_start_ticks(child.pid)
    try:
        wait_for(lambda: proc_state(child.pid) == "Z", "the unreaped child to become a zombie")
        assert not process_alive(child.pid, ticks)
        assert not process_alive(child.pid, None)
        assert not stop_group(
            DetachedProcess(str(Path.cwd()), child.pid, child.pid, socket.gethostname(), 0.0, ticks), signal.SIGINT
        ), "nothing to stop: the process already ended"
    finally:
        child.wait(timeout=WAIT_SECONDS)
    assert proc_state(child.pid) is None


def test_stop_group_signals_every_process_of_the_group() -> None:
    script = textwrap.dedent(
        """\
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        print(grandchild.pid, flush=True)
        time.sleep(30)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        grandchild_ticks = process_start_ticks(grandchild)
        process = DetachedProcess("/nowhere", child.pid, child.pid, socket.gethostname(), 0.0, None)
        assert stop_group(process, signal.SIGKILL)
        assert child.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
        wait_for(lambda: not process_alive(grandchild, grandchild_ticks), "the grandchild to be killed with its group")
        assert not stop_group(process, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=WAIT_SECONDS)


# -- launch ---------------------------------------------------------------------------------------------------


def fake_dbt(gate: Path, exit_code: int) -> list[str]:
    """argv of a stand-in for dbt: waits for ``gate``, prints JSON events and a stray line, exits."""
    script = textwrap.dedent(
        f"""\
        import json, os, sys, time
        gate = {str(gate)!r}
        print(json.dumps({{"info": {{"name": "MainReportVersion", "level": "info", "msg": "Running with dbt"}}}}),
              flush=True)
        while not os.path.exists(gate):
            time.sleep(0.02)
        print(json.dumps({MODEL_OK!r}), flush=True)
        print(json.dumps({RUN_RESULT_ERROR!r}), flush=True)
        print("a stray non-JSON line", flush=True)
        sys.exit({exit_code})
        """
    )
    return [sys.executable, "-c", script]


@pytest.fixture
def launched(run_dir: Path) -> Iterator[list[DetachedProcess]]:
    """Processes started by a test; any still running at the end are killed with their group."""
    started: list[DetachedProcess] = []
    yield started
    for process in started:
        stop_group(process, signal.SIGKILL)


def test_launch_runs_dbt_detached_and_reports_through_files(run_dir: Path, launched: list[DetachedProcess]) -> None:
    gate = run_dir / "gate"
    argv = fake_dbt(gate, exit_code=3)
    process = launch(run_dir, argv, dict(os.environ), meta={"command": "run"})
    launched.append(process)

    # process.json: the same record launch() returned; the runner is another process in its own session.
    assert read_json(run_dir / PROCESS_FILE) == process.to_dict()
    assert process.run_dir == str(run_dir)
    assert process.host == socket.gethostname()
    assert process.pid != os.getpid()
    assert process.start_ticks == process_start_ticks(process.pid)
    assert process_alive(process.pid, process.start_ticks), "the runner runs on its own"
    assert os.getsid(process.pid) == process.pgid == os.getpgid(process.pid)
    assert process.pgid != os.getpgid(0) and os.getsid(process.pid) != os.getsid(0)
    assert read_json(run_dir / SPEC_FILE) == {"command": "run", "argv": argv}
    running = wait_for(lambda: status_of(run_dir), "the first heartbeat")
    assert not running.finished and running.runner_pid == process.pid and running.command == "run"

    gate.touch()
    status = wait_for(lambda: finished_status(run_dir), "the final status")
    assert status.exit_code == 3
    assert status.runner_pid == process.pid
    assert status.host == process.host
    assert status.ended_at is not None and status.ended_at >= process.started_at
    assert status.error_events == [RUN_RESULT_ERROR], "only the error event is kept, not the OK node result"
    assert [node["data"]["node_info"]["unique_id"] for node in status.nodes] == ["model.shop.good"]
    assert status.node_count == 1 and status.stopped is None

    lines = (run_dir / "logs" / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["info"]["name"] == "MainReportVersion"
    assert [json.loads(line) for line in lines[1:3]] == [MODEL_OK, RUN_RESULT_ERROR]
    assert lines[3:] == ["a stray non-JSON line"]
    wait_for(lambda: not process_alive(process.pid, process.start_ticks), "the runner to exit after dbt")
    reap_runners()  # a worker that lives on (unlike a deferring task process) reaps its ended runners
    assert zombie_children() == []


def test_runner_survives_sigint_to_its_group_and_still_writes_the_status(
    run_dir: Path, launched: list[DetachedProcess]
) -> None:
    """A graceful stop: dbt gets SIGINT (and ends), the runner ignores it and records how dbt ended."""
    process = launch(run_dir, fake_dbt(run_dir / "never", exit_code=0), dict(os.environ))
    launched.append(process)
    events = run_dir / "logs" / EVENTS_FILE
    wait_for(lambda: events.is_file() and events.read_text(encoding="utf-8"), "dbt's first event")
    assert stop_group(process, signal.SIGINT)
    status = wait_for(lambda: finished_status(run_dir), "the final status after SIGINT")
    assert status.exit_code not in (0, -1), "dbt was interrupted, so it did not succeed"
    wait_for(lambda: not process_alive(process.pid, process.start_ticks), "the runner to exit")


def test_runner_records_a_dbt_that_cannot_start(run_dir: Path, launched: list[DetachedProcess]) -> None:
    """The status says dbt failed (-1); nothing else records why, so the runner's log must."""
    process = launch(run_dir, [str(run_dir / "no-such-dbt"), "run"], dict(os.environ))
    launched.append(process)
    status = wait_for(lambda: finished_status(run_dir), "the final status")
    assert status.exit_code == -1
    assert status.error_events == []


def test_runner_logs_why_dbt_could_not_start(run_dir: Path, launched: list[DetachedProcess]) -> None:
    process = launch(run_dir, [str(run_dir / "no-such-dbt"), "run"], dict(os.environ))
    launched.append(process)
    wait_for(lambda: finished_status(run_dir), "the final status")
    wait_for(lambda: not process_alive(process.pid, process.start_ticks), "the runner to exit")
    detached_out = (run_dir / "logs" / "detached.out").read_text(encoding="utf-8")
    assert "no-such-dbt" in detached_out, "why dbt did not start is in the runner's own log"


# -- dbt never outlives its runner ------------------------------------------------------------------------------


def graceful_dbt(mark: Path) -> list[str]:
    """argv of a stand-in for dbt that stops on SIGINT (as dbt does) and leaves a mark saying so."""
    script = textwrap.dedent(
        f"""\
        import json, pathlib, signal, sys, time
        def stop(*_):
            pathlib.Path({str(mark)!r}).write_text("SIGINT")
            sys.exit(130)
        signal.signal(signal.SIGINT, stop)
        print(json.dumps({{"info": {{"name": "MainReportVersion", "level": "info", "msg": "ready"}}}}), flush=True)
        time.sleep(60)
        """
    )
    return [sys.executable, "-c", script]


def test_runner_records_dbt_with_its_parent_death_signal(run_dir: Path, launched: list[DetachedProcess]) -> None:
    process = launch(run_dir, graceful_dbt(run_dir / "mark"), dict(os.environ))
    launched.append(process)
    dbt = wait_for(lambda: read_dbt_process(run_dir), DBT_PROCESS_FILE)
    assert dbt.pid != process.pid
    assert dbt.start_ticks == process_start_ticks(dbt.pid)
    assert dbt.host == socket.gethostname() and dbt.alive_here()
    assert dbt.parent_death_signal is sys.platform.startswith("linux")
    assert os.getpgid(dbt.pid) == process.pgid, "dbt is in the runner's group: one signal reaches both"
    runner = read_runner_process(run_dir)
    assert runner is not None and (runner.pid, runner.start_ticks) == (process.pid, process.start_ticks)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_dbt_gets_sigint_when_the_runner_is_sigkilled(run_dir: Path, launched: list[DetachedProcess]) -> None:
    mark = run_dir / "mark"
    process = launch(run_dir, graceful_dbt(mark), dict(os.environ))
    launched.append(process)
    dbt = wait_for(lambda: read_dbt_process(run_dir), DBT_PROCESS_FILE)
    events = run_dir / "logs" / EVENTS_FILE
    wait_for(lambda: events.is_file() and events.read_text(encoding="utf-8"), "dbt's first event")
    os.kill(process.pid, signal.SIGKILL)  # the runner only: nobody but the kernel tells dbt
    wait_for(lambda: not dbt.alive_here(), "dbt to stop after its runner died")
    assert mark.read_text() == "SIGINT", "dbt was interrupted (so it can cancel its queries), not killed"
    assert finished_status(run_dir) is None, "a SIGKILLed runner writes no final status: the trigger says lost"


def test_no_dbt_record_before_dbt_started(run_dir: Path) -> None:
    assert read_dbt_process(run_dir) is None
    write_json_atomic(run_dir / DBT_PROCESS_FILE, {"pid": "nope"})
    assert read_dbt_process(run_dir) is None


def test_importing_the_runner_loads_no_airflow() -> None:
    """The runner starts for every deferred run: a local channel must not pay Airflow's import (seconds of CPU)."""
    code = (
        "import sys, dlh_airflow_common.dbt.detached; print(sorted(m for m in sys.modules if m.startswith('airflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_remote_runner_publishes_and_removes_its_run_dir_in_a_task_environment(
    run_dir: Path, tmp_path: Path, launched: list[DetachedProcess]
) -> None:
    """The remote store imports Airflow in the runner, whose environment is a task's: Airflow's supervisor has
    blocked the metadata DB there with a URL that does not parse. The runner must still publish."""
    (run_dir / "target" / "run_results.json").write_text('{"results": []}', encoding="utf-8")
    gate = run_dir / "gate"
    gate.touch()
    channel = ChannelSpec(str(run_dir), url=f"file://{tmp_path}/shared/{run_dir.name}", heartbeat_interval=0.2)
    env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///"}
    meta = {"command": "run", "channel": channel.to_dict(),
            "pack": [[str(run_dir / "target"), "target"], [str(run_dir / "logs"), "logs"]]}  # fmt: skip
    process = launch(run_dir, fake_dbt(gate, exit_code=0), env, meta=meta, channel=channel)
    launched.append(process)
    reader = ChannelReader(channel)
    # The runner imports Airflow for its store: seconds of CPU, many more on a loaded machine.
    final = "the final status"
    status = wait_for(lambda: (found := reader.status()) is not None and found.finished and found, final, timeout=180)
    assert status.exit_code == 0 and status.artifacts and status.node_count == 1
    collected = reader.collect(tmp_path / "collected")
    assert (collected / "target" / "run_results.json").read_text(encoding="utf-8") == '{"results": []}'
    assert (collected / "logs" / EVENTS_FILE).is_file()
    wait_for(lambda: not run_dir.exists(), "the runner to remove its run dir once published")


def test_a_killed_remote_run_confirms_then_removes_its_channel(
    run_dir: Path, tmp_path: Path, launched: list[DetachedProcess]
) -> None:
    """A kill arrives as a cancel request: the runner stops dbt, publishes the final status for the trigger
    that asked, then removes the channel (no execute_complete follows a kill)."""
    channel = ChannelSpec(str(run_dir), url=f"file://{tmp_path}/shared/{run_dir.name}", heartbeat_interval=0.2)
    meta = {"command": "run", "channel": channel.to_dict(), "grace_period": 5,
            "pack": [[str(run_dir / "target"), "target"]]}  # fmt: skip
    process = launch(run_dir, fake_dbt(run_dir / "never", exit_code=0), dict(os.environ), meta=meta, channel=channel)
    launched.append(process)
    reader = ChannelReader(channel)
    wait_for(lambda: reader.status() is not None, "the first heartbeat", timeout=180)
    reader.request_cancel("killed")
    final = wait_for(lambda: (found := reader.status()) is not None and found.finished and found, "the final status")
    assert final.stopped == "killed" and final.exit_code not in (0, -1)
    shared = tmp_path / "shared" / run_dir.name
    wait_for(lambda: not shared.exists(), "the runner to remove the killed run's channel")
    assert not run_dir.exists()


class _DownStore:
    """A store whose writes all fail (the heartbeats) while reads work, and a cancel request after two beats."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, name: str, data: bytes) -> None:
        self.writes += 1
        raise ConnectionError("store down")

    def read(self, name: str) -> bytes | None:
        return b'{"reason": "killed"}' if self.writes >= 2 else None

    def remove(self) -> None:
        return None


def test_failed_heartbeats_neither_end_the_watch_nor_skip_the_cancel_request(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = _DownStore()
    spec = ChannelSpec("/on-the-worker/run_x", url="s3://bucket/run_x", heartbeat_interval=0.05)
    watch = detached_module._Watch(ChannelWriter(spec, command="run", store=store), deadline=None, grace=1)
    stopped: list[str] = []
    monkeypatch.setattr(watch, "_stop_dbt", lambda dbt, reason: stopped.append(reason))
    with caplog.at_level(logging.WARNING, logger=detached_module.__name__):
        watch.start(None)  # type: ignore[arg-type]
        wait_for(lambda: stopped, "the cancel request to be obeyed")
        watch.stop()
    assert stopped == ["killed"] and watch.stopped == "killed" and store.writes >= 2
    assert "Heartbeat to s3://bucket/run_x failed: store down" in caplog.text
