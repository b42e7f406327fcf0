"""Unit tests for dlh_airflow_common.dbt.run_dir: run dir names, creation, fallback and cleanup."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dlh_airflow_common.dbt import run_dir as run_dir_module
from dlh_airflow_common.dbt.run_dir import (
    RunDir,
    create_run_dir,
    private_temp_root,
    run_dir_name,
    sanitize,
)

NOW = datetime(2024, 3, 9, 7, 5, 3, tzinfo=UTC)
LOGGER = "dlh_airflow_common.dbt.run_dir"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile.gettempdir (used by private_temp_root and mkdtemp) at a private directory."""
    root = tmp_path / "systemtmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(root))
    return root


# ---------------------------------------------------------------------------------------------------------
# sanitize / run_dir_name
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("simple_id", "simple_id"),
        ("with-dash.and.dot", "with-dash.and.dot"),
        ("a/b", "a_b"),
        ("../etc/passwd", "__etc_passwd"),
        ("a/../b", "a___b"),
        ("my dag id", "my_dag_id"),
        (".hidden", "hidden"),
        ("...", "_"),
        ("dägé", "d_g"),
        ("データ", "x"),
        ("", "x"),
        ("///", "x"),
        (42, "42"),
    ],
)
def test_sanitize(raw: object, expected: str) -> None:
    assert sanitize(raw) == expected


@pytest.mark.parametrize("raw", ["../../x", "a/../../b", "..", ".", "..\\..", " ../ ", "\u2025x", "a\x00b"])
def test_sanitize_never_escapes_parent(raw: str) -> None:
    cleaned = sanitize(raw)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", cleaned)
    assert ".." not in cleaned
    assert not cleaned.startswith(".")
    assert "/" not in cleaned


def test_sanitize_truncates() -> None:
    assert sanitize("a" * 200) == "a" * 80
    assert sanitize("abcdef", max_length=3) == "abc"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "run_20240309_070503_shop_dbt_run_try1_abcd1234"),
        ({"map_index": 0}, "run_20240309_070503_shop_dbt_run_map0_try1_abcd1234"),
        ({"map_index": 12}, "run_20240309_070503_shop_dbt_run_map12_try1_abcd1234"),
        ({"map_index": -1}, "run_20240309_070503_shop_dbt_run_try1_abcd1234"),
        ({"map_index": None}, "run_20240309_070503_shop_dbt_run_try1_abcd1234"),
    ],
)
def test_run_dir_name_format(kwargs: dict[str, int | None], expected: str) -> None:
    assert run_dir_name("shop", "dbt_run", 1, now=NOW, token="abcd1234", **kwargs) == expected


def test_run_dir_name_converts_to_utc() -> None:
    cet = timezone(timedelta(hours=2))
    local = datetime(2024, 3, 9, 9, 5, 3, tzinfo=cet)
    assert run_dir_name("d", "t", 3, now=local, token="tok").startswith("run_20240309_070503_d_t_try3_tok")


def test_run_dir_name_sanitises_every_part() -> None:
    name = run_dir_name("../team a/dag", "group.task ü", 2, now=NOW, token="../x")
    assert name == "run_20240309_070503___team_a_dag_group.task_try2___x"
    assert "/" not in name
    assert ".." not in name


def test_run_dir_name_random_token_default() -> None:
    names = {run_dir_name("d", "t", 1, now=NOW) for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert re.fullmatch(r"run_20240309_070503_d_t_try1_[0-9a-f]{8}", name)


def test_run_dir_name_defaults_to_current_utc_time() -> None:
    name = run_dir_name("d", "t", 1, token="tok")
    stamp = datetime.strptime(name[len("run_") : len("run_") + 15], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - stamp) < timedelta(hours=1)


# ---------------------------------------------------------------------------------------------------------
# create_run_dir
# ---------------------------------------------------------------------------------------------------------


def test_create_run_dir_under_project_target(project: Path) -> None:
    name = run_dir_name("shop", "dbt_run", 1, now=NOW, token="abc")
    run_dir = create_run_dir(name, project)
    assert run_dir.path == project / "target" / name
    assert run_dir.name == name
    assert run_dir.fallback is False
    assert run_dir.target_path == run_dir.path / "target"
    assert run_dir.log_path == run_dir.path / "logs"
    assert run_dir.target_path.is_dir()
    assert run_dir.log_path.is_dir()
    assert mode_of(run_dir.path) == 0o700


def test_create_run_dir_accepts_str_project(project: Path) -> None:
    run_dir = create_run_dir("run_a", str(project))
    assert run_dir.path == project / "target" / "run_a"
    assert run_dir.path.is_dir()


def test_create_run_dir_root_override(project: Path, tmp_path: Path) -> None:
    root = tmp_path / "elsewhere" / "runs"
    run_dir = create_run_dir("run_b", project, root=root)
    assert run_dir.path == root / "run_b"
    assert run_dir.target_path.is_dir()
    assert not (project / "target").exists()


def test_unique_names_do_not_collide(project: Path) -> None:
    first = create_run_dir(run_dir_name("d", "t", 1, now=NOW), project)
    second = create_run_dir(run_dir_name("d", "t", 1, now=NOW), project)
    assert first.path != second.path
    assert first.path.is_dir()
    assert second.path.is_dir()


def test_existing_run_dir_is_never_reused(project: Path) -> None:
    create_run_dir("run_same", project)
    with pytest.raises(FileExistsError):
        create_run_dir("run_same", project)


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "run dir", "run_\u00e9", "x/../.."])
def test_invalid_run_dir_names_rejected(name: str, project: Path) -> None:
    with pytest.raises(ValueError, match="run dir name"):
        create_run_dir(name, project)
    assert not (project / "target").exists()


def test_long_run_dir_name_from_run_dir_name_is_accepted(project: Path) -> None:
    name = run_dir_name("analytics_daily_refresh", "dbt_build_marts_finance", 1, map_index=3, now=NOW, token="ab12")
    assert len(name) > 80
    run_dir = create_run_dir(name, project)
    assert run_dir.path.name == name


def test_short_run_dir_name_from_run_dir_name_is_accepted(project: Path) -> None:
    name = run_dir_name("../team a/dag", "tâche", 2, map_index=1, now=NOW, token="abcd")
    assert create_run_dir(name, project).path.name == name


# ---------------------------------------------------------------------------------------------------------
# Fallback when the preferred root is not writable
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_fallback_when_make_fails(
    code: int, project: Path, temp_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_make = run_dir_module._make
    calls: list[tuple[Path, bool]] = []

    def fake_make(root: Path, name: str, *, fallback: bool) -> RunDir:
        calls.append((root, fallback))
        if not fallback:
            raise OSError(code, os.strerror(code), str(root))
        return real_make(root, name, fallback=fallback)

    monkeypatch.setattr(run_dir_module, "_make", fake_make)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_dir = create_run_dir("run_fb", project)

    expected_root = temp_root / f"dlh-airflow-dbt-{os.getuid()}"
    assert calls == [(project / "target", False), (expected_root, True)]
    assert run_dir.fallback is True
    assert run_dir.path == expected_root / "run_fb"
    assert run_dir.target_path.is_dir()
    assert run_dir.log_path.is_dir()
    assert mode_of(expected_root) == 0o700
    assert mode_of(run_dir.path) == 0o700
    assert any(
        str(project / "target") in rec.getMessage() and "not writable" in rec.getMessage() for rec in caplog.records
    )


def test_fallback_when_path_mkdir_raises_erofs(project: Path, temp_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preferred = project / "target"
    real_mkdir = Path.mkdir

    def fake_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self == preferred or preferred in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", fake_mkdir)
    run_dir = create_run_dir("run_ro", project)
    assert run_dir.fallback is True
    assert run_dir.path.parent.parent == temp_root
    assert run_dir.target_path.is_dir()
    assert not preferred.exists()


def test_fallback_with_root_override(
    project: Path, tmp_path: Path, temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_make = run_dir_module._make
    ro_root = tmp_path / "ro"

    def fake_make(root: Path, name: str, *, fallback: bool) -> RunDir:
        if root == ro_root:
            raise PermissionError(errno.EACCES, "Permission denied", str(root))
        return real_make(root, name, fallback=fallback)

    monkeypatch.setattr(run_dir_module, "_make", fake_make)
    run_dir = create_run_dir("run_c", project, root=ro_root)
    assert run_dir.fallback is True
    assert temp_root in run_dir.path.parents


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.ENAMETOOLONG])
def test_other_os_errors_propagate(code: int, project: Path, temp_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fallback_calls: list[bool] = []

    def fake_make(root: Path, name: str, *, fallback: bool) -> RunDir:
        fallback_calls.append(fallback)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(run_dir_module, "_make", fake_make)
    with pytest.raises(OSError) as excinfo:
        create_run_dir("run_d", project)
    assert excinfo.value.errno == code
    assert fallback_calls == [False]
    assert list(temp_root.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# private_temp_root
# ---------------------------------------------------------------------------------------------------------


def test_private_temp_root_created_0700(temp_root: Path) -> None:
    root = private_temp_root()
    assert root == temp_root / f"dlh-airflow-dbt-{os.getuid()}"
    assert root.is_dir()
    assert mode_of(root) == 0o700
    assert private_temp_root() == root  # reused on the next call


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o707, 0o750])
def test_private_temp_root_refuses_open_dir(mode: int, temp_root: Path) -> None:
    shared = temp_root / f"dlh-airflow-dbt-{os.getuid()}"
    shared.mkdir()
    shared.chmod(mode)
    root = private_temp_root()
    assert root != shared
    assert root.is_dir()
    assert root.parent == temp_root
    assert root.name.startswith("dlh-airflow-dbt-")
    assert mode_of(root) == 0o700
    assert mode_of(shared) == mode  # the existing directory is left alone


def test_private_temp_root_refuses_symlink(temp_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "attacker_dir"
    target.mkdir(mode=0o700)
    (temp_root / f"dlh-airflow-dbt-{os.getuid()}").symlink_to(target)
    root = private_temp_root()
    assert root.resolve() != target.resolve()
    assert not root.is_symlink()
    assert mode_of(root) == 0o700


def test_private_temp_root_refuses_regular_file(temp_root: Path) -> None:
    (temp_root / f"dlh-airflow-dbt-{os.getuid()}").write_text("not a dir")
    root = private_temp_root()
    assert root.is_dir()
    assert root.name != f"dlh-airflow-dbt-{os.getuid()}"


# ---------------------------------------------------------------------------------------------------------
# cleanup
# ---------------------------------------------------------------------------------------------------------


def test_cleanup_removes_dir(project: Path) -> None:
    run_dir = create_run_dir("run_clean", project)
    (run_dir.target_path / "manifest.json").write_text("{}")
    assert run_dir.cleanup() is True
    assert not run_dir.path.exists()
    assert (project / "target").is_dir()


def test_cleanup_of_missing_dir_is_true(tmp_path: Path) -> None:
    assert RunDir(path=tmp_path / "never_created").cleanup() is True


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EBUSY, "Device or resource busy"),
    ],
)
def test_cleanup_failure_logged_not_raised(
    error: OSError, project: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = create_run_dir("run_stuck", project)

    def failing_rmtree(path: object, *args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(shutil, "rmtree", failing_rmtree)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert run_dir.cleanup() is False
    assert run_dir.path.is_dir()
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING and rec.name == LOGGER]
    assert len(warnings) == 1
    assert str(run_dir.path) in warnings[0].getMessage()
    assert error.strerror in warnings[0].getMessage()


# ---------------------------------------------------------------------------------------------------------
# owner.json
# ---------------------------------------------------------------------------------------------------------


def test_create_run_dir_records_its_owner(project: Path) -> None:
    import json
    import socket
    import time

    from dlh_airflow_common.dbt.processes import process_start_ticks

    before = time.time()
    run_dir = create_run_dir("run_owner", project)
    owner = json.loads((run_dir.path / run_dir_module.OWNER_FILE).read_text())
    assert owner["pid"] == os.getpid() and owner["start_ticks"] == process_start_ticks(os.getpid())
    assert owner["host"] == socket.gethostname()
    assert before <= owner["created_at"] <= time.time()
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["logs", "owner.json", "target"]


def test_disown_drops_the_owner_marker_and_keeps_everything_else(project: Path) -> None:
    run_dir = create_run_dir("run_kept", project)
    (run_dir.target_path / "manifest.json").write_text("{}")
    run_dir.disown()
    run_dir.disown()  # twice is fine
    assert not (run_dir.path / run_dir_module.OWNER_FILE).exists()
    assert (run_dir.target_path / "manifest.json").is_file()
