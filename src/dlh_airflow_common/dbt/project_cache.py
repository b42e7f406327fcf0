"""The per-worker cache of remote dbt projects: one directory per source and content version.

Layout under the cache root::

    <slot>/                    one source (a folder URL, a bundle URL or a git repository)
        .lock                  held while a version is fetched and published, and while the slot is pruned
        v-<digest>/            one version's tree, complete from the moment it exists (atomic rename)
        v-<digest>.lease       shared ``flock`` while a run uses the version; its mtime is the last use
        v-<digest>.json        what the version is (URL, version, when fetched), for people and the pruner
        .tmp-<...>/            a fetch in progress (removed when it ends; leftovers of a killed one at the next)

Pruning rule (after each newly published version, under the slot lock): keep the ``keep`` most recently used
versions; an older one is removed only when no run holds its lease and it has not been used for ``min_idle``
seconds (a detached run's dbt outlives the task process that took the lease). A removed version is first
renamed away, so no run ever sees half of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.channel import write_bytes_atomic
from dlh_airflow_common.dbt.deps import file_lock

__all__ = ["DEFAULT_KEEP", "DEFAULT_MIN_IDLE", "Lease", "ProjectCache"]

DEFAULT_KEEP = 3
DEFAULT_MIN_IDLE = 3600.0
DEFAULT_FETCH_TIMEOUT = 900.0
_LOCK = ".lock"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_VERSION_PREFIX = "v-"


def version_name(version: str) -> str:
    """The directory name of a version: its digest (versions are ETags, commit ids or listing digests)."""
    return _VERSION_PREFIX + hashlib.sha256(version.encode("utf-8")).hexdigest()[:24]


class Lease:
    """A run's claim on one version: a shared ``flock`` the pruner cannot get while it is held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        os.utime(self._fd)  # the last use, for the pruner's min_idle

    def release(self) -> None:
        """Drop the claim (closing the descriptor releases the lock); safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class ProjectCache:
    """Fetch-once-per-version storage of project trees under ``root`` (module docstring: layout and pruning)."""

    root: Path
    keep: int = DEFAULT_KEEP
    min_idle: float = DEFAULT_MIN_IDLE
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT

    def lease(self, slot: str, version: str) -> tuple[Path, Lease] | None:
        """The published tree of ``version`` with a lease on it, or None when it is not in the cache."""
        directory = self.root / slot
        name = version_name(version)
        if not (directory / name).is_dir():  # no lease file is made for a version that is not there
            return None
        lease = Lease(directory / f"{name}.lease")
        if (directory / name).is_dir():  # checked under the lease: the pruner cannot remove it from here on
            return directory / name, lease
        lease.release()
        return None

    def publish(
        self, slot: str, version: str, fill: Callable[[Path], str], *, meta: dict[str, Any]
    ) -> tuple[Path, Lease, bool]:
        """The tree of ``version``, built by ``fill`` unless another process published it first.

        ``fill(tmp_dir)`` writes the tree into ``tmp_dir`` (not yet existing) and returns the version it
        actually fetched (it may differ from ``version`` when the source moved meanwhile); the tree appears
        under that version by one rename. Returns the tree, its lease and whether this call fetched it.
        """
        directory = self.root / slot
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with file_lock(directory / _LOCK, timeout=self.fetch_timeout,
                       holder="another task on this worker is fetching the same dbt project"):  # fmt: skip
            found = self.lease(slot, version)
            if found is not None:
                return (*found, False)
            _remove_leftovers(directory)  # only a killed fetch leaves one: fetches hold this lock
            tmp = directory / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir(mode=0o700)
            try:
                fetched = fill(tmp / "tree")
                name = version_name(fetched)
                final = directory / name
                fetched_now = not final.is_dir()  # else the source moved to a version this cache already holds
                if fetched_now:
                    record = {**meta, "version": fetched, "fetched_at": time.time()}
                    write_bytes_atomic(directory / f"{name}.json", json.dumps(record, indent=2).encode("utf-8"))
                    os.rename(tmp / "tree", final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            lease = Lease(directory / f"{name}.lease")
            self.prune(slot, current=name)
        return final, lease, fetched_now

    def prune(self, slot: str, *, current: str | None = None) -> list[str]:
        """Remove old versions of ``slot`` by the module's rule (call it under the slot lock); returns their names."""
        directory = self.root / slot
        versions = sorted(
            (path for path in directory.glob(f"{_VERSION_PREFIX}*") if path.is_dir()),
            key=lambda path: _last_use(directory, path.name),
            reverse=True,
        )
        removed: list[str] = []
        for orphan in directory.glob(f"{_VERSION_PREFIX}*.*"):  # the lease or record of a version that is gone
            if orphan.suffix in (".lease", ".json") and not orphan.with_suffix("").is_dir():
                _remove_unleased(directory, orphan.stem)
        now = time.time()
        for path in versions[self.keep :]:
            name = path.name
            if name == current or now - _last_use(directory, name) < self.min_idle:
                continue
            if _remove_unleased(directory, name):
                removed.append(name)
        return removed


def _last_use(directory: Path, name: str) -> float:
    for candidate in (directory / f"{name}.lease", directory / name):
        with contextlib.suppress(OSError):
            return candidate.stat().st_mtime
    return 0.0


def _remove_unleased(directory: Path, name: str) -> bool:
    """Rename the version away and delete it, unless a run holds its lease."""
    lease_path = directory / f"{name}.lease"
    fd = os.open(lease_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        trash = directory / f"{_TRASH_PREFIX}{name}-{secrets.token_hex(4)}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(directory / name, trash)
        (directory / f"{name}.json").unlink(missing_ok=True)
        lease_path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _remove_leftovers(directory: Path) -> None:
    for path in directory.iterdir():
        if path.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)
