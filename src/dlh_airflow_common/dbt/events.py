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
