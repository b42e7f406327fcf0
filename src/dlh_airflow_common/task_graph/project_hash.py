"""The project content hash: what a graph file was built from, so a stale one is found at parse time.

What counts is what dbt parses into the graph: ``dbt_project.yml``, ``selectors.yml``, ``vars.yml`` (where
dbt-core 1.12 also reads project vars), the package files (``packages.yml``, ``dependencies.yml``,
``package-lock.yml``) and every file under the project's model, seed, snapshot, macro, test, analysis and
docs paths (read from ``dbt_project.yml``, dbt's defaults otherwise). Not counted: profiles and the target's
connection (the target name is part of the selection), ``--vars`` and environment variables, installed
packages beyond their lock, files dbt ignores (``target/``, ``logs/``, ``dbt_packages/``).

Checking is cheap: a stat index (path, size, mtime of each file) is hashed first, and the content hash it
led to last time is kept in a small memo file next to the graph cache; files are read and hashed only when
that index changed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dlh_airflow_common.dbt.channel import write_bytes_atomic

MEMO_FILE = "project_hash.memo"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: ten times faster at parse time
# vars.yml: dbt-core 1.12 reads project vars from it (absent, as before 1.12, it changes no hash).
ROOT_FILES = ("dbt_project.yml", "selectors.yml", "vars.yml", "packages.yml", "dependencies.yml", "package-lock.yml")
_PATH_KEYS = {
    "model-paths": ["models"],
    "seed-paths": ["seeds"],
    "snapshot-paths": ["snapshots"],
    "macro-paths": ["macros"],
    "test-paths": ["tests"],
    "analysis-paths": ["analyses"],
    "docs-paths": [],
}


@dataclass(frozen=True)
class ProjectFiles:
    """The files that count, each with its stat; ``stat_key`` changes whenever one of them may have."""

    root: Path
    files: tuple[tuple[str, int, int], ...]  # (relative path, size, mtime_ns)

    @property
    def stat_key(self) -> str:
        digest = hashlib.sha256()
        for rel, size, mtime in self.files:
            digest.update(f"{rel}\x00{size}\x00{mtime}\x00".encode())
        return digest.hexdigest()[:32]

    def content_hash(self) -> str:
        """sha256 over every counted file's path and bytes (independent of mtimes: same on every host)."""
        digest = hashlib.sha256()
        for rel, _size, _mtime in self.files:
            content = (self.root / rel).read_bytes()
            digest.update(f"{rel}\x00{len(content)}\x00".encode())
            digest.update(content)
        return digest.hexdigest()[:32]


def _source_dirs(root: Path) -> list[str]:
    try:
        document: Any = yaml.load((root / "dbt_project.yml").read_bytes(), Loader=_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        document = None
    config = document if isinstance(document, dict) else {}
    dirs: set[str] = set()
    for key, default in _PATH_KEYS.items():
        value = config.get(key, default)
        if isinstance(value, list):
            dirs.update(os.path.normpath(str(item)) for item in value)
    return sorted(dirs)


def project_files(project_dir: str | os.PathLike[str]) -> ProjectFiles:
    """Stat every counted file of the project (no file is read but ``dbt_project.yml``)."""
    root = Path(project_dir).resolve()
    found: dict[str, tuple[int, int]] = {}
    for name in ROOT_FILES:
        try:
            st = (root / name).stat()
        except FileNotFoundError:
            continue
        found[name] = (st.st_size, st.st_mtime_ns)
    for directory in _source_dirs(root):
        base = root / directory
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for filename in filenames:
                if filename.startswith("."):
                    continue
                full = os.path.join(dirpath, filename)
                st = os.stat(full)
                found[os.path.relpath(full, root)] = (st.st_size, st.st_mtime_ns)
    return ProjectFiles(root, tuple((rel, size, mtime) for rel, (size, mtime) in sorted(found.items())))


def project_hash(project_dir: str | os.PathLike[str], memo_dir: Path | None = None) -> str:
    """The project's content hash; with ``memo_dir``, files are re-read only when their stats changed."""
    files = project_files(project_dir)
    if memo_dir is None:
        return files.content_hash()
    memo = memo_dir / MEMO_FILE
    try:
        stat_key, cached = memo.read_text(encoding="ascii").split()
        if stat_key == files.stat_key:
            return cached
    except (OSError, ValueError):
        pass
    value = files.content_hash()
    try:
        memo_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_bytes_atomic(memo, f"{files.stat_key} {value}".encode("ascii"))
    except OSError:
        pass  # a read-only cache only costs the hashing next time
    return value
