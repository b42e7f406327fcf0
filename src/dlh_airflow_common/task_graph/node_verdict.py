"""How one node task of a task graph ends, from the node results its group's dbt build reported.

Pure data, no Airflow: a node task (its node and the tests placed with it) is ``waiting`` until dbt reported
all of them, then ``success``, ``failed`` (the node or one of its tests failed: never green while a test
failed), ``skipped`` (dbt skipped the node), or ``not_run`` when the build ended without reporting them
(stopped, failed before reaching them, ``fail_fast``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dlh_airflow_common.dbt.events import NODE_FAILURE_STATUSES

Verdict = Literal["waiting", "success", "failed", "skipped", "not_run"]
SKIPPED = "skipped"
NODE_XCOM = "dbt_node"  # a node task's verdict and results (``NodeVerdict.summary``), pushed as it ends


@dataclass(frozen=True)
class NodeResult:
    """One node's result as the build reported it."""

    unique_id: str
    status: str
    message: str | None = None

    @property
    def failed(self) -> bool:
        return self.status in NODE_FAILURE_STATUSES

    def line(self) -> str:
        text = f"{self.status.upper()} {self.unique_id}"
        return f"{text}: {self.message}" if self.message else text


@dataclass(frozen=True)
class NodeVerdict:
    """The verdict and the results it rests on (node first, then its tests, as dbt reported them)."""

    verdict: Verdict
    results: tuple[NodeResult, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.verdict != "waiting"

    @property
    def failures(self) -> tuple[NodeResult, ...]:
        return tuple(result for result in self.results if result.failed)

    def summary(self, node_id: str | None, tests: Sequence[str]) -> dict[str, Any]:
        """What a node task pushes as XCom ``dbt_node`` when it ends."""
        return {"node_id": node_id, "tests": list(tests), "verdict": self.verdict,
                "results": [[r.unique_id, r.status] for r in self.results]}  # fmt: skip

    def to_event(self) -> dict[str, Any]:
        """Plain JSON for a trigger event (``from_event`` reads it back)."""
        return {
            "kind": "verdict",
            "verdict": self.verdict,
            "results": [[r.unique_id, r.status, r.message] for r in self.results],
            "missing": list(self.missing),
        }

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> NodeVerdict:
        results = tuple(NodeResult(uid, status, message) for uid, status, message in event.get("results") or ())
        return cls(event["verdict"], results, tuple(event.get("missing") or ()))


def result_of(results: Mapping[str, Any], unique_id: str) -> NodeResult | None:
    """``unique_id``'s entry in a status's ``results`` (``{"status": ..., "message": ...}``), if reported."""
    entry = results.get(unique_id)
    if not isinstance(entry, Mapping) or not entry.get("status"):
        return None
    message = entry.get("message")
    return NodeResult(unique_id, str(entry["status"]).lower(), str(message) if message else None)


def judge(
    results: Mapping[str, Any], node_id: str | None, tests: Sequence[str], *, build_finished: bool
) -> NodeVerdict:
    """The verdict of a task running ``node_id`` (None for a tests-only task) and ``tests``.

    :param results: Node results so far (``RunStatus.results`` or the finished build's copy).
    :param node_id: The model, seed or snapshot of the task; None for a task of tests only.
    :param tests: The tests placed in the task.
    :param build_finished: Whether the build has ended: what is still missing then will not come.
    """
    members = [node_id, *tests] if node_id else list(tests)
    found = {uid: result_of(results, uid) for uid in members}
    reported = tuple(result for result in found.values() if result is not None)
    missing = tuple(uid for uid, result in found.items() if result is None)
    if any(result.failed for result in reported):
        return NodeVerdict("failed", reported, missing)
    if node_id is not None:
        node = found[node_id]
        if node is not None and node.status == SKIPPED:
            return NodeVerdict("skipped", reported, missing)
    if missing:
        return NodeVerdict("not_run" if build_finished else "waiting", reported, missing)
    if node_id is None and reported and all(result.status == SKIPPED for result in reported):
        return NodeVerdict("skipped", reported)
    return NodeVerdict("success", reported)
