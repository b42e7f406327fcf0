"""The minimum a later Airflow try needs to resume with ``dbt retry``: the failed try's run_results.json.

Run dirs are removed after each try, so this small state lives in a store of its own and is removed once the
task succeeds: ``.dlh_state/`` beside the run dirs, or under the run channel's URL when one is set, so that a
try on another worker finds it. Nothing here may fail a try: unreachable or unusable state means a full run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from dlh_airflow_common.dbt.artifacts import RUN_RESULTS
from dlh_airflow_common.dbt.channel import ChannelStore, LocalStore, open_url
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


def resume_state_url(base_url: str, *key: object) -> str:
    """``<base_url>/.dlh_state/<key...>``: the same sanitised keys as ``resume_state_dir``, under a run channel."""
    return "/".join([base_url.rstrip("/"), STATE_DIR_NAME, *(sanitize(part) for part in key)])


def open_state(
    location: str | os.PathLike[str], conn_id: str | None = None, *, log: Any = logger
) -> ChannelStore | None:
    """The store at ``location``: a local directory, or an ``ObjectStoragePath`` URL reached with ``conn_id``;
    None (logged) when it cannot be opened, e.g. a missing connection or an unknown scheme."""
    text = os.fspath(location)
    if "://" not in text:
        return LocalStore(Path(text), owned=True)
    try:
        return open_url(text, conn_id)
    except Exception as err:
        log.warning("Could not open the dbt retry state at %s: %s", text, err)
        return None


ResumeHow = Literal["retry", "exclude-succeeded"]
_MARKER = "resume.json"
STATE_SUBDIR = "previous_state"


def restore(
    store: ChannelStore, run_dir: Path, target_path: Path | None = None, *, log: Any = logger
) -> ResumeHow | None:
    """Stage the saved run for this run dir and say how to resume it, or None when there is nothing usable.

    A run that ended on its own lists every selected node, so ``dbt retry`` (which re-runs the failed
    and skipped ones) is exact. A stopped run never reported the nodes it had not reached, so it is
    resumed by running the original command again without the nodes that succeeded
    (``--exclude result:success --state ...``). ``target_path`` is dbt's target path when it is not the
    run dir's own ``target``. A store that cannot be read is logged and means a full run.
    """
    try:
        data, marker_data = store.read(RUN_RESULTS), store.read(_MARKER)
    except Exception as err:  # any store failure (network, credentials): the try runs the full command
        log.warning("Could not read the dbt retry state in %s: %s", _where(store), err)
        return None
    if data is None or marker_data is None:
        return None
    try:
        content, marker = json.loads(data), json.loads(marker_data)
    except ValueError:
        return None
    if not isinstance(content, dict) or not content.get("results") or not isinstance(marker, dict):
        return None
    if marker.get("sha256") != hashlib.sha256(data).hexdigest():  # a save cut short between its two writes
        return None
    complete = bool(marker.get("complete"))
    staged = (target_path or run_dir / "target") if complete else run_dir / STATE_SUBDIR
    try:
        staged.mkdir(parents=True, exist_ok=True)
        (staged / RUN_RESULTS).write_bytes(data)
    except OSError as err:
        log.warning("Could not stage the dbt retry state in %s: %s", staged, err)
        return None
    return "retry" if complete else "exclude-succeeded"


FINISHED_STATUSES = frozenset({"success", "pass", "warn"})  # what ``dbt retry`` and ``result:success`` leave out


def finished_nodes(run_dir: Path, target_path: Path | None = None) -> dict[str, str]:
    """The nodes the staged previous try finished (``restore`` put its run_results.json in place), with their
    status: a resumed try does not run them again, so whoever waits for one learns its result from here."""
    for staged in ((target_path or run_dir / "target") / RUN_RESULTS, run_dir / STATE_SUBDIR / RUN_RESULTS):
        try:
            content = json.loads(staged.read_bytes())
        except (OSError, ValueError):
            continue
        results = content.get("results") if isinstance(content, dict) else None
        return {
            str(entry["unique_id"]): str(entry.get("status")).lower()
            for entry in results or ()
            if isinstance(entry, dict)
            and entry.get("unique_id")
            and str(entry.get("status")).lower() in FINISHED_STATUSES
        }
    return {}


def save(
    store: ChannelStore,
    target_path: Path,
    *,
    complete: bool,
    redact: Callable[[str], str] | None = None,
    log: Any = logger,
) -> bool:
    """Keep this try's run_results.json for the next try, every string passed through ``redact`` first.

    The marker, written last, holds the results' digest: a save cut short leaves no usable state, never a
    mismatched pair. A store that cannot be written is logged; the next try then runs the full command.
    """
    try:
        content = json.loads((target_path / RUN_RESULTS).read_bytes())
    except (OSError, ValueError):
        return False
    data = json.dumps(_masked(content, redact) if redact is not None else content).encode("utf-8")
    marker = {"complete": complete, "sha256": hashlib.sha256(data).hexdigest()}
    try:
        store.write(RUN_RESULTS, data)
        store.write(_MARKER, json.dumps(marker).encode("utf-8"))
    except Exception as err:
        log.warning("Could not keep the dbt retry state in %s: %s", _where(store), err)
        return False
    return True


def clear(store: ChannelStore, *, log: Any = logger) -> bool:
    """Remove the state; a failure is logged (a bucket's lifecycle rule or the next success removes it)."""
    try:
        store.remove()
    except Exception as err:
        log.warning("Could not remove the dbt retry state in %s: %s", _where(store), err)
        return False
    return True


def _masked(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_masked(item, redact) for item in value]
    if isinstance(value, dict):
        return {redact(str(key)): _masked(item, redact) for key, item in value.items()}
    return value


def _where(store: ChannelStore) -> str:
    return str(getattr(store, "root", store))
