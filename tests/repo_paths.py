"""Paths of the repository that tests share (tests/ is on sys.path, see tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = REPO_ROOT / "examples" / "shop"
EXAMPLE_DAGS = REPO_ROOT / "examples" / "dags"
