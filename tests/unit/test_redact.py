"""Unit tests for dlh_airflow_common.dbt.redact: masking secret values."""

from __future__ import annotations

import pytest

from dlh_airflow_common.dbt.artifacts import NodeOutcome, RunSummary
from dlh_airflow_common.dbt.redact import MASK, SECRET_ENV_PREFIX, Redactor


def test_masks_every_occurrence() -> None:
    redact = Redactor(["hunter2"])
    assert redact("pw=hunter2 again hunter2, and hunter2hunter2") == f"pw={MASK} again {MASK}, and {MASK}{MASK}"


def test_masks_several_secrets() -> None:
    redact = Redactor(["alpha-key", "beta-token"])
    assert redact("a=alpha-key b=beta-token") == f"a={MASK} b={MASK}"


def test_text_without_secrets_unchanged() -> None:
    text = "nothing to hide here"
    assert Redactor(["hunter2"])(text) == text
    assert Redactor([])(text) == text


@pytest.mark.parametrize("order", [["abc", "abcdef"], ["abcdef", "abc"]])
def test_longest_secret_masked_first(order: list[str]) -> None:
    redact = Redactor(order)
    assert redact.secrets == ["abcdef", "abc"]
    assert redact("x abcdef y abc z") == f"x {MASK} y {MASK} z"


def test_overlapping_secret_leaves_no_suffix() -> None:
    assert Redactor(["pass", "password123"])("login with password123") == f"login with {MASK}"


@pytest.mark.parametrize("short", ["", "a", "ab"])
def test_short_secrets_ignored(short: str) -> None:
    redact = Redactor([short, "longer-secret"])
    assert redact.secrets == ["longer-secret"]
    assert redact("a b ab abc longer-secret") == f"a b ab abc {MASK}"


def test_three_character_secret_masked() -> None:
    assert Redactor(["xyz"])("axyzb") == f"a{MASK}b"


def test_duplicate_secrets_deduplicated() -> None:
    assert Redactor(["same-secret", "same-secret"]).secrets == ["same-secret"]


def test_from_env_only_uses_secret_prefix() -> None:
    env = {
        f"{SECRET_ENV_PREFIX}PASSWORD": "pg-password-1",
        f"{SECRET_ENV_PREFIX}TOKEN": "tok-abc-123",
        "DBT_ENV_SECRETS_X": "not-a-secret-1",
        "DBT_ENV_SECRET": "not-a-secret-2",
        "dbt_env_secret_lower": "not-a-secret-3",
        "PASSWORD": "not-a-secret-4",
        "DBT_PROFILES_DIR": "/tmp/profiles",
    }
    redact = Redactor.from_env(env)
    assert sorted(redact.secrets) == ["pg-password-1", "tok-abc-123"]
    text = " ".join(env.values())
    masked = redact(text)
    assert "pg-password-1" not in masked
    assert "tok-abc-123" not in masked
    for kept in ("not-a-secret-1", "not-a-secret-2", "not-a-secret-3", "not-a-secret-4", "/tmp/profiles"):
        assert kept in masked


def test_from_env_ignores_short_values() -> None:
    assert Redactor.from_env({f"{SECRET_ENV_PREFIX}A": "x", f"{SECRET_ENV_PREFIX}B": ""}).secrets == []


def test_summary_masks_node_messages() -> None:
    summary = RunSummary(
        nodes=(
            NodeOutcome("model.p.a", "error", 1.5, 'FATAL: password authentication failed: "hunter22"', 2),
            NodeOutcome("model.p.b", "success", 0.5, None),
            NodeOutcome("model.p.c", "success", 0.5, "clean message"),
        ),
        elapsed=2.0,
        invocation_id="inv",
        status_counts={"error": 1, "success": 2},
    )
    masked = Redactor(["hunter22"]).summary(summary)
    assert masked.nodes[0] == NodeOutcome(
        "model.p.a", "error", 1.5, f'FATAL: password authentication failed: "{MASK}"', 2
    )
    assert masked.nodes[1:] == summary.nodes[1:]
    assert masked.elapsed == 2.0
    assert masked.invocation_id == "inv"
    assert masked.status_counts == summary.status_counts
    assert "hunter22" in (summary.nodes[0].message or "")  # the original is not mutated
    assert "hunter22" not in str(masked.to_dict())


def test_summary_without_secrets_is_unchanged() -> None:
    summary = RunSummary(nodes=(NodeOutcome("model.p.a", "error", 1.0, "hunter22"),))
    assert Redactor([]).summary(summary) is summary
