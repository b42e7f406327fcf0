"""Unit tests for dlh_airflow_common.dbt.processes: process records and the parent-death signal, on real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dlh_airflow_common.dbt.processes import (
    ProcessRecord,
    interrupt_when_parent_dies,
    process_alive,
    process_start_ticks,
)

WAIT_SECONDS = 30.0


def _wait_until(condition: object, what: str) -> None:
    end = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < end:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"gave up after {WAIT_SECONDS:.0f}s waiting for {what}")


def test_record_of_this_process_round_trips_and_is_alive_here() -> None:
    record = ProcessRecord.of(os.getpid())
    assert record.start_ticks == process_start_ticks(os.getpid())
    assert record.host == socket.gethostname()
    assert ProcessRecord.from_dict(record.to_dict()) == record
    assert record.alive_here()


def test_a_record_from_another_host_is_never_alive_here() -> None:
    record = ProcessRecord(pid=os.getpid(), start_ticks=process_start_ticks(os.getpid()), host="worker-7.example")
    assert not record.on_this_host
    assert not record.alive_here(), "a pid means nothing on another host"


@pytest.mark.parametrize(
    "content",
    [None, {}, {"pid": "12", "host": "h"}, {"pid": 0, "host": "h"}, {"pid": True, "host": "h"}, {"pid": 5}],
    ids=["none", "empty", "pid-as-text", "pid-zero", "pid-bool", "no-host"],
)
def test_from_dict_refuses_what_is_not_a_record(content: dict[str, object] | None) -> None:
    assert ProcessRecord.from_dict(content) is None


def test_from_dict_keeps_a_missing_start_time_as_unknown() -> None:
    assert ProcessRecord.from_dict({"pid": 7, "host": "h", "start_ticks": "x"}) == ProcessRecord(7, None, "h")


def test_a_dead_process_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    record = ProcessRecord.of(child.pid)
    child.wait(timeout=WAIT_SECONDS)
    assert not record.alive_here()
    assert not process_alive(child.pid, record.start_ticks)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_child_gets_sigint_when_its_parent_is_killed(tmp_path: Path) -> None:
    """A parent (SIGKILLed) started a grandchild armed with the parent-death signal: the kernel SIGINTs it."""
    mark = tmp_path / "got-sigint"
    grandchild = textwrap.dedent(
        f"""\
        import pathlib, signal, sys, time
        def stop(*_):
            pathlib.Path({str(mark)!r}).write_text("SIGINT")
            sys.exit(130)
        signal.signal(signal.SIGINT, stop)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    parent = textwrap.dedent(
        f"""\
        import subprocess, sys, time
        from dlh_airflow_common.dbt.processes import interrupt_when_parent_dies
        child = subprocess.Popen([sys.executable, "-c", {grandchild!r}], stdout=subprocess.PIPE, text=True,
                                 start_new_session=True, preexec_fn=interrupt_when_parent_dies())
        child.stdout.readline()
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    record = ProcessRecord.of(pid)
    assert record.alive_here()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_SECONDS)
    proc.stdout.close()
    try:
        _wait_until(lambda: not record.alive_here(), "the orphaned child to stop")
    finally:
        if record.alive_here():
            os.kill(pid, signal.SIGKILL)
    assert mark.read_text() == "SIGINT", "it was the parent-death signal, SIGINT, that stopped it"


def test_interrupt_when_parent_dies_is_a_preexec_function_on_linux() -> None:
    arm = interrupt_when_parent_dies()
    assert (arm is not None) is sys.platform.startswith("linux")
