"""The minimum a later Airflow try needs to resume with ``dbt retry``: the failed try's run_results.json.

Run dirs are removed after each try, so this small state lives beside them under ``.dlh_state/`` and
is removed once the task succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from dlh_airflow_common.dbt.artifacts import RUN_RESULTS
from dlh_airflow_common.dbt.run_dir import private_temp_root, sanitize

logger = logging.getLogger(__name__)
STATE_DIR_NAME = ".dlh_state"


def resume_state_dir(preferred_root: Path, *key: object) -> Path:
    """``<root>/.dlh_state/<key...>`` under the run-dir root, or the private temp root if that is read-only."""
    parts = [sanitize(part) for part in key]
    for root in (preferred_root, private_temp_root()):
        candidate = root / STATE_DIR_NAME
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate.joinpath(*parts)
    return private_temp_root().joinpath(STATE_DIR_NAME, *parts)


def has_state(state_dir: Path) -> bool:
    return (state_dir / RUN_RESULTS).is_file()


def restore(state_dir: Path, target_path: Path) -> bool:
    """Put the saved run_results.json where ``dbt retry`` reads it; False if there is nothing usable."""
    source = state_dir / RUN_RESULTS
    try:
        content = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(content, dict) or not content.get("results"):
        return False
    shutil.copyfile(source, target_path / RUN_RESULTS)
    return True


def save(state_dir: Path, target_path: Path) -> bool:
    """Keep this try's run_results.json for the next try (atomically: a crash leaves the old state)."""
    source = target_path / RUN_RESULTS
    if not source.is_file():
        return False
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".run_results.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle, source.open("rb") as src:
            shutil.copyfileobj(src, handle)
        os.replace(tmp, state_dir / RUN_RESULTS)
    except OSError as err:
        logger.warning("Could not keep dbt retry state in %s: %s", state_dir, err)
        return False
    return True


def clear(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
