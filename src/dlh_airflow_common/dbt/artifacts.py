"""Loading dbt's JSON artifacts and reducing them to summaries (``RunSummary``, ``ManifestSummary``).

``load_artifact`` returns the whole document; ``stream_artifact`` walks a big one item by item in flat
memory, for summaries of manifests too large to hold decoded (a 100 MB manifest is 450 MB of objects).
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.decoder import scanstring as _scanstring  # type: ignore[attr-defined]  # C version when built
from pathlib import Path
from typing import Any, TextIO

from dlh_airflow_common.exceptions.dbt import DbtArtifactException

MANIFEST = "manifest.json"
RUN_RESULTS = "run_results.json"
CATALOG = "catalog.json"
SOURCES = "sources.json"

_CHUNK_CHARS = 1 << 20
_WHITESPACE = " \t\r\n"
_NUMBER_CHARS = "0123456789+-.eE"
_MANIFEST_RESOURCE_SECTIONS = frozenset(
    {"nodes", "sources", "exposures", "metrics", "semantic_models", "saved_queries", "unit_tests", "functions"}
)

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
    try:
        raw = artifact.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise DbtArtifactException(f"Cannot read dbt artifact {artifact}: {err}", artifact_path=str(artifact)) from err
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # what json.loads(bytes) does
        del raw  # the bytes and the text need not both stay alive while the objects are built
        with _gc_paused():
            data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DbtArtifactException(
            f"dbt artifact {artifact} is corrupt (not valid JSON: {err})", artifact_path=str(artifact)
        ) from None
    if not isinstance(data, dict):
        raise DbtArtifactException(
            f"dbt artifact {artifact} is corrupt (expected a JSON object, found {type(data).__name__})",
            artifact_path=str(artifact),
        )
    return data


class _JsonStream:
    """Reads a JSON document's top-level object one member, or one item of a member, at a time.

    Memory stays at about one chunk plus the largest single item, whatever the file size: a 100 MB
    manifest is summarised without ever holding its 400+ MB of decoded objects. Keys and values are
    decoded by json's C scanner; only the punctuation between items is stepped over here.
    """

    def __init__(self, handle: TextIO, path: Path) -> None:
        self.handle = handle
        self.path = path
        self.buffer = ""
        self.pos = 0
        self.eof = False
        self.scan: Any = json.JSONDecoder().scan_once  # type: ignore[attr-defined]

    def corrupt(self, reason: str) -> DbtArtifactException:
        return DbtArtifactException(f"dbt artifact {self.path} is corrupt ({reason})", artifact_path=str(self.path))

    def fill(self) -> bool:
        """Append the next chunk, reading at least as much as is buffered: a long value is retried a
        logarithmic number of times, not once per chunk."""
        chunk = "" if self.eof else self.handle.read(max(_CHUNK_CHARS, len(self.buffer) - self.pos))
        if not chunk:
            self.eof = True
            return False
        self.buffer = self.buffer[self.pos :] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        """Skip whitespace and return the next character without consuming it ("" at the end)."""
        while True:
            buffer, pos = self.buffer, self.pos
            while pos < len(buffer) and buffer[pos] in _WHITESPACE:
                pos += 1
            self.pos = pos
            if pos < len(buffer):
                return buffer[pos]
            if not self.fill():
                return ""

    def take(self, expected: str) -> str:
        found = self.peek()
        if not found or found not in expected:
            wanted = " or ".join(repr(c) for c in expected)
            raise self.corrupt(f"expected {wanted} at offset {self.pos}, found {found!r}")
        self.pos += 1
        return found

    def value(self) -> Any:
        if self.pos >= len(self.buffer) or self.buffer[self.pos] in _WHITESPACE:
            self.peek()
        while True:
            try:
                value, end = self.scan(self.buffer, self.pos)
            except (StopIteration, json.JSONDecodeError) as err:
                if self.fill():
                    continue  # the value goes on in the next chunk
                raise self.corrupt(f"not valid JSON at offset {self.pos}: {err!r}") from None
            if _may_continue(value, self.buffer, end) and self.fill():
                continue  # a number cut by the chunk boundary ("12" of "12.5e3")
            self.pos = end
            return value

    def key(self) -> str:
        at_quote = self.pos < len(self.buffer) and self.buffer[self.pos] == '"'
        if not at_quote and self.peek() != '"':
            raise self.corrupt(f"expected an object key at offset {self.pos}")
        while True:
            try:
                key, end = _scanstring(self.buffer, self.pos + 1)
                break
            except json.JSONDecodeError as err:
                if not self.fill():
                    raise self.corrupt(f"not valid JSON at offset {self.pos}: {err}") from None
        if self.buffer.startswith(": ", end) and end + 2 < len(self.buffer):  # how dbt writes it
            self.pos = end + 2
        else:
            self.pos = end
            self.take(":")
        return str(key)

    def items(self) -> Iterator[tuple[str | int, Any]]:
        """The members of an object or the items of an array, whichever comes next."""
        closing = "}" if self.take("{[") == "{" else "]"
        if self.peek() == closing:
            self.pos += 1
            return
        index = 0
        separators = "," + closing
        while True:
            if closing == "}":
                yield self.key(), self.value()
            else:
                yield index, self.value()
            index += 1
            if self.buffer.startswith(", ", self.pos) and self.pos + 2 < len(self.buffer):
                self.pos += 2  # how dbt writes it; anything unusual goes the long way
            elif self.take(separators) == closing:
                return


def _may_continue(value: Any, buffer: str, end: int) -> bool:
    if end == len(buffer):
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and buffer[end] in _NUMBER_CHARS


def stream_artifact(path: str | Path, *, whole: Collection[str] = ("metadata",)) -> Iterator[tuple[str, Any, Any]]:
    """Yield ``(member, key, value)`` for each item of each top-level object or array member of a dbt artifact.

    Members named in ``whole`` and scalar members come as one ``(member, None, value)``. A missing file
    yields nothing; a corrupt one raises ``DbtArtifactException`` (after yielding what came before).
    """
    artifact = Path(path)
    try:
        handle = artifact.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        return
    except OSError as err:
        raise DbtArtifactException(f"Cannot read dbt artifact {artifact}: {err}", artifact_path=str(artifact)) from err
    with handle:
        stream = _JsonStream(handle, artifact)
        try:
            if stream.peek() != "{":
                raise stream.corrupt("expected a JSON object")
            for member in _members(stream):
                if member in whole or stream.peek() not in "{[":
                    yield member, None, stream.value()
                else:
                    for key, value in stream.items():
                        yield member, key, value
            if stream.peek():
                raise stream.corrupt(f"unexpected data after the object at offset {stream.pos}")
        except UnicodeDecodeError as err:
            raise stream.corrupt(f"not UTF-8: {err}") from None


def _members(stream: _JsonStream) -> Iterator[str]:
    """Top-level member names; the caller consumes each value before asking for the next name."""
    stream.take("{")
    if stream.peek() == "}":
        stream.pos += 1
        return
    while True:
        yield stream.key()
        if stream.take(",}") == "}":
            return


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
        message = result.get("message") or result.get("error")
        failures = result.get("failures")
        return cls(
            unique_id=str(result.get("unique_id", "?")),
            status=str(result.get("status", "unknown")).lower(),
            execution_time=float(result.get("execution_time") or 0.0),
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
        """Build from run_results.json or sources.json on disk without loading it whole (see ``stream_artifact``)."""
        nodes: list[NodeOutcome] = []
        elapsed: Any = None
        metadata: Any = None
        for member, _, value in stream_artifact(path):
            if member == "results" and isinstance(value, Mapping):
                nodes.append(NodeOutcome.from_result(value))
            elif member == "elapsed_time":
                elapsed = value
            elif member == "metadata":
                metadata = value
        return cls._build(tuple(nodes), elapsed, metadata)

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
    """Summarise manifest.json one resource at a time: memory stays flat whatever the manifest's size.

    A missing file gives an empty summary; a corrupt one raises ``DbtArtifactException``.
    """
    resources: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    materializations: Counter[str] = Counter()
    macros = disabled = 0
    metadata: Mapping[str, Any] = {}
    for member, _, value in stream_artifact(path):
        if member in _MANIFEST_RESOURCE_SECTIONS and isinstance(value, Mapping):
            resource_type = str(value.get("resource_type") or member.rstrip("s"))
            resources[resource_type] += 1
            packages[str(value.get("package_name"))] += 1
            if resource_type == "model":
                config = value.get("config")
                materializations[str(config.get("materialized") if isinstance(config, Mapping) else None)] += 1
        elif member == "macros":
            macros += 1
        elif member == "disabled":
            disabled += len(value) if isinstance(value, list) else 1
        elif member == "metadata" and isinstance(value, Mapping):
            metadata = value
    return ManifestSummary(
        project_name=metadata.get("project_name"),
        dbt_version=metadata.get("dbt_version"),
        resource_counts=dict(sorted(resources.items())),
        package_counts=dict(sorted(packages.items())),
        materializations=dict(sorted(materializations.items())),
        macro_count=macros,
        disabled_count=disabled,
    )
