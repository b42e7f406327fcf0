"""Unit tests for dlh_airflow_common.dbt.project: validating the dbt project directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlh_airflow_common.dbt.project import PROJECT_FILE, DbtProject, load_project
from dlh_airflow_common.exceptions.dbt import DbtCompilationException, DbtException


def make_project(tmp_path: Path, content: str | bytes) -> Path:
    project = tmp_path / "shop"
    project.mkdir()
    target = project / PROJECT_FILE
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content, encoding="utf-8")
    return project


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "does_not_exist"
    with pytest.raises(DbtException, match="does not exist or is not a directory") as excinfo:
        load_project(missing)
    assert str(missing) in str(excinfo.value)


def test_file_instead_of_directory(tmp_path: Path) -> None:
    a_file = tmp_path / "project.txt"
    a_file.write_text("x")
    with pytest.raises(DbtException, match="is not a directory") as excinfo:
        load_project(a_file)
    assert str(a_file) in str(excinfo.value)


def test_directory_without_project_file(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with pytest.raises(DbtException) as excinfo:
        load_project(tmp_path)
    message = str(excinfo.value)
    assert str(tmp_path) in message
    assert f"{PROJECT_FILE} not found" in message
    assert type(excinfo.value) is DbtException


def test_project_file_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / PROJECT_FILE).mkdir()
    with pytest.raises(DbtException, match=f"{PROJECT_FILE} not found"):
        load_project(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        "name: shop\nprofile: [unclosed\n",
        "name: shop\n  bad_indent: : :\n",
        b"name: \xff\xfe shop\n",
    ],
)
def test_invalid_yaml(tmp_path: Path, content: str | bytes) -> None:
    project = make_project(tmp_path, content)
    with pytest.raises(DbtCompilationException) as excinfo:
        load_project(project)
    assert str(project / PROJECT_FILE) in str(excinfo.value)
    assert "Cannot read" in str(excinfo.value)


@pytest.mark.parametrize("content", ["- a\n- b\n", "just a string\n", "", "42\n", "~\n"])
def test_non_mapping_yaml(tmp_path: Path, content: str) -> None:
    project = make_project(tmp_path, content)
    with pytest.raises(DbtCompilationException) as excinfo:
        load_project(project)
    assert str(project / PROJECT_FILE) in str(excinfo.value)
    assert "must hold a YAML mapping" in str(excinfo.value)


def test_reads_name_and_profile(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        "name: 'shop'\nversion: '1.0.0'\nconfig-version: 2\nprofile: 'shop_profile'\nmodel-paths: ['models']\n",
    )
    loaded = load_project(project)
    assert loaded == DbtProject(path=project.resolve(), name="shop", profile="shop_profile")


def test_relative_path_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path, "name: shop\nprofile: shop\n")
    monkeypatch.chdir(tmp_path)
    loaded = load_project("shop")
    assert loaded.path == project.resolve()
    assert loaded.path.is_absolute()


def test_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path, "name: shop\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_project("~/shop").path == project.resolve()


@pytest.mark.parametrize(
    "profile",
    [
        "\"{{ env_var('DBT_PROFILE', 'shop') }}\"",
        "\"{{ var('profile') }}\"",
    ],
)
def test_jinja_profile_yields_none(tmp_path: Path, profile: str) -> None:
    loaded = load_project(make_project(tmp_path, f"name: shop\nprofile: {profile}\n"))
    assert loaded.profile is None
    assert loaded.name == "shop"


def test_missing_name_and_profile(tmp_path: Path) -> None:
    loaded = load_project(make_project(tmp_path, "version: '1.0'\n"))
    assert loaded.name is None
    assert loaded.profile is None


def test_does_not_write_anything(tmp_path: Path) -> None:
    project = make_project(tmp_path, "name: shop\nprofile: shop\n")
    before = sorted(p.name for p in project.iterdir())
    load_project(project)
    assert sorted(p.name for p in project.iterdir()) == before
