"""Retrying transient dbt failures inside one task try: exponential backoff (tenacity), then ``dbt retry``."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, stop_after_attempt

from dlh_airflow_common.dbt.artifacts import RunSummary

T = TypeVar("T")
MAX_DELAY_SECONDS = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """``limit`` attempts in all; waits ``delay``, 2x``delay``, 4x``delay``... capped at ``max_delay``."""

    limit: int = 3
    delay: float = 1.0
    max_delay: float = MAX_DELAY_SECONDS

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise ValueError(f"retry_limit must be a whole number >= 0, got {self.limit!r}")
        if isinstance(self.delay, bool) or not isinstance(self.delay, int | float) or self.delay < 0:
            raise ValueError(f"retry_delay must be a number of seconds >= 0, got {self.delay!r}")

    @property
    def attempts(self) -> int:
        return max(1, self.limit)

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.delay * 2 ** (attempt - 1)))

    def run(
        self,
        attempt: Callable[[int], T],
        *,
        should_retry: Callable[[T, float], bool],
        on_retry: Callable[[int, int, T, float], None],
        cancelled: threading.Event,
    ) -> T:
        """Call ``attempt(n)`` until it succeeds, ``should_retry(result, next_wait)`` says no, or attempts run out.

        The backoff sleeps on ``cancelled``, so a kill during the wait ends it at once.
        """

        def wait(state: RetryCallState) -> float:
            return self.wait_before(state.attempt_number)

        def retry(state: RetryCallState) -> bool:
            outcome = state.outcome
            if outcome is None or outcome.failed or cancelled.is_set():
                return False
            return should_retry(outcome.result(), self.wait_before(state.attempt_number))

        def before_sleep(state: RetryCallState) -> None:
            assert state.outcome is not None and state.next_action is not None
            on_retry(state.attempt_number, self.attempts, state.outcome.result(), state.next_action.sleep)

        def sleep(seconds: float) -> None:
            cancelled.wait(seconds)

        def counted() -> T:
            return attempt(retrying.statistics.get("attempt_number", 1))

        retrying: Retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait,
            retry=retry,
            before_sleep=before_sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            sleep=sleep,
            reraise=True,
        )
        return retrying(counted)


def merge_summaries(earlier: RunSummary | None, later: RunSummary) -> RunSummary:
    """Combine attempts: a node's latest result wins; nodes only the earlier attempt ran are kept."""
    if earlier is None:
        return later
    by_id: dict[str, Any] = {node.unique_id: node for node in earlier.nodes}
    by_id.update({node.unique_id: node for node in later.nodes})
    nodes = tuple(by_id.values())
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.status] = counts.get(node.status, 0) + 1
    elapsed = (earlier.elapsed or 0.0) + (later.elapsed or 0.0) if earlier.elapsed or later.elapsed else None
    return dataclasses.replace(later, nodes=nodes, elapsed=elapsed, status_counts=dict(sorted(counts.items())))
