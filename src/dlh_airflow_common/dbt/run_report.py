"""The run report of one task try: what its artifacts say, gathered for one self-contained HTML page.

``build_report`` reads run_results.json (or sources.json), manifest.json and the head of dbt.log through typed
partial views (the fields the page shows, nothing else), masks secrets, and returns a ``RunReport``;
``write_run_report`` renders it (``run_report_html``) into ``run_report.html`` in the try's target dir, where
the artifact upload picks it up. A missing or unreadable artifact gives a page that says so, never an error.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from dlh_airflow_common.dbt.artifacts import (
    FAILED_STATUSES,
    MANIFEST,
    RUN_RESULTS,
    SOURCES,
    WARNED_STATUSES,
)
from dlh_airflow_common.dbt.redact import Redactor

if TYPE_CHECKING:
    from dlh_airflow_common.dbt.result import AttemptRecord, DbtTaskResult

RUN_REPORT_FILE = "run_report.html"
DBT_LOG = "dbt.log"
MAX_SQL_CHARS = 20_000  # compiled SQL shown per failed or warned node
MAX_SQL_TOTAL = 1_500_000  # all of it together: the page stays a few MB however many nodes fail
SLOWEST_COUNT = 10
_LOG_HEAD_BYTES = 256 * 1024  # dbt logs the adapter it registered among its first lines
_ADAPTER_LINE = re.compile(r"Registered adapter: ([A-Za-z0-9_-]+)=([A-Za-z0-9_.+-]+)")


# -- typed partial views: only what the page shows is decoded --------------------------------------------
class _Timing(msgspec.Struct):
    name: Any = None
    started_at: datetime | None = None  # RFC 3339, decoded by msgspec in C
    completed_at: datetime | None = None


class _NodeResult(msgspec.Struct):
    unique_id: Any = "?"
    status: Any = "unknown"
    execution_time: Any = 0.0
    thread_id: Any = None
    timing: list[_Timing] | None = None
    adapter_response: dict[str, Any] | None = None
    message: Any = None
    error: Any = None  # sources.json says "error" where run_results.json says "message"
    failures: Any = None
    compiled_code: Any = None


class _Args(msgspec.Struct):
    select: Any = None
    exclude: Any = None
    selector: Any = None
    threads: Any = None


class _RunMetadata(msgspec.Struct):
    dbt_version: Any = None
    invocation_id: Any = None
    generated_at: Any = None


class _RunResults(msgspec.Struct):
    metadata: _RunMetadata | None = None
    results: list[_NodeResult] | None = None
    elapsed_time: Any = None
    args: _Args | None = None


class _ManifestNode(msgspec.Struct):
    name: Any = None
    resource_type: Any = None
    original_file_path: Any = None


class _ManifestMetadata(msgspec.Struct):
    dbt_version: Any = None
    project_name: Any = None
    adapter_type: Any = None


class _Manifest(msgspec.Struct):
    metadata: _ManifestMetadata | None = None
    nodes: dict[str, _ManifestNode] = {}
    sources: dict[str, _ManifestNode] = {}
    unit_tests: dict[str, _ManifestNode] = {}
    functions: dict[str, _ManifestNode] = {}


_RESULTS_VIEW = msgspec.json.Decoder(_RunResults)
_MANIFEST_VIEW = msgspec.json.Decoder(_Manifest)


# -- the report ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReportNode:
    """One node as the page shows it; times are seconds since the epoch, text is secret-free."""

    unique_id: str
    status: str
    name: str
    resource_type: str
    thread: str | None = None
    started: float | None = None  # the execute step (else any step dbt timed)
    ended: float | None = None
    seconds: float = 0.0  # dbt's execution_time
    rows: int | None = None  # adapter_response.rows_affected
    failures: int | None = None
    message: str | None = None
    adapter_message: str | None = None
    compiled_sql: str | None = None  # failed and warned nodes only
    file: str | None = None  # original_file_path

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES

    @property
    def warned(self) -> bool:
        return self.status in WARNED_STATUSES


@dataclass(frozen=True)
class RunReport:
    """Everything the page shows about one try."""

    command: str
    success: bool
    nodes: tuple[ReportNode, ...] = ()
    wall_seconds: float | None = None
    dbt_seconds: float | None = None
    dbt_version: str | None = None
    adapter: str | None = None  # "duckdb 1.11.1", or the type alone when dbt.log is gone
    invocation_id: str | None = None
    generated_at: str | None = None
    project_name: str | None = None
    project_source: str | None = None  # a remote project's "<url> @ <version>"
    run_name: str | None = None
    selection: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the try's classified error, "<type>: <message>"
    attempts: tuple[AttemptRecord, ...] = ()
    missing: tuple[str, ...] = ()  # what the page cannot show, and why

    @property
    def status_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(node.status for node in self.nodes).items()))

    @property
    def failed(self) -> list[ReportNode]:
        return [node for node in self.nodes if node.failed]

    @property
    def warned(self) -> list[ReportNode]:
        return [node for node in self.nodes if node.warned]

    @property
    def rows_affected(self) -> int | None:
        rows = [node.rows for node in self.nodes if node.rows is not None]
        return sum(rows) if rows else None

    def slowest(self, count: int = SLOWEST_COUNT) -> list[ReportNode]:
        return sorted(self.nodes, key=lambda node: node.seconds, reverse=True)[:count]

    @property
    def threads(self) -> list[str]:
        """The threads that ran nodes, in natural order (Thread-2 before Thread-10)."""
        names = {node.thread for node in self.nodes if node.thread is not None}
        return sorted(names, key=lambda name: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)])


def build_report(
    target_path: str | Path,
    *,
    result: DbtTaskResult | None = None,
    log_path: str | Path | None = None,
    redactor: Redactor | None = None,
) -> RunReport:
    """The report of the run whose artifacts are in ``target_path`` (and whose ``dbt.log`` is in ``log_path``).

    ``result`` adds what only the try knows (command, outcome, wall time, attempts, nodes dbt reported but
    never wrote); ``redactor`` masks secrets in every message and statement the page shows.
    """
    target = Path(target_path)
    redact = redactor or Redactor(())
    missing: list[str] = []
    results = _results_view(target, missing)
    manifest = _view(target / MANIFEST, _MANIFEST_VIEW, missing, "node names, types and file paths")
    resources = _resources(manifest) if manifest is not None else {}
    nodes = [_node(r, resources, redact) for r in (results.results or [])] if results is not None else []
    if result is not None:  # nodes an earlier attempt ran, or that dbt reported before it was stopped
        known = {node.unique_id for node in nodes}
        nodes += [_reported(n.unique_id, n.status, n.execution_time, n.message, n.failures, resources, redact)
                  for n in result.summary.nodes if n.unique_id not in known]  # fmt: skip
    nodes = _with_sql_budget(nodes)
    run_meta = (results.metadata if results is not None else None) or _RunMetadata()
    manifest_meta = (manifest.metadata if manifest is not None else None) or _ManifestMetadata()
    adapter = _adapter(Path(log_path) if log_path is not None else None, manifest_meta.adapter_type)
    failed = any(node.failed for node in nodes)
    return RunReport(
        command=f"dbt {redact(result.command)}" if result is not None else "dbt",
        success=result.success if result is not None else (results is not None and not failed),
        nodes=tuple(nodes),
        wall_seconds=result.elapsed_seconds if result is not None else None,
        dbt_seconds=_dbt_seconds(result, results),
        dbt_version=_text(run_meta.dbt_version) or _text(manifest_meta.dbt_version),
        adapter=adapter,
        invocation_id=_text(run_meta.invocation_id) or (result.summary.invocation_id if result else None),
        generated_at=_text(run_meta.generated_at),
        project_name=_text(manifest_meta.project_name),
        run_name=Path(result.run_dir).name if result is not None else None,
        project_source=f"{result.project['url']} @ {result.project['version']}" if result and result.project else None,
        selection=_selection(results.args if results is not None else None, redact),
        error=redact(f"{type(result.error).__name__}: {result.error}") if result and result.error else None,
        attempts=result.attempt_records if result is not None else (),
        missing=tuple(missing),
    )


def write_run_report(
    target_path: str | Path,
    *,
    result: DbtTaskResult | None = None,
    log_path: str | Path | None = None,
    redactor: Redactor | None = None,
) -> Path:
    """Build the report (``build_report``'s arguments) and write it as ``run_report.html`` into ``target_path``."""
    from dlh_airflow_common.dbt.run_report_html import render

    target = Path(target_path)
    page = render(build_report(target, result=result, log_path=log_path, redactor=redactor))
    target.mkdir(parents=True, exist_ok=True)
    path = target / RUN_REPORT_FILE
    partial = path.with_name(f".{RUN_REPORT_FILE}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(path)  # a reader (upload, browser) never sees half a page
    return path


# -- reading -------------------------------------------------------------------------------------------
def _view(path: Path, decoder: msgspec.json.Decoder[Any], missing: list[str], shows: str) -> Any:
    """The artifact's partial view, or None with a note in ``missing`` (absent, unreadable or corrupt)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        missing.append(f"{path.name} is missing: {shows} are not shown.")
        return None
    except OSError as err:
        missing.append(f"{path.name} could not be read ({err.strerror or err}): {shows} are not shown.")
        return None
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        missing.append(f"{path.name} is corrupt ({err}): {shows} are not shown.")
        return None


def _results_view(target: Path, missing: list[str]) -> _RunResults | None:
    """run_results.json, else the sources.json ``source freshness`` writes instead."""
    if not (target / RUN_RESULTS).exists() and (target / SOURCES).exists():
        return _view(target / SOURCES, _RESULTS_VIEW, missing, "node results")  # type: ignore[no-any-return]
    shows = "node results (dbt ran no node, or was stopped before writing them)"
    return _view(target / RUN_RESULTS, _RESULTS_VIEW, missing, shows)  # type: ignore[no-any-return]


def _resources(manifest: _Manifest) -> dict[str, _ManifestNode]:
    found: dict[str, _ManifestNode] = {}
    for section in (manifest.nodes, manifest.sources, manifest.unit_tests, manifest.functions):
        found.update(section)
    return found


def _node(result: _NodeResult, resources: dict[str, _ManifestNode], redact: Redactor) -> ReportNode:
    uid, status = str(result.unique_id), str(result.status).lower()
    name, resource_type, file = _identity(uid, resources)
    started, ended = _timed(result.timing or ())
    response = result.adapter_response or {}
    rows = response.get("rows_affected")
    message = result.message or result.error
    shown_sql = status in FAILED_STATUSES or status in WARNED_STATUSES
    sql = result.compiled_code if shown_sql and isinstance(result.compiled_code, str) else None
    return ReportNode(
        unique_id=uid,
        status=status,
        name=name,
        resource_type=resource_type,
        thread=_text(result.thread_id),
        started=started,
        ended=ended,
        seconds=_number(result.execution_time),
        rows=rows if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0 else None,
        failures=_count(result.failures),
        message=redact(str(message)) if message else None,
        adapter_message=redact(str(response["_message"])) if response.get("_message") else None,
        compiled_sql=redact(sql) if sql else None,
        file=file,
    )


def _reported(
    unique_id: str, status: str, seconds: float, message: str | None, failures: int | None,
    resources: dict[str, _ManifestNode], redact: Redactor,
) -> ReportNode:  # fmt: skip
    """A node only the try's summary knows (no timing, thread or SQL), named and located through the manifest."""
    name, resource_type, file = _identity(unique_id, resources)
    return ReportNode(
        unique_id=unique_id, status=status, name=name, resource_type=resource_type, seconds=seconds,
        failures=failures, message=redact(message) if message else None, file=file,
    )  # fmt: skip


def _identity(uid: str, resources: dict[str, _ManifestNode]) -> tuple[str, str, str | None]:
    """Name, resource type and original file path: the manifest's, else what the unique id says."""
    resource = resources.get(uid)
    parts = uid.split(".")
    if resource is None:
        return (parts[2] if len(parts) > 2 else uid), parts[0], None
    name = _text(resource.name) or (parts[2] if len(parts) > 2 else uid)
    return name, _text(resource.resource_type) or parts[0], _text(resource.original_file_path)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _timed(timing: Iterable[_Timing]) -> tuple[float | None, float | None]:
    """The execute step's start and end, else the span of the steps dbt timed."""
    started = ended = None
    for step in timing:
        if step.name == "execute" and step.started_at is not None and step.completed_at is not None:
            started, ended = step.started_at, step.completed_at
            break
        if step.started_at is not None and (started is None or step.started_at < started):
            started = step.started_at
        if step.completed_at is not None and (ended is None or step.completed_at > ended):
            ended = step.completed_at
    if started is None or ended is None:
        return None, None
    start = _epoch(started)
    return start, max(start, _epoch(ended))


def _epoch(moment: datetime) -> float:
    return moment.timestamp() if moment.tzinfo is not None else moment.replace(tzinfo=UTC).timestamp()


def _with_sql_budget(nodes: list[ReportNode]) -> list[ReportNode]:
    """Cap each statement at MAX_SQL_CHARS and drop statements beyond MAX_SQL_TOTAL (failures first)."""
    budget = MAX_SQL_TOTAL
    capped: dict[str, str | None] = {}
    for node in sorted((n for n in nodes if n.compiled_sql), key=lambda n: not n.failed):
        sql = node.compiled_sql or ""
        if len(sql) > MAX_SQL_CHARS:
            sql = f"{sql[:MAX_SQL_CHARS]}\n-- ... {len(sql) - MAX_SQL_CHARS:,} more characters not shown"
        capped[node.unique_id] = sql if len(sql) <= budget else None
        budget -= len(sql) if len(sql) <= budget else 0
    if not capped:
        return nodes
    return [replace(node, compiled_sql=capped[node.unique_id]) if node.unique_id in capped else node for node in nodes]


def _adapter(log_path: Path | None, adapter_type: Any) -> str | None:
    """The adapter dbt registered (``duckdb 1.11.1``), from the head of dbt.log; else the manifest's type."""
    if log_path is not None:
        try:
            with (log_path / DBT_LOG).open("rb") as log:
                head = log.read(_LOG_HEAD_BYTES).decode("utf-8", "replace")
        except OSError:
            head = ""
        found = _ADAPTER_LINE.search(head)
        if found:
            return f"{found.group(1)} {found.group(2)}"
    return _text(adapter_type)


def _dbt_seconds(result: DbtTaskResult | None, results: _RunResults | None) -> float | None:
    """dbt's own elapsed time: of every attempt when the try knows them, else of the artifact."""
    if result is not None and result.summary.elapsed is not None:
        return result.summary.elapsed
    elapsed = results.elapsed_time if results is not None else None
    return float(elapsed) if isinstance(elapsed, int | float) else None


def _selection(args: _Args | None, redact: Redactor) -> dict[str, str]:
    """``--select``, ``--exclude``, ``--selector`` and ``--threads`` as dbt recorded them."""
    if args is None:
        return {}
    found: dict[str, str] = {}
    for name in ("select", "exclude", "selector", "threads"):
        value = getattr(args, name)
        if isinstance(value, list | tuple):
            value = " ".join(str(v) for v in value)
        if value not in (None, "", []):
            found[name] = redact(str(value))
    return found


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
