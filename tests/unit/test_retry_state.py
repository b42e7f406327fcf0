"""State kept between Airflow tries for retry_from_failure: where, what, and how a try resumes.

Every format test runs on both stores: a local directory and fsspec's in-memory object store (the same
``ObjectStore`` that holds it under a remote run channel).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from dlh_airflow_common.dbt import retry_state
from dlh_airflow_common.dbt.channel import ChannelStore, LocalStore, ObjectStore
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.dbt.retry_state import STATE_DIR_NAME, STATE_SUBDIR, resume_state_dir, resume_state_url


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, msg: str, *args: Any) -> None:
        self.warnings.append(msg % args)


class _BrokenStore:
    """A store whose every request fails, like an object store that is down or refuses the credentials."""

    root = "s3://bucket/state"

    def read(self, name: str) -> bytes | None:
        raise PermissionError("AccessDenied")

    def write(self, name: str, data: bytes) -> None:
        raise ConnectionError("endpoint unreachable")

    def remove(self) -> None:
        raise ConnectionError("endpoint unreachable")


@pytest.fixture(params=["local", "object"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChannelStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "state", owned=True)
        return
    fs = fsspec.filesystem("memory")
    root = f"/state-{id(tmp_path)}"
    yield ObjectStore(fs, root)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _run_dir(tmp_path: Path, name: str = "run") -> Path:
    run_dir = tmp_path / name
    (run_dir / "target").mkdir(parents=True)
    return run_dir


def _results(target: Path, *statuses: str, message: str = "") -> None:
    results = [{"unique_id": f"model.p.m{i}", "status": s, "message": message} for i, s in enumerate(statuses)]
    (target / "run_results.json").write_text(json.dumps({"results": results, "args": {"which": "build"}}))


def test_state_dir_is_keyed_and_sanitised(tmp_path: Path) -> None:
    state = resume_state_dir(tmp_path, "my/dag", "task..x", "manual__2025-01-01T00:00:00+00:00", "map-1")
    assert state.parent.parent.parent.parent == tmp_path / STATE_DIR_NAME
    assert all(".." not in part and "/" not in part for part in state.relative_to(tmp_path).parts)


def test_state_url_uses_the_same_keys_under_the_channel(tmp_path: Path) -> None:
    key = ("my/dag", "task..x", "manual__2025-01-01T00:00:00+00:00", "map-1")
    url = resume_state_url("s3://bucket/runs/", *key)
    local = resume_state_dir(tmp_path, *key).relative_to(tmp_path)
    assert url == f"s3://bucket/runs/{local.as_posix()}"


def test_read_only_root_falls_back_to_private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "private"
    private.mkdir()
    monkeypatch.setattr(retry_state, "private_temp_root", lambda: private)
    blocked = tmp_path / "file_not_dir"
    blocked.write_text("x")  # mkdir below a file fails like a read-only mount
    state = resume_state_dir(blocked, "dag", "task")
    assert state == private / STATE_DIR_NAME / "dag" / "task"


def test_open_state_gives_a_local_dir_or_the_url_store(tmp_path: Path) -> None:
    local = retry_state.open_state(tmp_path / "state")
    assert isinstance(local, LocalStore) and local.owned and local.root == tmp_path / "state"
    shared = retry_state.open_state(f"file://{tmp_path}/shared/.dlh_state/d")
    assert isinstance(shared, LocalStore) and shared.root == tmp_path / "shared" / ".dlh_state" / "d"
    log = _Log()
    assert retry_state.open_state("nosuchscheme://bucket/x", log=log) is None
    assert log.warnings and "nosuchscheme://bucket/x" in log.warnings[0]


def test_complete_run_resumes_with_dbt_retry(tmp_path: Path, store: ChannelStore) -> None:
    first = _run_dir(tmp_path, "first")
    _results(first / "target", "success", "error", "skipped")
    assert retry_state.save(store, first / "target", complete=True)
    second = _run_dir(tmp_path, "second")
    assert retry_state.restore(store, second) == "retry"
    assert json.loads((second / "target" / "run_results.json").read_text())["results"][1]["status"] == "error"


def test_stopped_run_resumes_without_succeeded_nodes(tmp_path: Path, store: ChannelStore) -> None:
    first = _run_dir(tmp_path, "first")
    _results(first / "target", "success")
    assert retry_state.save(store, first / "target", complete=False)
    second = _run_dir(tmp_path, "second")
    assert retry_state.restore(store, second) == "exclude-succeeded"
    assert (second / STATE_SUBDIR / "run_results.json").is_file()
    assert not (second / "target" / "run_results.json").exists(), "dbt retry must not pick it up by accident"


def test_nothing_to_resume(tmp_path: Path, store: ChannelStore) -> None:
    run_dir = _run_dir(tmp_path)
    assert retry_state.restore(store, run_dir) is None
    assert retry_state.save(store, run_dir / "target", complete=True) is False, "no run_results"
    (run_dir / "target" / "run_results.json").write_text("{not json")
    assert retry_state.save(store, run_dir / "target", complete=True) is False, "a corrupt file is never kept"
    store.write("run_results.json", b"{not json")
    store.write("resume.json", b'{"complete": true}')
    assert retry_state.restore(store, run_dir) is None
    store.write("run_results.json", b'{"results": []}')
    assert retry_state.restore(store, run_dir) is None


def test_a_save_cut_short_between_its_writes_is_not_resumed(tmp_path: Path, store: ChannelStore) -> None:
    """The marker holds the results' digest: new results beside an older marker are unusable, not misread."""
    run_dir = _run_dir(tmp_path)
    _results(run_dir / "target", "error")
    assert retry_state.save(store, run_dir / "target", complete=True)
    store.write("run_results.json", json.dumps({"results": [{"unique_id": "model.p.x", "status": "success"}]}).encode())
    assert retry_state.restore(store, _run_dir(tmp_path, "next")) is None


def test_save_replaces_and_clear_removes(tmp_path: Path, store: ChannelStore) -> None:
    run_dir = _run_dir(tmp_path)
    _results(run_dir / "target", "error")
    retry_state.save(store, run_dir / "target", complete=True)
    _results(run_dir / "target", "success", "error")
    retry_state.save(store, run_dir / "target", complete=False)
    assert len(json.loads(store.read("run_results.json") or b"{}")["results"]) == 2
    assert retry_state.clear(store)
    assert store.read("run_results.json") is None and store.read("resume.json") is None
    assert retry_state.clear(store), "clearing twice is fine"


def test_local_save_leaves_no_temp_files(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    state = tmp_path / "state"
    _results(run_dir / "target", "error")
    retry_state.save(LocalStore(state, owned=True), run_dir / "target", complete=True)
    assert sorted(p.name for p in state.iterdir()) == ["resume.json", "run_results.json"]
    retry_state.clear(LocalStore(state, owned=True))
    assert not state.exists()


def test_secrets_are_masked_in_the_kept_results(tmp_path: Path, store: ChannelStore) -> None:
    run_dir = _run_dir(tmp_path)
    _results(run_dir / "target", "error", message='password "s3cr3t-"pw" rejected')
    redact = Redactor(['s3cr3t-"pw'])
    assert retry_state.save(store, run_dir / "target", complete=True, redact=redact)
    kept = store.read("run_results.json") or b""
    assert b"s3cr3t" not in kept and json.loads(kept)["results"][0]["message"] == 'password "*****" rejected'
    assert retry_state.restore(store, _run_dir(tmp_path, "next")) == "retry", "the masked copy is still usable"


def test_a_failing_store_never_fails_the_try(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    _results(run_dir / "target", "error")
    log = _Log()
    broken = _BrokenStore()
    assert retry_state.restore(broken, run_dir, log=log) is None
    assert retry_state.save(broken, run_dir / "target", complete=True, log=log) is False
    assert retry_state.clear(broken, log=log) is False
    assert len(log.warnings) == 3 and all("s3://bucket/state" in line for line in log.warnings), log.warnings
    assert "AccessDenied" in log.warnings[0] and "endpoint unreachable" in log.warnings[1]
