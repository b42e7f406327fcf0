"""What the task log shows: one line per finished node while dbt runs, and the end-of-run summary."""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.artifacts import NodeOutcome, RunSummary
from dlh_airflow_common.dbt.events import node_result
from dlh_airflow_common.dbt.redact import Redactor

_SILENT = logging.getLogger("dlh_airflow_common.silent")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Events whose text we re-render (node results) or that carry no information for a reader.
_QUIET = frozenset({"LogStartLine", "Formatting", "NodeStart", "NodeFinished", "LogNodeResult"})
_STATUS_WORDS = {
    "success": "OK",
    "pass": "PASS",
    "error": "ERROR",
    "fail": "FAIL",
    "warn": "WARN",
    "skipped": "SKIP",
}
_SUCCEEDED = frozenset({"OK", "PASS", "WARN", "SUCCESS"})
_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING, "info": logging.INFO}
# Node results a reporter keeps for the summary of a run whose run_results.json lacks them (dbt was stopped
# or killed); a bigger run still has every node counted and logged, only that summary stops at this many.
MAX_REPORTED_NODES = 20_000


def plain(text: str, *, ascii_only: bool = True) -> str:
    """Drop ANSI colour codes and, by default, anything outside ASCII (task logs are often viewed raw)."""
    text = _ANSI.sub("", text)
    if not ascii_only:
        return text
    folded = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return folded.encode("ascii", "replace").decode("ascii")


def _status_word(status: Any) -> str:
    word = str(status or "").strip()
    return _STATUS_WORDS.get(word.lower(), word.upper() or "DONE")


def node_progress(event: Mapping[str, Any]) -> tuple[int, int, str, str, float | None] | None:
    """(index, total, STATUS, unique_id, seconds) for a node-result event, else None."""
    result = node_result(event)
    if result is None:
        return None
    index, total, status, unique_id, seconds = result
    return index, total, _status_word(status), unique_id, seconds


class ProgressReporter:
    """Turns dbt's events (JSON log lines or in-process callbacks, same shape) into task-log lines."""

    def __init__(
        self, log: Any, *, ascii_only: bool = True, redactor: Redactor | None = None, max_nodes: int | None = None
    ) -> None:
        """``max_nodes``: how many node results to keep for the summary (default ``MAX_REPORTED_NODES``; 0 for
        a reporter that only logs, such as the trigger's)."""
        self.log = log
        self.max_nodes = MAX_REPORTED_NODES if max_nodes is None else max_nodes
        self.ascii_only = ascii_only
        self.redact = redactor or Redactor(())
        self.nodes_done = 0
        self.nodes_succeeded = 0
        self.nodes_total = 0
        self._reported: dict[str, NodeOutcome] = {}

    def __call__(self, event: Mapping[str, Any]) -> None:
        info = event.get("info") or {}
        level = _LEVELS.get(str(info.get("level", "")).lower())
        if level is None:  # debug events reach in-process callbacks; the console never shows them
            return
        result = node_result(event)
        if result is not None:
            index, total, dbt_status, unique_id, seconds = result
            status = _status_word(dbt_status)
            self.nodes_done += 1
            self.nodes_succeeded += status in _SUCCEEDED
            self.nodes_total = max(self.nodes_total, total)
            if len(self._reported) < self.max_nodes or unique_id in self._reported:
                self._reported[unique_id] = NodeOutcome(unique_id, dbt_status or "unknown", seconds or 0.0)
            timing = f" {seconds:.2f}s" if seconds is not None else ""
            self.log.log(level, "[%d/%d] %s %s ...%s", index, total, status, unique_id, timing)
            return
        if info.get("name") in _QUIET:
            return
        message = self.redact(plain(str(info.get("msg") or ""), ascii_only=self.ascii_only)).rstrip()
        if message.strip():
            self.log.log(level, "%s", message)

    @property
    def reported_nodes(self) -> tuple[NodeOutcome, ...]:
        """Each node dbt reported a result for, latest result per node, in the order they first finished."""
        return tuple(self._reported.values())

    def line(self, text: str) -> None:
        """Log raw output that was not a JSON event (e.g. a subprocess's stray print)."""
        message = self.redact(plain(text, ascii_only=self.ascii_only)).rstrip()
        if message:
            self.log.info("%s", message)


def replay_progress(events_file: Path, log: Any, *, ascii_only: bool = True) -> ProgressReporter:
    """Count a finished run's node results from its saved JSON events (detached runs), logging nothing."""
    reporter = ProgressReporter(_SILENT, ascii_only=ascii_only)
    try:
        with events_file.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("{") and "Result" in line:
                    try:
                        reporter(json.loads(line))
                    except ValueError:
                        continue
    except OSError as err:
        log.debug("No dbt events to replay in %s: %s", events_file, err)
    return reporter


def format_summary(
    summary: RunSummary,
    *,
    command: str,
    run_name: str,
    success: bool,
    wall_seconds: float | None = None,
    max_message: int = 500,
    ascii_only: bool = True,
) -> list[str]:
    """The end-of-run block: nodes, time, counts per status, failed and warned nodes, five slowest."""
    elapsed = summary.elapsed if summary.elapsed is not None else wall_seconds
    counts = ", ".join(f"{status}={count}" for status, count in summary.status_counts.items()) or "none"
    lines = [
        f"=== dbt run summary: dbt {command} ({run_name}) ===",
        f"result: {'success' if success else 'FAILED'}",
        f"nodes: {summary.node_count}",
        f"elapsed: {elapsed:.2f}s" if elapsed is not None else "elapsed: unknown",
        f"status counts: {counts}",
    ]
    for title, nodes in (("failed nodes", summary.failed), ("warned nodes", summary.warned)):
        lines.append(f"{title}: {len(nodes)}")
        for node in nodes:
            message = " ".join((node.message or "").split())
            if len(message) > max_message:
                message = message[: max_message - 3] + "..."
            lines.append(f"  - {node.unique_id} [{node.status}]" + (f": {message}" if message else ""))
    slowest = [n for n in summary.slowest(5) if n.execution_time > 0]
    if slowest:
        lines.append("slowest nodes:")
        lines.extend(f"  {i}. {n.unique_id} {n.execution_time:.2f}s" for i, n in enumerate(slowest, 1))
    lines.append("=== end of dbt run summary ===")
    return [plain(line, ascii_only=ascii_only) for line in lines]
