"""StatsD metrics for one dbt task try, sent through Airflow's ``Stats`` (so ``[metrics]`` config applies).

Every metric is sent once under a stable name with tags (for tag-aware backends: DogStatsD, InfluxDB
tags, OpenTelemetry) and, where a plain StatsD server needs the task in the name to tell runs apart, a
second time as ``<name>.<dag_id>.<task_id>`` (ids with dots get ``__``, as Airflow's own names do).
The names are listed in docs/monitoring.md; keep the two in step.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Protocol

from dlh_airflow_common.dbt.artifacts import RunSummary

logger = logging.getLogger(__name__)

PREFIX = "dbt"
RUN_DURATION = "dbt.run.duration"
RUN_SUCCESS = "dbt.run.success"
RUN_FAILURE = "dbt.run.failure"
RUN_RETRIES = "dbt.run.retries"
NODES = "dbt.nodes"  # + .<status>
NODE_DURATION = "dbt.node.duration"
UPLOAD_BYTES = "dbt.artifacts.uploaded_bytes"
UPLOAD_FAILURE = "dbt.artifacts.upload_failure"
DEFAULT_SLOWEST = 5

MetricKind = Literal["incr", "timing"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_PART = 60


class StatsLike(Protocol):
    """What is used of ``airflow.sdk.observability.stats.Stats`` (a recorder in unit tests)."""

    def incr(self, stat: str, count: int = ..., rate: float = ..., *, tags: dict[str, Any] | None = ...) -> None: ...

    def timing(self, stat: str, dt: Any, *, tags: dict[str, Any] | None = ...) -> None: ...


@dataclass(frozen=True)
class Metric:
    kind: MetricKind
    name: str
    value: float
    tags: dict[str, str] = field(default_factory=dict)


def name_part(value: object) -> str:
    """One dotted-name segment: dots become ``__`` (they are StatsD's hierarchy), the rest ``[A-Za-z0-9_-]``."""
    text = _UNSAFE.sub("_", str(value).replace(".", "__")).strip("_")
    return (text or "x")[:_MAX_PART]


def run_metrics(
    summary: RunSummary,
    *,
    dag_id: str,
    task_id: str,
    command: str,
    success: bool,
    wall_seconds: float,
    attempts: int = 1,
    error_type: str | None = None,
    uploaded_bytes: int | None = None,
    upload_failed: bool = False,
    slowest: int = DEFAULT_SLOWEST,
) -> list[Metric]:
    """The metrics of one finished try, as data (``emit`` sends them)."""
    tags = {"dag_id": dag_id, "task_id": task_id, "command": command}
    scope = f"{name_part(dag_id)}.{name_part(task_id)}"
    out: list[Metric] = []

    def both(kind: MetricKind, name: str, value: float, extra: Mapping[str, str] | None = None) -> None:
        all_tags = {**tags, **(extra or {})}
        out.append(Metric(kind, name, value, all_tags))
        out.append(Metric(kind, f"{name}.{scope}", value, all_tags))

    status = "success" if success else "failed"
    both("timing", RUN_DURATION, wall_seconds * 1000.0, {"status": status})
    if success:
        both("incr", RUN_SUCCESS, 1)
    else:
        kind = error_type or "unknown"
        both("incr", RUN_FAILURE, 1, {"error_type": kind})
        out.append(Metric("incr", f"{RUN_FAILURE}.{name_part(kind)}", 1, {**tags, "error_type": kind}))
    both("incr", RUN_RETRIES, max(0, attempts - 1))
    for node_status, count in sorted(summary.status_counts.items()):
        both("incr", f"{NODES}.{name_part(node_status)}", count)
    for node in summary.slowest(slowest):
        node_tags = {**tags, "node_id": node.unique_id, "resource_type": node.unique_id.split(".", 1)[0]}
        out.append(Metric("timing", NODE_DURATION, node.execution_time * 1000.0, node_tags))
        out.append(
            Metric("timing", f"{NODE_DURATION}.{scope}.{name_part(node.unique_id)}", node.execution_time * 1000.0,
                   node_tags)
        )  # fmt: skip
    if uploaded_bytes is not None:
        out.append(Metric("incr", UPLOAD_BYTES, uploaded_bytes, dict(tags)))
    if upload_failed:
        both("incr", UPLOAD_FAILURE, 1)
    return out


def airflow_stats() -> StatsLike:
    """Airflow's ``Stats`` (task SDK location from 3.2, the core one before)."""
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:  # Airflow 3.1
        from airflow.stats import Stats  # type: ignore[no-redef,attr-defined]
    return Stats  # type: ignore[return-value]


def emit(metrics: Iterable[Metric], stats: StatsLike | None = None) -> int:
    """Send ``metrics``; a broken metrics backend is logged, never raised. Returns how many were sent."""
    backend = stats if stats is not None else airflow_stats()
    sent = 0
    for metric in metrics:
        try:
            if metric.kind == "timing":
                backend.timing(metric.name, timedelta(milliseconds=metric.value), tags=metric.tags)
            else:
                backend.incr(metric.name, int(metric.value), tags=metric.tags)
            sent += 1
        except Exception as err:  # metrics must never fail a dbt task
            logger.warning("Could not send metric %s: %s", metric.name, err)
    return sent
