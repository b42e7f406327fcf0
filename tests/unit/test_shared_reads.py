"""Unit tests for dlh_airflow_common.task_graph.shared_reads: many waiters, one fetch per interval."""

from __future__ import annotations

import asyncio

from dlh_airflow_common.task_graph import shared_reads


def test_waiters_share_each_fetch_and_a_failed_fetch_keeps_the_last_value() -> None:
    answers: list[object] = [1, RuntimeError("store down"), 3]
    fetched: list[int] = []

    async def fetch() -> int:
        fetched.append(len(fetched))
        await asyncio.sleep(0.01)
        answer = answers[min(len(fetched), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, int)
        return answer

    async def scenario() -> list[list[int | None]]:
        shared = [shared_reads.acquire("k", fetch, "the thing") for _ in range(20)]
        assert len({id(s) for s in shared}) == 1, "one entry per key and loop"
        rounds = []
        for _ in range(3):
            rounds.append(list(await asyncio.gather(*(s.read(max_age=0.05) for s in shared))))
            await asyncio.sleep(0.06)
        for entry in shared:
            shared_reads.release("k", entry)
        return rounds

    rounds = asyncio.run(scenario())
    assert len(fetched) == 3, "20 readers, 3 rounds: one fetch a round"
    assert rounds == [[1] * 20, [1] * 20, [3] * 20], "the failed fetch kept the value before it"
    assert not shared_reads._SHARED, "the last user removes the entry"
