"""Remove run dirs that nobody will ever remove: their task process, detached runner and dbt are all gone.

A task process killed with SIGKILL (or a deferred task killed before Airflow 3.3) never runs its clean-up.
Each new run sweeps its run dir root: a ``run_*`` dir is removed only when it was made on this host
(``owner.json``), none of its recorded processes still runs here, and nothing touched it for ``max_age``
seconds. A dir without ``owner.json`` (kept for the user, or made by another version) is never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.detached import STATUS_FILE, read_dbt_process, read_json, read_runner_process
from dlh_airflow_common.dbt.processes import ProcessRecord, process_alive
from dlh_airflow_common.dbt.run_dir import OWNER_FILE, RUN_DIR_PREFIX

logger = logging.getLogger(__name__)


def sweep_run_dirs(root: str | os.PathLike[str], max_age: float, log: Any = None) -> list[Path]:
    """Remove the orphaned ``run_*`` dirs directly under ``root``; never raises (a failure is a warning)."""
    log = log or logger
    removed: list[Path] = []
    try:
        entries = [entry for entry in os.scandir(root) if entry.name.startswith(RUN_DIR_PREFIX)]
    except OSError as err:
        if not isinstance(err, FileNotFoundError):
            log.warning("Could not look for orphaned dbt run dirs in %s: %s", root, err)
        return removed
    now = time.time()
    for entry in entries:
        path = Path(entry.path)
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            idle = orphan_idle_seconds(path, now)
            if idle is None or idle < max_age:
                continue
            shutil.rmtree(path)
        except FileNotFoundError:
            continue  # removed meanwhile by its own run or another sweep
        except OSError as err:
            log.warning("Could not remove orphaned dbt run dir %s: %s", path, err)
            continue
        log.info("Removed orphaned dbt run dir %s: its task, runner and dbt are gone, idle for %.0fs", path, idle)
        removed.append(path)
    return removed


def orphan_idle_seconds(path: Path, now: float | None = None) -> float | None:
    """Seconds since ``path`` was last active if nothing of its run still runs here; None if it is not ours.

    Raises OSError when its files cannot be read (the sweep logs it and leaves the dir).
    """
    owner = ProcessRecord.from_dict(read_json(path / OWNER_FILE))
    if owner is None or not owner.on_this_host:
        return None
    for record in (owner, read_runner_process(path), read_dbt_process(path)):
        if record is None:
            continue
        if not record.on_this_host or process_alive(record.pid, record.start_ticks):
            return None
    newest = path.lstat().st_mtime
    for name in (OWNER_FILE, STATUS_FILE):
        try:
            newest = max(newest, (path / name).lstat().st_mtime)
        except FileNotFoundError:
            continue
    return max(0.0, (time.time() if now is None else now) - newest)
