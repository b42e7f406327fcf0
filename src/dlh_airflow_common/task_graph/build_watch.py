"""What a node task started in the triggerer reads of its build: the build task's announcement of its run
channel, its final node results and its state, through Airflow's task SDK (the triggerer forwards XCom and
task-state requests to the API server). One look per DAG run and interval serves every node trigger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GRAPH_CHANNEL_XCOM = "dbt_graph_channel"
GRAPH_RESULTS_XCOM = "dbt_graph_results"
ENDED = frozenset({"success", "failed", "upstream_failed", "skipped", "removed"})


@dataclass(frozen=True)
class BuildLook:
    """The build task as one look found it: its final results (its try ended), else its announced channel."""

    final: Mapping[str, Any] | None
    announced: Mapping[str, Any] | None
    state: str | None

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def look_now(dag_id: str, run_id: str, build_task_id: str) -> BuildLook:
    """One look (blocking calls to the task SDK): the final results, or the announcement, and the state."""
    from airflow.sdk.bases.xcom import BaseXCom
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    def xcom(key: str) -> Any:
        return BaseXCom.get_one(key=key, dag_id=dag_id, task_id=build_task_id, run_id=run_id)

    final = xcom(GRAPH_RESULTS_XCOM)
    announced = None if isinstance(final, Mapping) else xcom(GRAPH_CHANNEL_XCOM)
    states = RuntimeTaskInstance.get_task_states(dag_id=dag_id, task_ids=[build_task_id], run_ids=[run_id])
    state = (states.get(run_id) or {}).get(build_task_id)
    return BuildLook(
        final if isinstance(final, Mapping) else None,
        announced if isinstance(announced, Mapping) else None,
        str(getattr(state, "value", state)) if state is not None else None,
    )


async def look(dag_id: str, run_id: str, build_task_id: str) -> BuildLook:
    """``look_now`` in a thread: the SDK calls block (Airflow 3.3's triggerer answers them from any thread)."""
    return await asyncio.to_thread(look_now, dag_id, run_id, build_task_id)
