"""Unit tests for dlh_airflow_common.dbt.profiles_file: the short-lived generated profiles.yml."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

import pytest
import yaml

from dlh_airflow_common.dbt.profiles_file import PROFILES_FILE, temporary_profiles_dir

TARGET = {
    "type": "postgres",
    "host": "db.internal",
    "user": "dbt",
    "password": "{{ env_var('DBT_ENV_SECRET_PASSWORD') }}",
    "port": 5432,
    "dbname": "analytics",
    "schema": "public",
}


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep mkdtemp inside the test's tmp_path so leftovers are detectable."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(root))
    return root


def test_file_and_directory_permissions() -> None:
    with temporary_profiles_dir("shop", "dev", TARGET) as directory:
        profiles = directory / PROFILES_FILE
        assert directory.is_dir()
        assert profiles.is_file()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
        assert [p.name for p in directory.iterdir()] == [PROFILES_FILE]


def test_yaml_content_shape() -> None:
    with temporary_profiles_dir("shop", "prod", TARGET) as directory:
        text = (directory / PROFILES_FILE).read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    assert document == {"shop": {"target": "prod", "outputs": {"prod": TARGET}}}
    assert list(document["shop"]) == ["target", "outputs"]


def test_directory_removed_afterwards(private_tmp: Path) -> None:
    with temporary_profiles_dir("shop", "dev", TARGET) as directory:
        assert directory.parent == private_tmp
        assert directory.name.startswith("dlh-dbt-profile-")
    assert not directory.exists()
    assert list(private_tmp.iterdir()) == []


def test_directory_removed_when_body_raises(private_tmp: Path) -> None:
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="dbt blew up"), temporary_profiles_dir("shop", "dev", TARGET) as directory:
        seen.append(directory)
        assert (directory / PROFILES_FILE).exists()
        raise RuntimeError("dbt blew up")
    assert len(seen) == 1
    assert not seen[0].exists()
    assert list(private_tmp.iterdir()) == []


def test_directory_removed_when_body_deletes_file(private_tmp: Path) -> None:
    with temporary_profiles_dir("shop", "dev", TARGET) as directory:
        (directory / PROFILES_FILE).unlink()
        (directory / "extra.txt").write_text("x")
    assert not directory.exists()


def test_each_use_gets_its_own_directory() -> None:
    with (
        temporary_profiles_dir("a", "dev", TARGET) as first,
        temporary_profiles_dir("b", "dev", TARGET) as second,
    ):
        assert first != second
        assert yaml.safe_load((first / PROFILES_FILE).read_text())["a"]["target"] == "dev"
        assert "b" in yaml.safe_load((second / PROFILES_FILE).read_text())


def test_unserialisable_target_still_cleans_up(private_tmp: Path) -> None:
    with pytest.raises(yaml.YAMLError), temporary_profiles_dir("shop", "dev", {"bad": object()}):
        pass  # pragma: no cover - never reached
    assert list(private_tmp.iterdir()) == []


def test_target_mapping_not_mutated() -> None:
    target = dict(TARGET)
    with temporary_profiles_dir("shop", "dev", target):
        pass
    assert target == TARGET
