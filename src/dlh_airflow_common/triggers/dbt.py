"""DbtExecutionTrigger: watches a detached dbt run from the triggerer without blocking its event loop."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from dlh_airflow_common.dbt.detached import (
    EVENTS_FILE,
    STATUS_FILE,
    DetachedProcess,
    process_alive,
    read_json,
    stop_group,
)
from dlh_airflow_common.dbt.report import ProgressReporter
from dlh_airflow_common.exceptions.dbt import classify_dbt_error

_STOP_POLL_SECONDS = 0.2
_NO_RUN_DIR, _FINISHED, _GONE, _RUNNING = "no run dir", "finished", "gone", "running"
_MAX_TAIL_BYTES = 256 * 1024  # per poll: progress lines are small; a huge backlog is skipped, not parsed


class DbtExecutionTrigger(BaseTrigger):
    """Yields one event for a detached dbt run: ``success``, ``error``, ``timeout`` or ``lost``.

    Every poll reads ``status.json`` (a few hundred bytes) and new progress lines in one worker-thread hop;
    the first poll comes at a random phase of ``poll_interval``, so many triggers do not poll in step.
    ``deadline`` (epoch seconds) stops dbt gracefully: SIGINT to its process group, ``grace_period``
    seconds, then SIGKILL. ``on_kill`` (a user marked or cleared the task) stops it the same way;
    ``cleanup`` never does, so a triggerer restart leaves dbt running and the re-created trigger
    keeps watching.
    """

    def __init__(
        self,
        run_dir: str,
        pid: int,
        host: str,
        *,
        pgid: int | None = None,
        start_ticks: int | None = None,
        started_at: float | None = None,
        poll_interval: float = 10.0,
        deadline: float | None = None,
        grace_period: float = 30.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.run_dir = run_dir
        self.pid = pid
        self.host = host
        self.pgid = pgid if pgid is not None else pid
        self.start_ticks = start_ticks
        self.started_at = started_at
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.grace_period = grace_period
        self._offset = 0

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "run_dir": self.run_dir,
                "pid": self.pid,
                "host": self.host,
                "pgid": self.pgid,
                "start_ticks": self.start_ticks,
                "started_at": self.started_at,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "grace_period": self.grace_period,
            },
        )

    @property
    def process(self) -> DetachedProcess:
        return DetachedProcess(
            run_dir=self.run_dir, pid=self.pid, pgid=self.pgid, host=self.host,
            started_at=self.started_at or 0.0, start_ticks=self.start_ticks,
        )  # fmt: skip

    def _event(self, status: str, **details: Any) -> TriggerEvent:
        payload = {
            "status": status, "run_dir": self.run_dir, "pid": self.pid, "host": self.host,
            "started_at": self.started_at, **details,
        }  # fmt: skip
        return TriggerEvent(payload)  # type: ignore[no-untyped-call]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        reporter = ProgressReporter(self.log)
        same_host = self.host == socket.gethostname()
        # Start at a random phase of the interval: triggers created together (a triggerer restart re-creates
        # all of them at once) would otherwise poll in step, and their bunched reads delay the whole loop.
        await asyncio.sleep(random.uniform(0, self.poll_interval))
        while True:
            state, status = await asyncio.to_thread(self._poll, reporter, same_host)  # one thread hop per poll
            if state == _NO_RUN_DIR:
                where = "" if same_host else f" (dbt runs on {self.host}, this triggerer is {socket.gethostname()})"
                yield self._event(
                    "lost",
                    message=f"Run dir {self.run_dir} is not visible from the triggerer{where}: worker and triggerer "
                    "must share this filesystem (same host or a shared volume).",
                )
                return
            if status is not None:
                yield self._finished(status)
                return
            if state == _GONE:
                yield self._event(
                    "lost", message=f"dbt runner {self.pid} on {self.host} is gone and left no {STATUS_FILE}."
                )
                return
            if self.deadline is not None and time.time() >= self.deadline:
                if await self._stop("timeout"):
                    yield self._event("timeout", stopped=True, message="The execution timeout passed; dbt was stopped.")
                else:
                    yield self._event(
                        "timeout",
                        stopped=False,
                        message=f"The execution timeout passed, but dbt runs on {self.host} and could not be "
                        f"signalled from {socket.gethostname()}; its run dir is kept.",
                    )
                return
            await asyncio.sleep(self.poll_interval)

    def _poll(self, reporter: ProgressReporter, same_host: bool) -> tuple[str, dict[str, Any] | None]:
        """One look at the run (in a worker thread): its state and, once it finished, its status."""
        if not os.path.isdir(self.run_dir):
            return _NO_RUN_DIR, None
        status_path = Path(self.run_dir) / STATUS_FILE
        status = read_json(status_path)
        self._tail(reporter)
        if status is not None:
            return _FINISHED, status
        if same_host and not process_alive(self.pid, self.start_ticks):
            status = read_json(status_path)  # it may just have ended
            return (_FINISHED, status) if status is not None else (_GONE, None)
        return _RUNNING, None

    def _finished(self, status: dict[str, Any]) -> TriggerEvent:
        exit_code = status.get("exit_code")
        if exit_code == 0:
            return self._event("success", exit_code=0)
        error = classify_dbt_error(status.get("error_events") or [f"dbt exited with code {exit_code}"])
        return self._event("error", exit_code=exit_code, reason=type(error).__name__, node_id=error.node_id)

    def _tail(self, reporter: ProgressReporter) -> None:
        """Log new node results from dbt's event stream (runs in a worker thread, reads only what is new)."""
        path = Path(self.run_dir) / "logs" / EVENTS_FILE
        try:
            if os.stat(path).st_size == self._offset:
                return  # nothing new: most polls
            with path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size - self._offset > _MAX_TAIL_BYTES:
                    self._offset = size - _MAX_TAIL_BYTES
                handle.seek(self._offset)
                chunk = handle.read(size - self._offset)
        except OSError:
            return
        complete = chunk.rfind(b"\n") + 1  # leave a half-written last line for the next poll
        self._offset += complete
        for raw in chunk[:complete].splitlines():
            if raw.startswith(b"{") and b"Result" in raw:
                try:
                    reporter(json.loads(raw))
                except ValueError:
                    continue

    async def _stop(self, reason: str) -> bool:
        """SIGINT to dbt's group, wait up to the grace period without blocking the loop, then SIGKILL.

        False when dbt runs on another host and cannot be signalled from here. If Airflow cuts the wait
        short (``on_kill_timeout``), dbt gets SIGKILL at once rather than being left running.
        """
        process = self.process
        if self.host != socket.gethostname():
            here = socket.gethostname()
            self.log.warning("Cannot stop dbt on %s from %s: signal it there (pid %s)", self.host, here, self.pid)
            return False
        if not stop_group(process, signal.SIGINT):
            return True
        self.log.info("Stopping dbt (%s): SIGINT sent to process group %s", reason, self.pgid)
        end = time.monotonic() + self.grace_period
        try:
            while time.monotonic() < end:
                if not process_alive(self.pid, self.start_ticks):
                    return True
                await asyncio.sleep(_STOP_POLL_SECONDS)
        except asyncio.CancelledError:
            stop_group(process, signal.SIGKILL)
            raise
        self.log.warning("dbt did not stop within %.0fs; sending SIGKILL to group %s", self.grace_period, self.pgid)
        stop_group(process, signal.SIGKILL)
        return True

    async def on_kill(self) -> None:
        """A user marked or cleared the deferred task: stop dbt gracefully."""
        await self._stop("task killed")

    async def cleanup(self) -> None:
        """Nothing to release; dbt is deliberately left running (a triggerer restart must not stop it)."""
