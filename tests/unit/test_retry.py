"""RetryPolicy (tenacity underneath): attempts, backoff, cancellation; merging attempt summaries."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dlh_airflow_common.dbt.artifacts import NodeOutcome, RunSummary
from dlh_airflow_common.dbt.retry import MAX_DELAY_SECONDS, RetryPolicy, merge_summaries


def _run(policy: RetryPolicy, outcomes: list[str], **kwargs: Any) -> tuple[str, list[int], list[tuple[int, float]]]:
    calls: list[int] = []
    retries: list[tuple[int, float]] = []

    def attempt(number: int) -> str:
        calls.append(number)
        return outcomes[min(number, len(outcomes)) - 1]

    result = policy.run(
        attempt,
        should_retry=kwargs.get("should_retry", lambda result, wait: result == "transient"),
        on_retry=lambda number, total, result, wait: retries.append((number, wait)),
        cancelled=kwargs.get("cancelled", threading.Event()),
    )
    return result, calls, retries


def test_backoff_doubles_from_delay_and_is_capped() -> None:
    policy = RetryPolicy(limit=10, delay=1)
    assert [policy.wait_before(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert RetryPolicy(delay=100).wait_before(1) == MAX_DELAY_SECONDS


def test_retries_transient_results_until_success() -> None:
    result, calls, retries = _run(RetryPolicy(limit=5, delay=0), ["transient", "transient", "ok"])
    assert result == "ok"
    assert calls == [1, 2, 3]
    assert [number for number, _ in retries] == [1, 2]


def test_stops_after_limit_and_returns_last_result() -> None:
    result, calls, retries = _run(RetryPolicy(limit=3, delay=0), ["transient"] * 5)
    assert result == "transient"
    assert calls == [1, 2, 3]
    assert len(retries) == 2


@pytest.mark.parametrize("limit", [0, 1])
def test_limit_zero_or_one_means_a_single_attempt(limit: int) -> None:
    result, calls, _ = _run(RetryPolicy(limit=limit, delay=0), ["transient", "ok"])
    assert (result, calls) == ("transient", [1])


def test_permanent_failure_is_not_retried() -> None:
    result, calls, retries = _run(RetryPolicy(limit=5, delay=0), ["permanent", "ok"])
    assert (result, calls, retries) == ("permanent", [1], [])


def test_should_retry_sees_the_next_wait() -> None:
    seen: list[float] = []

    def should_retry(result: str, wait: float) -> bool:
        seen.append(wait)
        return wait < 0.03

    _, calls, _ = _run(RetryPolicy(limit=6, delay=0.01), ["transient"] * 6, should_retry=should_retry)
    assert seen == [0.01, 0.02, 0.04]
    assert calls == [1, 2, 3]


def test_cancellation_ends_the_backoff_and_the_retries() -> None:
    cancelled = threading.Event()
    calls: list[int] = []

    def attempt(number: int) -> str:
        calls.append(number)
        cancelled.set()  # e.g. on_kill arrives while this attempt runs
        return "transient"

    policy = RetryPolicy(limit=5, delay=3600)
    result = policy.run(attempt, should_retry=lambda r, w: True, on_retry=lambda *a: None, cancelled=cancelled)
    assert result == "transient"
    assert calls == [1]


@pytest.mark.parametrize(("limit", "delay"), [(-1, 1), (True, 1), (2.5, 1), (3, -1), (3, "1")])
def test_invalid_policy_values(limit: Any, delay: Any) -> None:
    with pytest.raises(ValueError, match="retry_"):
        RetryPolicy(limit=limit, delay=delay)


def test_merge_keeps_latest_result_per_node() -> None:
    first = RunSummary(
        nodes=(NodeOutcome("model.p.a", "success", 1.0), NodeOutcome("model.p.c", "error", 0.5, "boom")),
        elapsed=2.0,
        status_counts={"error": 1, "success": 1},
    )
    second = RunSummary(nodes=(NodeOutcome("model.p.c", "success", 0.7),), elapsed=1.5, status_counts={"success": 1})
    merged = merge_summaries(first, second)
    assert {n.unique_id: n.status for n in merged.nodes} == {"model.p.a": "success", "model.p.c": "success"}
    assert merged.status_counts == {"success": 2}
    assert merged.elapsed == pytest.approx(3.5)
    assert merged.failed == []
    assert merge_summaries(None, second) is second
