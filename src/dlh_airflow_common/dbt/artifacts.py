"""Loading dbt's JSON artifacts and reducing them to summaries (``RunSummary``, ``ManifestSummary``).

``load_artifact`` returns the whole document (a 100 MB manifest is 450 MB of objects). Summaries decode
only the fields they need (``RunSummary.from_file``, ``summarize_manifest``), in about the file's size;
``ArtifactCopy`` keeps an artifact compressed until someone asks for it whole.
"""

from __future__ import annotations

import gc
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from dlh_airflow_common.exceptions.dbt import DbtArtifactException

MANIFEST = "manifest.json"
RUN_RESULTS = "run_results.json"
CATALOG = "catalog.json"
SOURCES = "sources.json"

_MANIFEST_RESOURCE_SECTIONS = (
    "nodes", "sources", "exposures", "metrics", "semantic_models", "saved_queries", "unit_tests", "functions",
)  # fmt: skip

FAILED_STATUSES = frozenset({"error", "fail", "runtime error"})
WARNED_STATUSES = frozenset({"warn"})


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Decoding allocates millions of containers and no cycles; collections in between only cost time.

    The collector would rescan the growing heap again and again. Paused, it scans the new objects once
    later: loading a 100 MB manifest costs about half the CPU time, later collections included.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_artifact(path: str | Path) -> dict[str, Any]:
    """Return the artifact's JSON object, ``{}`` if the file does not exist; corrupt files raise."""
    artifact = Path(path)
    raw = _read(artifact)
    if raw is None:
        return {}
    text = _text(raw, artifact)
    del raw  # the bytes and the decoded objects need not both stay alive
    return _parse(text, artifact)


def _read(artifact: Path) -> bytes | None:
    try:
        return artifact.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _unreadable(artifact, err) from err


def _unreadable(artifact: Path, err: OSError) -> DbtArtifactException:
    return DbtArtifactException(f"Cannot read dbt artifact {artifact}: {err}", artifact_path=str(artifact))


def _corrupt(artifact: Path, reason: str) -> DbtArtifactException:
    return DbtArtifactException(f"dbt artifact {artifact} is corrupt ({reason})", artifact_path=str(artifact))


def _text(raw: bytes, artifact: Path) -> str:
    try:
        return raw.decode(json.detect_encoding(raw), "surrogatepass")  # what json.loads(bytes) does
    except UnicodeDecodeError as err:
        raise _corrupt(artifact, f"not valid JSON: {err}") from None


def _parse(text: str, artifact: Path) -> dict[str, Any]:
    try:
        with _gc_paused():
            data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _corrupt(artifact, f"not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise _corrupt(artifact, f"expected a JSON object, found {type(data).__name__}")
    return data


class ArtifactCopy:
    """An artifact's bytes kept zlib-compressed in memory (about a tenth of the file), decoded on demand.

    A run's result outlives its run dir, yet most callers only need its summary: holding the decoded
    run_results.json would cost about four times the file for nothing.
    """

    def __init__(self, path: Path, raw: bytes | None) -> None:
        self.path = path
        # Fastest level: ~25 ms and a tenth of the size for 8 MB of run results.
        self._compressed = zlib.compress(raw, 1) if raw is not None else None

    @classmethod
    def read(cls, path: str | Path) -> ArtifactCopy:
        """A copy of the file; a missing file gives a copy that loads as ``{}``."""
        artifact = Path(path)
        return cls(artifact, _read(artifact))

    @property
    def exists(self) -> bool:
        return self._compressed is not None

    def load(self) -> dict[str, Any]:
        """The artifact's JSON object as ``load_artifact`` would have returned it when the copy was made."""
        if self._compressed is None:
            return {}
        return _parse(_text(zlib.decompress(self._compressed), self.path), self.path)


# Beyond this a removed run's artifact is not kept in memory (a 256 MB manifest compresses to ~25 MB).
MAX_KEPT_ARTIFACT_BYTES = 256 * 1024 * 1024


class KeptArtifacts:
    """A finished run's manifest, catalog, sources and run results, compressed, for after its run dir is gone.

    Each file is kept up to ``max_bytes``; a larger one is remembered by size only and loading it says why.
    """

    NAMES = (MANIFEST, RUN_RESULTS, CATALOG, SOURCES)

    def __init__(self, copies: Mapping[str, ArtifactCopy], too_large: Mapping[str, int]) -> None:
        self._copies = dict(copies)
        self._too_large = dict(too_large)

    @classmethod
    def keep(
        cls, target_path: Path, *, run_results: ArtifactCopy | None = None, max_bytes: int = MAX_KEPT_ARTIFACT_BYTES
    ) -> KeptArtifacts:
        """Copy what dbt wrote into ``target_path`` (``run_results`` when the caller already holds a copy)."""
        copies: dict[str, ArtifactCopy] = {}
        too_large: dict[str, int] = {}
        for name in cls.NAMES:
            if name == RUN_RESULTS and run_results is not None:
                copies[name] = run_results
                continue
            path = target_path / name
            try:
                size = path.stat().st_size
            except OSError:
                continue  # dbt did not write it
            if size > max_bytes:
                too_large[name] = size
            else:
                copies[name] = ArtifactCopy.read(path)
        return cls(copies, too_large)

    def load(self, name: str) -> dict[str, Any]:
        """The artifact as it was when the run ended; ``{}`` when dbt did not write it."""
        if name in self._too_large:
            raise DbtArtifactException(
                f"{name} of the last run ({self._too_large[name] / 1e6:.0f} MB) was too large to keep in memory "
                "after its run dir was removed; pass target_path= or keep_target_artifacts=True to read it.",
                artifact_path=name,
            )
        copy = self._copies.get(name)
        return copy.load() if copy is not None else {}


# -- summaries: typed partial views decoded by msgspec (what Airflow itself uses for its messages) ------
# Only the fields a summary reads are declared; msgspec skips everything else at C speed without building
# objects for it, so a summary costs about the file's bytes in memory and a fraction of a full decode.


class _Metadata(msgspec.Struct, frozen=True):
    invocation_id: Any = None
    project_name: Any = None
    dbt_version: Any = None


class _Result(msgspec.Struct):
    unique_id: Any = "?"
    status: Any = "unknown"
    execution_time: Any = 0.0
    message: Any = None
    error: Any = None  # sources.json says "error" where run_results.json says "message"
    failures: Any = None


class _Results(msgspec.Struct):
    metadata: _Metadata | None = None
    results: list[_Result] | None = None
    elapsed_time: Any = None


class _Config(msgspec.Struct):
    materialized: Any = None


class _Resource(msgspec.Struct):
    resource_type: Any = None
    package_name: Any = None
    config: _Config | None = None


class _Manifest(msgspec.Struct):
    metadata: _Metadata | None = None
    nodes: dict[str, _Resource] = {}
    sources: dict[str, _Resource] = {}
    exposures: dict[str, _Resource] = {}
    metrics: dict[str, _Resource] = {}
    semantic_models: dict[str, _Resource] = {}
    saved_queries: dict[str, _Resource] = {}
    unit_tests: dict[str, _Resource] = {}
    functions: dict[str, _Resource] = {}
    macros: dict[str, msgspec.Raw] = {}
    disabled: dict[str, list[msgspec.Raw]] = {}


_RESULTS = msgspec.json.Decoder(_Results)
_MANIFEST_VIEW = msgspec.json.Decoder(_Manifest)


def _decode_view(path: str | Path, decoder: msgspec.json.Decoder[Any]) -> Any:
    """The view of the artifact at ``path``, or None if there is no such file; corrupt files raise."""
    artifact = Path(path)
    raw = _read(artifact)
    return None if raw is None else _view(raw, artifact, decoder)


def _view(raw: bytes, artifact: Path, decoder: msgspec.json.Decoder[Any]) -> Any:
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:  # bad JSON or a shape dbt never writes
        raise _corrupt(artifact, str(err)) from None


def summarize_run(target_path: str | Path) -> tuple[RunSummary, ArtifactCopy]:
    """The summary of the run that wrote ``target_path`` and its run_results.json kept compressed, from one
    read of the file (``source freshness`` writes sources.json instead, which then gives the summary)."""
    target = Path(target_path)
    results = target / RUN_RESULTS
    raw = _read(results)
    if raw is None:
        return RunSummary.from_file(target / SOURCES), ArtifactCopy(results, None)
    copy = ArtifactCopy(results, raw)
    view = _view(raw, results, _RESULTS)
    del raw  # the summary is built from the view alone: the bytes and the summary need not both stay alive
    return RunSummary._from_view(view), copy


@dataclass(frozen=True)
class NodeOutcome:
    """One node's result as reported in run_results.json or sources.json."""

    unique_id: str
    status: str
    execution_time: float = 0.0
    message: str | None = None
    failures: int | None = None

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> NodeOutcome:
        return cls._of(
            result.get("unique_id", "?"),
            result.get("status", "unknown"),
            result.get("execution_time"),
            result.get("message") or result.get("error"),
            result.get("failures"),
        )

    @classmethod
    def _of(cls, unique_id: Any, status: Any, execution_time: Any, message: Any, failures: Any) -> NodeOutcome:
        return cls(
            unique_id=str(unique_id),
            status=str(status).lower(),
            execution_time=float(execution_time or 0.0),
            message=str(message) if message else None,
            failures=int(failures) if isinstance(failures, int) else None,
        )


@dataclass(frozen=True)
class RunSummary:
    """What happened in one dbt invocation, in the terms users ask about after a run."""

    nodes: tuple[NodeOutcome, ...] = ()
    elapsed: float | None = None
    invocation_id: str | None = None
    status_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_artifacts(cls, run_results: Mapping[str, Any], sources: Mapping[str, Any] | None = None) -> RunSummary:
        """Build from run_results.json (or sources.json, which ``source freshness`` writes instead)."""
        artifact = run_results if run_results.get("results") is not None else (sources or {})
        results = artifact.get("results") or []
        nodes = tuple(NodeOutcome.from_result(r) for r in results if isinstance(r, Mapping))
        return cls._build(nodes, artifact.get("elapsed_time"), artifact.get("metadata"))

    @classmethod
    def from_file(cls, path: str | Path) -> RunSummary:
        """Build from run_results.json or sources.json on disk, reading only the fields a summary needs."""
        view: _Results | None = _decode_view(path, _RESULTS)
        return cls() if view is None else cls._from_view(view)

    @classmethod
    def _from_view(cls, view: _Results) -> RunSummary:
        nodes = tuple(
            NodeOutcome._of(r.unique_id, r.status, r.execution_time, r.message or r.error, r.failures)
            for r in view.results or ()
        )
        metadata = {"invocation_id": view.metadata.invocation_id} if view.metadata else None
        return cls._build(nodes, view.elapsed_time, metadata)

    @classmethod
    def _build(cls, nodes: tuple[NodeOutcome, ...], elapsed: Any, metadata: Any) -> RunSummary:
        metadata = metadata if isinstance(metadata, Mapping) else {}
        return cls(
            nodes=nodes,
            elapsed=float(elapsed) if isinstance(elapsed, int | float) else None,
            invocation_id=metadata.get("invocation_id"),
            status_counts=dict(sorted(Counter(n.status for n in nodes).items())),
        )

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    @property
    def failed(self) -> list[NodeOutcome]:
        return [n for n in self.nodes if n.status in FAILED_STATUSES]

    @property
    def warned(self) -> list[NodeOutcome]:
        return [n for n in self.nodes if n.status in WARNED_STATUSES]

    def slowest(self, count: int = 5) -> list[NodeOutcome]:
        return sorted(self.nodes, key=lambda n: n.execution_time, reverse=True)[:count]

    def to_dict(self, *, max_nodes: int = 20, max_message: int = 300) -> dict[str, Any]:
        """A bounded, JSON-safe view for XCom: counts, capped failed/warned lists, never whole artifacts."""

        def brief(node: NodeOutcome) -> dict[str, Any]:
            entry: dict[str, Any] = {"unique_id": node.unique_id, "status": node.status}
            if node.message:
                entry["message"] = _truncate(node.message, max_message)
            return entry

        failed, warned = self.failed, self.warned
        return {
            "node_count": self.node_count,
            "elapsed_seconds": round(self.elapsed, 3) if self.elapsed is not None else None,
            "status_counts": dict(self.status_counts),
            "failed_nodes": [brief(n) for n in failed[:max_nodes]],
            "failed_nodes_omitted": max(0, len(failed) - max_nodes),
            "warned_nodes": [brief(n) for n in warned[:max_nodes]],
            "warned_nodes_omitted": max(0, len(warned) - max_nodes),
            "invocation_id": self.invocation_id,
        }


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ManifestSummary:
    """What a manifest.json holds, in counts: resources by type and package, model materializations."""

    project_name: str | None = None
    dbt_version: str | None = None
    resource_counts: dict[str, int] = field(default_factory=dict)
    package_counts: dict[str, int] = field(default_factory=dict)
    materializations: dict[str, int] = field(default_factory=dict)
    macro_count: int = 0
    disabled_count: int = 0

    @property
    def node_count(self) -> int:
        return sum(self.resource_counts.values())


def summarize_manifest(path: str | Path) -> ManifestSummary:
    """Summarise manifest.json without decoding it whole: a 100 MB manifest takes about its size in memory.

    A missing file gives an empty summary; a corrupt one raises ``DbtArtifactException``.
    """
    view: _Manifest | None = _decode_view(path, _MANIFEST_VIEW)
    if view is None:
        return ManifestSummary()
    resources: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    materializations: Counter[str] = Counter()
    for section in _MANIFEST_RESOURCE_SECTIONS:
        for resource in getattr(view, section).values():
            resource_type = str(resource.resource_type or section.rstrip("s"))
            resources[resource_type] += 1
            packages[str(resource.package_name)] += 1
            if resource_type == "model":
                materializations[str(resource.config.materialized if resource.config else None)] += 1
    metadata = view.metadata or _Metadata()
    return ManifestSummary(
        project_name=metadata.project_name,
        dbt_version=metadata.dbt_version,
        resource_counts=dict(sorted(resources.items())),
        package_counts=dict(sorted(packages.items())),
        materializations=dict(sorted(materializations.items())),
        macro_count=len(view.macros),
        disabled_count=sum(len(versions) for versions in view.disabled.values()),
    )
