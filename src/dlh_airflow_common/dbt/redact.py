"""Last line of defence against secrets in logs, messages and XCom: replace known secret values."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from dlh_airflow_common.dbt.artifacts import RunSummary

SECRET_ENV_PREFIX = "DBT_ENV_SECRET_"
MASK = "*****"
_MIN_SECRET_LENGTH = 3  # masking one or two characters would shred ordinary text


class Redactor:
    """Masks every occurrence of the given secret values (longest first, so overlaps mask fully)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Redactor:
        """Secrets are the values of ``DBT_ENV_SECRET_*`` variables, the same rule dbt applies."""
        return cls(value for key, value in env.items() if key.startswith(SECRET_ENV_PREFIX))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def summary(self, summary: RunSummary) -> RunSummary:
        if not self.secrets:
            return summary
        nodes = tuple(
            dataclasses.replace(node, message=self(node.message)) if node.message else node for node in summary.nodes
        )
        return dataclasses.replace(summary, nodes=nodes)
