"""Unit tests for dlh_airflow_common.dbt.artifacts: loading, compressed copies, run and manifest summaries."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.artifacts import (
    MANIFEST,
    RUN_RESULTS,
    SOURCES,
    ArtifactCopy,
    ManifestSummary,
    NodeOutcome,
    RunSummary,
    load_artifact,
    summarize_manifest,
    summarize_run,
)
from dlh_airflow_common.exceptions.dbt import DbtArtifactException


def result(unique_id: str, status: str, seconds: float, message: str | None = None, **extra: Any) -> dict[str, Any]:
    """One entry of run_results.json ``results`` in the shape dbt 1.x writes."""
    return {
        "status": status,
        "timing": [{"name": "compile"}, {"name": "execute"}],
        "thread_id": "Thread-1",
        "execution_time": seconds,
        "adapter_response": {},
        "message": message,
        "failures": extra.pop("failures", None),
        "unique_id": unique_id,
        "compiled": True,
        "relation_name": None,
        **extra,
    }


RUN_RESULTS_DOC: dict[str, Any] = {
    "metadata": {
        "dbt_schema_version": "https://schemas.getdbt.com/dbt/run-results/v6.json",
        "dbt_version": "1.11.0",
        "generated_at": "2024-03-09T07:05:10.000000Z",
        "invocation_id": "4c1f0f2e-1d3b-4a57-9d0e-8f3f2d1c0b9a",
        "env": {},
    },
    "results": [
        result("model.shop.stg_orders", "success", 1.25, "SELECT 10"),
        result("model.shop.orders", "error", 0.4, 'Database Error in model orders\n  relation "raw.x" does not exist'),
        result("test.shop.not_null_orders_id", "fail", 0.05, "Got 3 results, configured to fail if != 0", failures=3),
        result(
            "test.shop.accepted_values_status", "warn", 0.07, "Got 1 result, configured to warn if != 0", failures=1
        ),
        result("model.shop.customers", "skipped", 0.0, None),
        result("test.shop.unique_orders_id", "pass", 0.03, None, failures=0),
        result("seed.shop.raw_payments", "success", 3.5, "INSERT 120"),
        result("snapshot.shop.orders_snap", "success", 2.0, "SUCCESS"),
        result("model.shop.broken", "runtime error", 0.0, "Runtime Error: boom"),
    ],
    "elapsed_time": 7.891234,
    "args": {"which": "build"},
}


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------
# load_artifact
# ---------------------------------------------------------------------------------------------------------


def test_load_artifact_missing_file_is_empty(tmp_path: Path) -> None:
    assert load_artifact(tmp_path / RUN_RESULTS) == {}
    assert load_artifact(str(tmp_path / "nope" / RUN_RESULTS)) == {}


def test_load_artifact_reads_object(tmp_path: Path) -> None:
    path = write_json(tmp_path / RUN_RESULTS, RUN_RESULTS_DOC)
    assert load_artifact(path) == RUN_RESULTS_DOC
    assert load_artifact(str(path)) == RUN_RESULTS_DOC


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"metadata": {"invocation_id": "abc"}, "results": [', "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"message": "caf\xe9"}', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "expected a JSON object, found list"),
        (b'"just a string"', "expected a JSON object, found str"),
        (b"null", "expected a JSON object, found NoneType"),
    ],
)
def test_load_artifact_corrupt(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / RUN_RESULTS
    path.write_bytes(content)
    with pytest.raises(DbtArtifactException) as excinfo:
        load_artifact(path)
    err = excinfo.value
    assert err.artifact_path == str(path)
    assert str(path) in str(err)
    assert "corrupt" in str(err)
    assert fragment in str(err)


def test_load_artifact_unreadable_path(tmp_path: Path) -> None:
    directory = tmp_path / RUN_RESULTS
    directory.mkdir()
    with pytest.raises(DbtArtifactException, match="Cannot read dbt artifact") as excinfo:
        load_artifact(directory)
    assert excinfo.value.artifact_path == str(directory)


# ---------------------------------------------------------------------------------------------------------
# RunSummary from run_results.json
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def summary() -> RunSummary:
    return RunSummary.from_artifacts(RUN_RESULTS_DOC)


def test_summary_counts(summary: RunSummary) -> None:
    assert summary.node_count == 9
    assert summary.status_counts == {
        "error": 1,
        "fail": 1,
        "pass": 1,
        "runtime error": 1,
        "skipped": 1,
        "success": 3,
        "warn": 1,
    }
    assert list(summary.status_counts) == sorted(summary.status_counts)
    assert summary.elapsed == pytest.approx(7.891234)
    assert summary.invocation_id == "4c1f0f2e-1d3b-4a57-9d0e-8f3f2d1c0b9a"


def test_summary_failed_and_warned(summary: RunSummary) -> None:
    assert [n.unique_id for n in summary.failed] == [
        "model.shop.orders",
        "test.shop.not_null_orders_id",
        "model.shop.broken",
    ]
    assert [n.unique_id for n in summary.warned] == ["test.shop.accepted_values_status"]
    orders = summary.failed[0]
    assert orders.status == "error"
    assert orders.message is not None and orders.message.startswith("Database Error in model orders")
    assert summary.failed[1].failures == 3


def test_summary_slowest(summary: RunSummary) -> None:
    assert [n.unique_id for n in summary.slowest()] == [
        "seed.shop.raw_payments",
        "snapshot.shop.orders_snap",
        "model.shop.stg_orders",
        "model.shop.orders",
        "test.shop.accepted_values_status",
    ]
    assert [n.unique_id for n in summary.slowest(2)] == ["seed.shop.raw_payments", "snapshot.shop.orders_snap"]


def test_node_outcome_normalises_fields() -> None:
    node = NodeOutcome.from_result({"unique_id": "model.p.a", "status": "ERROR", "execution_time": None})
    assert node == NodeOutcome(unique_id="model.p.a", status="error", execution_time=0.0, message=None, failures=None)
    assert NodeOutcome.from_result({}).unique_id == "?"
    assert NodeOutcome.from_result({}).status == "unknown"
    assert NodeOutcome.from_result({"failures": "3"}).failures is None


def test_summary_ignores_non_mapping_results() -> None:
    doc = {"results": [result("model.p.a", "success", 1.0), "garbage", None, 3]}
    summary = RunSummary.from_artifacts(doc)
    assert [n.unique_id for n in summary.nodes] == ["model.p.a"]


def test_summary_of_empty_artifacts() -> None:
    summary = RunSummary.from_artifacts({})
    assert summary.node_count == 0
    assert summary.elapsed is None
    assert summary.invocation_id is None
    assert summary.status_counts == {}
    assert summary.failed == []
    assert summary.slowest() == []


# ---------------------------------------------------------------------------------------------------------
# to_dict
# ---------------------------------------------------------------------------------------------------------


def test_to_dict_full(summary: RunSummary) -> None:
    data = summary.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["node_count"] == 9
    assert data["elapsed_seconds"] == 7.891
    assert data["invocation_id"] == RUN_RESULTS_DOC["metadata"]["invocation_id"]
    assert data["status_counts"]["success"] == 3
    assert [n["unique_id"] for n in data["failed_nodes"]] == [
        "model.shop.orders",
        "test.shop.not_null_orders_id",
        "model.shop.broken",
    ]
    assert data["failed_nodes"][1] == {
        "unique_id": "test.shop.not_null_orders_id",
        "status": "fail",
        "message": "Got 3 results, configured to fail if != 0",
    }
    assert data["failed_nodes_omitted"] == 0
    assert data["warned_nodes"] == [
        {
            "unique_id": "test.shop.accepted_values_status",
            "status": "warn",
            "message": "Got 1 result, configured to warn if != 0",
        }
    ]
    assert data["warned_nodes_omitted"] == 0


def test_to_dict_status_counts_is_a_copy(summary: RunSummary) -> None:
    data = summary.to_dict()
    data["status_counts"]["success"] = 999
    assert summary.status_counts["success"] == 3


def test_to_dict_caps_nodes_and_messages() -> None:
    long_message = "x" * 1000
    doc = {
        "results": [result(f"model.p.m{i}", "error", 0.1, long_message) for i in range(30)]
        + [result(f"test.p.t{i}", "warn", 0.1, None) for i in range(4)],
    }
    data = RunSummary.from_artifacts(doc).to_dict(max_nodes=5, max_message=50)
    assert len(data["failed_nodes"]) == 5
    assert data["failed_nodes_omitted"] == 25
    assert [n["unique_id"] for n in data["failed_nodes"]] == [f"model.p.m{i}" for i in range(5)]
    assert data["failed_nodes"][0]["message"] == "x" * 47 + "..."
    assert len(data["warned_nodes"]) == 4
    assert data["warned_nodes_omitted"] == 0
    assert "message" not in data["warned_nodes"][0]
    assert len(json.dumps(data)) < 2000


def test_to_dict_default_caps() -> None:
    doc = {"results": [result(f"model.p.m{i}", "fail", 0.1, "y" * 400) for i in range(25)]}
    data = RunSummary.from_artifacts(doc).to_dict()
    assert len(data["failed_nodes"]) == 20
    assert data["failed_nodes_omitted"] == 5
    assert len(data["failed_nodes"][0]["message"]) == 300
    assert data["failed_nodes"][0]["message"].endswith("...")


def test_to_dict_message_at_limit_not_truncated() -> None:
    doc = {"results": [result("model.p.a", "error", 0.1, "z" * 50)]}
    assert RunSummary.from_artifacts(doc).to_dict(max_message=50)["failed_nodes"][0]["message"] == "z" * 50


def test_to_dict_without_elapsed() -> None:
    data = RunSummary.from_artifacts({"results": []}).to_dict()
    assert data["elapsed_seconds"] is None
    assert data["node_count"] == 0
    assert json.dumps(data)


# ---------------------------------------------------------------------------------------------------------
# sources.json (dbt source freshness)
# ---------------------------------------------------------------------------------------------------------

SOURCES_DOC: dict[str, Any] = {
    "metadata": {"invocation_id": "freshness-123", "dbt_version": "1.11.0"},
    "results": [
        {
            "unique_id": "source.shop.raw.orders",
            "max_loaded_at": "2024-03-09T06:00:00Z",
            "snapshotted_at": "2024-03-09T07:00:00Z",
            "max_loaded_at_time_ago_in_s": 3600.0,
            "status": "pass",
            "criteria": {"warn_after": {"count": 12, "period": "hour"}},
            "adapter_response": {},
            "timing": [],
            "thread_id": "Thread-1",
            "execution_time": 0.2,
        },
        {
            "unique_id": "source.shop.raw.payments",
            "status": "warn",
            "max_loaded_at_time_ago_in_s": 50000.0,
            "execution_time": 0.3,
        },
        {
            "unique_id": "source.shop.raw.customers",
            "status": "runtime error",
            "error": 'Database Error: relation "raw.customers" does not exist',
            "execution_time": 0.0,
        },
    ],
    "elapsed_time": 1.5,
}


def test_sources_json_fallback_for_source_freshness() -> None:
    summary = RunSummary.from_artifacts({}, SOURCES_DOC)
    assert summary.node_count == 3
    assert summary.status_counts == {"pass": 1, "runtime error": 1, "warn": 1}
    assert summary.invocation_id == "freshness-123"
    assert summary.elapsed == 1.5
    assert [n.unique_id for n in summary.failed] == ["source.shop.raw.customers"]
    assert summary.failed[0].message == 'Database Error: relation "raw.customers" does not exist'
    assert [n.unique_id for n in summary.warned] == ["source.shop.raw.payments"]
    assert json.dumps(summary.to_dict())


def test_sources_error_status_counts_as_failed() -> None:
    doc = {"results": [{"unique_id": "source.p.s.t", "status": "error", "error": "stale", "execution_time": 0.1}]}
    summary = RunSummary.from_artifacts({}, doc)
    assert [n.message for n in summary.failed] == ["stale"]


def test_run_results_win_over_sources() -> None:
    summary = RunSummary.from_artifacts(RUN_RESULTS_DOC, SOURCES_DOC)
    assert summary.node_count == 9
    assert summary.invocation_id == RUN_RESULTS_DOC["metadata"]["invocation_id"]


def test_empty_run_results_list_is_not_replaced_by_sources() -> None:
    summary = RunSummary.from_artifacts({"results": [], "elapsed_time": 0.5}, SOURCES_DOC)
    assert summary.node_count == 0
    assert summary.elapsed == 0.5


def test_no_artifacts_and_no_sources() -> None:
    assert RunSummary.from_artifacts({}, None).node_count == 0


# ---------------------------------------------------------------------------------------------------------
# summarize_run and ArtifactCopy (what a run's result keeps)
# ---------------------------------------------------------------------------------------------------------


def test_summarize_run_reads_run_results_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_json(tmp_path / RUN_RESULTS, RUN_RESULTS_DOC)
    write_json(tmp_path / SOURCES, SOURCES_DOC)
    reads: list[str] = []
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or real_read_bytes(self))
    summary, kept = summarize_run(tmp_path)
    assert reads == [RUN_RESULTS]
    assert summary == RunSummary.from_artifacts(RUN_RESULTS_DOC)
    assert kept.exists and kept.load() == RUN_RESULTS_DOC


def test_summarize_run_falls_back_to_sources_json(tmp_path: Path) -> None:
    write_json(tmp_path / SOURCES, SOURCES_DOC)  # dbt source freshness writes no run_results.json
    summary, kept = summarize_run(tmp_path)
    assert summary == RunSummary.from_artifacts({}, SOURCES_DOC)
    assert not kept.exists and kept.load() == {}
    assert summarize_run(tmp_path / "nothing_here")[0].node_count == 0


def test_artifact_copy_round_trip_survives_the_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / RUN_RESULTS, {**RUN_RESULTS_DOC, "blob": "x" * 3_000_000})  # several chunks
    copy = ArtifactCopy.read(path)
    path.unlink()  # the run dir is removed after the run; the copy must not need it
    assert copy.exists
    assert copy.load() == {**RUN_RESULTS_DOC, "blob": "x" * 3_000_000}
    assert copy.load() is not copy.load(), "each load is a fresh object callers may change"


def test_artifact_copy_is_compressed(tmp_path: Path) -> None:
    doc = {"results": [result(f"model.p.m{i}", "success", 0.1, "OK") for i in range(2000)]}
    path = write_json(tmp_path / RUN_RESULTS, doc)
    copy = ArtifactCopy.read(path)
    assert len(copy._compressed or b"") < path.stat().st_size / 5


def test_artifact_copy_of_a_missing_file_loads_empty(tmp_path: Path) -> None:
    copy = ArtifactCopy.read(tmp_path / RUN_RESULTS)
    assert not copy.exists
    assert copy.load() == {}


def test_artifact_copy_of_a_corrupt_file_raises_on_load(tmp_path: Path) -> None:
    path = tmp_path / RUN_RESULTS
    path.write_bytes(b'{"results": [')
    copy = ArtifactCopy.read(path)
    with pytest.raises(DbtArtifactException, match="corrupt") as excinfo:
        copy.load()
    assert excinfo.value.artifact_path == str(path)


def test_artifact_copy_of_an_unreadable_path(tmp_path: Path) -> None:
    (tmp_path / RUN_RESULTS).mkdir()
    with pytest.raises(DbtArtifactException, match="Cannot read dbt artifact"):
        ArtifactCopy.read(tmp_path / RUN_RESULTS)


# ---------------------------------------------------------------------------------------------------------
# Summaries read from files (only the fields they need) and load_artifact's collector handling
# ---------------------------------------------------------------------------------------------------------

SUMMARY_DOC: dict[str, Any] = {
    "metadata": {"invocation_id": "abc", "nested": {"deep": [1, 2, {"x": None}]}},
    "results": [
        {"unique_id": "model.p.a", "status": "success", "execution_time": 1.5, "message": 'quote " and \\ slash'},
        {"unique_id": "model.p.b", "status": "error", "execution_time": 12345678901234567890, "message": "ünï ✓"},
        {"unique_id": "test.p.c", "status": "fail", "execution_time": 0.25, "failures": 3, "message": None},
    ],
    "elapsed_time": 123456.789,
    "empty_object": {},
    "empty_list": [],
    'a key with "escapes" \\ and ü': {"k\\n": [True, False, None, -1e-5]},
    "args": {"select": ["a", "b"], "vars": {}},
}


@pytest.mark.parametrize("indent", [None, 2], ids=["compact", "pretty"])
def test_from_file_equals_from_artifacts(tmp_path: Path, indent: int | None) -> None:
    path = tmp_path / "run_results.json"
    path.write_text(json.dumps(SUMMARY_DOC, indent=indent, ensure_ascii=False), encoding="utf-8")
    summary = RunSummary.from_file(path)
    assert summary == RunSummary.from_artifacts(load_artifact(path))
    assert summary.invocation_id == "abc" and summary.elapsed == 123456.789
    assert summary.status_counts == {"error": 1, "fail": 1, "success": 1}
    assert [n.unique_id for n in summary.failed] == ["model.p.b", "test.p.c"]
    assert summary.nodes[0].message == 'quote " and \\ slash' and summary.nodes[1].message == "ünï ✓"


def test_from_file_of_sources_json_reads_error_as_the_message(tmp_path: Path) -> None:
    path = write_json(tmp_path / SOURCES, SOURCES_DOC)
    assert RunSummary.from_file(path) == RunSummary.from_artifacts({}, SOURCES_DOC)


def test_missing_files_summarise_as_empty(tmp_path: Path) -> None:
    assert RunSummary.from_file(tmp_path / "nope.json") == RunSummary()
    assert summarize_manifest(tmp_path / "nope.json") == ManifestSummary()


@pytest.mark.parametrize(
    ("content", "where"),
    [
        pytest.param("", "", id="empty"),
        pytest.param('{"results": [{"status": "success"}, {"b": 2', "", id="truncated"),
        pytest.param('{"results": [1, 2,]}', "", id="trailing-comma"),
        pytest.param("[1, 2]", "", id="not-an-object"),
        pytest.param('{"a": 1} {"b": 2}', "", id="trailing-data"),
        pytest.param('{"a": tru}', "", id="bad-literal"),
        pytest.param('{"results": 7}', "$.results", id="results-not-a-list"),
        pytest.param('{"results": [{"status": "pass"}, 3]}', "$.results[1]", id="result-not-an-object"),
        pytest.param('{"metadata": "x"}', "$.metadata", id="metadata-not-an-object"),
    ],
)
def test_corrupt_files_raise_with_the_path(tmp_path: Path, content: str, where: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DbtArtifactException, match="corrupt") as caught:
        RunSummary.from_file(path)
    assert caught.value.artifact_path == str(path)
    assert str(path) in str(caught.value) and where in str(caught.value)


def test_not_utf8_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"results": [{"message": "\xff\xfe"}]}')
    with pytest.raises(DbtArtifactException, match="corrupt"):
        RunSummary.from_file(path)


def test_a_corrupt_manifest_raises(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST
    path.write_text('{"nodes": {"model.p.a": {"resource_type": "model", "config": 5}}}', encoding="utf-8")
    with pytest.raises(DbtArtifactException, match=r"corrupt.*\$\.nodes\[\.\.\.\]\.config"):
        summarize_manifest(path)


def test_summarize_manifest(tmp_path: Path) -> None:
    def node(kind: str, name: str, package: str = "shop", materialized: str | None = None) -> dict[str, Any]:
        config = {"materialized": materialized} if materialized else {}
        return {"resource_type": kind, "package_name": package, "name": name, "config": config, "raw_code": "}]{["}

    manifest = {
        "metadata": {"project_name": "shop", "dbt_version": "1.11.16"},
        "nodes": {
            "model.shop.a": node("model", "a", materialized="table"),
            "model.shop.b": node("model", "b", materialized="view"),
            "model.utils.c": node("model", "c", package="utils", materialized="view"),
            "test.shop.t": node("test", "t"),
            "seed.shop.s": node("seed", "s"),
        },
        "sources": {"source.shop.raw.x": node("source", "x")},
        "macros": {"macro.shop.m": {"name": "m"}, "macro.dbt.n": {"name": "n"}},
        "exposures": {},
        "disabled": {"model.shop.off": [node("model", "off")]},
        "parent_map": {"model.shop.b": ["model.shop.a"]},
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    summary = summarize_manifest(path)
    assert summary.project_name == "shop" and summary.dbt_version == "1.11.16"
    assert summary.resource_counts == {"model": 3, "seed": 1, "source": 1, "test": 1}
    assert summary.package_counts == {"shop": 5, "utils": 1}
    assert summary.materializations == {"table": 1, "view": 2}
    assert summary.macro_count == 2 and summary.disabled_count == 1
    assert summary.node_count == 6


@pytest.mark.parametrize("enabled", [True, False])
def test_load_artifact_restores_the_collector(tmp_path: Path, enabled: bool) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(SUMMARY_DOC), encoding="utf-8")
    (gc.enable if enabled else gc.disable)()
    try:
        assert load_artifact(path) == SUMMARY_DOC
        assert gc.isenabled() is enabled
        (tmp_path / "bad.json").write_text("{", encoding="utf-8")
        with pytest.raises(DbtArtifactException):
            load_artifact(tmp_path / "bad.json")
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_load_artifact_still_reads_what_json_loads_reads(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": "ü"}).encode("utf-8"))
    assert load_artifact(path) == {"a": "ü"}
    path.write_bytes(json.dumps({"a": 1}).encode("utf-16"))
    assert load_artifact(path) == {"a": 1}


def test_kept_artifacts_outlive_their_files_and_refuse_what_was_too_large(tmp_path: Path) -> None:
    from dlh_airflow_common.dbt.artifacts import KeptArtifacts

    (tmp_path / "manifest.json").write_text(json.dumps({"nodes": {"model.p.a": {}}}))
    (tmp_path / "run_results.json").write_text(json.dumps({"results": []}))
    (tmp_path / "catalog.json").write_text(json.dumps({"nodes": {}, "pad": "x" * 200}))
    kept = KeptArtifacts.keep(tmp_path, max_bytes=100)
    for path in tmp_path.iterdir():
        path.unlink()
    assert kept.load("manifest.json") == {"nodes": {"model.p.a": {}}}
    assert kept.load("run_results.json") == {"results": []}
    assert kept.load("sources.json") == {}, "dbt did not write it"
    with pytest.raises(DbtArtifactException, match=r"catalog\.json of the last run .* too large"):
        kept.load("catalog.json")
