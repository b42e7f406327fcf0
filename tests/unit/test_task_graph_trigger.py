"""Unit tests for dlh_airflow_common.task_graph.trigger: node triggers of one build share its status reads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.channel import ChannelSpec, ChannelWriter
from dlh_airflow_common.task_graph import trigger as trigger_module
from dlh_airflow_common.task_graph.trigger import DbtNodeTrigger


def result_event(unique_id: str, status: str) -> dict[str, Any]:
    return {"info": {"name": "LogModelResult", "level": "info"},
            "data": {"index": 1, "total": 1, "node_info": {"unique_id": unique_id, "node_status": status}}}  # fmt: skip


async def _events(triggers: list[DbtNodeTrigger]) -> list[dict[str, Any]]:
    async def first(trigger: DbtNodeTrigger) -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    return list(await asyncio.gather(*(first(trigger) for trigger in triggers)))


def test_fifty_node_triggers_share_one_read_per_poll_and_each_gets_its_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ChannelSpec(str(tmp_path), node_results=True)
    writer = ChannelWriter(spec, command="build")
    writer.heartbeat()
    made: list[trigger_module.SharedStatus] = []
    original = trigger_module.shared_status

    def recording(channel: ChannelSpec) -> trigger_module.SharedStatus:
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
    assert not trigger_module._SHARED, "the last trigger releases the shared reader"


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
