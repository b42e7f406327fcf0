"""Unit tests for dlh_airflow_common.dbt.run_dir_sweep, with real (dead and live) processes as owners."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlh_airflow_common.dbt import run_dir_sweep
from dlh_airflow_common.dbt.detached import DBT_PROCESS_FILE, PROCESS_FILE, STATUS_FILE, write_json_atomic
from dlh_airflow_common.dbt.processes import ProcessRecord
from dlh_airflow_common.dbt.run_dir import OWNER_FILE, create_run_dir
from dlh_airflow_common.dbt.run_dir_sweep import sweep_run_dirs

HOUR = 3600.0
LOGGER = "tests.sweep"


@pytest.fixture(scope="module")
def dead() -> ProcessRecord:
    """The record of a process that has ended (its pid is not reused while the module runs, or is another one)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    record = ProcessRecord.of(child.pid)
    child.kill()
    child.wait(timeout=30)
    return record


@pytest.fixture
def live() -> Iterator[ProcessRecord]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield ProcessRecord.of(child.pid)
    child.kill()
    child.wait(timeout=30)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    return path


def orphan(root: Path, name: str, owner: ProcessRecord, *, idle: float = 2 * HOUR) -> Path:
    """A run dir as a killed task leaves it: files inside, owned by ``owner``, last touched ``idle`` s ago."""
    path = create_run_dir(name, root.parent, root).path
    (path / "target" / "manifest.json").write_text("{}")
    (path / "profile").mkdir()
    write_json_atomic(path / OWNER_FILE, {**owner.to_dict(), "created_at": time.time() - idle})
    age(path, idle)
    return path


def age(path: Path, idle: float) -> None:
    then = time.time() - idle
    for name in (OWNER_FILE, STATUS_FILE, ""):
        target = path / name if name else path
        if target.exists():
            os.utime(target, (then, then))


def sweep(root: Path, max_age: float = HOUR) -> list[str]:
    return [p.name for p in sweep_run_dirs(root, max_age, logging.getLogger(LOGGER))]


def test_an_orphan_is_removed_and_logged_once(
    root: Path, dead: ProcessRecord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = orphan(root, "run_1", dead)
    assert sweep(root) == ["run_1"]
    assert not path.exists()
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and str(path) in lines[0] and r"idle for" in lines[0]
    assert sweep(root) == [], "nothing left to sweep"


def test_a_finished_detached_run_nobody_collected_is_removed(root: Path, dead: ProcessRecord) -> None:
    path = orphan(root, "run_detached", dead)
    write_json_atomic(path / PROCESS_FILE, {**dead.to_dict(), "pgid": dead.pid, "run_dir": str(path)})
    write_json_atomic(path / DBT_PROCESS_FILE, {**dead.to_dict(), "pdeathsig": True})
    write_json_atomic(path / STATUS_FILE, {"exit_code": 0})
    age(path, 2 * HOUR)
    assert sweep(root) == ["run_detached"]


def test_the_run_dir_of_a_live_owner_is_kept(root: Path) -> None:
    path = create_run_dir("run_mine", root.parent, root).path
    age(path, 2 * HOUR)
    assert sweep(root, max_age=0.0) == []
    assert path.is_dir()


@pytest.mark.parametrize("who", [PROCESS_FILE, DBT_PROCESS_FILE])
def test_a_run_dir_whose_runner_or_dbt_still_runs_is_kept(
    root: Path, dead: ProcessRecord, live: ProcessRecord, who: str
) -> None:
    path = orphan(root, "run_busy", dead)
    write_json_atomic(path / who, live.to_dict())
    age(path, 2 * HOUR)
    assert sweep(root) == []
    assert path.is_dir()


def test_recent_activity_keeps_a_run_dir(root: Path, dead: ProcessRecord) -> None:
    orphan(root, "run_recent", dead, idle=60.0)
    assert sweep(root) == []
    path = orphan(root, "run_status_recent", dead)
    write_json_atomic(path / STATUS_FILE, {"exit_code": 0})  # dbt ended a moment ago: execute_complete is due
    assert sweep(root) == []


def test_run_dirs_of_another_host_or_without_owner_are_never_touched(root: Path, dead: ProcessRecord) -> None:
    elsewhere = orphan(root, "run_elsewhere", ProcessRecord(dead.pid, dead.start_ticks, "worker-7.example"))
    kept = orphan(root, "run_kept", dead)
    (kept / OWNER_FILE).unlink()  # what the hook does when it keeps a run dir for the user
    garbled = orphan(root, "run_garbled", dead)
    (garbled / OWNER_FILE).write_text('{"pid": 1')
    for path in (elsewhere, kept, garbled):
        age(path, 2 * HOUR)
    assert sweep(root, max_age=0.0) == []
    assert elsewhere.is_dir() and kept.is_dir() and garbled.is_dir()


def test_only_run_dirs_directly_under_the_root_are_swept(root: Path, tmp_path: Path, dead: ProcessRecord) -> None:
    (tmp_path / "elsewhere").mkdir()
    outside = orphan(tmp_path / "elsewhere", "run_out", dead)
    (root / "run_link").symlink_to(outside, target_is_directory=True)
    not_a_run = orphan(root, "keep_me", dead)
    (root / "run_file").write_text("not a dir")
    nested = root / ".dlh_cache"
    nested.mkdir()
    inner = orphan(nested, "run_inner", dead)
    assert sweep(root, max_age=0.0) == []
    assert outside.is_dir() and not_a_run.is_dir() and inner.is_dir() and (root / "run_link").is_symlink()


def test_the_sweep_never_raises(
    root: Path, dead: ProcessRecord, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert sweep(root.parent / "missing") == []
    orphan(root, "run_stuck", dead)

    def refuse(path: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(run_dir_sweep.shutil, "rmtree", refuse)
    assert sweep(root) == []
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "run_stuck" in warnings[0] and "Permission denied" in warnings[0]
    monkeypatch.undo()
    assert sweep(root) == ["run_stuck"]
