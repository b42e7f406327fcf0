"""The outcome of one dbt command as users see it: ``DbtTaskResult``, built from what dbt left in the run dir."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.artifacts import ArtifactCopy, RunSummary, summarize_run
from dlh_airflow_common.dbt.invocation import InvocationResult
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.dbt.report import ProgressReporter
from dlh_airflow_common.dbt.retry import merge_summaries
from dlh_airflow_common.dbt.run_dir import RunDir
from dlh_airflow_common.exceptions.dbt import DbtException, DbtExecutionTimeoutException, classify_dbt_error


@dataclass(frozen=True)
class AttemptRecord:
    """One dbt execution within a try (in-try retries make several): what ran and how it ended."""

    number: int
    command: str
    success: bool
    return_code: int
    seconds: float
    status_counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # "<exception type>: <message>", secret-free like the result's error

    @classmethod
    def of(cls, number: int, result: DbtTaskResult) -> AttemptRecord:
        """The record of ``result`` taken as attempt ``number`` (before its summary is merged with others')."""
        error = f"{type(result.error).__name__}: {result.error}" if result.error is not None else None
        return cls(
            number=number, command=result.command, success=result.success, return_code=result.return_code,
            seconds=result.elapsed_seconds, status_counts=dict(result.summary.status_counts), error=error,
        )  # fmt: skip


@dataclass
class DbtTaskResult:
    """Outcome of one dbt command: what ran, how it ended, its results and the classified error if any."""

    success: bool
    command: str
    return_code: int
    summary: RunSummary
    target_path: str
    run_dir: str
    elapsed_seconds: float
    error: DbtException | None = None
    artifacts_kept: bool = False
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    project: dict[str, str] = field(default_factory=dict)  # a remote project's URL, kind and version
    run_results_copy: ArtifactCopy | None = field(default=None, repr=False, compare=False)
    attempt_history: tuple[AttemptRecord, ...] = field(default=(), repr=False, compare=False)

    @property
    def attempt_records(self) -> tuple[AttemptRecord, ...]:
        """Every attempt of the try, first to last (a try without in-try retries has one)."""
        return self.attempt_history or (AttemptRecord.of(self.attempts, self),)

    @property
    def wrote_node_results(self) -> bool:
        """True when dbt wrote run_results.json with at least one node: progress ``dbt retry`` can build on."""
        return bool(self.summary.nodes) and self.run_results_copy is not None and self.run_results_copy.exists

    @cached_property
    def run_results(self) -> dict[str, Any]:
        """The run's run_results.json (``{}`` if dbt wrote none), decoded on first use: the run itself only
        needs ``summary``, and the run dir may be gone by the time this is read."""
        return self.run_results_copy.load() if self.run_results_copy is not None else {}

    def to_xcom(self, *, max_nodes: int = 20, max_message: int = 300) -> dict[str, Any]:
        """A bounded, JSON-safe summary for XCom (never a whole artifact)."""
        payload: dict[str, Any] = {
            "command": self.command,
            "success": self.success,
            "return_code": self.return_code,
            "run_dir": Path(self.run_dir).name,
            "wall_seconds": round(self.elapsed_seconds, 3),
            "attempts": self.attempts,
            **self.summary.to_dict(max_nodes=max_nodes, max_message=max_message),
        }
        if self.project:
            payload["project"] = dict(self.project)
        if self.artifacts_kept:
            payload["target_path"] = self.target_path
        if self.error is not None:
            message = str(self.error)
            payload["error"] = {
                "type": type(self.error).__name__,
                "message": message if len(message) <= max_message else message[: max_message - 3] + "...",
                "node_id": self.error.node_id,
                "retryable": self.error.retryable,
            }
        return payload


def build_result(
    *,
    command: str,
    outcome: InvocationResult,
    run_dir: RunDir,
    redactor: Redactor,
    progress: ProgressReporter,
    wall_seconds: float,
    conn_id: str | None,
    execution_timeout: float | None,
    artifacts_kept: bool,
    log: Any,
) -> DbtTaskResult:
    """Load the run's artifacts, summarise them and turn a failure into one classified, secret-free error."""
    log_file = str(run_dir.log_path / "dbt.log")
    summary, run_results = summarize_run(run_dir.target_path)
    if outcome.stopped is not None or not summary.nodes:  # else dbt ended normally: its artifact is complete
        summary = with_reported_nodes(summary, progress)
    summary = redactor.summary(summary)
    error: DbtException | None = None
    if outcome.stopped is not None:
        error = stopped_error(command, outcome.stopped, progress, execution_timeout, conn_id, log_file)
        log.warning("%s", error)
    elif not outcome.success:
        failures: list[Any] = [outcome.exception] if outcome.exception is not None else []
        failures += outcome.error_events
        error = classify_dbt_error(failures, conn_id=conn_id, log_path=log_file)
        error.message = redactor(failure_message(command, outcome.return_code, error, summary, artifacts_kept))
    return DbtTaskResult(
        success=outcome.success and error is None,
        command=command,
        return_code=outcome.return_code,
        summary=summary,
        target_path=str(run_dir.target_path),
        run_dir=str(run_dir.path),
        elapsed_seconds=wall_seconds,
        error=error,
        artifacts_kept=artifacts_kept,
        run_results_copy=run_results,
    )


def with_reported_nodes(summary: RunSummary, progress: ProgressReporter) -> RunSummary:
    """The artifact's summary, plus the nodes dbt reported through its events but never wrote there.

    The artifact wins for every node it has. An interrupted dbt writes run_results.json without the
    nodes it was running (a killed one writes none at all), although it already logged their results.
    """
    known = {node.unique_id for node in summary.nodes}
    if all(node.unique_id in known for node in progress.reported_nodes):
        return summary
    return merge_summaries(RunSummary(nodes=progress.reported_nodes), summary)


def stopped_error(
    command: str,
    reason: str,
    progress: ProgressReporter,
    execution_timeout: float | None,
    conn_id: str | None,
    log_file: str,
) -> DbtException:
    """The error for a run we stopped ourselves, with how far it got."""
    done = f"{progress.nodes_succeeded} of {progress.nodes_total or '?'} nodes had succeeded"
    if reason == "timeout":
        limit = f" of {execution_timeout:g}s" if execution_timeout else ""
        return DbtExecutionTimeoutException(
            f"dbt {command} exceeded the execution timeout{limit} and was stopped; {done}.",
            conn_id=conn_id,
            log_path=log_file,
        )
    return DbtException(
        f"dbt {command} was stopped because the task was killed; {done}.", conn_id=conn_id, log_path=log_file
    )


def failure_message(
    command: str, return_code: int, error: DbtException, summary: RunSummary, artifacts_kept: bool
) -> str:
    """One message naming the command, the node, dbt's own words, and how many other nodes failed."""
    where = f" in {error.node_id}" if error.node_id else ""
    text = " ".join(error.message.split()) if error.message else f"exit code {return_code}"
    others = len([n for n in summary.failed if n.unique_id != error.node_id]) if error.node_id else 0
    more = f" (+{others} more failed node{'s' if others != 1 else ''}, see the summary above)" if others else ""
    kept = f" Log: {error.log_path}" if artifacts_kept and error.log_path else ""
    return f"dbt {command} failed{where}: {text}{more}.{kept}"
