"""classify_dbt_error against real dbt failures recorded by scripts/capture_error_corpus.py."""

from __future__ import annotations

import builtins
import json
from typing import Any

import pytest

from dlh_airflow_common.exceptions import dbt as dbt_exceptions
from dlh_airflow_common.exceptions.dbt import classify_dbt_error
from repo_paths import REPO_ROOT

CORPUS = json.loads((REPO_ROOT / "tests" / "data" / "error_corpus.json").read_text())
CASES = CORPUS["cases"]


def _exception(recorded: dict[str, Any]) -> BaseException:
    """An exception whose class names and MRO match what dbt raised (classification reads only names)."""
    base: type[BaseException] = Exception
    for name in reversed(recorded["mro"]):
        if hasattr(builtins, name):
            continue
        base = type(name, (base,), {})
    return base(recorded["message"])


def _failures(case: dict[str, Any]) -> list[Any]:
    """What the hook hands the classifier: the exception (in-process only), then the error events."""
    items: list[Any] = [_exception(case["exception"])] if case.get("exception") else []
    return items + case["events"]


def test_corpus_covers_every_failure_kind_in_both_modes() -> None:
    kinds = {(c["name"], c["mode"]) for c in CASES}
    for name in ("compile_error", "missing_ref", "bad_profile", "wrong_password", "connection_refused",
                 "unknown_database", "sql_runtime_error", "failing_data_test", "permission_denied"):  # fmt: skip
        assert {(name, "cli"), (name, "inprocess")} <= kinds, name


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c['name']}-{c.get('variant')}-{c['adapter']}-{c['mode']}" for c in CASES]
)
def test_classification_matches_recorded_failure(case: dict[str, Any]) -> None:
    error = classify_dbt_error(_failures(case), conn_id="corpus_conn")
    expected = getattr(dbt_exceptions, case["expected"])
    assert type(error) is expected, f"{case['name']}: got {type(error).__name__}: {error}"
    assert error.conn_id == "corpus_conn"
    assert error.retryable is (case["name"] == "connection_refused")
    assert "\x1b[" not in str(error)
    node_ids = {e["data"]["node_info"]["unique_id"] for e in case["events"] if (e.get("data") or {}).get("node_info")}
    if node_ids:
        assert error.node_id in node_ids
        assert str(error).strip()


@pytest.mark.parametrize("case", [c for c in CASES if c["mode"] == "inprocess" and c.get("exception")],
                         ids=lambda c: f"{c['name']}-{c.get('variant')}")  # fmt: skip
def test_exception_alone_is_enough(case: dict[str, Any]) -> None:
    """In-process, the exception by itself (no events) must classify the same way."""
    error = classify_dbt_error(_exception(case["exception"]))
    assert type(error).__name__ == case["expected"]
