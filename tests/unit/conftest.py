"""Fixtures shared by unit test modules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pytest

from dlh_airflow_common.dbt import retry_state
from dlh_airflow_common.dbt.channel import ObjectStore


@dataclass
class MemoryState:
    """fsspec's in-memory file system standing in for the bucket, and every (url, conn_id) opened on it."""

    fs: Any
    opened: list[tuple[str, str | None]] = field(default_factory=list)

    @staticmethod
    def path(url: str) -> str:
        return "/" + url.split("://", 1)[1]


@pytest.fixture
def memory_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryState]:
    """Resume state URLs opened on an in-memory ``ObjectStore`` (the store of a remote run channel)."""
    state = MemoryState(fsspec.filesystem("memory"))

    def open_url(url: str, conn_id: str | None) -> ObjectStore:
        state.opened.append((url, conn_id))
        return ObjectStore(state.fs, state.path(url))

    monkeypatch.setattr(retry_state, "open_url", open_url)
    yield state
    if state.fs.exists("/bucket"):
        state.fs.rm("/bucket", recursive=True)
