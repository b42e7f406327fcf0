"""Unit tests for dlh_airflow_common.dbt.report: plain text, live progress lines, end-of-run summary."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dlh_airflow_common.dbt import report
from dlh_airflow_common.dbt.artifacts import NodeOutcome, RunSummary
from dlh_airflow_common.dbt.redact import MASK, Redactor
from dlh_airflow_common.dbt.report import ProgressReporter, format_summary, node_progress, plain, replay_progress

LOGGER = "tests.unit.dbt_progress"


def event(name: str, level: str, msg: str = "", /, **data: Any) -> dict[str, Any]:
    """An event in the shape dbt writes with ``--log-format json``."""
    return {
        "info": {
            "name": name,
            "code": "Q000",
            "msg": msg,
            "level": level,
            "invocation_id": "4c1f0f2e-1d3b-4a57-9d0e-8f3f2d1c0b9a",
            "pid": 1234,
            "thread": "Thread-1",
            "ts": "2024-03-09T07:05:03.123456Z",
            "extra": {},
            "category": "",
        },
        "data": data,
    }


def node_info(unique_id: str) -> dict[str, Any]:
    return {"node_name": unique_id.rsplit(".", 1)[-1], "unique_id": unique_id, "node_status": "", "node_path": ""}


def model_result(index: int, total: int, status: str, unique_id: str, seconds: float, level: str = "info") -> dict:
    return event(
        "LogModelResult",
        level,
        f"{index} of {total} \x1b[32m{status.upper()}\x1b[0m created sql table model {unique_id} ....... [{status}]",
        node_info=node_info(unique_id),
        description=f"sql table model {unique_id}",
        status=status,
        index=index,
        total=total,
        execution_time=seconds,
    )


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return logging.getLogger(LOGGER)


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(rec.levelno, rec.getMessage()) for rec in caplog.records if rec.name == LOGGER]


# ---------------------------------------------------------------------------------------------------------
# plain
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x1b[32mOK\x1b[0m", "OK"),
        ("[\x1b[31mERROR\x1b[0m in 0.10s]", "[ERROR in 0.10s]"),
        ("\x1b[1;33mWARN\x1b[0m", "WARN"),
        ("\x1b[?25lhidden cursor", "hidden cursor"),
        ("plain ascii", "plain ascii"),
    ],
)
def test_plain_strips_ansi(text: str, expected: str) -> None:
    assert plain(text) == expected
    assert plain(text, ascii_only=False) == expected


@pytest.mark.parametrize("text", ["Done ✓ → next", "naïve café", "ダッシュボード", "emoji 🎉 done"])
def test_plain_output_is_ascii(text: str) -> None:
    out = plain(f"\x1b[32m{text}\x1b[0m")
    assert out.isascii()
    assert "\x1b" not in out


def test_plain_keeps_unicode_when_asked() -> None:
    assert plain("\x1b[32mcafé ✓\x1b[0m", ascii_only=False) == "café ✓"


def test_plain_replaces_unfoldable_characters() -> None:
    assert plain("a ✓ b") == "a ? b"


def test_plain_folds_compatibility_characters() -> None:
    assert plain("ﬁle ①") == "file 1"


def test_plain_folds_accents_without_question_marks() -> None:
    assert plain("café résumé") == "cafe resume"


# ---------------------------------------------------------------------------------------------------------
# node_progress
# ---------------------------------------------------------------------------------------------------------


def test_node_progress_model_result() -> None:
    assert node_progress(model_result(3, 25, "success", "model.x.y", 1.2)) == (3, 25, "OK", "model.x.y", 1.2)


def test_node_progress_non_result_event() -> None:
    assert node_progress(event("MainReportVersion", "info", "Running with dbt=1.11.0", version="1.11.0")) is None
    assert node_progress(event("LogModelResult", "info", "no index", status="success")) is None


# ---------------------------------------------------------------------------------------------------------
# ProgressReporter
# ---------------------------------------------------------------------------------------------------------


def test_model_result_line(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(log)
    reporter(model_result(3, 25, "success", "model.x.y", 1.2))
    assert records(caplog) == [(logging.INFO, "[3/25] OK model.x.y ... 1.20s")]
    assert reporter.nodes_done == 1
    assert reporter.nodes_total == 25


@pytest.mark.parametrize(
    ("status", "word"),
    [("success", "OK"), ("pass", "PASS"), ("fail", "FAIL"), ("warn", "WARN"), ("skipped", "SKIP"), ("odd", "ODD")],
)
def test_status_words(status: str, word: str, log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    ProgressReporter(log)(model_result(1, 2, status, "model.p.a", 0.5))
    assert records(caplog) == [(logging.INFO, f"[1/2] {word} model.p.a ... 0.50s")]


def test_error_result_logged_at_error_level(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    ProgressReporter(log)(model_result(2, 5, "error", "model.p.broken", 0.08, level="error"))
    assert records(caplog) == [(logging.ERROR, "[2/5] ERROR model.p.broken ... 0.08s")]


def test_test_result_uses_num_models(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    test_event = event(
        "LogTestResult",
        "error",
        "1 of 3 FAIL 2 not_null_orders_id ........ [\x1b[31mFAIL 2\x1b[0m in 0.03s]",
        node_info=node_info("test.shop.not_null_orders_id"),
        name="not_null_orders_id",
        status="fail",
        index=1,
        num_models=3,
        execution_time=0.03,
        num_failures=2,
        attached_node="",
    )
    reporter = ProgressReporter(log)
    reporter(test_event)
    assert records(caplog) == [(logging.ERROR, "[1/3] FAIL test.shop.not_null_orders_id ... 0.03s")]
    assert reporter.nodes_total == 3


def test_warn_level_result(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    warn_event = event(
        "LogTestResult",
        "warn",
        "2 of 3 WARN 1 accepted_values",
        node_info=node_info("test.shop.accepted_values"),
        status="warn",
        index=2,
        num_models=3,
        execution_time=0.07,
    )
    ProgressReporter(log)(warn_event)
    assert records(caplog) == [(logging.WARNING, "[2/3] WARN test.shop.accepted_values ... 0.07s")]


def test_skipping_details_is_skip(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    skip_event = event(
        "SkippingDetails",
        "info",
        "4 of 25 SKIP relation main.orders ....... [\x1b[33mSKIP\x1b[0m]",
        node_info=node_info("model.shop.orders"),
        resource_type="model",
        schema="main",
        node_name="orders",
        index=4,
        total=25,
    )
    ProgressReporter(log)(skip_event)
    assert records(caplog) == [(logging.INFO, "[4/25] SKIP model.shop.orders ...")]


def test_freshness_result_falls_back_to_node_name(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    fresh = event("LogFreshnessResult", "info", "", status="pass", index=1, total=2, node_name="raw.orders")
    ProgressReporter(log)(fresh)
    assert records(caplog) == [(logging.INFO, "[1/2] PASS raw.orders ...")]


def test_progress_counts_over_several_events(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(log)
    for i in range(1, 4):
        reporter(model_result(i, 3, "success", f"model.p.m{i}", 0.1 * i))
    assert reporter.nodes_done == 3
    assert reporter.nodes_total == 3
    assert [msg for _, msg in records(caplog)] == [
        "[1/3] OK model.p.m1 ... 0.10s",
        "[2/3] OK model.p.m2 ... 0.20s",
        "[3/3] OK model.p.m3 ... 0.30s",
    ]


def test_reporter_keeps_each_reported_node_for_the_summary(log: logging.Logger) -> None:
    reporter = ProgressReporter(log)
    postgres = model_result(2, 3, "SELECT 1", "model.p.b", 0.5)  # the adapter's response; node_status is dbt's
    postgres["data"]["node_info"]["node_status"] = "success"
    skipped = event("SkippingDetails", "info", "", node_info=node_info("model.p.c"), index=3, total=3)
    for one in (model_result(1, 3, "error", "model.p.a", 0.25, level="error"), postgres, skipped):
        reporter(one)
    reporter(model_result(1, 3, "success", "model.p.a", 0.75))  # a node reported twice: its latest result

    assert reporter.reported_nodes == (
        NodeOutcome("model.p.a", "success", 0.75),
        NodeOutcome("model.p.b", "success", 0.5),
        NodeOutcome("model.p.c", "skipped", 0.0),
    )


def test_reported_nodes_are_bounded_but_all_are_counted(log: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "MAX_REPORTED_NODES", 2)
    reporter = ProgressReporter(log)
    for i in range(1, 4):
        reporter(model_result(i, 3, "success", f"model.p.m{i}", 0.1))
    assert reporter.nodes_done == 3
    assert [node.unique_id for node in reporter.reported_nodes] == ["model.p.m1", "model.p.m2"]
    logging_only = ProgressReporter(log, max_nodes=0)
    logging_only(model_result(1, 1, "success", "model.p.m1", 0.1))
    assert logging_only.nodes_done == 1 and logging_only.reported_nodes == ()


def test_replay_keeps_the_reported_nodes_of_a_detached_run(
    tmp_path: Any, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    events = tmp_path / "events.jsonl"
    lines = [event("MainReportVersion", "info", "Running with dbt"), model_result(1, 1, "error", "model.p.slow", 4.9)]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json Result\n", encoding="utf-8")
    reporter = replay_progress(events, log)
    assert reporter.reported_nodes == (NodeOutcome("model.p.slow", "error", 4.9),)
    assert records(caplog) == [], "a replay logs nothing"


@pytest.mark.parametrize("level", ["debug", "trace", "", None])
def test_debug_events_ignored(level: str | None, log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(log)
    reporter(event("SQLQuery", level, "select 1 as secret_sql", conn_name="master", sql="select 1"))  # type: ignore[arg-type]
    reporter(model_result(1, 1, "success", "model.p.a", 0.1, level=level))  # type: ignore[arg-type]
    assert records(caplog) == []
    assert reporter.nodes_done == 0


@pytest.mark.parametrize("name", ["LogStartLine", "Formatting", "NodeStart", "NodeFinished"])
def test_quiet_events_ignored(name: str, log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    ProgressReporter(log)(event(name, "info", "1 of 5 START sql table model main.orders ........ [RUN]"))
    assert records(caplog) == []


def test_info_event_message_logged(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(log)
    reporter(event("MainReportVersion", "info", "Running with dbt=1.11.0\n", version="=1.11.0"))
    reporter(event("FoundStats", "info", "Found 5 models, 3 tests", stat_line="5 models"))
    reporter(event("RunResultError", "error", "  \x1b[31mDatabase Error in model orders\x1b[0m"))
    reporter(event("EmptyLine", "info", ""))
    reporter(event("Whitespace", "info", "   \n"))
    assert records(caplog) == [
        (logging.INFO, "Running with dbt=1.11.0"),
        (logging.INFO, "Found 5 models, 3 tests"),
        (logging.ERROR, "  Database Error in model orders"),
    ]


def test_messages_are_redacted(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(log, redactor=Redactor(["s3cr3t-pw"]))
    reporter(event("MainEncounteredError", "error", 'FATAL: password "s3cr3t-pw" rejected; s3cr3t-pw', exc="x"))
    reporter.line("stray print with s3cr3t-pw in it")
    messages = [msg for _, msg in records(caplog)]
    assert messages == [f'FATAL: password "{MASK}" rejected; {MASK}', f"stray print with {MASK} in it"]
    assert all("s3cr3t-pw" not in m for m in messages)


def test_ascii_only_switch(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    ProgressReporter(log)(event("X", "info", "Done ✓"))
    ProgressReporter(log, ascii_only=False)(event("X", "info", "Done ✓"))
    assert [msg for _, msg in records(caplog)] == ["Done ?", "Done ✓"]


def test_line_logs_non_json_output(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(log)
    reporter.line("\x1b[33mwarning from a package\x1b[0m  \n")
    reporter.line("   ")
    assert records(caplog) == [(logging.INFO, "warning from a package")]


# ---------------------------------------------------------------------------------------------------------
# format_summary
# ---------------------------------------------------------------------------------------------------------


def results_doc() -> dict[str, Any]:
    def r(uid: str, status: str, seconds: float, message: str | None = None) -> dict[str, Any]:
        return {"unique_id": uid, "status": status, "execution_time": seconds, "message": message}

    return {
        "metadata": {"invocation_id": "inv-1"},
        "elapsed_time": 12.3456,
        "results": [
            r("model.p.a", "success", 1.0, "SELECT 1"),
            r("model.p.b", "success", 6.0),
            r("model.p.c", "error", 2.0, "Database Error in model c\n   permission   denied \x1b[31mfor\x1b[0m schema"),
            r("test.p.d", "fail", 0.5, "Got 3 results"),
            r("test.p.e", "warn", 3.0, "Got 1 result"),
            r("model.p.f", "success", 4.0),
            r("model.p.g", "success", 5.0),
            r("model.p.h", "skipped", 0.0),
            r("model.p.i", "success", 0.2),
        ],
    }


def test_format_summary_block() -> None:
    summary = RunSummary.from_artifacts(results_doc())
    lines = format_summary(summary, command="build", run_name="run_x", success=False)
    assert lines == [
        "=== dbt run summary: dbt build (run_x) ===",
        "result: FAILED",
        "nodes: 9",
        "elapsed: 12.35s",
        "status counts: error=1, fail=1, skipped=1, success=5, warn=1",
        "failed nodes: 2",
        "  - model.p.c [error]: Database Error in model c permission denied for schema",
        "  - test.p.d [fail]: Got 3 results",
        "warned nodes: 1",
        "  - test.p.e [warn]: Got 1 result",
        "slowest nodes:",
        "  1. model.p.b 6.00s",
        "  2. model.p.g 5.00s",
        "  3. model.p.f 4.00s",
        "  4. test.p.e 3.00s",
        "  5. model.p.c 2.00s",
        "=== end of dbt run summary ===",
    ]


def test_format_summary_success_without_nodes_uses_wall_time() -> None:
    lines = format_summary(RunSummary(), command="deps", run_name="r", success=True, wall_seconds=2.5)
    assert lines[0] == "=== dbt run summary: dbt deps (r) ==="
    assert lines[-1] == "=== end of dbt run summary ==="
    assert "result: success" in lines
    assert "nodes: 0" in lines
    assert "elapsed: 2.50s" in lines
    assert "status counts: none" in lines
    assert "failed nodes: 0" in lines
    assert "warned nodes: 0" in lines
    assert "slowest nodes:" not in lines


def test_format_summary_unknown_elapsed() -> None:
    assert "elapsed: unknown" in format_summary(RunSummary(), command="run", run_name="r", success=True)


def test_format_summary_artifact_elapsed_wins_over_wall_time() -> None:
    summary = RunSummary.from_artifacts(results_doc())
    lines = format_summary(summary, command="run", run_name="r", success=True, wall_seconds=99.0)
    assert "elapsed: 12.35s" in lines
    assert "elapsed: 99.00s" not in lines


def test_format_summary_slowest_skips_zero_times() -> None:
    doc = {"results": [{"unique_id": "model.p.a", "status": "success", "execution_time": 0.0}]}
    lines = format_summary(RunSummary.from_artifacts(doc), command="run", run_name="r", success=True)
    assert "slowest nodes:" not in lines


def test_format_summary_truncates_messages() -> None:
    doc = {"results": [{"unique_id": "model.p.a", "status": "error", "execution_time": 1, "message": "m" * 100}]}
    lines = format_summary(RunSummary.from_artifacts(doc), command="run", run_name="r", success=False, max_message=20)
    assert "  - model.p.a [error]: " + "m" * 17 + "..." in lines
    assert not any("m" * 18 in line for line in lines)


def test_format_summary_is_ascii_by_default() -> None:
    doc = {"results": [{"unique_id": "model.p.a", "status": "error", "execution_time": 1, "message": "bad ✗ value"}]}
    summary = RunSummary.from_artifacts(doc)
    ascii_lines = format_summary(summary, command="run", run_name="r", success=False)
    unicode_lines = format_summary(summary, command="run", run_name="r", success=False, ascii_only=False)
    assert "  - model.p.a [error]: bad ? value" in ascii_lines
    assert "  - model.p.a [error]: bad ✗ value" in unicode_lines
    assert all(line.isascii() for line in ascii_lines)
