"""DbtNodeTrigger: a task graph's node task waiting in the triggerer for its node's result in the build's channel.

Many node tasks wait on one build: node triggers of the same channel in one triggerer share one status read
per poll interval (``shared_reads``), so a 500-node group costs one request per interval, not 500.

Two ways in. Deferred by its task (``channel`` given): it watches that channel and resumes the task on a
worker with its verdict, or asks it to look again. Started in the triggerer (``build_task_id`` given, the task's
``start_from_trigger``, Airflow >= 3.3): it first finds the build (its announcement, or its final results) and
ends a node that succeeded or was skipped right there, with no worker run at all (``end_in_triggerer``);
anything else (a failure, to raise the typed error; a task with outlets, whose asset events a worker
registers; a retry) resumes on a worker, where the operator's rules apply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSkippedEvent, TaskSuccessEvent, TriggerEvent

from dlh_airflow_common.dbt.channel import DEFAULT_HEARTBEAT_TIMEOUT, ChannelReader, ChannelSpec, RunStatus
from dlh_airflow_common.task_graph import build_watch, shared_reads
from dlh_airflow_common.task_graph.node_verdict import NODE_XCOM, NodeVerdict, judge
from dlh_airflow_common.triggers.dbt import RESUME_SECONDS

log = logging.getLogger(__name__)
FIRST_STATUS_SECONDS = 120.0  # a build's runner may take this long to publish its first status (remote store)


def shared_status(spec: ChannelSpec) -> shared_reads.SharedRead[bytes | None]:
    """The shared status read of ``spec``'s channel in this event loop."""
    return shared_reads.acquire(
        ("channel", spec.where), ChannelReader(spec).status_bytes, f"the build's status at {spec.where}"
    )


def _recheck(reason: str) -> dict[str, Any]:
    return {"kind": "recheck", "reason": reason}


class DbtNodeTrigger(BaseTrigger):
    """Yields once: ``verdict`` when the build reported the task's node and tests (failures only when
    ``accept_failure``), or ``recheck`` when the build ended, its channel went away or its heartbeat stopped,
    so that the task decides from the build task's state and final results. It never fires sooner than
    ``min_wait`` after it started. Started in the triggerer, it may end the task itself (see the module).

    :param channel: The build's ``ChannelSpec`` as plain JSON (no secrets); None when started in the triggerer.
    :param node_id: The task's node; None for a task of tests only.
    :param tests: The tests placed in the task.
    :param poll_interval: Seconds between looks at the shared status.
    :param accept_failure: False while a retried node task waits for the build's next try.
    :param heartbeat_timeout: Seconds without a heartbeat after which the build counts as gone.
    :param min_wait: Seconds the trigger waits at least before it fires (``triggers.dbt.RESUME_SECONDS``).
    :param build_task_id: The build task to find first (the task started in the triggerer).
    :param end_in_triggerer: End a succeeded or skipped task here instead of resuming it on a worker.
    """

    def __init__(
        self,
        channel: dict[str, Any] | None,
        node_id: str | None,
        tests: list[str],
        poll_interval: float = 10.0,
        accept_failure: bool = True,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        min_wait: float = RESUME_SECONDS,
        build_task_id: str | None = None,
        end_in_triggerer: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.channel = channel
        self.node_id = node_id
        self.tests = list(tests)
        self.poll_interval = float(poll_interval)
        self.accept_failure = accept_failure
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.min_wait = float(min_wait)
        self.build_task_id = build_task_id
        self.end_in_triggerer = end_in_triggerer

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
                "build_task_id": self.build_task_id,
                "end_in_triggerer": self.end_in_triggerer,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        earliest = time.monotonic() + self.min_wait
        if self.build_task_id is not None:
            event: TriggerEvent = await self._from_the_start()
        else:
            event = TriggerEvent(await self._follow_channel())  # type: ignore[no-untyped-call]
        await asyncio.sleep(max(0.0, earliest - time.monotonic()))
        yield event

    async def _follow_channel(self) -> dict[str, Any]:
        spec = ChannelSpec.from_dict(self.channel)
        if spec is None:
            return _recheck("no run channel to watch")
        shared = shared_status(spec)
        try:
            return await self._watch(shared)
        finally:
            shared_reads.release(("channel", spec.where), shared)

    async def _watch(self, shared: shared_reads.SharedRead[bytes | None]) -> dict[str, Any]:
        started = time.monotonic()
        beat, moved = -1, started
        seen = False
        while True:
            status = RunStatus.from_bytes(await shared.read(self.poll_interval))
            now = time.monotonic()
            if status is None:
                if seen or now - started > max(self.heartbeat_timeout, FIRST_STATUS_SECONDS):
                    return _recheck("the build's run channel is gone")
            else:
                seen = True
                if status.beat != beat:
                    beat, moved = status.beat, now
                verdict = judge(status.results or {}, self.node_id, self.tests, build_finished=status.finished)
                if verdict.verdict in ("success", "skipped") or (verdict.verdict == "failed" and self.accept_failure):
                    return verdict.to_event()
                if status.finished:
                    return _recheck("the build finished")
                if now - moved > self.heartbeat_timeout:
                    return _recheck(f"no heartbeat from the build for {now - moved:.0f}s")
            await asyncio.sleep(self.poll_interval)

    # -- started in the triggerer ---------------------------------------------------------------------------
    async def _from_the_start(self) -> TriggerEvent:
        """Find the build, follow it to this node's verdict, and end the task here when it may."""
        ti = getattr(self, "task_instance", None)
        if ti is None or int(getattr(ti, "try_number", 1) or 1) > 1:  # a retry's rules are the operator's
            return TriggerEvent(_recheck("a retry decides on a worker"))  # type: ignore[no-untyped-call]
        dag_id, run_id, build = str(ti.dag_id), str(ti.run_id), str(self.build_task_id)

        async def fetch() -> build_watch.BuildLook:
            return await build_watch.look(dag_id, run_id, build)

        key = ("build", dag_id, run_id, build)
        watch = shared_reads.acquire(key, fetch, f"the state of {build}")
        try:
            outcome = await self._find_verdict(watch)
        finally:
            shared_reads.release(key, watch)
        if not isinstance(outcome, tuple):
            return TriggerEvent(outcome)  # type: ignore[no-untyped-call]
        verdict, source = outcome
        if self.end_in_triggerer and verdict.verdict in ("success", "skipped"):
            for result in verdict.results:
                self.log.info("%s (%s)", result.line(), source)
            xcoms: dict[str, Any] = {NODE_XCOM: verdict.summary(self.node_id, self.tests)}
            if verdict.verdict == "skipped":
                self.log.info("dbt skipped %s", self.node_id or ", ".join(self.tests))
                return TaskSkippedEvent(xcoms=xcoms)
            return TaskSuccessEvent(xcoms=xcoms)
        return TriggerEvent(verdict.to_event())  # type: ignore[no-untyped-call]

    async def _find_verdict(
        self, watch: shared_reads.SharedRead[build_watch.BuildLook]
    ) -> tuple[NodeVerdict, str] | dict[str, Any]:
        """This node's verdict, and where it came from: the build's final results or its running channel; a
        recheck when the build ended without one, or its heartbeat stopped."""
        spec: ChannelSpec | None = None
        status_read: shared_reads.SharedRead[bytes | None] | None = None
        beat, moved = -1, time.monotonic()
        try:
            while True:
                found = await watch.read(self.poll_interval)
                if found is not None and found.final is not None:
                    results = found.final.get("results") or {}
                    verdict = judge(results, self.node_id, self.tests, build_finished=True)
                    if verdict.verdict == "not_run":
                        return _recheck("the build ended without this node")
                    return verdict, f"try {found.final.get('try_number')} of the build"
                if found is not None and status_read is None and isinstance(found.announced, Mapping):
                    spec = ChannelSpec.from_dict(found.announced.get("channel"))
                    status_read = shared_status(spec) if spec is not None else None
                status = RunStatus.from_bytes(await status_read.read(self.poll_interval)) if status_read else None
                now = time.monotonic()
                if status is not None:
                    verdict = judge(status.results or {}, self.node_id, self.tests, build_finished=status.finished)
                    if verdict.verdict in ("success", "skipped", "failed"):
                        return verdict, "the running build"
                    if status.beat != beat:
                        beat, moved = status.beat, now
                    if not status.finished and now - moved > self.heartbeat_timeout:
                        return _recheck(f"no heartbeat from the build for {now - moved:.0f}s")
                if found is not None and found.ended and found.final is None:
                    return _recheck(f"the build ended ({found.state}) without final results")
                await asyncio.sleep(self.poll_interval)
        finally:
            if status_read is not None and spec is not None:
                shared_reads.release(("channel", spec.where), status_read)
