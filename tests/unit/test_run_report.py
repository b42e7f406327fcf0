"""Unit tests for dlh_airflow_common.dbt.run_report (and its page, run_report_html) from small synthetic artifacts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt import run_report
from dlh_airflow_common.dbt.artifacts import RunSummary, summarize_run
from dlh_airflow_common.dbt.redact import MASK, Redactor
from dlh_airflow_common.dbt.result import AttemptRecord, DbtTaskResult
from dlh_airflow_common.dbt.run_report import RUN_REPORT_FILE, build_report, write_run_report
from dlh_airflow_common.dbt.run_report_html import render
from dlh_airflow_common.exceptions.dbt import DbtRuntimeException

SECRET = "pw-Very-Secret-77"
HOSTILE_SQL = "select '</script><script>alert(1)</script>' as x, '<b>bold</b>' as y from t"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"


def _timing(start: float, seconds: float) -> list[dict[str, str]]:
    def at(offset: float) -> str:
        return f"2026-12-01T03:00:{offset:09.6f}Z"

    return [
        {"name": "compile", "started_at": at(start), "completed_at": at(start + 0.01)},
        {"name": "execute", "started_at": at(start + 0.01), "completed_at": at(start + seconds)},
    ]


def _result(uid: str, status: str, thread: int, start: float, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "unique_id": uid, "status": status, "thread_id": f"Thread-{thread} (worker)", "execution_time": seconds,
        "timing": _timing(start, seconds) if status != "skipped" else [], "adapter_response": {},
        "message": None, "failures": None, "compiled_code": None, **extra,
    }  # fmt: skip


RESULTS = [
    _result("model.shop.ok", "success", 1, 0.0, 1.5, adapter_response={"_message": "SELECT 10", "rows_affected": 10},
            compiled_code="select 1"),
    _result("model.shop.bad", "error", 2, 0.0, 0.5, compiled_code=HOSTILE_SQL,
            message=f"Database Error in model bad (models/bad.sql)\n  password {SECRET} rejected </script>"),
    _result("test.shop.not_null_ok_id.abc123", "fail", 10, 1.6, 0.2, failures=3, compiled_code="select id where null",
            message="Got 3 results, configured to fail if != 0"),
    _result("test.shop.unique_ok_id.def456", "warn", 1, 1.6, 0.1, failures=1, compiled_code="select id having 1",
            message="Got 1 result, configured to warn if != 0"),
    _result("model.shop.weird", "success", 2, 0.6, 0.3, adapter_response={"rows_affected": 5}),
    _result("model.shop.downstream", "skipped", 1, 0.0, 0.0),
]  # fmt: skip
MANIFEST = {
    "metadata": {"dbt_version": "1.11.16", "project_name": "shop", "adapter_type": "duckdb"},
    "nodes": {
        "model.shop.ok": {"name": "ok", "resource_type": "model", "original_file_path": "models/ok.sql"},
        "model.shop.bad": {"name": "bad", "resource_type": "model", "original_file_path": "models/bad.sql"},
        "model.shop.weird": {"name": HOSTILE_NAME, "resource_type": "model", "original_file_path": "models/w.sql"},
        "test.shop.not_null_ok_id.abc123": {"name": "not_null_ok_id", "resource_type": "test",
                                            "original_file_path": "models/schema.yml"},
        "test.shop.unique_ok_id.def456": {"name": "unique_ok_id", "resource_type": "test",
                                          "original_file_path": "models/schema.yml"},
    },
    "sources": {}, "macros": {"macro.x": {"a": 1}},
}  # fmt: skip


def _target(tmp_path: Path, results: list[dict[str, Any]] | None = RESULTS, manifest: Any = MANIFEST) -> Path:
    target = tmp_path / "target"
    target.mkdir(parents=True, exist_ok=True)
    if results is not None:
        metadata = {"dbt_version": "1.11.16", "invocation_id": "inv-42", "generated_at": "2026-12-01T03:00:05Z"}
        args = {"select": ["tag:daily"], "threads": 4}
        run_results = {"metadata": metadata, "elapsed_time": 2.25, "results": results, "args": args}
        (target / "run_results.json").write_text(json.dumps(run_results), encoding="utf-8")
    if manifest is not None:
        (target / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return target


# -- a small DOM of the rendered page ------------------------------------------------------------------
@dataclass
class El:
    tag: str
    attrs: dict[str, str]
    children: list[El] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def all(self, tag: str | None = None, **attrs: str) -> list[El]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(_has(child, k, v) for k, v in attrs.items()):
                found.append(child)
            found += child.all(tag, **attrs)
        return found

    def one(self, tag: str | None = None, **attrs: str) -> El:
        (found,) = self.all(tag, **attrs)
        return found

    @property
    def content(self) -> str:
        return "".join(self.text) + "".join(child.content for child in self.children)


def _has(el: El, key: str, value: str) -> bool:
    key = key.rstrip("_").replace("_", "-")
    if key == "class":
        return value in el.attrs.get("class", "").split()
    return el.attrs.get(key) == value


class _Parser(HTMLParser):
    VOID = frozenset({"meta", "input", "br", "col", "img", "link"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = El("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = El(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(el)
        if tag not in self.VOID:
            self.stack.append(el)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>: the page is not well nested"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def _dom(page: str) -> El:
    parser = _Parser()
    parser.feed(page)
    parser.close()
    assert parser.stack == [parser.root], "every element is closed"
    return parser.root


def _data(dom: El) -> dict[str, Any]:
    return json.loads(dom.one("script", id="report-data").content)  # type: ignore[no-any-return]


# -- tests ---------------------------------------------------------------------------------------------
def test_summary_counts_one_dd_per_status_present(tmp_path: Path) -> None:
    dom = _dom(render(build_report(_target(tmp_path))))
    counts = dom.one("dl", id="counts")
    assert {dd.attrs["data-status"]: int(dd.content) for dd in counts.all("dd")} == {
        "error": 1, "fail": 1, "skipped": 1, "success": 2, "warn": 1,
    }  # fmt: skip
    summary = dom.one("section", id="summary")
    assert summary.one(id="result").content == "failed"
    assert summary.one(id="invocation-id").content == "inv-42"
    assert summary.one(id="command").content == "dbt"
    assert summary.one(id="dbt-version").content == "1.11.16"
    assert summary.one(id="rows-affected").content == "15", "rows_affected from adapter_response, summed"
    assert summary.one(id="arg-select").content == "tag:daily"


def test_strings_from_the_artifacts_cannot_break_out(tmp_path: Path) -> None:
    page = render(build_report(_target(tmp_path)))
    assert page.count("</script>") == 2, "only the data block and the script end a script element"
    assert "<script>alert(1)" not in page and HOSTILE_NAME not in page and "<b>bold" not in page
    dom = _dom(page)
    assert [s.attrs.get("type") for s in dom.all("script")] == ["application/json", None]
    data = _data(dom)
    assert [row[1] for row in data["nodes"] if row[0] == "model.shop.weird"] == [HOSTILE_NAME], "names reach JS intact"
    sql = dom.one("article", data_unique_id="model.shop.bad").one("pre", class_="compiled-sql").content
    assert sql == HOSTILE_SQL, "the statement is shown as written, escaped"


def test_failures_and_warnings_have_message_sql_and_file(tmp_path: Path) -> None:
    dom = _dom(render(build_report(_target(tmp_path))))
    failures = dom.one("section", id="failures").all("article", class_="failure")
    assert [a.attrs["data-unique-id"] for a in failures] == ["model.shop.bad", "test.shop.not_null_ok_id.abc123"]
    bad, test = failures
    assert "Database Error in model bad" in bad.one(class_="message").content
    assert bad.one(class_="file").content == "models/bad.sql"
    assert test.one("pre", class_="compiled-sql").content == "select id where null"
    assert test.one(class_="failures").content == "3 failing rows"
    (warning,) = dom.one("section", id="warnings").all("article")
    assert warning.attrs["data-unique-id"] == "test.shop.unique_ok_id.def456"
    assert warning.one(class_="message").content.startswith("Got 1 result")
    assert warning.one(class_="file").content == "models/schema.yml"
    assert dom.all("section", id="slowest") and dom.all("section", id="attempts")


def test_threads_become_lanes_in_natural_order(tmp_path: Path) -> None:
    report = build_report(_target(tmp_path))
    assert report.threads == ["Thread-1 (worker)", "Thread-2 (worker)", "Thread-10 (worker)"]
    data = _data(_dom(render(report)))
    assert data["threads"] == report.threads
    rows = {row[0]: row for row in data["nodes"]}
    assert len(rows) == 6
    lane = {uid: data["threads"][row[4]] for uid, row in rows.items()}
    assert lane["test.shop.not_null_ok_id.abc123"] == "Thread-10 (worker)"
    start, bar, duration = rows["model.shop.weird"][5:8]
    assert (start, bar, duration) == (600, 290, 300), "bar from the execute step, duration from execution_time"
    assert rows["model.shop.downstream"][5] == -1, "a skipped node has no time on the timeline"
    assert data["statuses"][rows["model.shop.bad"][2]] == "error"
    assert data["span_ms"] == 1790, "from the first execute step to the last"


def test_the_redactor_masks_messages_and_sql(tmp_path: Path) -> None:
    results = [dict(RESULTS[1], compiled_code=f"select '{SECRET}'")]
    page = render(build_report(_target(tmp_path, results), redactor=Redactor([SECRET])))
    assert SECRET not in page
    article = _dom(page).one("article", data_unique_id="model.shop.bad")
    assert MASK in article.one(class_="message").content
    assert article.one("pre", class_="compiled-sql").content == f"select '{MASK}'"


def test_a_missing_manifest_still_gives_a_page_that_says_so(tmp_path: Path) -> None:
    report = build_report(_target(tmp_path, manifest=None))
    assert [n.name for n in report.nodes][:2] == ["ok", "bad"], "names from the unique ids"
    dom = _dom(render(report))
    assert "manifest.json is missing" in dom.one("ul", id="missing").content
    assert "file unknown" in dom.one("article", data_unique_id="model.shop.bad").one(class_="file").content


def test_missing_run_results_give_a_page_that_says_what_is_missing(tmp_path: Path) -> None:
    dom = _dom(render(build_report(_target(tmp_path, results=None))))
    assert "run_results.json is missing" in dom.one("ul", id="missing").content
    assert dom.one(id="result").content == "failed", "without results nothing shows the run succeeded"
    assert dom.one("dl", id="counts").all("dd") == []
    assert _data(dom)["nodes"] == [] and dom.one("section", id="failures").all("article") == []


def test_a_corrupt_artifact_is_named_not_raised(tmp_path: Path) -> None:
    target = _target(tmp_path)
    (target / "manifest.json").write_text("{not json")
    report = build_report(target)
    assert len(report.nodes) == 6 and "manifest.json is corrupt" in report.missing[0]


def test_source_freshness_reports_from_sources_json(tmp_path: Path) -> None:
    target = _target(tmp_path, results=None, manifest=None)
    sources = {"metadata": {"invocation_id": "fresh"}, "elapsed_time": 1.0,
               "results": [{"unique_id": "source.shop.raw.orders", "status": "warn", "error": "stale",
                            "thread_id": "Thread-1", "timing": [], "execution_time": 0.2}]}  # fmt: skip
    (target / "sources.json").write_text(json.dumps(sources))
    report = build_report(target)
    assert [(n.unique_id, n.status, n.message) for n in report.nodes] == [("source.shop.raw.orders", "warn", "stale")]
    assert report.invocation_id == "fresh"
    assert [note.split(" ")[0] for note in report.missing] == ["manifest.json"], "sources.json stands in for results"


def test_the_try_adds_command_outcome_attempts_and_nodes_it_reported(tmp_path: Path) -> None:
    target = _target(tmp_path)
    summary, copy = summarize_run(target)
    extra = RunSummary(nodes=(*summary.nodes, *RunSummary.from_artifacts({"results": [
        {"unique_id": "model.shop.earlier", "status": "success", "execution_time": 2.0}]}).nodes))  # fmt: skip
    error = DbtRuntimeException("dbt build failed in model.shop.bad")
    result = DbtTaskResult(success=False, command="build", return_code=1, summary=extra, target_path=str(target),
                           run_dir=str(tmp_path / "run_x_try1"), elapsed_seconds=7.5, error=error, attempts=2,
                           run_results_copy=copy)  # fmt: skip
    result.attempt_history = (
        AttemptRecord(1, "build", False, 1, 4.0, {"error": 2}, "DbtConnectionException: timeout"),
        AttemptRecord(2, "retry", False, 1, 3.5, {"error": 1}, "DbtRuntimeException: failed"),
    )
    report = build_report(target, result=result)
    assert "model.shop.earlier" in {n.unique_id for n in report.nodes}, "a node an earlier attempt ran"
    dom = _dom(render(report))
    assert dom.one(id="command").content == "dbt build" and dom.one(id="wall-time").content == "7.50 s"
    assert dom.one(id="run-name").content == "run_x_try1"
    assert "DbtRuntimeException: dbt build failed" in dom.one(id="error").content
    attempts = dom.one("section", id="attempts").all("tr", data_attempt="2")
    assert "dbt retry" in attempts[0].content and "DbtRuntimeException: failed" in attempts[0].content
    succeeded = DbtTaskResult(success=True, command="run", return_code=0, summary=summary, target_path=str(target),
                              run_dir="r", elapsed_seconds=1.0)  # fmt: skip
    assert _dom(render(build_report(target, result=succeeded))).one(id="result").content == "success"
    assert not _dom(render(build_report(target, result=succeeded))).all(id="project-source"), "a local project"
    succeeded.project = {"url": "git+https://h/shop.git@main", "kind": "git", "version": "ab12"}
    shown = _dom(render(build_report(target, result=succeeded))).one(id="project-source").content
    assert shown == "git+https://h/shop.git@main @ ab12"
    assert [a.number for a in succeeded.attempt_records] == [1], "one attempt when the try had no retries"


def test_sql_is_capped_per_node_and_in_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_report, "MAX_SQL_CHARS", 50)
    monkeypatch.setattr(run_report, "MAX_SQL_TOTAL", 120)
    results = [_result(f"model.shop.m{i}", "error", 1, i, 0.5, compiled_code=f"select {i}, " + "x" * 200)
               for i in range(4)]  # fmt: skip
    report = build_report(_target(tmp_path, results))
    shown = [n.compiled_sql for n in report.nodes]
    assert shown[0] is not None and shown[0].startswith("select 0, xxx") and "more characters not shown" in shown[0]
    assert shown[2:] == [None, None], "beyond the page's budget a statement is left out"
    assert "did not compile this node, or" in render(report)


def test_adapter_version_comes_from_dbt_log(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "dbt.log").write_text("04:27:48 [info ] [MainThread]: Registered adapter: duckdb=1.11.1\n")
    assert build_report(_target(tmp_path), log_path=logs).adapter == "duckdb 1.11.1"
    assert build_report(_target(tmp_path), log_path=tmp_path / "none").adapter == "duckdb", "else the manifest's"


def test_write_run_report_writes_the_named_file(tmp_path: Path) -> None:
    target = _target(tmp_path)
    path = write_run_report(target, redactor=Redactor([SECRET]))
    assert path == target / RUN_REPORT_FILE == target / "run_report.html"
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == [], "no partial file left"
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and SECRET not in page
    for external in ("http://", "https://", ' src="', "<link", "<img", "@import", "url("):
        assert external not in page, f"no external asset, no network: {external}"
