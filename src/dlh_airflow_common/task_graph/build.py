"""Building the graph file once per (project content hash, selection) into the shared cache, under a lock.

Selection is dbt's own: the ``lister`` runs ``dbt ls`` (``cli.hook_lister`` does it through ``DbtHook``, so
the profile, run-dir isolation, caches and typed errors apply) and hands the selected ids and the manifest
that run wrote to ``graph_from_manifest``. Entries live under ``<cache root>/task_graph/<project>-<path
hash>/`` (the cache root is the run-dir root's ``.dlh_cache``, as for the partial-parse and deps caches).

A remote project (an object storage or git URL, docs/remote-projects.md) is keyed by its source and current
version instead: finding its graph file asks the source for the version (one request) and downloads nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from dlh_airflow_common.dbt.deps import DEFAULT_LOCK_TIMEOUT, file_lock
from dlh_airflow_common.dbt.partial_parse import cache_root
from dlh_airflow_common.dbt.project_source import parse_source
from dlh_airflow_common.dbt.run_dir import private_temp_root, sanitize
from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.settings import configured
from dlh_airflow_common.task_graph.graph_file import (
    FORMAT_VERSION,
    GraphFile,
    Selection,
    graph_from_manifest,
    read_graph,
    write_graph,
)
from dlh_airflow_common.task_graph.project_hash import project_hash

GRAPH_CACHE_DIR = "task_graph"
logger = logging.getLogger(__name__)

ManifestUse = Callable[[Sequence[str], Path, "str | None"], GraphFile]
"""``use(selected_unique_ids, manifest_path, dataset_namespace)``: called by a lister while dbt's manifest still
exists, with OpenLineage's namespace of the target dbt used (``assets.target_namespace``) or None."""
Lister = Callable[[Selection, ManifestUse], GraphFile]
"""``lister(selection, use)`` runs ``dbt ls`` for ``selection`` and returns what ``use`` returned."""


@dataclass(frozen=True)
class GraphLocation:
    """Where a project's graph file for one selection is, for the project content it was checked against."""

    directory: Path
    selection_key: str
    project_hash: str

    @property
    def path(self) -> Path:
        return self.directory / f"{self.selection_key}-{self.project_hash}.json"

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.selection_key}.lock"


def graph_cache_root(
    project_dir: str | os.PathLike[str], run_dir_root: str | None = None, cache_dir: str | None = None
) -> Path:
    """The cache root graph files live under: ``cache_dir``, else the run-dir root's ``.dlh_cache`` (the project's
    ``target/.dlh_cache`` by default, the private temp dir's for a remote project), as for the other caches."""
    if run_dir_root is None and parse_source(os.fspath(project_dir)).remote:
        run_dir_root = str(private_temp_root())  # where the hook puts a remote project's run dirs
    return cache_root(Path(run_dir_root) if run_dir_root else Path(project_dir) / "target", cache_dir)


def selection_key(selection: Selection) -> str:
    """A digest of the selection arguments and the graph format (a new format never reads an old entry)."""
    payload = msgspec.json.encode([FORMAT_VERSION, selection])
    return hashlib.sha256(payload).hexdigest()[:16]


def graph_dir(cache_root: Path, project_dir: str | os.PathLike[str]) -> Path:
    """One directory per project copy: same-named projects at different paths never share entries."""
    root = Path(project_dir).resolve()
    path_hash = hashlib.sha256(str(root).encode("utf-8")).hexdigest()[:12]
    return cache_root / GRAPH_CACHE_DIR / f"{sanitize(root.name, max_length=40)}-{path_hash}"


def locate(project_dir: str | os.PathLike[str], selection: Selection, cache_root: Path) -> GraphLocation:
    """The entry for the project as it is now (stat check, files hashed only when they changed; for a remote
    project, its current version)."""
    remote = _remote_version(project_dir)
    if remote is not None:
        slot, version = remote
        digest = hashlib.sha256(version.encode("utf-8")).hexdigest()[:16]
        return GraphLocation(cache_root / GRAPH_CACHE_DIR / slot, selection_key(selection), digest)
    directory = graph_dir(cache_root, project_dir)
    return GraphLocation(directory, selection_key(selection), project_hash(project_dir, memo_dir=directory))


def _remote_version(project_dir: str | os.PathLike[str]) -> tuple[str, str] | None:
    """A remote project's cache slot and current version (``[dlh_dbt] project_conn_id`` reaches it); None if local."""
    if not parse_source(os.fspath(project_dir)).remote:
        return None
    from airflow.sdk import BaseHook

    from dlh_airflow_common.dbt.remote_project import source_version

    source, version = source_version(project_dir, conn_id=configured("project_conn_id"),
                                     connection=BaseHook.get_connection)  # fmt: skip
    return source.slot, str(version)


def find_graph(project_dir: str | os.PathLike[str], selection: Selection, cache_root: Path) -> GraphFile | None:
    """The fresh graph file for this project content and selection, or None when it must be built."""
    location = locate(project_dir, selection, cache_root)
    return read_graph(location.path) if location.path.is_file() else None


def graph_command(project_dir: str | os.PathLike[str], selection: Selection) -> str:
    """The ``dlh-dbt graph`` command line that builds the entry for ``selection`` (for messages)."""
    words = ["dlh-dbt", "graph", shlex.quote(str(project_dir))]
    for flag, values in (("--select", selection.select), ("--exclude", selection.exclude)):
        if values:
            words += [flag, *(shlex.quote(value) for value in values)]
    for flag, value in (("--selector", selection.selector), ("--target", selection.target)):
        if value is not None:
            words += [flag, shlex.quote(value)]
    return " ".join(words)


def require_graph(
    project_dir: str | os.PathLike[str], selection: Selection, cache_root: Path, *, allow_stale: bool = False
) -> GraphFile:
    """The fresh graph file, or a ``DbtException`` saying it is missing or stale and what to run.

    :param project_dir: The dbt project.
    :param selection: The selection arguments the graph was built for.
    :param cache_root: The cache root (``partial_parse.cache_root``).
    :param allow_stale: For a stale file, return the newest one built for older project content (with a
        warning) instead of raising: the DAG keeps its last shape until the graph is rebuilt.
    """
    location = locate(project_dir, selection, cache_root)
    if location.path.is_file():
        return read_graph(location.path)
    others = sorted(location.directory.glob(f"{location.selection_key}-*.json"), key=_mtime, reverse=True)
    command = graph_command(project_dir, selection)
    if others and allow_stale:
        logger.warning(
            "The task graph of %s is stale (the project changed since it was built): using the last one, %s, "
            "until a successful build refreshes it or `%s` runs.", project_dir, others[0], command,
        )  # fmt: skip
        return read_graph(others[0])
    state = "is stale (the project changed since it was built)" if others else "has not been built"
    raise DbtException(f"The task graph of {project_dir} for this selection {state}; build it with: {command} "
                       f"(cache {cache_root}).")  # fmt: skip


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # pruned meanwhile by a builder
        return 0.0


@dataclass(frozen=True)
class BuiltGraph:
    """The outcome of ``ensure_graph``: the file, what it holds, and whether this call built it."""

    path: Path
    graph: GraphFile
    built: bool


def ensure_graph(
    project_dir: str | os.PathLike[str],
    selection: Selection,
    lister: Lister,
    cache_root: Path,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> BuiltGraph:
    """Return the fresh graph file, building it first if needed; concurrent callers build it once.

    :param project_dir: The dbt project.
    :param selection: The selection arguments dbt resolves.
    :param lister: Runs ``dbt ls`` (see ``Lister``).
    :param cache_root: The cache root (``partial_parse.cache_root``).
    :param lock_timeout: Seconds to wait for another builder of the same entry.
    """
    location = locate(project_dir, selection, cache_root)
    if location.path.is_file():
        return BuiltGraph(location.path, read_graph(location.path), built=False)
    with file_lock(location.lock_path, timeout=lock_timeout, holder="another process is building this task graph"):
        if location.path.is_file():  # another builder finished while this one waited
            return BuiltGraph(location.path, read_graph(location.path), built=False)

        def use(selected: Sequence[str], manifest_path: Path, namespace: str | None) -> GraphFile:
            return graph_from_manifest(
                manifest_path, selected, project_hash=location.project_hash, selection=selection,
                dataset_namespace=namespace,
            )  # fmt: skip

        graph = lister(selection, use)
        write_graph(location.path, graph)
        _prune(location)
    return BuiltGraph(location.path, graph, built=True)


def _prune(location: GraphLocation) -> None:
    """Remove this selection's entries for older project content (the current one was just written)."""
    for old in location.directory.glob(f"{location.selection_key}-*.json"):
        if old != location.path:
            old.unlink(missing_ok=True)
