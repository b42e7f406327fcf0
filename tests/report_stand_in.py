"""A stand-in run report with the DOM the real one has (issue 14's contract), built from ``run_results.json``.

Only for the browser tests, until the report generator writes ``run_report.html`` itself: the tests assert
on the contract (``#summary``/``#counts``, ``#timeline`` lanes per thread, ``#nodes`` with sort and filter,
``#failures`` with message and compiled SQL), so they hold for the real report too.
"""

from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

_SCRIPT = """
const rows = () => [...document.querySelectorAll('#nodes tbody tr')];
document.getElementById('node-filter').addEventListener('input', (e) => {
  const text = e.target.value.toLowerCase();
  for (const row of rows()) row.hidden = !row.dataset.uniqueId.toLowerCase().includes(text);
});
for (const th of document.querySelectorAll('#nodes th[data-sort]')) {
  th.addEventListener('click', () => {
    const key = th.dataset.sort, body = document.querySelector('#nodes tbody');
    const up = th.dataset.dir !== 'asc'; th.dataset.dir = up ? 'asc' : 'desc';
    const value = (row) => key === 'time' ? Number(row.dataset.time) : row.dataset[key];
    rows().sort((a, b) => (value(a) > value(b) ? 1 : -1) * (up ? 1 : -1)).forEach((r) => body.append(r));
  });
}
"""
_STYLE = (
    "body{font:13px system-ui,sans-serif;margin:1rem}.lane{display:flex;gap:2px;margin:2px 0}"
    ".bar{background:#4c9be8;color:#fff;padding:0 4px}.bar[data-status=error]{background:#d64545}"
    "tr.failed{background:#fde2e2}pre{background:#f4f4f4;padding:.5rem}"
)


def render(run_results: dict[str, Any], command: str) -> str:
    """The report page for one run's ``run_results.json``."""
    results = list(run_results.get("results", []))
    counts = Counter(str(r["status"]) for r in results)
    failed = [r for r in results if r["status"] in ("error", "fail")]
    success = "failed" if failed else "success"
    invocation = str(run_results.get("metadata", {}).get("invocation_id", ""))
    lanes: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        lanes.setdefault(str(result.get("thread_id") or "main"), []).append(result)
    count_items = "".join(
        f'<dt>{escape(s)}</dt><dd data-status="{escape(s)}">{n}</dd>' for s, n in sorted(counts.items())
    )
    timeline = "".join(
        f'<div class="lane" data-thread="{escape(thread)}">'
        + "".join(
            f'<div class="bar" data-unique-id="{escape(r["unique_id"])}" data-status="{escape(r["status"])}">'
            f"{escape(r['unique_id'].split('.')[-1])}</div>"
            for r in nodes
        )
        + "</div>"
        for thread, nodes in sorted(lanes.items())
    )
    rows = "".join(
        f'<tr data-unique-id="{escape(r["unique_id"])}" data-status="{escape(r["status"])}" '
        f'data-time="{float(r.get("execution_time") or 0):.3f}"'
        + (' class="failed"' if r in failed else "")
        + f"><td>{escape(r['unique_id'])}</td><td>{escape(r['status'])}</td>"
        f"<td>{float(r.get('execution_time') or 0):.2f}s</td></tr>"
        for r in results
    )
    failures = "".join(
        f'<article class="failure" data-unique-id="{escape(r["unique_id"])}"><h3>{escape(r["unique_id"])}</h3>'
        f'<p class="message">{escape(str(r.get("message") or ""))}</p>'
        f'<pre class="compiled-sql">{escape(str(r.get("compiled_code") or ""))}</pre></article>'
        for r in failed
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>dbt run report</title>'
        f"<style>{_STYLE}</style></head><body>"
        f'<section id="summary"><h1>dbt <span id="command">{escape(command)}</span>: '
        f'<span id="result">{success}</span></h1><p>invocation <code id="invocation-id">{escape(invocation)}</code></p>'
        f'<dl id="counts">{count_items}</dl></section>'
        f'<div id="timeline">{timeline}</div>'
        f'<input id="node-filter" placeholder="filter nodes"><table id="nodes"><thead><tr>'
        f'<th data-sort="uniqueId">node</th><th data-sort="status">status</th><th data-sort="time">time</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
        f'<section id="failures">{failures}</section><script>{_SCRIPT}</script></body></html>'
    )
