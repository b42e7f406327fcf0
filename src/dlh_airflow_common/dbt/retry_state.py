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
from typing import Literal

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


ResumeHow = Literal["retry", "exclude-succeeded"]
_MARKER = "resume.json"
STATE_SUBDIR = "previous_state"


def restore(state_dir: Path, run_dir: Path, target_path: Path | None = None) -> ResumeHow | None:
    """Stage the saved run for this run dir and say how to resume it, or None when there is nothing usable.

    A run that ended on its own lists every selected node, so ``dbt retry`` (which re-runs the failed
    and skipped ones) is exact. A stopped run never reported the nodes it had not reached, so it is
    resumed by running the original command again without the nodes that succeeded
    (``--exclude result:success --state ...``). ``target_path`` is dbt's target path when it is not the
    run dir's own ``target``.
    """
    source = state_dir / RUN_RESULTS
    try:
        content = json.loads(source.read_text(encoding="utf-8"))
        marker = json.loads((state_dir / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or not content.get("results") or not isinstance(marker, dict):
        return None
    if marker.get("complete"):
        shutil.copyfile(source, (target_path or run_dir / "target") / RUN_RESULTS)
        return "retry"
    staged = run_dir / STATE_SUBDIR
    staged.mkdir(exist_ok=True)
    shutil.copyfile(source, staged / RUN_RESULTS)
    return "exclude-succeeded"


def save(state_dir: Path, target_path: Path, *, complete: bool) -> bool:
    """Keep this try's run_results.json for the next try (atomically: a crash leaves the old state)."""
    source = target_path / RUN_RESULTS
    if not source.is_file():
        return False
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(state_dir / RUN_RESULTS, source.read_bytes())
        _atomic_write(state_dir / _MARKER, json.dumps({"complete": complete}).encode())
    except OSError as err:
        logger.warning("Could not keep dbt retry state in %s: %s", state_dir, err)
        return False
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clear(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
