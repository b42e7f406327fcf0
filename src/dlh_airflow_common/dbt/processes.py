"""Facts about local processes that dbt runs need: identity across pid reuse, liveness, parent-death signal.

Plain standard library: the detached runner imports this and must never pull in Airflow or dbt.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell it from a later process reusing the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of stat, counted after the "(comm)" field


def process_alive(pid: int, start_ticks: int | None) -> bool:
    """True while ``pid`` runs and is the same process that was recorded (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return start_ticks is None  # no /proc: trust kill(0)
    if state in ("Z", "X"):
        return False
    return start_ticks is None or process_start_ticks(pid) == start_ticks


@dataclass(frozen=True)
class ProcessRecord:
    """A process as recorded in a run dir file: pid, start ticks and host, so another process can check it."""

    pid: int
    start_ticks: int | None
    host: str

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        return cls(pid=pid, start_ticks=process_start_ticks(pid), host=socket.gethostname())

    @classmethod
    def from_dict(cls, content: Mapping[str, Any] | None) -> ProcessRecord | None:
        """The record in a JSON object (``pid``, ``start_ticks``, ``host``); None when it holds none."""
        if not content:
            return None
        pid, ticks, host = content.get("pid"), content.get("start_ticks"), content.get("host")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(host, str):
            return None
        return cls(pid=pid, start_ticks=ticks if isinstance(ticks, int) else None, host=host)

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "host": self.host}

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def alive_here(self) -> bool:
        """True when it runs on this host and is still the recorded process; False for another host's."""
        return self.on_this_host and process_alive(self.pid, self.start_ticks)


def interrupt_when_parent_dies() -> Callable[[], None] | None:
    """A ``preexec_fn``: on Linux the kernel sends the child SIGINT when its parent dies (even by SIGKILL).

    dbt then cancels its queries and exits instead of running on as an orphan in its own session.
    None elsewhere (no such signal).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:  # runs in the child between fork and exec: no imports, no locks
        prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
        if os.getppid() != parent:  # the parent died before the call above
            os.kill(os.getpid(), signal.SIGINT)

    return arm
