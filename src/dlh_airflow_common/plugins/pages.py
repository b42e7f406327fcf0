"""The plugin's own small HTML pages: why a report or docs site is not there, and the docs chooser.

Every value is escaped; a page names the task try and the configuration option involved, never a secret or
a path the user did not configure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode

_STYLE = (
    "body{font:14px/1.5 system-ui,sans-serif;margin:2rem;color:#1f2933}"
    "h1{font-size:1.2rem}code{background:#f0f2f5;padding:0 .25rem}li{margin:.25rem 0}"
)


@dataclass(frozen=True)
class PublishedDocs:
    """One task that published a dbt docs site: which DAG and task, and when."""

    dag_id: str
    task_id: str
    when: str


def page(title: str, *paragraphs: str) -> str:
    """A whole HTML page; ``paragraphs`` are already-escaped HTML fragments."""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<style>{_STYLE}</style></head><body><h1 id="title">{escape(title)}</h1>'
        f'<div id="message">{body}</div></body></html>'
    )


def describe_try(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    mapped = f", map index {map_index}" if map_index >= 0 else ""
    task = f"<code>{escape(dag_id)}.{escape(task_id)}</code>"
    return f"{task} in run <code>{escape(run_id)}</code>{mapped}, try {try_number}"


def report_missing(what: str, state: str | None, reason: str, hint: str) -> str:
    """No report for a try: what was looked for, the try's state, why, and what to configure."""
    shown_state = f"The try is <code>{escape(state)}</code>." if state else ""
    return page("No dbt run report", f"No run report for {what}. {shown_state}", escape(reason), hint)


def docs_missing(hint: str) -> str:
    return page("No dbt docs", "No dbt docs site has been published yet.", hint)


def docs_chooser(published: Sequence[PublishedDocs]) -> str:
    """Several projects published docs: one link per DAG task, newest first."""
    items = "".join(
        f'<li><a href="?{escape(urlencode({"dag_id": p.dag_id, "task_id": p.task_id}))}">'
        f"<code>{escape(p.dag_id)}.{escape(p.task_id)}</code></a> (published {escape(p.when)})</li>"
        for p in published
    )
    return page("dbt Docs", f'Published dbt docs sites:</p><ul id="projects">{items}</ul><p>')
