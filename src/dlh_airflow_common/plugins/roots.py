"""Where the Airflow UI plugin may read: the configured artifact roots, and safe paths inside them.

A root is an ``ObjectStoragePath`` URI from ``[dlh_dbt] artifacts_roots`` (comma-separated; ``file://``, a
local path, ``s3://[conn_id@]bucket/prefix``, ...). The plugin reads only below a root: ids are reduced to
the upload layout of :mod:`dlh_airflow_common.dbt.storage`, a URI found in a task's summary must lie under a
root, and a local file whose real path (symlinks resolved) leaves its root is refused.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dlh_airflow_common.dbt import storage
from dlh_airflow_common.settings import SECTION, configured

ROOTS_OPTION = "artifacts_roots"
DOCS_OPTION = "docs_location"
REPORT_FILE = "run_report.html"
# Airflow's own id patterns (dag/task ids: KEY_REGEX; run ids: [scheduler] allowed_run_id_pattern's default).
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_.~:+-]{1,250}$")
_MAX_HTML_BYTES = 64 * 1024 * 1024
_LOCAL = frozenset({"", "file", "local"})


class RefusedPath(ValueError):
    """A request names something the plugin must not read (odd id, outside every root)."""


@dataclass(frozen=True)
class Root:
    """One configured root: the URI as configured, the URI shown to users (no ``conn_id@``) and its path."""

    configured: str
    shown: str
    path: Any


@dataclass(frozen=True)
class TryIdentity:
    """One task try, as the upload layout names it."""

    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    map_index: int = -1

    def relative_path(self) -> str:
        return storage.try_path(self.dag_id, self.task_id, self.run_id, self.try_number, map_index=self.map_index)


def check_ids(dag_id: str, run_id: str, task_id: str) -> None:
    """Refuse ids Airflow itself would never create (raise :class:`RefusedPath`)."""
    for what, value, pattern in (("dag_id", dag_id, _ID), ("task_id", task_id, _ID), ("run_id", run_id, _RUN_ID)):
        if not pattern.match(value) or set(value) == {"."}:
            raise RefusedPath(f"{what} has characters Airflow does not allow in it")


def parse_roots(value: str | None) -> list[str]:
    """The comma-separated root URIs of ``[dlh_dbt] artifacts_roots``, local paths as ``file://`` URIs."""
    roots = []
    for item in (value or "").split(","):
        item = item.strip()
        if item:
            roots.append(storage.destination_uri(item, None))
    return roots


def shown_uri(uri: str) -> str:
    """A root URI as ``display_uri`` shows paths under it: without a ``conn_id@`` before the bucket."""
    scheme, sep, rest = uri.partition("://")
    head, at, tail = rest.partition("@")
    return f"{scheme}{sep}{tail}" if sep and at and "/" not in head else uri


def configured_roots() -> list[Root]:
    """The roots from the Airflow config, opened through ``ObjectStoragePath``."""
    return [open_root(uri) for uri in parse_roots(configured(ROOTS_OPTION))]


def open_root(uri: str) -> Root:
    """One root; a ``conn_id@`` in the URI is the connection ``ObjectStoragePath`` uses for it."""
    return Root(configured=uri, shown=shown_uri(uri), path=storage.open_destination(uri))


def roots_hint() -> str:
    return f"[{SECTION}] {ROOTS_OPTION}"


def _is_local(path: Any) -> bool:
    return (getattr(path, "protocol", "") or "") in _LOCAL


def _key(path: Any) -> str:
    """The normalized storage key of a path (``bucket/prefix/...`` or an absolute local path)."""
    return posixpath.normpath(str(getattr(path, "path", path)))


def inside(root: Root, candidate: Any) -> bool:
    """``candidate`` lies below ``root``; for local files with every symlink resolved."""
    if _is_local(root.path):
        base = os.path.realpath(_key(root.path))
        real = os.path.realpath(_key(candidate))
        return real != base and real.startswith(base.rstrip("/") + "/")
    key, base = _key(candidate), _key(root.path).rstrip("/")
    return getattr(candidate, "protocol", None) == getattr(root.path, "protocol", None) and key.startswith(base + "/")


def under_root(roots: Sequence[Root], uri: str) -> tuple[Root, Any] | None:
    """A URI the task reported (``display_uri`` form) as a path of the root it lies in, or None."""
    for root in roots:
        prefix = root.shown.rstrip("/") + "/"
        if not uri.startswith(prefix):
            continue
        parts = uri[len(prefix) :].split("/")
        if any(part in ("", ".", "..") for part in parts):
            return None
        candidate = root.path.joinpath(*parts)
        return (root, candidate) if inside(root, candidate) else None
    return None


def find_file(roots: Sequence[Root], relative: str, name: str) -> Any | None:
    """``<root>/<relative>/<name>`` (or its ``.gz``) in the first root that has it as a regular file."""
    for root in roots:
        folder = root.path.joinpath(*relative.split("/"))
        for candidate_name in (name, name + storage.GZIP_SUFFIX):
            candidate = folder / candidate_name
            if inside(root, candidate) and candidate.is_file():
                return candidate
    return None


def read_html(path: Any) -> bytes:
    """The file's bytes (a ``.gz`` decompressed); a file past 64 MiB is refused rather than loaded."""
    with path.open("rb") as raw:
        data = (
            gzip.GzipFile(fileobj=raw).read(_MAX_HTML_BYTES + 1)
            if str(path).endswith(".gz")
            else raw.read(_MAX_HTML_BYTES + 1)
        )
    if len(data) > _MAX_HTML_BYTES:
        raise RefusedPath(f"{storage.display_uri(path)} is larger than {_MAX_HTML_BYTES // (1024 * 1024)} MiB")
    return bytes(data)
