"""Metric names, values and tags of one dbt try, and sending them through a Stats-like backend."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from airflow_compat import sdk_stats
from dlh_airflow_common.dbt import metrics
from dlh_airflow_common.dbt.artifacts import RunSummary

RESULTS = {
    "elapsed_time": 9.0,
    "metadata": {"invocation_id": "abc"},
    "results": [{"unique_id": f"model.shop.m{i}", "status": "success", "execution_time": float(i)} for i in range(1, 8)]
    + [
        {"unique_id": "test.shop.t1", "status": "fail", "execution_time": 0.5},
        {"unique_id": "model.shop.bad", "status": "error", "execution_time": 0.1},
    ],
}


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, Any] | None]] = []
        self.fail_on = fail_on

    def incr(self, stat: str, count: int = 1, rate: float = 1, *, tags: dict[str, Any] | None = None) -> None:
        if stat == self.fail_on:
            raise RuntimeError("backend down")
        self.calls.append(("incr", stat, count, tags))

    def timing(self, stat: str, dt: Any, *, tags: dict[str, Any] | None = None) -> None:
        self.calls.append(("timing", stat, dt, tags))


def _metrics(**overrides: Any) -> dict[str, metrics.Metric]:
    kwargs: dict[str, Any] = {
        "dag_id": "shop.daily",
        "task_id": "dbt_build",
        "command": "build",
        "success": False,
        "wall_seconds": 12.5,
        "attempts": 3,
        "error_type": "DbtRuntimeException",
        **overrides,
    }
    found = metrics.run_metrics(RunSummary.from_artifacts(RESULTS), **kwargs)
    keys = [(m.name, m.tags.get("node_id")) for m in found]
    assert len(keys) == len(set(keys)), "each metric once per try (the per-node timer once per node)"
    assert len([m for m in found if m.name == "dbt.node.duration"]) == 5
    return {m.name: m for m in found}


def test_failed_run_metrics() -> None:
    found = _metrics()
    scope = "shop__daily.dbt_build"
    duration = found["dbt.run.duration"]
    assert (duration.kind, duration.value) == ("timing", 12500.0)
    assert duration.tags == {"dag_id": "shop.daily", "task_id": "dbt_build", "command": "build", "status": "failed"}
    assert found[f"dbt.run.duration.{scope}"].value == 12500.0
    assert found["dbt.run.failure"].tags["error_type"] == "DbtRuntimeException"
    assert found[f"dbt.run.failure.{scope}"].value == 1
    assert found["dbt.run.failure.DbtRuntimeException"].value == 1
    assert "dbt.run.success" not in found
    assert found[f"dbt.run.retries.{scope}"].value == 2


def test_node_counts_per_status() -> None:
    found = _metrics()
    counts = {n: m.value for n, m in found.items() if n.startswith("dbt.nodes.") and n.count(".") == 2}
    assert counts == {"dbt.nodes.error": 1, "dbt.nodes.fail": 1, "dbt.nodes.success": 7}
    assert found["dbt.nodes.success.shop__daily.dbt_build"].kind == "incr"


def test_slowest_nodes_only() -> None:
    found = _metrics(success=True, error_type=None, attempts=1)
    per_node = [m for m in found.values() if m.name.startswith("dbt.node.duration.")]
    assert [m.name.rsplit(".", 1)[1] for m in per_node] == [f"model__shop__m{i}" for i in (7, 6, 5, 4, 3)]
    assert per_node[0].value == 7000.0 and per_node[0].tags["resource_type"] == "model"
    assert found["dbt.run.success"].value == 1 and "dbt.run.failure" not in found
    assert found["dbt.run.retries"].value == 0


def test_upload_metrics_and_unknown_error_type() -> None:
    found = _metrics(error_type=None, uploaded_bytes=1234, upload_failed=True)
    assert found["dbt.run.failure.unknown"].value == 1
    assert found["dbt.artifacts.uploaded_bytes"].value == 1234
    assert found["dbt.artifacts.upload_failure.shop__daily.dbt_build"].value == 1


@pytest.mark.parametrize(
    ("raw", "part"),
    [("model.shop.orders", "model__shop__orders"), ("a b/c", "a_b_c"), ("", "x"), ("x" * 100, "x" * 60)],
)
def test_name_part(raw: str, part: str) -> None:
    assert metrics.name_part(raw) == part


def test_emit_sends_timers_as_timedeltas_and_survives_a_broken_backend(caplog: pytest.LogCaptureFixture) -> None:
    found = metrics.run_metrics(
        RunSummary.from_artifacts(RESULTS), dag_id="d", task_id="t", command="build", success=False,
        wall_seconds=12.5, error_type="DbtRuntimeException",
    )  # fmt: skip
    recorder = Recorder(fail_on="dbt.run.failure")
    sent = metrics.emit(found, recorder)
    assert sent == len(found) - 1
    timing = next(c for c in recorder.calls if c[1] == "dbt.run.duration")
    assert timing[2] == timedelta(milliseconds=12500)
    assert next(c for c in recorder.calls if c[1] == "dbt.nodes.success")[2] == 7
    assert "Could not send metric dbt.run.failure" in caplog.text


def test_airflow_stats_is_the_sdk_stats() -> None:
    assert metrics.airflow_stats() is sdk_stats()
