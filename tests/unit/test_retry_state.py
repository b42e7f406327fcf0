"""State kept between Airflow tries for retry_from_failure: where, what, and how a try resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlh_airflow_common.dbt import retry_state
from dlh_airflow_common.dbt.retry_state import STATE_DIR_NAME, STATE_SUBDIR, resume_state_dir


def _run_dir(tmp_path: Path, name: str = "run") -> Path:
    run_dir = tmp_path / name
    (run_dir / "target").mkdir(parents=True)
    return run_dir


def _results(target: Path, *statuses: str) -> None:
    results = [{"unique_id": f"model.p.m{i}", "status": s} for i, s in enumerate(statuses)]
    (target / "run_results.json").write_text(json.dumps({"results": results, "args": {"which": "build"}}))


def test_state_dir_is_keyed_and_sanitised(tmp_path: Path) -> None:
    state = resume_state_dir(tmp_path, "my/dag", "task..x", "manual__2025-01-01T00:00:00+00:00", "map-1")
    assert state.parent.parent.parent.parent == tmp_path / STATE_DIR_NAME
    assert all(".." not in part and "/" not in part for part in state.relative_to(tmp_path).parts)


def test_read_only_root_falls_back_to_private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "private"
    private.mkdir()
    monkeypatch.setattr(retry_state, "private_temp_root", lambda: private)
    blocked = tmp_path / "file_not_dir"
    blocked.write_text("x")  # mkdir below a file fails like a read-only mount
    state = resume_state_dir(blocked, "dag", "task")
    assert state == private / STATE_DIR_NAME / "dag" / "task"


def test_complete_run_resumes_with_dbt_retry(tmp_path: Path) -> None:
    first = _run_dir(tmp_path, "first")
    _results(first / "target", "success", "error", "skipped")
    state = tmp_path / "state"
    assert retry_state.save(state, first / "target", complete=True)
    second = _run_dir(tmp_path, "second")
    assert retry_state.restore(state, second) == "retry"
    assert json.loads((second / "target" / "run_results.json").read_text())["results"][1]["status"] == "error"


def test_stopped_run_resumes_without_succeeded_nodes(tmp_path: Path) -> None:
    first = _run_dir(tmp_path, "first")
    _results(first / "target", "success")
    state = tmp_path / "state"
    assert retry_state.save(state, first / "target", complete=False)
    second = _run_dir(tmp_path, "second")
    assert retry_state.restore(state, second) == "exclude-succeeded"
    assert (second / STATE_SUBDIR / "run_results.json").is_file()
    assert not (second / "target" / "run_results.json").exists(), "dbt retry must not pick it up by accident"


def test_nothing_to_resume(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    assert retry_state.restore(tmp_path / "missing", run_dir) is None
    assert retry_state.save(tmp_path / "state", run_dir / "target", complete=True) is False, "no run_results"
    state = tmp_path / "corrupt"
    state.mkdir()
    (state / "run_results.json").write_text("{not json")
    (state / "resume.json").write_text('{"complete": true}')
    assert retry_state.restore(state, run_dir) is None
    (state / "run_results.json").write_text('{"results": []}')
    assert retry_state.restore(state, run_dir) is None


def test_save_replaces_atomically_and_clear_removes(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    state = tmp_path / "state"
    _results(run_dir / "target", "error")
    retry_state.save(state, run_dir / "target", complete=True)
    _results(run_dir / "target", "success", "error")
    retry_state.save(state, run_dir / "target", complete=False)
    assert sorted(p.name for p in state.iterdir()) == ["resume.json", "run_results.json"], "no temp files left"
    assert len(json.loads((state / "run_results.json").read_text())["results"]) == 2
    retry_state.clear(state)
    assert not state.exists()
