"""The isolated run directory of one task try: dbt's target and log paths live here and nowhere else.

``owner.json`` names the process that created it (pid, start ticks, host), so a later sweep
(``run_dir_sweep``) can tell a run dir nobody will ever remove from one still in use.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dlh_airflow_common.dbt.detached import write_json_atomic
from dlh_airflow_common.dbt.processes import ProcessRecord

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_VALID_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}")
_MAX_PART = 80
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
OWNER_FILE = "owner.json"
RUN_DIR_PREFIX = "run_"

logger = logging.getLogger(__name__)


def sanitize(part: object, *, max_length: int = _MAX_PART) -> str:
    """Reduce an id to ``[A-Za-z0-9_.-]`` so it can never leave its parent directory."""
    cleaned = _UNSAFE.sub("_", str(part)).strip("_")
    cleaned = re.sub(r"\.{2,}", "_", cleaned).lstrip(".")
    return (cleaned or "x")[:max_length]


def run_dir_name(
    dag_id: str,
    task_id: str,
    try_number: int,
    *,
    map_index: int | None = None,
    now: datetime | None = None,
    token: str | None = None,
) -> str:
    """``run_<UTC yyyymmdd_HHMMSS>_<dag_id>_<task_id>[_map<i>]_try<n>_<random>``, every part sanitised."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d_%H%M%S")
    parts = ["run", stamp, sanitize(dag_id), sanitize(task_id)]
    if map_index is not None and map_index >= 0:
        parts.append(f"map{int(map_index)}")
    parts.append(f"try{int(try_number)}")
    parts.append(sanitize(token) if token else secrets.token_hex(4))
    return "_".join(parts)


def private_temp_root() -> Path:
    """A per-user 0700 directory under the system temp dir, for projects mounted read-only."""
    root = Path(tempfile.gettempdir()) / f"dlh-airflow-dbt-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.lstat()
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
            return root
    except OSError:
        pass
    # Someone else owns or opened up the shared name: use a fresh private directory instead.
    return Path(tempfile.mkdtemp(prefix="dlh-airflow-dbt-"))


@dataclass(frozen=True)
class RunDir:
    """Paths of one isolated run; ``fallback`` is true when the project's target dir was not writable.

    dbt's target path is ``<path>/target`` unless ``target`` names the user's own target path, which
    lives outside the run dir and so outlives it.
    """

    path: Path
    fallback: bool = False
    target: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def target_path(self) -> Path:
        return self.target if self.target is not None else self.path / "target"

    @property
    def log_path(self) -> Path:
        return self.path / "logs"

    def disown(self) -> None:
        """Drop ``owner.json``: the run dir is kept for the user now, and no sweep may ever remove it."""
        try:
            (self.path / OWNER_FILE).unlink(missing_ok=True)
        except OSError as err:
            logger.warning("Could not remove %s: %s", self.path / OWNER_FILE, err)

    def cleanup(self) -> bool:
        """Remove the run dir; a failure is logged, never raised (the dbt result matters more)."""
        try:
            shutil.rmtree(self.path)
        except FileNotFoundError:
            return True
        except OSError as err:
            logger.warning("Could not remove dbt run dir %s: %s", self.path, err)
            return False
        return True


def create_run_dir(
    name: str, project_dir: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> RunDir:
    """Create ``<root>/<name>`` (root defaults to ``<project>/target``), falling back to a private temp dir."""
    if not _VALID_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"run dir name {name!r} must use only [A-Za-z0-9_.-], not start with '.' nor hold '..'")
    preferred = Path(root) if root is not None else Path(project_dir) / "target"
    try:
        return _make(preferred, name, fallback=False)
    except OSError as err:
        if err.errno not in _NOT_WRITABLE:
            raise
        fallback_root = private_temp_root()
        logger.info(
            "%s is not writable (%s); this run's target and log paths go under %s instead.",
            preferred,
            os.strerror(err.errno),
            fallback_root,
        )
        return _make(fallback_root, name, fallback=True)


def _make(root: Path, name: str, *, fallback: bool) -> RunDir:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.mkdir(mode=0o700)
    run_dir = RunDir(path=path, fallback=fallback)
    run_dir.target_path.mkdir()
    run_dir.log_path.mkdir()
    owner = ProcessRecord.of(os.getpid())
    write_json_atomic(path / OWNER_FILE, {**owner.to_dict(), "created_at": time.time()})
    return run_dir
