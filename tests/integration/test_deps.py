"""Cached dbt packages with real dbt: a local package installed once, shared by runs, never in the project."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dlh_airflow_common.dbt.deps import MARKER_FILE
from dlh_airflow_common.hooks.dbt import DbtHook, DbtTaskResult
from modes import MODES
from repo_paths import REPO_ROOT

pytestmark = pytest.mark.integration

CHILD = REPO_ROOT / "tests" / "hook_child.py"
OPT_IN = "\npackages-install-path: \"{{ env_var('DBT_PACKAGES_INSTALL_PATH', 'dbt_packages') }}\"\n"
INSTALLED = "Installed dbt packages into the cache"


def add_local_package(root: Path, name: str, macro: str) -> None:
    package = root / name
    (package / "macros").mkdir(parents=True)
    (package / "dbt_project.yml").write_text(f"name: {name}\nversion: '1.0.0'\nconfig-version: 2\n")
    (package / "macros" / f"{macro}.sql").write_text(f"{{% macro {macro}(x) %}}upper({{{{ x }}}}){{% endmacro %}}\n")


@pytest.fixture
def project(example_project: Path) -> Path:
    """The example project plus ``local: ../some_local_pkg`` and a model using its macro; opted in."""
    add_local_package(example_project.parent, "some_local_pkg", "shout")
    (example_project / "packages.yml").write_text("packages:\n  - local: ../some_local_pkg\n")
    with (example_project / "dbt_project.yml").open("a") as handle:
        handle.write(OPT_IN)
    (example_project / "models" / "uses_package.sql").write_text(
        "select {{ some_local_pkg.shout(\"'quiet'\") }} as word\n"
    )
    return example_project


@pytest.fixture
def conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    database = tmp_path / "deps.duckdb"
    monkeypatch.setenv("AIRFLOW_CONN_DEPS_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(database)}))
    return "deps_duckdb", database


class Captured(logging.Handler):
    """The hook's task log (Airflow's log capture bypasses caplog)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def task_log() -> tuple[logging.Logger, Captured]:
    logger = logging.getLogger(f"test_deps.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Captured()
    logger.addHandler(handler)
    return logger, handler


def project_files(project: Path) -> set[str]:
    return {str(p.relative_to(project)) for p in project.rglob("*") if "target" not in p.relative_to(project).parts}


def deps_entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "deps").iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.mark.parametrize("mode", MODES)
def test_runs_use_the_cached_packages_and_leave_the_project_alone(
    mode: str, project: Path, conn: tuple[str, Path], tmp_path: Path, task_log: tuple[logging.Logger, Captured]
) -> None:
    conn_id, database = conn
    cache_dir = tmp_path / "cache"
    before = project_files(project)
    logger, captured = task_log
    hook = DbtHook(project, conn_id=conn_id, cache_dir=cache_dir, logger=logger, **MODES[mode])
    first = hook.run_dbt_task("run", select="uses_package")
    assert first.success, first.error
    with duckdb.connect(str(database), read_only=True) as con:
        assert con.execute("select word from main.uses_package").fetchone() == ("QUIET",)
    [entry] = deps_entries(cache_dir)
    assert (entry / MARKER_FILE).is_file()
    assert os.readlink(entry / "some_local_pkg") == str(project.parent / "some_local_pkg")
    assert project_files(project) == before, "no dbt_packages/ nor package-lock.yml written into the project"

    assert INSTALLED in captured.text
    captured.lines.clear()
    second = hook.run_dbt_task("run", select="uses_package")
    assert second.success, second.error
    assert deps_entries(cache_dir) == [entry]
    assert INSTALLED not in captured.text and "Using cached dbt packages" in captured.text


def test_changed_packages_get_their_own_entry(project: Path, conn: tuple[str, Path], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    hook = DbtHook(project, conn_id=conn[0], cache_dir=cache_dir)
    assert hook.run_dbt_task("ls").success
    [old] = deps_entries(cache_dir)
    add_local_package(project.parent, "other_pkg", "whisper")
    (project / "packages.yml").write_text("packages:\n  - local: ../some_local_pkg\n  - local: ../other_pkg\n")
    (project / "models" / "uses_other.sql").write_text("select {{ other_pkg.whisper(\"'x'\") }} as word\n")
    result = hook.run_dbt_task("run", select="uses_other")
    assert result.success, result.error
    entries = deps_entries(cache_dir)
    assert len(entries) == 2 and old in entries
    [new] = [e for e in entries if e != old]
    assert {p.name for p in new.iterdir()} == {"some_local_pkg", "other_pkg", MARKER_FILE}
    assert {p.name for p in old.iterdir()} == {"some_local_pkg", MARKER_FILE}, "the old entry is never modified"


def test_a_deps_task_never_touches_the_shared_entry(project: Path, conn: tuple[str, Path], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    hook = DbtHook(project, conn_id=conn[0], cache_dir=cache_dir, keep_target_artifacts=True)
    assert hook.run_dbt_task("ls").success
    [entry] = deps_entries(cache_dir)
    marker = (entry / MARKER_FILE).read_text()
    deps = hook.run_dbt_task("deps")
    assert deps.success, deps.error
    assert (Path(deps.run_dir) / "dbt_packages" / "some_local_pkg").is_symlink(), "dbt deps installed privately"
    assert deps_entries(cache_dir) == [entry]
    assert (entry / MARKER_FILE).read_text() == marker
    assert (entry / "some_local_pkg").is_symlink()


def test_projects_that_do_not_opt_in_are_unchanged(
    example_project: Path, conn: tuple[str, Path], tmp_path: Path
) -> None:
    add_local_package(example_project.parent, "some_local_pkg", "shout")
    (example_project / "packages.yml").write_text("packages:\n  - local: ../some_local_pkg\n")
    hook = DbtHook(example_project, conn_id=conn[0], cache_dir=tmp_path / "cache")
    result = hook.run_dbt_task("ls", raise_on_failure=False)
    assert not result.success, "dbt itself asks for dbt deps, as without the cache"
    assert "dbt deps" in str(result.error)
    assert not (tmp_path / "cache" / "deps").exists()


def test_eight_concurrent_runs_install_once(project: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    env = os.environ.copy()
    env["AIRFLOW_CONN_DEPS_PAR"] = json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "par.duckdb")})
    children: list[subprocess.Popen[str]] = []
    for i in range(8):
        spec: dict[str, Any] = {
            "hook": {"dbt_project_dir": str(project), "conn_id": "deps_par", "cache_dir": str(cache_dir)},
            "run": {"command": "ls", "run_name": f"run_deps_{i}"},
        }
        children.append(subprocess.Popen([sys.executable, str(CHILD), json.dumps(spec)], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    installs = 0
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["success"], result["error"]
        installs += (out + err).count(INSTALLED)
    assert installs == 1, "eight runs, one dbt deps"
    [entry] = deps_entries(cache_dir)
    assert (entry / "some_local_pkg").is_symlink()
    assert not [p for p in (cache_dir / "deps").iterdir() if p.name.startswith(".tmp-")]


def test_cached_packages_keep_partial_parsing(project: Path, conn: tuple[str, Path], tmp_path: Path) -> None:
    hook = DbtHook(project, conn_id=conn[0], cache_dir=tmp_path / "cache", keep_target_artifacts=True)
    results: list[DbtTaskResult] = [hook.run_dbt_task("parse") for _ in range(2)]
    logs = [(Path(r.run_dir) / "logs" / "dbt.log").read_text() for r in results]
    assert "Unable to do partial parsing" in logs[0]
    assert "Partial parsing enabled" in logs[1] and "Unable to do partial parsing" not in logs[1]
