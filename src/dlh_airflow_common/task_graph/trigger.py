"""DbtNodeTrigger: a task graph's node task waiting in the triggerer for its node's result in the build's channel.

Many node tasks wait on one build: node triggers of the same channel in one triggerer share one status read
per poll interval (``SharedStatus``), so a 500-node group costs one request per interval, not 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from dlh_airflow_common.dbt.channel import DEFAULT_HEARTBEAT_TIMEOUT, ChannelReader, ChannelSpec, RunStatus
from dlh_airflow_common.task_graph.node_verdict import judge

log = logging.getLogger(__name__)
FIRST_STATUS_SECONDS = 120.0  # a build's runner may take this long to publish its first status (remote store)
# The least time between a node task deferring and its trigger firing. Airflow (3.3) identifies every run of a
# task try by the same key: when a resumed run starts before the scheduler has handled the end of the run that
# deferred, the scheduler takes that end for the new run's and fails it as "changed externally". Its loop
# handles such an event within a second or two; this leaves room for a loaded scheduler.
MIN_RESUME_SECONDS = 5.0


@dataclass
class SharedStatus:
    """One channel's status, read at most once per ``max_age`` seconds whoever of its triggers asks."""

    reader: ChannelReader
    users: int = 0
    read_at: float = float("-inf")
    data: bytes | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reads: int = 0  # requests made, for tests and benchmarks

    async def read(self, max_age: float) -> bytes | None:
        """The latest status bytes; a read error keeps the last ones (the next poll tries again)."""
        async with self.lock:
            if time.monotonic() - self.read_at >= max_age:
                self.reads += 1
                try:
                    self.data = await self.reader.status_bytes()
                except Exception as err:
                    log.warning("Could not read the dbt build's status at %s: %s", self.reader.spec.where, err)
                self.read_at = time.monotonic()
            return self.data


_SHARED: dict[tuple[int, str], SharedStatus] = {}


def shared_status(spec: ChannelSpec) -> SharedStatus:
    """The shared reader of ``spec``'s channel in this event loop (one per loop: locks belong to a loop)."""
    key = (id(asyncio.get_running_loop()), spec.where)
    shared = _SHARED.get(key)
    if shared is None:
        shared = _SHARED[key] = SharedStatus(ChannelReader(spec))
    shared.users += 1
    return shared


def release_status(spec: ChannelSpec, shared: SharedStatus) -> None:
    shared.users -= 1
    key = (id(asyncio.get_running_loop()), spec.where)
    if shared.users <= 0 and _SHARED.get(key) is shared:
        del _SHARED[key]


class DbtNodeTrigger(BaseTrigger):
    """Yields once: ``verdict`` when the build reported the task's node and tests (failures only when
    ``accept_failure``), or ``recheck`` when the build ended, its channel went away or its heartbeat stopped,
    so that the task decides from the build task's state and final results. It never fires sooner than
    ``min_wait`` after it started.

    :param channel: The build's ``ChannelSpec`` as plain JSON (no secrets).
    :param node_id: The task's node; None for a task of tests only.
    :param tests: The tests placed in the task.
    :param poll_interval: Seconds between looks at the shared status.
    :param accept_failure: False while a retried node task waits for the build's next try.
    :param heartbeat_timeout: Seconds without a heartbeat after which the build counts as gone.
    :param min_wait: Seconds the trigger waits at least before it fires (``MIN_RESUME_SECONDS``).
    """

    def __init__(
        self,
        channel: dict[str, Any],
        node_id: str | None,
        tests: list[str],
        poll_interval: float = 10.0,
        accept_failure: bool = True,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        min_wait: float = MIN_RESUME_SECONDS,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.channel = channel
        self.node_id = node_id
        self.tests = list(tests)
        self.poll_interval = float(poll_interval)
        self.accept_failure = accept_failure
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.min_wait = float(min_wait)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "channel": self.channel,
                "node_id": self.node_id,
                "tests": self.tests,
                "poll_interval": self.poll_interval,
                "accept_failure": self.accept_failure,
                "heartbeat_timeout": self.heartbeat_timeout,
                "min_wait": self.min_wait,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        earliest = time.monotonic() + self.min_wait
        spec = ChannelSpec.from_dict(self.channel)
        if spec is None:
            yield TriggerEvent({"kind": "recheck", "reason": "no run channel to watch"})  # type: ignore[no-untyped-call]
            return
        shared = shared_status(spec)
        try:
            event = await self._watch(shared)
        finally:
            release_status(spec, shared)
        await asyncio.sleep(max(0.0, earliest - time.monotonic()))
        yield TriggerEvent(event)  # type: ignore[no-untyped-call]

    async def _watch(self, shared: SharedStatus) -> dict[str, Any]:
        started = time.monotonic()
        beat, moved = -1, started
        seen = False
        while True:
            status = RunStatus.from_bytes(await shared.read(self.poll_interval))
            now = time.monotonic()
            if status is None:
                if seen or now - started > max(self.heartbeat_timeout, FIRST_STATUS_SECONDS):
                    return {"kind": "recheck", "reason": "the build's run channel is gone"}
            else:
                seen = True
                if status.beat != beat:
                    beat, moved = status.beat, now
                verdict = judge(status.results or {}, self.node_id, self.tests, build_finished=status.finished)
                if verdict.verdict in ("success", "skipped") or (verdict.verdict == "failed" and self.accept_failure):
                    return verdict.to_event()
                if status.finished:
                    return {"kind": "recheck", "reason": "the build finished"}
                if now - moved > self.heartbeat_timeout:
                    return {"kind": "recheck", "reason": f"no heartbeat from the build for {now - moved:.0f}s"}
            await asyncio.sleep(self.poll_interval)
