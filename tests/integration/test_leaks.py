"""A killed run leaves nothing behind: no dbt process, no running query, no run dir, no profile dir.

Real dbt on the real PostgreSQL fault lab (model c sleeps in ``pg_sleep``), killed the ways Airflow kills:
SIGKILL of a task process running a sync hook run, SIGKILL of the detached runner of a deferred run, and
a deferred task marked failed (the triggerer cancels the trigger and awaits its ``on_kill``). Every wait
is bounded and fails with a message; nothing asserts on how long something took.

Model c sleeps 10 s and model d (after c) 600 s. dbt 1.11 interrupted after its parent died sometimes
hangs in its clean-up until c's query ends instead of cancelling it (seen in about half the tries; with the
parent alive the same SIGINT cancels it at once), so these tests accept either way of stopping but never a
dbt that goes on: d must never be built and nothing may be left running or on disk. Each kill follows c's
start by well under a second, so c's 10 s are margin enough, and a hang costs at most those 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.detached import DetachedProcess, read_dbt_process
from dlh_airflow_common.hooks.dbt import DbtHook
from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger
from pg_faults import AUDIT, builds, dbt_processes, fault_conn, sleeping_queries, sql, wait_for
from pg_server import PostgresServer

pytestmark = pytest.mark.integration

HOOK_CHILD = Path(__file__).resolve().parents[1] / "hook_child.py"
C_SLEEP = 10
STOP_LIMIT = 120.0  # dbt stops at once, or after c's query (C_SLEEP); longer means it went on with d
START_LIMIT = 180.0
PROFILE_PREFIX = "dlh-dbt-profile-"


def _leftovers(project: Path, temp_dir: Path) -> list[str]:
    """Everything a killed run could leave: run dirs in the project's target, temp profile dirs."""
    runs = sorted(str(p) for p in (project / "target").glob("run_*"))
    return runs + sorted(str(p) for p in temp_dir.glob(f"{PROFILE_PREFIX}*"))


@pytest.fixture
def lab(fault_project: Path, pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fault project with c sleeping C_SLEEP s and d 600 s, its connection defined, and no dbt left at the end."""
    monkeypatch.setenv("AIRFLOW_CONN_FAULT_PG", fault_conn(pg_server))
    sql(pg_server, f"update {AUDIT}.control set seconds = {C_SLEEP}")
    (fault_project / "models" / "d.sql").write_text(
        "select id from {{ ref('c') }} union all select 0 from (select pg_sleep(600)) s\n"
    )
    yield fault_project
    for line in dbt_processes(str(fault_project)):  # a failed test must not leave dbt running for the next
        pid, state = line.split()[:2]
        if state != "Z":
            os.kill(int(pid), signal.SIGKILL)
    sql(pg_server, "select pg_terminate_backend(pid) from pg_stat_activity where query like '%pg_sleep%' "
                   "and pid <> pg_backend_pid()")  # fmt: skip


def _hook_logger(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.INFO, logger="dlh.test.leaks")
    return logging.getLogger("dlh.test.leaks")


def _watch(trigger: DbtExecutionTrigger, limit: float) -> list[dict[str, Any]]:
    """Run the trigger as the triggerer does, until its one event."""

    async def drain() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(drain(), limit))


def _trigger_for(process: DetachedProcess, **kwargs: Any) -> DbtExecutionTrigger:
    """The trigger the operator defers to, polling fast for the test."""
    return DbtExecutionTrigger(
        run_dir=process.run_dir, pid=process.pid, host=process.host, pgid=process.pgid,
        start_ticks=process.start_ticks, started_at=process.started_at, **{"poll_interval": 0.2, "grace_period": 30.0,
                                                                              **kwargs},
    )  # fmt: skip


def _assert_dbt_went_no_further(lab: Path, pg_server: PostgresServer) -> None:
    wait_for(lambda: sleeping_queries(pg_server) == 0, STOP_LIMIT, "no pg_sleep query of dbt left running")
    wait_for(lambda: dbt_processes(str(lab)) == [], STOP_LIMIT, "no dbt process (nor its runner) left")
    assert "d" not in builds(pg_server), "dbt was stopped: it never went on to the next model"


def _kill_group(process: DetachedProcess) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pgid, signal.SIGKILL)


def test_sigkilled_sync_task_stops_dbt_and_the_next_run_sweeps_its_run_dir(
    lab: Path, pg_server: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    temp_dir = tmp_path / "systemtmp"
    temp_dir.mkdir()
    spec = {"hook": {"dbt_project_dir": str(lab), "conn_id": "fault_pg"}, "run": {"command": "run"}}
    env = {**os.environ, "TMPDIR": str(temp_dir)}
    task = subprocess.Popen([sys.executable, str(HOOK_CHILD), json.dumps(spec)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: sleeping_queries(pg_server) > 0, START_LIMIT, "model c to start sleeping")
        assert dbt_processes(str(lab)), "dbt runs as its own process"
        task.kill()  # what an OOM kill or Airflow's SIGKILL after the on_kill timeout does
        assert task.wait(timeout=STOP_LIMIT) == -signal.SIGKILL
    finally:
        if task.poll() is None:
            task.kill()
            task.wait()
    _assert_dbt_went_no_further(lab, pg_server)
    orphans = list((lab / "target").glob("run_*"))
    assert len(orphans) == 1, "the killed task could not remove its run dir: only a sweep can"
    assert not list(temp_dir.glob(f"{PROFILE_PREFIX}*")), "the profile lives in the run dir, not in the temp dir"
    assert (orphans[0] / "profile" / "profiles.yml").is_file()

    sql(pg_server, f"update {AUDIT}.control set seconds = 0")
    hook = DbtHook(lab, conn_id="fault_pg", logger=_hook_logger(caplog), orphan_run_dir_age=0.001)
    result = hook.run_dbt_task("run", exclude="d")
    assert result.success, result.error
    assert _leftovers(lab, temp_dir) == [], "the next run swept the orphan and removed its own run dir"
    assert any(f"Removed orphaned dbt run dir {orphans[0]}" in r.getMessage() for r in caplog.records)


def test_sigkilled_detached_runner_stops_dbt_and_finish_removes_the_run_dir(
    lab: Path, pg_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    hook = DbtHook(lab, conn_id="fault_pg", logger=_hook_logger(caplog))
    process = hook.start_detached("run", run_name="run_20260101_000000_leaks_runner_try1_abcd")
    try:
        wait_for(lambda: sleeping_queries(pg_server) > 0, START_LIMIT, "model c to start sleeping")
        dbt = read_dbt_process(Path(process.run_dir))
        assert dbt is not None and dbt.alive_here() and dbt.parent_death_signal
        os.kill(process.pid, signal.SIGKILL)  # the runner only: the kernel tells dbt (parent-death signal)
        events = _watch(_trigger_for(process, grace_period=STOP_LIMIT), 2 * STOP_LIMIT)
    finally:
        _kill_group(process)
    assert [e["status"] for e in events] == ["lost"]
    assert not dbt.alive_here(), "the trigger yields lost only once dbt has ended"
    _assert_dbt_went_no_further(lab, pg_server)
    assert Path(process.run_dir).is_dir(), "lost: execute_complete still has to report the run"
    result = hook.finish_detached(events[0], raise_on_failure=False)
    assert not result.success
    assert not Path(process.run_dir).exists(), "dbt has ended, so finish_detached removed the run dir"
    assert dbt_processes(str(lab)) == []


def test_killed_deferred_task_stops_dbt_and_on_kill_removes_the_run_dir(
    lab: Path, pg_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    hook = DbtHook(lab, conn_id="fault_pg", logger=_hook_logger(caplog))
    process = hook.start_detached("run", run_name="run_20260101_000000_leaks_killed_try1_abcd")
    trigger = _trigger_for(process)

    async def mark_failed() -> bool:
        """What the Airflow 3.3 triggerer does for a task marked failed: cancel run(), await on_kill()."""

        async def drain() -> list[Any]:
            return [event async for event in trigger.run()]

        watching = asyncio.create_task(drain())
        await asyncio.sleep(1.0)
        was_running = not watching.done()
        watching.cancel("__airflow_user_action__")
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await asyncio.wait_for(trigger.on_kill(), STOP_LIMIT)
        return was_running

    try:
        wait_for(lambda: sleeping_queries(pg_server) > 0, START_LIMIT, "model c to start sleeping")
        assert asyncio.run(mark_failed()), "the trigger was still watching a running dbt when it was killed"
    finally:
        _kill_group(process)
    assert dbt_processes(str(lab)) == [], "on_kill returned only after dbt and its runner had ended"
    _assert_dbt_went_no_further(lab, pg_server)
    assert not Path(process.run_dir).exists(), "on_kill removed the run dir: execute_complete never runs"
    assert list((lab / "target").glob("run_*")) == []


def test_killed_deferred_task_keeps_the_run_dir_when_asked(
    lab: Path, pg_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    hook = DbtHook(lab, conn_id="fault_pg", logger=_hook_logger(caplog))
    process = hook.start_detached("run", run_name="run_20260101_000000_leaks_kept_try1_abcd")
    try:
        wait_for(lambda: sleeping_queries(pg_server) > 0, START_LIMIT, "model c to start sleeping")
        asyncio.run(asyncio.wait_for(_trigger_for(process, keep_run_dir=True).on_kill(), STOP_LIMIT))
    finally:
        _kill_group(process)
    _assert_dbt_went_no_further(lab, pg_server)
    assert (Path(process.run_dir) / "logs" / "events.jsonl").is_file(), "keep_run_dir: the run dir stays"
