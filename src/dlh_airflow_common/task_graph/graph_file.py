"""The graph file: the selected part of a dbt project's graph, all that rendering tasks needs, nothing more.

``write_graph`` is its one writer and ``read_graph`` its one reader. It is made at build time from dbt's
own selection (``dbt ls``) and manifest (``graph_from_manifest``), and read at DAG-parse time with a typed
decode of this small file only: no dbt, no manifest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from dlh_airflow_common.dbt.channel import write_bytes_atomic
from dlh_airflow_common.exceptions.dbt import DbtArtifactException

FORMAT_VERSION = 2
# What a graph file holds: nodes that can become tasks, the tests placed with them, and the ephemeral
# models dependencies pass through.
GRAPH_RESOURCE_TYPES = frozenset({"model", "seed", "snapshot", "test"})


class Selection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The arguments dbt selected the nodes with (part of the cache key)."""

    select: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    selector: str | None = None
    target: str | None = None


class Relation(msgspec.Struct, frozen=True):
    """Where a node's result lives in the warehouse (for Assets)."""

    database: str | None = None
    schema: str | None = None
    identifier: str | None = None
    alias: str | None = None


class GraphNode(msgspec.Struct, frozen=True):
    """One selected node.

    ``depends_on`` are dbt's direct parents as the manifest names them (sources included); ``upstream`` are
    the selected nodes it waits for, found by walking through parents that were not selected. For a test,
    ``tested_nodes`` are the selected models/seeds/snapshots it depends on (more than one: a multi-node
    test, such as ``relationships``); for the others ``tests`` are the selected tests that depend on it.
    """

    unique_id: str
    resource_type: str
    name: str
    package_name: str
    original_file_path: str
    fqn: tuple[str, ...] = ()
    path: str = ""
    materialized: str | None = None
    depends_on: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    tested_nodes: tuple[str, ...] = ()
    relation: Relation | None = None

    @property
    def ephemeral(self) -> bool:
        return self.materialized == "ephemeral"


class GraphFile(msgspec.Struct, frozen=True):
    """The whole file: a header (format, dbt, project, hash, selection, OpenLineage's dataset namespace of the
    target, for Assets) and the nodes in dbt's order."""

    format_version: int
    dbt_version: str
    project_name: str
    project_hash: str
    selection: Selection
    nodes: tuple[GraphNode, ...]
    dataset_namespace: str | None = None

    def by_id(self) -> dict[str, GraphNode]:
        return {node.unique_id: node for node in self.nodes}


# -- the manifest, read at build time through a partial view -----------------------------------------------
class _DependsOn(msgspec.Struct):
    nodes: list[str] = []


class _Config(msgspec.Struct):
    materialized: str | None = None


class _ManifestNode(msgspec.Struct):
    unique_id: str
    resource_type: str
    name: str
    package_name: str
    original_file_path: str = ""
    path: str = ""
    fqn: list[str] = []
    depends_on: _DependsOn = msgspec.field(default_factory=_DependsOn)
    config: _Config = msgspec.field(default_factory=_Config)
    database: str | None = None
    schema: str | None = None
    alias: str | None = None
    identifier: str | None = None


class _Metadata(msgspec.Struct):
    dbt_version: str = "unknown"
    project_name: str | None = None


class _Manifest(msgspec.Struct):
    metadata: _Metadata = msgspec.field(default_factory=_Metadata)
    nodes: dict[str, _ManifestNode] = {}


def read_manifest_nodes(manifest_path: Path) -> tuple[_Metadata, dict[str, _ManifestNode]]:
    """The manifest's metadata and nodes, decoding only the fields the graph file holds."""
    try:
        manifest = msgspec.json.decode(manifest_path.read_bytes(), type=_Manifest)
    except (OSError, msgspec.DecodeError) as err:
        raise DbtArtifactException(
            f"Cannot read dbt manifest {manifest_path} for the task graph: {err}", artifact_path=str(manifest_path)
        ) from err
    return manifest.metadata, manifest.nodes


def _nearest_selected(
    parents: Iterable[str], selected: set[str], nodes: Mapping[str, _ManifestNode], memo: dict[str, tuple[str, ...]]
) -> tuple[str, ...]:
    """Selected nodes reached from ``parents`` without passing another selected node (dbt's subset graph)."""
    found: dict[str, None] = {}
    for parent in parents:
        if parent in selected:
            found[parent] = None
            continue
        if parent not in memo:
            memo[parent] = ()  # a cycle guard; dbt refuses cyclic projects anyway
            node = nodes.get(parent)
            grand = node.depends_on.nodes if node is not None else ()
            memo[parent] = _nearest_selected(grand, selected, nodes, memo)
        found.update(dict.fromkeys(memo[parent]))
    return tuple(found)


def graph_from_manifest(
    manifest_path: Path,
    selected_ids: Iterable[str],
    *,
    project_hash: str,
    selection: Selection,
    dataset_namespace: str | None = None,
) -> GraphFile:
    """The graph file for the nodes dbt selected (``dbt ls``), from the manifest that run wrote."""
    metadata, nodes = read_manifest_nodes(manifest_path)
    chosen = [
        uid for uid in dict.fromkeys(selected_ids) if uid in nodes and nodes[uid].resource_type in GRAPH_RESOURCE_TYPES
    ]
    selected = set(chosen)
    memo: dict[str, tuple[str, ...]] = {}
    upstream = {uid: _nearest_selected(nodes[uid].depends_on.nodes, selected, nodes, memo) for uid in chosen}
    buildable = {uid for uid in chosen if nodes[uid].resource_type != "test"}
    tests_of: dict[str, list[str]] = {uid: [] for uid in chosen}
    tested: dict[str, tuple[str, ...]] = {}
    for uid in chosen:
        if nodes[uid].resource_type == "test":
            tested[uid] = _tested_nodes(uid, upstream, nodes, buildable)
            for target in tested[uid]:
                tests_of[target].append(uid)
    graph_nodes = tuple(
        _graph_node(nodes[uid], upstream[uid], tuple(tests_of[uid]), tested.get(uid, ())) for uid in chosen
    )
    return GraphFile(
        format_version=FORMAT_VERSION,
        dbt_version=metadata.dbt_version,
        project_name=metadata.project_name or "",
        project_hash=project_hash,
        selection=selection,
        nodes=graph_nodes,
        dataset_namespace=dataset_namespace,
    )


def _tested_nodes(
    uid: str, upstream: Mapping[str, tuple[str, ...]], nodes: Mapping[str, _ManifestNode], buildable: set[str]
) -> tuple[str, ...]:
    """A test's nodes: the selected models, seeds and snapshots it waits for (ephemeral ones included)."""
    return tuple(parent for parent in upstream[uid] if parent in buildable)


def _graph_node(
    node: _ManifestNode, upstream: tuple[str, ...], tests: tuple[str, ...], tested: tuple[str, ...]
) -> GraphNode:
    relation = None
    if node.resource_type in {"model", "seed", "snapshot"} and node.config.materialized != "ephemeral":
        relation = Relation(
            database=node.database,
            schema=node.schema,
            identifier=node.identifier or node.alias or node.name,
            alias=node.alias,
        )
    return GraphNode(
        unique_id=node.unique_id,
        resource_type=node.resource_type,
        name=node.name,
        package_name=node.package_name,
        original_file_path=node.original_file_path,
        fqn=tuple(node.fqn),
        path=node.path,
        materialized=node.config.materialized,
        depends_on=tuple(node.depends_on.nodes),
        upstream=upstream,
        tests=tests,
        tested_nodes=tested,
        relation=relation,
    )


# -- the file --------------------------------------------------------------------------------------------
def write_graph(path: Path, graph: GraphFile) -> None:
    """Write the graph file atomically: a reader sees the old file or the whole new one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_bytes_atomic(path, msgspec.json.encode(graph))


def read_graph(path: Path) -> GraphFile:
    """Read a graph file; a missing, corrupt or other-format file raises ``DbtArtifactException`` naming it."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DbtArtifactException(f"Cannot read task graph file {path}: {err}", artifact_path=str(path)) from err
    try:
        graph = msgspec.json.decode(raw, type=GraphFile)
    except msgspec.DecodeError as err:
        raise DbtArtifactException(f"Task graph file {path} is corrupt ({err})", artifact_path=str(path)) from err
    if graph.format_version != FORMAT_VERSION:
        raise DbtArtifactException(
            f"Task graph file {path} has format {graph.format_version}, this library reads {FORMAT_VERSION}: "
            "rebuild it with `dlh-dbt graph`.",
            artifact_path=str(path),
        )
    return graph
