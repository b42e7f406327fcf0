"""A stand-in for dbt's ``dbtRunner`` in unit tests: records each call, sends event messages to the callbacks."""

from __future__ import annotations

import os
from typing import Any

import pytest


class FakeDbtRunner:
    """Replaces ``dbt.cli.main.dbtRunner``; class attributes hold what it saw and what it answers."""

    calls: list[dict[str, Any]] = []  # args, and the secret env var dbt would have seen while running
    messages: list[Any] = []  # sent to every callback, in order
    outcome: Any = None  # what invoke() returns

    def __init__(self, callbacks: list[Any] | None = None) -> None:
        self.callbacks = callbacks or []

    def invoke(self, args: list[str]) -> Any:
        runner = type(self)
        runner.calls.append({"args": list(args), "secret": os.environ.get("DBT_ENV_SECRET_PASSWORD")})
        for message in runner.messages:
            for callback in self.callbacks:
                callback(message)
        return runner.outcome


def install_fake_runner(
    monkeypatch: pytest.MonkeyPatch, messages: list[Any], runner: type[FakeDbtRunner] = FakeDbtRunner
) -> type[FakeDbtRunner]:
    """Make ``runner`` dbt's ``dbtRunner`` for this test, with no calls yet and these messages."""
    import dbt.cli.main

    monkeypatch.setattr(dbt.cli.main, "dbtRunner", runner)
    monkeypatch.setattr(runner, "calls", [])
    monkeypatch.setattr(runner, "messages", list(messages))
    return runner
