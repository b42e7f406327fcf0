"""The run report as one self-contained HTML page: inline CSS and script, no external asset, no network.

The summary, failures, warnings, slowest nodes and attempts are rendered here (HTML-escaped); the timeline and
the node table, ten thousand rows for a big run, are drawn by the page's script from a JSON block
(``<script type="application/json" id="report-data">``) whose ``<``, ``>`` and ``&`` are escaped, so no text
from the artifacts can end the block or start markup.
"""

from __future__ import annotations

import json
from functools import cache
from html import escape
from importlib import resources

from dlh_airflow_common.dbt.result import AttemptRecord
from dlh_airflow_common.dbt.run_report import ReportNode, RunReport

OPEN_SQL_COUNT = 20  # the first failures show their SQL unfolded; the rest one click away
_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                               "\u2029": "\\u2029"})  # fmt: skip


@cache
def _asset(name: str) -> str:
    return resources.files("dlh_airflow_common.dbt").joinpath("report_assets", name).read_text(encoding="utf-8")


def render(report: RunReport) -> str:
    """The whole page."""
    title = f"dbt run report: {report.command} {'succeeded' if report.success else 'failed'}"
    body = "".join((
        _summary(report),
        _timeline(),
        _table(),
        _nodes_section("failures", "Failed nodes", "failure", report.failed, "No node failed."),
        _nodes_section("warnings", "Warnings", "warning", report.warned, "No node warned."),
        _slowest(report),
        _attempts(report.attempts),
    ))  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{_asset('run_report.css')}</style></head><body>{body}"
        f'<script type="application/json" id="report-data">{_data_json(report)}</script>'
        f"<script>{_asset('run_report.js')}</script></body></html>\n"
    )


def _summary(report: RunReport) -> str:
    result = "success" if report.success else "failed"
    facts = [
        ("Command", "command", report.command),
        ("Result", "result", result),
        ("Wall time", "wall-time", _seconds(report.wall_seconds)),
        ("dbt time", "dbt-time", _seconds(report.dbt_seconds)),
        ("Nodes", "node-count", f"{len(report.nodes):,}"),
        ("Rows affected", "rows-affected", f"{report.rows_affected:,}" if report.rows_affected is not None else ""),
        ("dbt version", "dbt-version", report.dbt_version or ""),
        ("Adapter", "adapter", report.adapter or ""),
        ("Invocation id", "invocation-id", report.invocation_id or ""),
        ("Run dir", "run-name", report.run_name or ""),
        ("Project source", "project-source", report.project_source or ""),
        ("Artifacts written", "generated-at", report.generated_at or ""),
        *[(name.capitalize(), f"arg-{name}", value) for name, value in report.selection.items()],
    ]
    dl = "".join(
        f'<dt>{escape(label)}</dt><dd id="{key}"{_class(result) if key == "result" else ""}>{escape(value)}</dd>'
        for label, key, value in facts
        if value or key in ("command", "result", "invocation-id")
    )
    counts = "".join(
        f'<div><dt>{escape(status)}</dt><dd data-status="{escape(status)}">{count}</dd></div>'
        for status, count in report.status_counts.items()
    )
    error = f'<p class="error" id="error">{escape(report.error)}</p>' if report.error else ""
    notes = "".join(f"<li>{escape(note)}</li>" for note in report.missing)
    missing = f'<ul id="missing">{notes}</ul>' if notes else ""
    project = f' <span class="project">{escape(report.project_name)}</span>' if report.project_name else ""
    return (
        f'<section id="summary"><h1>dbt run report{project}</h1><dl class="facts">{dl}</dl>{error}'
        f'{missing}<dl id="counts">{counts}</dl></section>'
    )


def _timeline() -> str:
    return (
        '<section id="timeline-section"><h2>Timeline by thread</h2>'
        "<noscript><p>The timeline and the node table need JavaScript.</p></noscript>"
        '<div id="timeline-axis"></div><div id="timeline"></div></section>'
    )


def _table() -> str:
    heads = (
        '<th data-sort="name">Node</th><th>Type</th><th data-sort="status">Status</th><th>Thread</th>'
        '<th class="num">Start (s)</th><th class="num" data-sort="duration">Duration (s)</th>'
        '<th class="num" data-sort="rows">Rows</th><th class="num">Failures</th>'
    )
    return (
        '<section id="nodes-section"><h2>Nodes</h2><div class="table-tools">'
        '<input id="node-filter" type="search" placeholder="Filter by unique id or name" autocomplete="off">'
        '<span id="node-count-shown" class="muted"></span></div><div class="table-wrap">'
        f'<table id="nodes"><thead><tr>{heads}</tr></thead><tbody></tbody></table>'
        "</div></section>"
    )


def _nodes_section(section: str, title: str, kind: str, nodes: list[ReportNode], none: str) -> str:
    articles = "".join(_article(kind, node, index < OPEN_SQL_COUNT) for index, node in enumerate(nodes))
    return f'<section id="{section}"><h2>{title} ({len(nodes):,})</h2>{articles or _none(none)}</section>'


def _article(kind: str, node: ReportNode, open_sql: bool) -> str:
    failures = ""
    if node.failures is not None and node.resource_type in ("test", "unit_test"):
        failures = f'<p class="failures">{node.failures:,} failing row{"s" if node.failures != 1 else ""}</p>'
    if node.compiled_sql:
        sql = f'<pre class="compiled-sql">{escape(node.compiled_sql)}</pre>'
    else:
        sql = '<pre class="compiled-sql empty">-- no compiled SQL: dbt did not compile this node, or the page\'s '
        sql += "limit for SQL was reached</pre>"
    return (
        f'<article class="{kind}" data-unique-id="{escape(node.unique_id)}">'
        f'<h3><span class="status" data-status="{escape(node.status)}">{escape(node.status)}</span> '
        f'{escape(node.name)} <code class="uid">{escape(node.unique_id)}</code></h3>'
        f'<p class="file">{escape(node.file or "file unknown (no manifest.json)")}</p>{failures}'
        f'<pre class="message">{escape(node.message or node.adapter_message or "(no message)")}</pre>'
        f"<details{' open' if open_sql else ''}><summary>Compiled SQL</summary>{sql}</details></article>"
    )


def _slowest(report: RunReport) -> str:
    rows = "".join(
        f'<tr data-unique-id="{escape(n.unique_id)}"><td class="num">{rank}</td><td>{escape(n.name)} '
        f'<code class="uid">{escape(n.unique_id)}</code></td><td><span class="status" data-status="{escape(n.status)}">'
        f'{escape(n.status)}</span></td><td>{escape(n.thread or "")}</td><td class="num">{n.seconds:.2f}</td></tr>'
        for rank, n in enumerate(report.slowest(), 1)
    )
    table = (
        '<table><thead><tr><th class="num">#</th><th>Node</th><th>Status</th><th>Thread</th>'
        f'<th class="num">Duration (s)</th></tr></thead><tbody>{rows}</tbody></table>'
    )
    return f'<section id="slowest"><h2>Slowest nodes</h2>{table if rows else _none("No node ran.")}</section>'


def _attempts(attempts: tuple[AttemptRecord, ...]) -> str:
    rows = "".join(
        f'<tr data-attempt="{a.number}"><td class="num">{a.number}</td><td>dbt {escape(a.command)}</td>'
        f"<td{_class('success' if a.success else 'failed')}>{'success' if a.success else 'failed'}"
        f' (exit {a.return_code})</td><td class="num">{a.seconds:.1f}</td>'
        f"<td>{escape(', '.join(f'{k} {v}' for k, v in a.status_counts.items()))}</td>"
        f'<td class="error">{escape(a.error or "")}</td></tr>'
        for a in attempts
    )
    table = (
        '<table><thead><tr><th class="num">#</th><th>Command</th><th>Result</th><th class="num">Wall (s)</th>'
        f"<th>Nodes</th><th>Error</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return (
        f'<section id="attempts"><h2>Attempts in this try ({len(attempts)})</h2>'
        f"{table if rows else _none('Not known: the report was built from the artifacts alone.')}</section>"
    )


def _data_json(report: RunReport) -> str:
    """The timeline's and table's data, compact: one array per node, statuses, types and threads by index."""
    statuses = sorted({node.status for node in report.nodes})
    types = sorted({node.resource_type for node in report.nodes})
    threads = report.threads
    status_at = {s: i for i, s in enumerate(statuses)}
    type_at = {t: i for i, t in enumerate(types)}
    thread_at = {t: i for i, t in enumerate(threads)}
    starts = [node.started for node in report.nodes if node.started is not None]
    ends = [node.ended for node in report.nodes if node.ended is not None]
    first = min(starts) if starts else 0.0
    span = (max(ends) - first) if starts and ends else 0.0

    def ms(seconds: float) -> int:
        return round(seconds * 1000)

    rows = []
    for node in report.nodes:
        parts = node.unique_id.split(".")
        start, end = node.started, node.ended
        rows.append([
            node.unique_id,
            None if len(parts) > 2 and parts[2] == node.name else node.name,
            status_at[node.status],
            type_at[node.resource_type],
            thread_at[node.thread] if node.thread is not None else -1,
            ms(start - first) if start is not None and end is not None else -1,
            ms(end - start) if start is not None and end is not None else 0,
            ms(node.seconds),
            node.rows,
            node.failures,
        ])  # fmt: skip
    data = {"statuses": statuses, "types": types, "threads": threads, "span_ms": ms(span), "nodes": rows}
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).translate(_JSON_ESCAPES)


def _seconds(value: float | None) -> str:
    return f"{value:,.2f} s" if value is not None else ""


def _class(result: str) -> str:
    return f' class="{result}"'


def _none(text: str) -> str:
    return f'<p class="none">{escape(text)}</p>'
