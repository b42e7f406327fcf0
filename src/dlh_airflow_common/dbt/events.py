"""Facts about dbt's JSON events that need no Airflow: cheap to import from the detached runner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NODE_FAILURE_STATUSES = frozenset({"error", "fail", "runtime error"})


def is_error_event(event: Mapping[str, Any]) -> bool:
    """True for events that report a failure: error level, dbt's error events, or a failed node result."""
    info = event.get("info") or {}
    if info.get("level") == "error" or info.get("name") in ("MainEncounteredError", "RunResultError"):
        return True
    status = str((event.get("data") or {}).get("status", "")).lower()
    return status in NODE_FAILURE_STATUSES
