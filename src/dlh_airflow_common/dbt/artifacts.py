"""Loading dbt's JSON artifacts and reducing run results to a ``RunSummary``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlh_airflow_common.exceptions.dbt import DbtArtifactException

MANIFEST = "manifest.json"
RUN_RESULTS = "run_results.json"
CATALOG = "catalog.json"
SOURCES = "sources.json"

FAILED_STATUSES = frozenset({"error", "fail", "runtime error"})
WARNED_STATUSES = frozenset({"warn"})


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
        data = json.loads(raw)
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
        elapsed = artifact.get("elapsed_time")
        metadata = artifact.get("metadata") or {}
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
