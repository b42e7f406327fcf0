"""The invocation modes integration tests run in: DbtHook keyword arguments per mode."""

from __future__ import annotations

import sys
from typing import Any

# "subprocess" is the default (the event runner); "venv" names this same environment as venv_path,
# the way a separate dbt virtualenv is used (dbt's own CLI then writes the JSON events).
MODES: dict[str, dict[str, Any]] = {
    "subprocess": {},
    "in-process": {"invocation_mode": "in-process"},
    "venv": {"venv_path": sys.prefix},
}

# The hook reads dbt in two ways: JSON event lines from a child process (the event runner, or a venv's dbt CLI:
# one reading path, two programs) and callbacks in-process. Where a test's behaviour lies in that reading (how
# a failure is typed, what the operator's exception and XCom carry) and dbt fails once its events flow, these
# two modes prove it: that the CLI's events match the runner's is tested in test_event_runner.py, and venv_path
# itself still runs every command (test_duckdb_commands.py), a failing build, each early failure
# (test_failures.py) and every secret-leak case of the hook (test_secret_leaks.py).
READING_MODES: dict[str, dict[str, Any]] = {name: MODES[name] for name in ("subprocess", "in-process")}
