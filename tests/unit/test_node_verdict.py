"""Unit tests for dlh_airflow_common.task_graph.node_verdict: how a node task ends from the build's results."""

from __future__ import annotations

import pytest

from dlh_airflow_common.task_graph.node_verdict import judge, result_of

NODE, TEST_A, TEST_B = "model.shop.orders", "test.shop.not_null_orders_id", "test.shop.unique_orders_id"


def results(**statuses: str) -> dict[str, dict[str, str]]:
    names = {"node": NODE, "a": TEST_A, "b": TEST_B}
    return {names[key]: {"status": status} for key, status in statuses.items()}


@pytest.mark.parametrize(
    ("reported", "finished", "verdict"),
    [
        ({}, False, "waiting"),
        ({}, True, "not_run"),
        ({"node": "success"}, False, "waiting"),  # its tests have not run yet
        ({"node": "success", "a": "pass"}, True, "not_run"),  # the build ended before test b
        ({"node": "success", "a": "pass", "b": "warn"}, False, "success"),
        ({"node": "error"}, False, "failed"),  # no need to wait for tests dbt will skip
        ({"node": "success", "a": "pass", "b": "fail"}, False, "failed"),  # never green while a test failed
        ({"node": "success", "a": "fail"}, False, "failed"),
        ({"node": "skipped"}, False, "skipped"),
        ({"node": "success", "a": "pass", "b": "skipped"}, False, "success"),  # skipped for another node's failure
    ],
)
def test_a_node_task_ends_as_dbt_ended_its_node_and_tests(
    reported: dict[str, str], finished: bool, verdict: str
) -> None:
    outcome = judge(results(**reported), NODE, [TEST_A, TEST_B], build_finished=finished)
    assert outcome.verdict == verdict
    assert outcome.done is (verdict != "waiting")


def test_a_tests_only_task() -> None:
    assert judge(results(a="pass"), None, [TEST_A, TEST_B], build_finished=False).verdict == "waiting"
    assert judge(results(a="pass", b="fail"), None, [TEST_A, TEST_B], build_finished=False).verdict == "failed"
    assert judge(results(a="skipped", b="skipped"), None, [TEST_A, TEST_B], build_finished=True).verdict == "skipped"
    assert judge(results(a="pass", b="pass"), None, [TEST_A, TEST_B], build_finished=True).verdict == "success"


def test_failures_carry_their_message_and_the_missing_are_named() -> None:
    reported = {NODE: {"status": "success"}, TEST_A: {"status": "fail", "message": "Got 3 results"}}
    outcome = judge(reported, NODE, [TEST_A, TEST_B], build_finished=False)
    assert outcome.verdict == "failed" and outcome.missing == (TEST_B,)
    (failure,) = outcome.failures
    assert failure.unique_id == TEST_A and failure.line() == f"FAIL {TEST_A}: Got 3 results"


def test_result_of_ignores_what_is_not_a_result() -> None:
    assert result_of({NODE: "success"}, NODE) is None
    assert result_of({NODE: {"message": "x"}}, NODE) is None
    assert result_of({NODE: {"status": "SUCCESS"}}, NODE).status == "success"  # type: ignore[union-attr]
