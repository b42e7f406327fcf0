"""Test session set-up: a private AIRFLOW_HOME (set before Airflow is imported) and shared paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ holds plain helper modules (pg_server, dag_runner, repo_paths); make them importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from repo_paths import EXAMPLE_PROJECT

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="dlh-test-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(_AIRFLOW_HOME / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
)
(_AIRFLOW_HOME / "dags").mkdir()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    """Migrate the SQLite metadata DB once per session (``dag.test()`` needs it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return airflow_home


@pytest.fixture
def example_project(tmp_path: Path) -> Iterator[Path]:
    """A private copy of the example dbt project, so tests never write into the repo."""
    copy = tmp_path / "shop"
    shutil.copytree(EXAMPLE_PROJECT, copy, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    yield copy
