"""Unit tests for dlh_airflow_common.dbt.result: building a DbtTaskResult from what dbt left in a run dir."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.artifacts import RUN_RESULTS, SOURCES, RunSummary
from dlh_airflow_common.dbt.invocation import InvocationResult
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.dbt.report import ProgressReporter
from dlh_airflow_common.dbt.result import DbtTaskResult, build_result
from dlh_airflow_common.dbt.run_dir import RunDir
from dlh_airflow_common.exceptions.dbt import DbtExecutionTimeoutException, DbtRuntimeException

LOG = logging.getLogger("test_result")
SECRET = "pw-Very-Secret-77"


def _run_results(*statuses: str, message: str = "") -> dict[str, Any]:
    return {
        "metadata": {"invocation_id": "inv-1"},
        "elapsed_time": 2.5,
        "results": [
            {"unique_id": f"model.shop.m{i}", "status": status, "execution_time": 0.5, "message": message or None}
            for i, status in enumerate(statuses)
        ],
        "args": {"which": "build"},
    }


def _run_dir(
    tmp_path: Path, run_results: dict[str, Any] | None = None, sources: dict[str, Any] | None = None
) -> RunDir:
    run_dir = RunDir(tmp_path / "run_x")
    run_dir.target_path.mkdir(parents=True)
    run_dir.log_path.mkdir(parents=True)
    if run_results is not None:
        (run_dir.target_path / RUN_RESULTS).write_text(json.dumps(run_results), encoding="utf-8")
    if sources is not None:
        (run_dir.target_path / SOURCES).write_text(json.dumps(sources), encoding="utf-8")
    return run_dir


def _build(run_dir: RunDir, outcome: InvocationResult, **overrides: Any) -> DbtTaskResult:
    kwargs: dict[str, Any] = {
        "command": "build",
        "outcome": outcome,
        "run_dir": run_dir,
        "redactor": Redactor([SECRET]),
        "progress": ProgressReporter(LOG),
        "wall_seconds": 3.0,
        "conn_id": "warehouse",
        "execution_timeout": None,
        "artifacts_kept": False,
        "log": LOG,
        **overrides,
    }
    return build_result(**kwargs)


def test_success_streams_the_summary_and_keeps_run_results_for_later(tmp_path: Path) -> None:
    doc = _run_results("success", "success", "pass")
    run_dir = _run_dir(tmp_path, doc)
    result = _build(run_dir, InvocationResult(return_code=0))

    assert result.success and result.error is None
    assert result.summary == RunSummary.from_artifacts(doc)
    assert result.summary.invocation_id == "inv-1"
    shutil.rmtree(run_dir.path)  # clean-up runs before callers look at the result
    assert result.run_results == doc
    assert result.run_results is result.run_results, "decoded once, then cached"


def test_no_run_results_file_gives_empty_results_and_the_sources_summary(tmp_path: Path) -> None:
    sources = {"results": [{"unique_id": "source.shop.raw.orders", "status": "pass", "execution_time": 0.1}]}
    result = _build(_run_dir(tmp_path, sources=sources), InvocationResult(return_code=0))
    assert result.run_results == {}
    assert result.summary.status_counts == {"pass": 1}


def test_failure_is_classified_and_names_the_node_without_the_secret(tmp_path: Path) -> None:
    doc = _run_results("success", "error", message=f"Database Error: password {SECRET} rejected")
    events = [
        {
            "info": {"name": "RunResultError", "level": "error", "msg": f"Database Error: {SECRET}"},
            "data": {"msg": f"Database Error: password {SECRET} rejected", "node_info": {"unique_id": "model.shop.m1"}},
        }
    ]
    result = _build(_run_dir(tmp_path, doc), InvocationResult(return_code=1, error_events=events))

    assert not result.success
    assert isinstance(result.error, DbtRuntimeException)
    assert result.error.node_id == "model.shop.m1"
    assert "dbt build failed in model.shop.m1" in str(result.error)
    assert SECRET not in str(result.error)
    assert all(SECRET not in (node.message or "") for node in result.summary.nodes)
    assert SECRET not in json.dumps(result.to_xcom())


def test_stopped_run_reports_how_far_it_got(tmp_path: Path) -> None:
    progress = ProgressReporter(LOG)
    for index, status in enumerate(["success", "success"], start=1):
        progress({"info": {"name": "LogModelResult", "level": "info", "msg": ""},
                  "data": {"index": index, "total": 3, "status": status,
                           "node_info": {"unique_id": f"model.shop.m{index}", "node_status": status}}})  # fmt: skip
    outcome = InvocationResult(return_code=2, stopped="timeout")
    result = _build(_run_dir(tmp_path), outcome, progress=progress, execution_timeout=12.0)

    assert isinstance(result.error, DbtExecutionTimeoutException)
    assert "timeout of 12s" in str(result.error) and "2 of 3 nodes had succeeded" in str(result.error)


def _reported(*nodes: tuple[str, str]) -> ProgressReporter:
    """A reporter that saw a node-result event for each (unique_id, status)."""
    progress = ProgressReporter(LOG)
    for index, (unique_id, status) in enumerate(nodes, start=1):
        progress({"info": {"name": "LogModelResult", "level": "info", "msg": ""},
                  "data": {"index": index, "total": len(nodes), "status": status, "execution_time": 1.5,
                           "node_info": {"unique_id": unique_id, "node_status": status}}})  # fmt: skip
    return progress


@pytest.mark.parametrize("artifact", ["no nodes", "no file"])
def test_interrupted_run_summary_counts_the_nodes_dbt_reported(tmp_path: Path, artifact: str) -> None:
    """Interrupted, dbt writes run_results.json without the node it was running, or is killed before writing it."""
    doc = {**_run_results(), "elapsed_time": 5.0}
    run_dir = _run_dir(tmp_path, doc if artifact == "no nodes" else None)
    progress = _reported(("model.shop.slow_sleep", "error"))
    result = _build(run_dir, InvocationResult(return_code=2, stopped="killed"), progress=progress)

    assert result.summary.node_count == 1
    assert [(n.unique_id, n.status) for n in result.summary.failed] == [("model.shop.slow_sleep", "error")]
    assert result.summary.status_counts == {"error": 1}
    assert result.summary.elapsed == (5.0 if artifact == "no nodes" else None)
    assert result.to_xcom()["failed_nodes"] == [{"unique_id": "model.shop.slow_sleep", "status": "error"}]


def test_dbt_killed_from_outside_without_artifacts_still_has_its_reported_nodes(tmp_path: Path) -> None:
    progress = _reported(("model.shop.m0", "success"))
    result = _build(_run_dir(tmp_path), InvocationResult(return_code=-9), progress=progress)  # e.g. OOM-killed
    assert [(n.unique_id, n.status) for n in result.summary.nodes] == [("model.shop.m0", "success")]
    assert not result.success and not result.wrote_node_results


def test_artifact_wins_for_its_nodes_and_reported_ones_are_added(tmp_path: Path) -> None:
    doc = _run_results("success", message="built")
    progress = _reported(("model.shop.m0", "success"), ("model.shop.m1", "error"))
    result = _build(_run_dir(tmp_path, doc), InvocationResult(return_code=2, stopped="timeout"), progress=progress)

    assert [(n.unique_id, n.status, n.message) for n in result.summary.nodes] == [
        ("model.shop.m0", "success", "built"),
        ("model.shop.m1", "error", None),
    ]
    assert result.summary.invocation_id == "inv-1" and result.summary.elapsed == 2.5


def test_complete_run_summary_is_the_artifact_alone(tmp_path: Path) -> None:
    doc = _run_results("success", "error")
    progress = _reported(("model.shop.m1", "error"), ("model.shop.m0", "success"), ("raw.orders", "pass"))
    result = _build(_run_dir(tmp_path, doc), InvocationResult(return_code=1), progress=progress)
    assert result.summary == RunSummary.from_artifacts(doc), "dbt ended by itself: its artifact is complete"


@pytest.mark.parametrize("kept", [False, True])
def test_to_xcom_is_bounded_and_json_safe(tmp_path: Path, kept: bool) -> None:
    doc = _run_results(*["error"] * 40, message="x" * 1000)
    result = _build(_run_dir(tmp_path, doc), InvocationResult(return_code=1), artifacts_kept=kept)
    payload = result.to_xcom(max_nodes=5, max_message=100)

    assert json.loads(json.dumps(payload)) == payload
    assert "run_results" not in payload, "never a whole artifact in XCom"
    assert len(json.dumps(payload)) < 5000
    assert ("target_path" in payload) is kept
    assert "project" not in payload, "a local project adds nothing"
    result.project = {"url": "s3://b/shop.tar.gz", "kind": "archive", "version": "etag:abc"}
    assert result.to_xcom()["project"] == {"url": "s3://b/shop.tar.gz", "kind": "archive", "version": "etag:abc"}
    assert payload["error"]["type"] == type(result.error).__name__
