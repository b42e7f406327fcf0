"""DbtExecutionTrigger: watches a detached dbt run from the triggerer without blocking its event loop."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import suppress
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from dlh_airflow_common.dbt.channel import (
    DEFAULT_HEARTBEAT_TIMEOUT,
    STATUS_FILE,
    ChannelReader,
    ChannelSpec,
    RunStatus,
)
from dlh_airflow_common.dbt.detached import PROCESS_FILE, DbtProcess, DetachedProcess, read_dbt_process
from dlh_airflow_common.dbt.processes import process_alive
from dlh_airflow_common.dbt.report import ProgressReporter
from dlh_airflow_common.exceptions.dbt import classify_dbt_error
from dlh_airflow_common.settings import configured_seconds

_STOP_POLL_SECONDS = 0.2
_REMOVAL_SECONDS = 2.0  # what on_kill keeps of Airflow's on_kill_timeout for removing the run dir
_KILL_WAIT_SECONDS = 10.0  # after SIGKILL: long enough for the kernel to end the group, short enough to give up
_NO_RUN_DIR, _FINISHED, _GONE, _RUNNING = "no run dir", "finished", "gone", "running"
_RUNNER_EXIT_SECONDS = 5.0  # the longest a local trigger waits for a finished runner to exit
_CONFIRM_MARGIN_SECONDS = 5.0
# A remote runner's first status waits for its object-store client (Airflow's import, the connection): allow
# it this long before the first heartbeat counts (a loaded worker took over 20 s).
_FIRST_STATUS_SECONDS = 120.0  # beyond grace and two heartbeats, for a remote runner to publish its final status


_BACKGROUND: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones


def _in_background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


def on_kill_timeout() -> float:
    """Seconds Airflow's triggerer gives ``on_kill`` before cancelling it (``[triggerer] on_kill_timeout``)."""
    try:
        from airflow.configuration import conf

        return float(conf.getint("triggerer", "on_kill_timeout", fallback=30))
    except Exception:  # an Airflow without the option: its default
        return 30.0


# The least time between a task deferring and its trigger firing (``[dlh_dbt] resume_delay``). Airflow 3.3 gives
# every run of a task try one key: when the resumed run starts before the scheduler has handled the end of the
# run that deferred (its supervisor reports it about 5 s late), the scheduler takes that end for the new run's
# and fails the task ("TI was not in the running state", previous_state failed). Seen on the deployment tier
# with a deferred dbt run that ended within seconds, and with task-graph node tasks.
RESUME_SECONDS = 5.0


def resume_delay() -> float:
    """``[dlh_dbt] resume_delay``: the least seconds between a task deferring and its trigger firing."""
    return configured_seconds("resume_delay", RESUME_SECONDS)


class DbtExecutionTrigger(BaseTrigger):
    """Yields one event for a detached dbt run: ``success``, ``error``, ``timeout`` or ``lost``.

    Every poll is one read of the run channel's status, which also carries the node results to log (a local read
    in a worker thread; an object store's awaited on its client's own IO loop, holding no thread); the first
    poll comes at a random phase of ``poll_interval``, so many triggers do not poll in step. With a remote
    ``channel`` (an object store) the trigger never touches the worker's files or processes: the runner is alive
    while its heartbeat moves (``lost`` once it has not moved for ``heartbeat_timeout`` seconds), and the
    deadline and ``on_kill`` write a cancel request that the runner obeys (SIGINT, grace period, SIGKILL) and
    confirms in its final status. With the local channel: ``deadline`` (epoch seconds) stops dbt gracefully:
    SIGINT to its process group, ``grace_period`` seconds, then SIGKILL. ``on_kill`` (a user marked or cleared
    the task) stops it the same way and then removes the run dir (``execute_complete`` never runs after a kill)
    unless ``keep_run_dir``. A runner that died without a status is ``lost``; dbt, if it outlived it, is stopped
    first. ``cleanup`` never stops or removes anything, so a triggerer restart leaves dbt running and the
    re-created trigger keeps watching. ``min_wait``: its event is never yielded sooner than that many seconds
    after it started (``resume_delay``).
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
        keep_run_dir: bool = False,
        channel: dict[str, Any] | None = None,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        min_wait: float = 0.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.min_wait = min_wait
        self.run_dir = run_dir
        self.pid = pid
        self.host = host
        self.pgid = pgid if pgid is not None else pid
        self.start_ticks = start_ticks
        self.started_at = started_at
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.grace_period = grace_period
        self.keep_run_dir = keep_run_dir
        self.channel = ChannelSpec.from_dict(channel) or ChannelSpec(run_dir)
        self.heartbeat_timeout = heartbeat_timeout
        self._reader = ChannelReader(self.channel)
        self._seq = 0
        self._beat: tuple[int, float] | None = None  # the last heartbeat seen, and when (monotonic)
        self._unread_since: float | None = None  # the remote channel has been unreadable since (monotonic)
        self._started = False  # a status was seen: from then on the heartbeat must move
        self._dbt: DbtProcess | None = None

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
                "keep_run_dir": self.keep_run_dir,
                "channel": self.channel.to_dict(),
                "heartbeat_timeout": self.heartbeat_timeout,
                "min_wait": self.min_wait,
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
            "started_at": self.started_at, "channel": self.channel.to_dict(), **details,
        }  # fmt: skip
        return TriggerEvent(payload)  # type: ignore[no-untyped-call]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """The run's one event, never sooner than ``min_wait`` after the trigger started (``RESUME_SECONDS``)."""
        earliest = time.monotonic() + self.min_wait
        async for event in self._watch():
            await asyncio.sleep(max(0.0, earliest - time.monotonic()))
            yield event

    async def _watch(self) -> AsyncIterator[TriggerEvent]:
        reporter = ProgressReporter(self.log, max_nodes=0)  # the trigger only logs progress: keep no results
        same_host = self.host == socket.gethostname()
        # Start at a random phase of the interval: triggers created together (a triggerer restart re-creates
        # all of them at once) would otherwise poll in step, and their bunched reads delay the whole loop.
        await asyncio.sleep(random.uniform(0, self.poll_interval))
        if self.channel.remote:
            async for event in self._watch_remote(reporter):
                yield event
            return
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
                if same_host:  # the runner exits right after its final status: let it, so nothing outlives the run
                    await self._ended_within(_RUNNER_EXIT_SECONDS)
                yield self._finished(status)
                return
            if state == _GONE:
                dbt = await asyncio.to_thread(self._dbt_process)
                outlived = dbt is not None and dbt.alive_here()
                if outlived:  # dbt must never outlive its runner: nobody would ever collect or stop it
                    await self._stop("runner lost")
                yield self._event(
                    "lost",
                    message=f"dbt runner {self.pid} on {self.host} is gone and left no final {STATUS_FILE} (its own "
                    f"output is in {Path(self.run_dir) / 'logs' / 'detached.out'})."
                    + (f" dbt (pid {dbt.pid}) outlived it and was stopped." if outlived and dbt else ""),
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

    def _poll(self, reporter: ProgressReporter, same_host: bool) -> tuple[str, RunStatus | None]:
        """One look at a local run (in a worker thread): its state and, once it finished, its status."""
        if not os.path.isdir(self.run_dir):
            return _NO_RUN_DIR, None
        status = self._status(reporter)
        if status is not None and status.finished:
            return _FINISHED, status
        if same_host and not process_alive(self.pid, self.start_ticks):
            status = self._status(reporter)  # it may just have ended
            return (_FINISHED, status) if status is not None and status.finished else (_GONE, None)
        return _RUNNING, None

    def _status(self, reporter: ProgressReporter) -> RunStatus | None:
        """The channel's status (one read, in a worker thread); logs the node results not logged yet."""
        return self._take(self._reader.status(), reporter)

    def _take(self, status: RunStatus | None, reporter: ProgressReporter) -> RunStatus | None:
        """Log the node results of ``status`` not logged yet (logging may block: call in a worker thread)."""
        if status is not None:
            nodes, missed = status.nodes_after(self._seq)
            if missed:
                reporter.log.info("(%d more nodes finished; see the summary)", missed)
            for node in nodes:
                reporter(node)
            self._seq = max(self._seq, status.node_count)
        return status

    def _finished(self, status: RunStatus) -> TriggerEvent:
        exit_code = status.exit_code
        if exit_code == 0 and status.stopped is None:
            return self._event("success", exit_code=0)
        failures: list[Any] = list(status.error_events) or [f"dbt exited with code {exit_code}"]
        error = classify_dbt_error(failures)
        return self._event("error", exit_code=exit_code, reason=type(error).__name__, node_id=error.node_id)

    # -- remote channel: heartbeat, cancel requests -------------------------------------------------
    async def _watch_remote(self, reporter: ProgressReporter) -> AsyncIterator[TriggerEvent]:
        while True:
            read, status = await self._remote_status(reporter)
            if status is not None and status.finished:
                yield self._finished(status)
                return
            silent = self._silent_for(status, read=read)
            self._started |= status is not None
            limit = self.heartbeat_timeout if self._started else max(self.heartbeat_timeout, _FIRST_STATUS_SECONDS)
            if silent > limit:
                what = "sent no heartbeat" if self._started else "published no status"
                yield self._event(
                    "lost",
                    message=f"dbt runner {self.pid} on {self.host} {what} to {self.channel.url} for "
                    f"{silent:.0f}s (limit {limit:g}s): its process or host is gone.",
                )
                return
            if self.deadline is not None and time.time() >= self.deadline:
                final = await self._cancel_remote("timeout", self._confirm_seconds())
                stopped = final is not None
                message = "The execution timeout passed; dbt was stopped." if stopped else (
                    f"The execution timeout passed; dbt on {self.host} did not confirm that it stopped.")  # fmt: skip
                yield self._event("timeout", stopped=stopped, message=message)
                return
            await asyncio.sleep(self.poll_interval)

    async def _remote_status(self, reporter: ProgressReporter) -> tuple[bool, RunStatus | None]:
        """Whether the channel could be read, and its status (None before the runner published one): one read,
        awaited on the store's own IO loop; decoding and logging take one short hop."""
        try:
            data = await self._reader.status_bytes()
        except Exception as err:  # the store is unreachable for now: not a sign of the runner's death
            self.log.warning("Could not read the run channel %s: %s", self.channel.url, err)
            return False, None
        return True, await asyncio.to_thread(lambda: self._take(RunStatus.from_bytes(data), reporter))

    def _silent_for(self, status: RunStatus | None, *, read: bool = True) -> float:
        """Seconds the heartbeat has not moved while the channel was readable, on this triggerer's clock (the
        worker's may differ): time the store could not be read counts neither for nor against the runner (0 while
        it cannot be read; afterwards the clock resumes where it stood)."""
        now = time.monotonic()
        if not read:
            self._unread_since = now if self._unread_since is None else self._unread_since
            return 0.0
        if self._unread_since is not None and self._beat is not None:
            self._beat = (self._beat[0], self._beat[1] + now - self._unread_since)
        self._unread_since = None
        beat = status.beat if status is not None else -1
        if self._beat is None or self._beat[0] != beat:
            self._beat = (beat, now)
        return now - self._beat[1]

    def _confirm_seconds(self) -> float:
        return self.grace_period + 2 * self.channel.heartbeat_interval + _CONFIRM_MARGIN_SECONDS

    async def _cancel_remote(self, reason: str, wait: float) -> RunStatus | None:
        """Write the cancel request, then wait (without blocking the loop) for the runner's final status."""
        await asyncio.to_thread(self._reader.request_cancel, reason)  # retried (channel.py), unlike a poll
        self.log.info("Asked the dbt runner on %s to stop (%s) through %s", self.host, reason, self.channel.url)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            await asyncio.sleep(min(_STOP_POLL_SECONDS * 5, max(0.0, end - time.monotonic())))
            try:
                status = RunStatus.from_bytes(await self._reader.status_bytes())
            except Exception as err:
                self.log.warning("Could not read the run channel %s: %s", self.channel.url, err)
                continue
            if status is not None and status.finished:
                self.log.info("dbt on %s stopped (exit code %s)", status.host, status.exit_code)
                return status
        return None

    def _dbt_process(self) -> DbtProcess | None:
        """dbt as its runner recorded it (file read: call in a worker thread); kept once known."""
        if self._dbt is None:
            self._dbt = read_dbt_process(Path(self.run_dir))
        return self._dbt

    def _running(self) -> tuple[bool, bool]:
        """Whether the runner and dbt still run here (reads /proc and the run dir: call in a worker thread)."""
        dbt = self._dbt_process()
        return process_alive(self.pid, self.start_ticks), dbt is not None and dbt.alive_here()

    def _signal(self, sig: int) -> None:
        """``sig`` to the run's process group, only while the runner or dbt is still the recorded process."""
        if any(self._running()):
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)

    async def _ended_within(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while True:
            if not any(await asyncio.to_thread(self._running)):
                return True
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(_STOP_POLL_SECONDS)

    async def _stop(self, reason: str, grace_period: float | None = None) -> bool:
        """SIGINT to dbt's group, wait up to the grace period without blocking the loop, then SIGKILL.

        True once neither the runner nor dbt runs any more; False when dbt runs on another host (it cannot be
        signalled from here) or survived SIGKILL. A dbt whose runner died already got SIGINT from the kernel
        (parent-death signal): it is not sent a second one, which would cut its query cancellation short.
        If Airflow cuts the wait short (``on_kill_timeout``), dbt gets SIGKILL at once rather than being left
        running.
        """
        if self.host != socket.gethostname():
            here = socket.gethostname()
            self.log.warning("Cannot stop dbt on %s from %s: signal it there (pid %s)", self.host, here, self.pid)
            return False
        runner_alive, dbt_alive = await asyncio.to_thread(self._running)
        if not (runner_alive or dbt_alive):
            return True
        dbt = self._dbt
        grace = self.grace_period if grace_period is None else grace_period
        try:
            if not runner_alive and dbt is not None and dbt.parent_death_signal:
                self.log.info("Stopping dbt (%s): its runner is gone, dbt (pid %s) got SIGINT then", reason, dbt.pid)
            else:
                self._signal(signal.SIGINT)
                self.log.info("Stopping dbt (%s): SIGINT sent to process group %s", reason, self.pgid)
            if await self._ended_within(grace):
                return True
        except asyncio.CancelledError:
            self._signal(signal.SIGKILL)
            raise
        self.log.warning("dbt did not stop within %.0fs; sending SIGKILL to group %s", grace, self.pgid)
        self._signal(signal.SIGKILL)
        return await self._ended_within(_KILL_WAIT_SECONDS)

    async def on_kill(self) -> None:
        """A user marked or cleared the deferred task: stop dbt gracefully, then remove its run dir.

        This is the only code that runs after a killed deferred task, so the run dir goes here (unless
        ``keep_run_dir``), and only once dbt has stopped on this host.
        """
        if self.channel.remote:
            await self._kill_remote()
            return
        # The triggerer cancels on_kill after [triggerer] on_kill_timeout: SIGKILL and the removal must fit in.
        grace = max(0.0, min(self.grace_period, on_kill_timeout() - _KILL_WAIT_SECONDS - _REMOVAL_SECONDS))
        try:
            stopped = await self._stop("task killed", grace)
        except asyncio.CancelledError:
            # Cut short (the triggerer may cancel a trigger more than once): _stop sent SIGKILL; the run dir
            # goes once the group has died, in a task of its own that this cancellation does not reach.
            if not self.keep_run_dir:
                self.log.info("on_kill was cut short: dbt got SIGKILL; its run dir goes once it has ended")
                _in_background(self._remove_once_ended())
            raise
        if stopped and not self.keep_run_dir:
            await asyncio.to_thread(self._remove_run_dir)

    async def _kill_remote(self) -> None:
        """A killed remote run: the runner stops dbt on request; its channel goes once it confirmed (retention
        of a run that never confirms: the store's own lifecycle rule, see docs/deployment.md)."""
        wait = max(0.0, min(self._confirm_seconds(), on_kill_timeout() - _REMOVAL_SECONDS))
        final = await self._cancel_remote("killed", wait)
        if final is None:
            self.log.warning("dbt on %s did not confirm the stop within %.0fs; keeping %s", self.host, wait,
                             self.channel.url)  # fmt: skip
        elif not self.keep_run_dir:
            await asyncio.to_thread(self._reader.remove)
            self.log.info("Removed the run channel %s (the task was killed)", self.channel.url)

    async def _remove_once_ended(self) -> None:
        if await self._ended_within(_KILL_WAIT_SECONDS):
            await asyncio.to_thread(self._remove_run_dir)

    def _remove_run_dir(self) -> None:
        """Remove the run dir, only if it is a detached run's (it holds ``process.json``); never raises."""
        path = Path(self.run_dir)
        if not (path / PROCESS_FILE).is_file():
            return
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        except OSError as err:
            self.log.warning("Could not remove dbt run dir %s: %s", path, err)
            return
        self.log.info("Removed dbt run dir %s (the task was killed)", path)

    async def cleanup(self) -> None:
        """Nothing to release: before Airflow 3.3 this also runs on a triggerer restart, so dbt is left
        running and its run dir left in place for the re-created trigger."""
