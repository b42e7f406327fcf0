"""Unit tests for dlh_airflow_common.task_graph.operators: how a node task follows the build (fake task instance;
real dbt runs of each rule are in tests/integration/test_task_graph_run.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_compat import task_exceptions
from dlh_airflow_common.dbt.channel import ChannelSpec, ChannelWriter
from dlh_airflow_common.exceptions.dbt import DbtException, DbtRuntimeException
from dlh_airflow_common.operators.dbt import DbtOperator
from dlh_airflow_common.task_graph.operators import (
    GRAPH_CHANNEL_XCOM,
    GRAPH_RESULTS_XCOM,
    NODE_XCOM,
    RESCHEDULE_FLOOR,
    DbtGraphBuildOperator,
    DbtNodeOperator,
)

TaskDeferred, AirflowRescheduleException, AirflowSkipException = task_exceptions()

NODE, TEST = "model.shop.orders", "test.shop.not_null_orders_id"
BUILD = "shop.dbt_build"
STARTED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeTI:
    """What a node task asks of its task instance: XComs of the build, the build's state, its own try."""

    def __init__(self, *, try_number: int = 1, build_state: str | None = "running", **xcoms: Any) -> None:
        self.try_number, self.dag_id, self.run_id, self.task_id = try_number, "d", "r", "shop.orders"
        self.start_date = STARTED
        self.build_state = build_state
        self.xcoms = {key: value for key, value in xcoms.items() if value is not None}
        self.pushed: dict[str, Any] = {}

    def xcom_pull(self, task_ids: str, key: str) -> Any:
        assert task_ids == BUILD
        return self.xcoms.get(key)

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def get_task_states(self, **kwargs: Any) -> dict[str, dict[str, Any]]:
        assert kwargs["task_ids"] == [BUILD]
        return {"r": {BUILD: self.build_state}}


def node(**kwargs: Any) -> DbtNodeOperator:
    defaults: dict[str, Any] = {"task_id": "orders", "dbt_node_id": NODE, "dbt_tests": [TEST], "build_task_id": BUILD,
                                "dbt_project_dir": "/p", "dbt_models": ["fqn:shop.orders"], "deferrable": True,
                                "check_interval": 2}  # fmt: skip
    return DbtNodeOperator(**{**defaults, **kwargs})


def final(try_number: int = 1, started: datetime = STARTED, **statuses: str) -> dict[str, Any]:
    names = {"node": NODE, "test": TEST}
    results = {names[key]: {"status": status} for key, status in statuses.items()}
    return {"try_number": try_number, "started_at": started.timestamp(), "results": results, "compiled_sql": {}}


@pytest.mark.parametrize("deferrable", [True, False])
def test_before_the_build_started_dbt_the_task_reschedules_no_sooner_than_the_floor(deferrable: bool) -> None:
    # a reschedule, never a deferral: waiting for another task must let dag.test() run that task
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        node(deferrable=deferrable).execute({"ti": FakeTI()})  # type: ignore[arg-type]
    wait = (rescheduled.value.reschedule_date - datetime.now(UTC)).total_seconds()
    assert RESCHEDULE_FLOOR - 1 < wait <= RESCHEDULE_FLOOR


def test_the_final_results_end_the_task_as_dbt_ended_its_node() -> None:
    ti = FakeTI(build_state="success", **{GRAPH_RESULTS_XCOM: final(node="success", test="pass")})
    summary = node().execute({"ti": ti})  # type: ignore[arg-type]
    assert summary["verdict"] == "success" and ti.pushed[NODE_XCOM] == summary
    skipped = FakeTI(build_state="failed", **{GRAPH_RESULTS_XCOM: final(node="skipped")})
    with pytest.raises(AirflowSkipException, match=f"dbt skipped {NODE}"):
        node().execute({"ti": skipped})  # type: ignore[arg-type]


def test_a_failed_test_fails_the_task_with_a_typed_error_and_the_compiled_sql_in_its_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = final(node="success", test="fail")
    results["results"][TEST]["message"] = "Got 3 results, configured to fail if != 0"
    results["compiled_sql"] = {TEST: "select id from orders where id is null"}
    ti = FakeTI(build_state="failed", **{GRAPH_RESULTS_XCOM: results})
    with pytest.raises(DbtRuntimeException) as failed:
        node().execute({"ti": ti})  # type: ignore[arg-type]
    assert (
        failed.value.node_id == TEST
        and "Got 3 results" in str(failed.value)
        and "try 1 of the build" in str(failed.value)
    )
    assert "select id from orders where id is null" in capsys.readouterr().out  # the task log
    assert ti.pushed[NODE_XCOM]["verdict"] == "failed"


def test_a_retry_while_the_build_is_up_for_retry_waits_for_its_next_try_and_runs_no_dbt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(DbtOperator, "execute", lambda self, context: pytest.fail("ran dbt"))
    earlier = final(started=datetime(2026, 1, 1, 11, 0, tzinfo=UTC), node="error")  # before this try began
    ti = FakeTI(try_number=2, build_state="up_for_retry", **{GRAPH_RESULTS_XCOM: earlier})
    with pytest.raises(AirflowRescheduleException):  # then looks at the build's next try
        node().execute({"ti": ti})  # type: ignore[arg-type]


def test_a_retry_accepts_a_failure_reported_by_a_build_try_that_began_after_it() -> None:
    later = final(try_number=2, started=datetime(2026, 1, 1, 13, 0, tzinfo=UTC), node="error")
    ti = FakeTI(try_number=2, build_state="running", **{GRAPH_RESULTS_XCOM: later})
    with pytest.raises(DbtRuntimeException, match="try 2 of the build"):
        node().execute({"ti": ti})  # type: ignore[arg-type]


def test_a_retry_after_the_build_ended_runs_its_own_node(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(DbtOperator, "execute", lambda self, context: ran.append(self.dbt_models) or {"own": True})
    ti = FakeTI(try_number=2, build_state="failed", **{GRAPH_RESULTS_XCOM: final(node="error")})
    assert node().execute({"ti": ti}) == {"own": True}  # type: ignore[arg-type]
    assert ran == [["fqn:shop.orders"]]


def test_a_first_try_whose_build_ended_without_its_node_says_so() -> None:
    ti = FakeTI(build_state="failed", **{GRAPH_RESULTS_XCOM: final(test="pass")})
    with pytest.raises(DbtException, match=rf"ended \(failed\) without running {NODE}.*Clearing this task"):
        node().execute({"ti": ti})  # type: ignore[arg-type]
    never_started = FakeTI(build_state="upstream_failed")
    with pytest.raises(DbtException, match="ended \\(upstream_failed\\)"):
        node().execute({"ti": never_started})  # type: ignore[arg-type]


def result(index: int, unique_id: str, status: str) -> dict[str, Any]:
    node_info = {"unique_id": unique_id, "node_status": status}
    return {
        "info": {"name": "LogModelResult", "level": "info"},
        "data": {"index": index, "total": 2, "node_info": node_info},
    }


def test_a_running_build_is_read_once_then_followed_in_the_triggerer(tmp_path: Path) -> None:
    spec = ChannelSpec(str(tmp_path), node_results=True)
    writer = ChannelWriter(spec, command="build")
    writer.event(result(1, NODE, "success"))
    writer.heartbeat()
    announced = {"try_number": 1, "started_at": STARTED.timestamp(), "channel": spec.to_dict()}
    with pytest.raises(TaskDeferred) as deferred:  # the node is built, its test not yet
        node().execute({"ti": FakeTI(**{GRAPH_CHANNEL_XCOM: announced})})  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert trigger.channel == spec.to_dict() and trigger.node_id == NODE and trigger.tests == [TEST]
    assert trigger.accept_failure is True
    writer.event(result(2, TEST, "pass"))
    writer.heartbeat()
    assert node().execute({"ti": FakeTI(**{GRAPH_CHANNEL_XCOM: announced})})["verdict"] == "success"  # type: ignore[arg-type]


def test_the_trigger_event_ends_the_task_and_a_recheck_looks_again() -> None:
    event = {
        "kind": "verdict",
        "verdict": "failed",
        "results": [[NODE, "error", "Database Error: boom"]],
        "missing": [],
    }
    with pytest.raises(DbtRuntimeException, match="Database Error: boom"):
        node().follow_complete({"ti": FakeTI()}, event)  # type: ignore[arg-type]
    with pytest.raises(AirflowRescheduleException):  # the build finished and has not published its results yet
        node().follow_complete({"ti": FakeTI()}, {"kind": "recheck", "reason": "the build finished"})  # type: ignore[arg-type]


def test_without_a_build_the_node_task_runs_its_own_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DbtOperator, "execute", lambda self, context: {"own": self.dbt_models})
    assert node(build_task_id=None).execute({"ti": FakeTI()}) == {"own": ["fqn:shop.orders"]}  # type: ignore[arg-type]


def test_the_graph_refresh_reaches_a_remote_project_through_the_tasks_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dlh_airflow_common.task_graph import cli, operators
    from dlh_airflow_common.task_graph.graph_file import Selection

    seen: dict[str, Any] = {}

    def lister(**kwargs: Any) -> str:
        seen.update(kwargs)
        return "lister"

    def ensure(project: str, selection: Selection, used: str, root: Path) -> Any:
        seen.update(project=project, used=used)
        raise DbtException("stop here")  # a failed refresh is a warning, never the task's failure

    monkeypatch.setattr(cli, "hook_lister", lister)
    monkeypatch.setattr(operators, "ensure_graph", ensure)
    build = DbtGraphBuildOperator(
        task_id="dbt_build", dbt_project_dir="s3://bucket/shop.tar.gz", dbt_project_conn_id="aws",
        project_cache_dir=str(tmp_path), graph_selection=Selection(), run_dir_root=str(tmp_path),
    )  # fmt: skip
    build._refresh_graph()
    assert (seen["dbt_project_dir"], seen["dbt_project_conn_id"], seen["project_cache_dir"]) == (
        "s3://bucket/shop.tar.gz", "aws", str(tmp_path),
    )  # fmt: skip
    assert (seen["project"], seen["used"]) == ("s3://bucket/shop.tar.gz", "lister")
