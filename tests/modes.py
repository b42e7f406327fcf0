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
