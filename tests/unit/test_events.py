"""is_error_event: which of dbt's JSON events report a failure."""

from __future__ import annotations

from typing import Any

import pytest

from dlh_airflow_common.dbt.events import is_error_event
from dlh_airflow_common.exceptions.dbt import DbtConnectionException, classify_dbt_error


def _event(name: str, level: str = "info", **data: Any) -> dict[str, Any]:
    return {"info": {"name": name, "level": level, "msg": data.get("msg", "")}, "data": data}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (_event("MainReportVersion", msg="Running with dbt=1.11"), False),
        (_event("AnyEvent", level="error", msg="boom"), True),
        (_event("MainEncounteredError", level="info", exc="x"), True),
        (_event("LogModelResult", status="error", index=1), True),
        (_event("LogTestResult", status="fail", index=1), True),
        (_event("LogModelResult", status="success", index=1), False),
        (_event("DebugCmdOut", msg="  Connection test: [ERROR]"), False),
        (_event("DebugCmdResult", msg="\x1b[31m1 check failed:\x1b[0m"), True),
        (_event("DebugCmdResult", msg="connection to server at 127.0.0.1 failed: Connection refused\n"), True),
        (_event("DebugCmdResult", msg="\x1b[32mAll checks passed!\x1b[0m"), False),
        (_event("DebugCmdResult", msg=" - git [\x1b[32mOK found\x1b[0m]\n"), False),
    ],
)
def test_is_error_event(event: dict[str, Any], expected: bool) -> None:
    assert is_error_event(event) is expected


def test_a_failed_dbt_debug_is_classified_by_its_failure_lines() -> None:
    events = [
        _event("DebugCmdOut", msg="  Connection test: [ERROR]"),
        _event("DebugCmdResult", msg="1 check failed:"),
        _event("DebugCmdResult", msg='connection to server at "127.0.0.1", port 1 failed: Connection refused\n'),
    ]
    error = classify_dbt_error([e for e in events if is_error_event(e)], conn_id="pg")
    assert type(error) is DbtConnectionException
    assert "Connection refused" in str(error) and error.retryable
