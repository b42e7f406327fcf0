"""Unit tests for dlh_airflow_common.task_graph.build_watch: one look at the build through the task SDK (its XCom
and task-state calls faked; the real ones are exercised by the deployment tier's task-graph tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from airflow.sdk.bases.xcom import BaseXCom
from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

from dlh_airflow_common.task_graph import build_watch
from dlh_airflow_common.task_graph.build_watch import GRAPH_CHANNEL_XCOM, GRAPH_RESULTS_XCOM, BuildLook


def _sdk(monkeypatch: pytest.MonkeyPatch, xcoms: dict[str, Any], state: Any) -> list[str]:
    asked: list[str] = []

    def get_one(**where: Any) -> Any:
        assert (where["dag_id"], where["task_id"], where["run_id"]) == ("d", "g.dbt_build", "r")
        asked.append(where["key"])
        return xcoms.get(where["key"])

    def get_task_states(**where: Any) -> dict[str, Any]:
        assert where == {"dag_id": "d", "task_ids": ["g.dbt_build"], "run_ids": ["r"]}
        return {"r": {"g.dbt_build": state}} if state is not None else {}

    monkeypatch.setattr(BaseXCom, "get_one", staticmethod(get_one))
    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    return asked


def test_final_results_are_looked_for_first_and_the_announcement_only_without_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = {"try_number": 1, "results": {}}
    asked = _sdk(monkeypatch, {GRAPH_RESULTS_XCOM: final, GRAPH_CHANNEL_XCOM: {"channel": {}}}, "success")
    assert asyncio.run(build_watch.look("d", "r", "g.dbt_build")) == BuildLook(final, None, "success")
    assert asked == [GRAPH_RESULTS_XCOM]


def test_a_running_build_gives_its_announcement_and_a_new_one_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    announced = {"try_number": 2, "channel": {"run_dir": "/r"}}
    _sdk(monkeypatch, {GRAPH_CHANNEL_XCOM: announced}, "deferred")
    running = build_watch.look_now("d", "r", "g.dbt_build")
    assert running == BuildLook(None, announced, "deferred") and not running.ended
    _sdk(monkeypatch, {}, None)
    assert build_watch.look_now("d", "r", "g.dbt_build") == BuildLook(None, None, None)
    _sdk(monkeypatch, {}, "failed")
    assert build_watch.look_now("d", "r", "g.dbt_build").ended
