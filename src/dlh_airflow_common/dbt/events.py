"""Facts about dbt's JSON events that need no Airflow: cheap to import from the detached runner."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

NODE_FAILURE_STATUSES = frozenset({"error", "fail", "runtime error"})
# ``dbt debug`` reports its verdict at info level in DebugCmdResult events: "N checks failed:" and one
# event per failure, or "All checks passed!"; its dependency lines (" - git [OK found]") share the name.
_DEBUG_NOT_A_FAILURE = re.compile(r"^\s*(?:\x1b\[[0-9;]*m)*\s*(?:All checks passed|- git \[)")


def is_error_event(event: Mapping[str, Any]) -> bool:
    """True for events that report a failure: error level, dbt's error events, or a failed node result."""
    info = event.get("info") or {}
    if info.get("level") == "error" or info.get("name") in ("MainEncounteredError", "RunResultError"):
        return True
    data = event.get("data") or {}
    if info.get("name") == "DebugCmdResult":
        return not _DEBUG_NOT_A_FAILURE.match(str(data.get("msg") or info.get("msg") or ""))
    status = str(data.get("status", "")).lower()
    return status in NODE_FAILURE_STATUSES


def node_result(event: Mapping[str, Any]) -> tuple[int, int, str, str, float | None] | None:
    """(index, total, dbt's status, unique_id, seconds) for a node-result event, else None."""
    info = event.get("info") or {}
    data = event.get("data") or {}
    name = str(info.get("name", ""))
    if not (name.endswith("Result") or name == "SkippingDetails") or "index" not in data:
        return None
    node_info = data.get("node_info") or {}
    unique_id = node_info.get("unique_id") or data.get("node_name") or "?"
    total = data.get("total") or data.get("num_models") or 0
    # data.status is the adapter's response for some adapters ("SELECT 1" on PostgreSQL); node_status is not.
    node_status = node_info.get("node_status")
    raw_status = node_status if node_status and node_status != "None" else data.get("status")
    status = "skipped" if name == "SkippingDetails" else str(raw_status or "").strip().lower()
    seconds = data.get("execution_time")
    return (
        int(data.get("index") or 0),
        int(total),
        status,
        str(unique_id),
        float(seconds) if isinstance(seconds, int | float) else None,
    )


def compact_node_event(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """A node-result event cut to what ``ProgressReporter`` reads (a few hundred bytes), else None.

    A run channel carries these instead of dbt's full events, which hold the compiled SQL and more."""
    result = node_result(event)
    if result is None:
        return None
    index, total, status, unique_id, seconds = result
    info = event.get("info") or {}
    return {
        "info": {"name": str(info.get("name", "")), "level": str(info.get("level", "info"))},
        "data": {"index": index, "total": total, "execution_time": seconds,
                 "node_info": {"unique_id": unique_id, "node_status": status}},
    }  # fmt: skip
