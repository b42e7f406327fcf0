"""Unit tests for dlh_airflow_common.task_graph.trigger: node triggers of one build share its status reads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.triggers.base import TaskSkippedEvent, TaskSuccessEvent

from dlh_airflow_common.dbt.channel import ChannelSpec, ChannelWriter
from dlh_airflow_common.task_graph import build_watch
from dlh_airflow_common.task_graph import trigger as trigger_module
from dlh_airflow_common.task_graph.build_watch import BuildLook
from dlh_airflow_common.task_graph.node_verdict import NODE_XCOM
from dlh_airflow_common.task_graph.trigger import DbtNodeTrigger


def result_event(unique_id: str, status: str) -> dict[str, Any]:
    return {"info": {"name": "LogModelResult", "level": "info"},
            "data": {"index": 1, "total": 1, "node_info": {"unique_id": unique_id, "node_status": status}}}  # fmt: skip


async def _events(triggers: list[DbtNodeTrigger]) -> list[dict[str, Any]]:
    """The payload of each trigger's first event (``_first_events``)."""
    return [dict(event.payload) for event in await _first_events(triggers)]


def test_fifty_node_triggers_share_one_read_per_poll_and_each_gets_its_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ChannelSpec(str(tmp_path), node_results=True)
    writer = ChannelWriter(spec, command="build")
    writer.heartbeat()
    made: list[trigger_module.shared_reads.SharedRead[Any]] = []
    original = trigger_module.shared_status

    def recording(channel: ChannelSpec) -> trigger_module.shared_reads.SharedRead[Any]:
        shared = original(channel)
        made.append(shared)
        return shared

    monkeypatch.setattr(trigger_module, "shared_status", recording)
    nodes = [f"model.p.m{i}" for i in range(50)]
    triggers = [DbtNodeTrigger(spec.to_dict(), uid, [], poll_interval=0.05, min_wait=0) for uid in nodes]

    async def scenario() -> list[dict[str, Any]]:
        async def build() -> None:
            for index, uid in enumerate(nodes):
                writer.event(result_event(uid, "error" if index == 7 else "success"))
                if index % 10 == 9:
                    writer.heartbeat()
                    await asyncio.sleep(0.1)

        events, _ = await asyncio.gather(_events(triggers), build())
        return events

    events = asyncio.run(scenario())
    assert [event["verdict"] for event in events] == ["failed" if i == 7 else "success" for i in range(50)]
    assert events[7]["results"] == [["model.p.m7", "error", None]]
    shared = {id(s): s for s in made}
    assert len(shared) == 1, "one shared reader per channel and loop"
    (reader,) = shared.values()
    assert reader.reads < 30, f"{reader.reads} reads for 50 triggers over about 0.5 s at 0.05 s: one per poll"
    assert not trigger_module.shared_reads._SHARED, "the last trigger releases the shared reader"


def test_a_finished_build_without_the_node_and_a_refused_failure_ask_the_task_to_look_again(tmp_path: Path) -> None:
    spec = ChannelSpec(str(tmp_path), node_results=True)
    writer = ChannelWriter(spec, command="build")
    writer.event(result_event("model.p.bad", "error"))
    writer.finish(1, stopped=None)
    missing = DbtNodeTrigger(spec.to_dict(), "model.p.other", [], poll_interval=0.01, min_wait=0)
    refused = DbtNodeTrigger(spec.to_dict(), "model.p.bad", [], poll_interval=0.01, accept_failure=False, min_wait=0)
    events = asyncio.run(_events([missing, refused]))
    assert [event["kind"] for event in events] == ["recheck", "recheck"]
    assert events[0]["reason"] == "the build finished"


def test_a_channel_that_disappears_or_a_heartbeat_that_stops_ends_the_wait(tmp_path: Path) -> None:
    spec = ChannelSpec(str(tmp_path / "run"), node_results=True)
    writer = ChannelWriter(spec, command="build")
    writer.heartbeat()
    stalled = DbtNodeTrigger(spec.to_dict(), "model.p.m", [], poll_interval=0.02, heartbeat_timeout=0.1, min_wait=0)
    (event,) = asyncio.run(_events([stalled]))
    assert event["kind"] == "recheck" and "no heartbeat" in event["reason"]

    async def removed() -> list[dict[str, Any]]:
        async def remove() -> None:
            await asyncio.sleep(0.1)
            for path in (tmp_path / "run").iterdir():
                path.unlink()

        events, _ = await asyncio.gather(
            _events([DbtNodeTrigger(spec.to_dict(), "model.p.m", [], poll_interval=0.02, min_wait=0)]), remove()
        )
        return events

    (event,) = asyncio.run(removed())
    assert event == {"kind": "recheck", "reason": "the build's run channel is gone"}


def test_serialize_round_trips() -> None:
    trigger = DbtNodeTrigger({"run_dir": "/r"}, None, ["test.p.t"], poll_interval=3, accept_failure=False)
    path, kwargs = trigger.serialize()
    assert path == "dlh_airflow_common.task_graph.trigger.DbtNodeTrigger"
    assert DbtNodeTrigger(**kwargs).serialize() == (path, kwargs)


def test_a_trigger_never_fires_before_its_least_wait(tmp_path: Path) -> None:
    spec = ChannelSpec(str(tmp_path), node_results=True)
    writer = ChannelWriter(spec, command="build")
    writer.event(result_event("model.p.done", "success"))
    writer.heartbeat()
    started = time.monotonic()
    (ready,) = asyncio.run(
        _events([DbtNodeTrigger(spec.to_dict(), "model.p.done", [], poll_interval=0.01, min_wait=0.4)])
    )
    assert time.monotonic() - started >= 0.4, "the verdict was there at once, and still waited its least time"
    assert ready["verdict"] == "success"
    (nothing,) = asyncio.run(_events([DbtNodeTrigger({}, "model.p.done", [])]))
    assert nothing == {"kind": "recheck", "reason": "no run channel to watch"}


# -- started in the triggerer -------------------------------------------------------------------------------
class FakeTI:
    def __init__(self, try_number: int = 1) -> None:
        self.dag_id, self.run_id, self.task_id, self.try_number, self.map_index = "d", "r", "g.m", try_number, -1


def _started(node: str, *, ti: FakeTI | None = None, end_here: bool = True, **kwargs: Any) -> DbtNodeTrigger:
    trigger = DbtNodeTrigger(None, node, [], poll_interval=0.02, min_wait=0, build_task_id="g.dbt_build",
                             end_in_triggerer=end_here, **kwargs)  # fmt: skip
    trigger.task_instance = ti or FakeTI()  # what the triggerer sets on a task started there
    return trigger


async def _first_events(triggers: list[DbtNodeTrigger]) -> list[Any]:
    async def first(trigger: DbtNodeTrigger) -> Any:
        async for event in trigger.run():
            return event
        raise AssertionError("no event")

    return list(await asyncio.gather(*(first(trigger) for trigger in triggers)))


def _looks(monkeypatch: pytest.MonkeyPatch, *looks: BuildLook) -> list[tuple[str, str, str]]:
    """``build_watch.look`` answering ``looks`` in turn (the last one again and again); returns the calls."""
    calls: list[tuple[str, str, str]] = []

    async def look(dag_id: str, run_id: str, build_task_id: str) -> BuildLook:
        calls.append((dag_id, run_id, build_task_id))
        await asyncio.sleep(0.01)  # the real look waits for the API server
        return looks[min(len(calls), len(looks)) - 1]

    monkeypatch.setattr(build_watch, "look", look)
    return calls


def test_started_in_the_triggerer_a_node_ends_there_from_the_final_results(monkeypatch: pytest.MonkeyPatch) -> None:
    final = {"try_number": 1, "results": {"model.p.ok": {"status": "success"}, "model.p.skip": {"status": "skipped"},
                                          "model.p.bad": {"status": "error", "message": "boom"}}}  # fmt: skip
    calls = _looks(monkeypatch, BuildLook(final=final, announced=None, state="success"))
    ok, skip, bad, outlets, gone = asyncio.run(_first_events([
        _started("model.p.ok"), _started("model.p.skip"), _started("model.p.bad"),
        _started("model.p.ok", end_here=False), _started("model.p.never"),
    ]))  # fmt: skip
    assert isinstance(ok, TaskSuccessEvent) and ok.xcoms is not None
    assert ok.xcoms[NODE_XCOM] == {"node_id": "model.p.ok", "tests": [], "verdict": "success",
                                   "results": [["model.p.ok", "success"]]}  # fmt: skip
    assert isinstance(skip, TaskSkippedEvent)
    # a failure resumes on a worker, which raises the typed error; so does a task whose outlets a worker registers
    assert not isinstance(bad, TaskSuccessEvent) and bad.payload["verdict"] == "failed"
    assert bad.payload["results"] == [["model.p.bad", "error", "boom"]]
    assert not isinstance(outlets, TaskSuccessEvent) and outlets.payload["verdict"] == "success"
    assert gone.payload == {"kind": "recheck", "reason": "the build ended without this node"}
    assert calls[0] == ("d", "r", "g.dbt_build") and len(calls) == 1, "five triggers, one look"
    assert not trigger_module.shared_reads._SHARED, "the last trigger releases the shared look"


def test_started_in_the_triggerer_it_follows_the_announced_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ChannelSpec(str(tmp_path), node_results=True)
    writer = ChannelWriter(spec, command="build")
    writer.heartbeat()
    announced = {"try_number": 1, "started_at": 0, "channel": spec.to_dict()}
    calls = _looks(
        monkeypatch,
        BuildLook(final=None, announced=None, state="running"),  # the build has not started dbt yet
        BuildLook(final=None, announced=announced, state="deferred"),
    )
    nodes = [f"model.p.m{i}" for i in range(30)]

    async def scenario() -> list[Any]:
        async def build() -> None:
            await asyncio.sleep(0.1)
            for uid in nodes:
                writer.event(result_event(uid, "success"))
            writer.heartbeat()

        events, _ = await asyncio.gather(_first_events([_started(uid) for uid in nodes]), build())
        return events

    events = asyncio.run(scenario())
    assert all(isinstance(event, TaskSuccessEvent) for event in events)
    assert len(calls) < 30, f"{len(calls)} looks at the build for 30 triggers: shared per poll"


def test_started_in_the_triggerer_a_retry_or_a_vanished_build_resume_on_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _looks(monkeypatch, BuildLook(final=None, announced=None, state="failed"))
    (retry,) = asyncio.run(_first_events([_started("model.p.m", ti=FakeTI(try_number=2))]))
    assert retry.payload == {"kind": "recheck", "reason": "a retry decides on a worker"} and calls == []
    (killed,) = asyncio.run(_first_events([_started("model.p.m")]))
    assert killed.payload == {"kind": "recheck", "reason": "the build ended (failed) without final results"}
