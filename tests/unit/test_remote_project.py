"""checkout_project: a local path passes through; remote sources (file:// objects, file:// git) resolve to a
version and a cached tree, fetched once, refused when they are not a safe dbt project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dlh_airflow_common.dbt.project_cache import version_name
from dlh_airflow_common.dbt.remote_project import _object_version, checkout_project
from dlh_airflow_common.exceptions.dbt import DbtProjectSourceException
from remote_sources import GitRepo, project_files, tar_bytes, write_tree, zip_bytes


def _published(cache: Path) -> list[str]:
    return sorted(p.name for slot in cache.iterdir() for p in slot.iterdir() if p.is_dir())


def test_a_local_project_passes_through_untouched(tmp_path: Path) -> None:
    with checkout_project(str(tmp_path)) as checkout:
        assert checkout.path == tmp_path
        assert checkout.version is None and checkout.describe() == {}


def test_a_bundle_is_fetched_once_per_version(tmp_path: Path) -> None:
    bundle = tmp_path / "shop.tar.gz"
    bundle.write_bytes(tar_bytes(project_files(), prefix="shop-main/"))
    cache = tmp_path / "cache"
    with checkout_project(bundle.as_uri(), cache_dir=cache) as first:
        assert first.fetched and (first.path / "dbt_project.yml").is_file()
        assert first.path.name == "shop-main"  # the bundle's only top-level directory
    with checkout_project(bundle.as_uri(), cache_dir=cache) as warm:
        assert not warm.fetched and warm.path == first.path and warm.version == first.version
    bundle.write_bytes(zip_bytes(project_files(models={"orders": "select 2 as id\n"})))
    os.utime(bundle, (1, 1))  # a new mtime: the version of a file:// object
    with checkout_project(bundle.as_uri(), cache_dir=cache) as changed:
        assert changed.fetched and changed.version != first.version
        assert (changed.path / "models" / "orders.sql").read_text() == "select 2 as id\n"
    assert warm.describe() == {"url": bundle.as_uri(), "kind": "archive", "version": warm.version}


def test_a_folder_version_follows_its_files(tmp_path: Path) -> None:
    folder = write_tree(tmp_path / "folder", project_files())
    cache = tmp_path / "cache"
    with checkout_project(folder.as_uri(), cache_dir=cache) as first:
        assert (first.path / "models" / "orders.sql").is_file()
    write_tree(folder, {"models/more.sql": "select 3 as id\n"})
    with checkout_project(folder.as_uri() + "/", cache_dir=cache) as second:
        assert second.version != first.version and (second.path / "models" / "more.sql").is_file()
    assert len(_published(cache)) == 2


def test_not_a_dbt_project_is_refused_and_nothing_is_published(tmp_path: Path) -> None:
    bundle = tmp_path / "notes.zip"
    bundle.write_bytes(zip_bytes({"README.md": "hello"}))
    cache = tmp_path / "cache"
    with (
        pytest.raises(DbtProjectSourceException, match="not a dbt project") as caught,
        checkout_project(bundle.as_uri(), cache_dir=cache),
    ):
        pass
    assert caught.value.url == bundle.as_uri()
    assert _published(cache) == []


def test_a_missing_object_names_the_url(tmp_path: Path) -> None:
    url = (tmp_path / "nope.tar.gz").as_uri()
    with (
        pytest.raises(DbtProjectSourceException, match="no such bucket, key or prefix") as caught,
        checkout_project(url, cache_dir=tmp_path / "cache"),
    ):
        pass
    assert str(caught.value).startswith(url)


def test_a_subdirectory_selects_the_project_inside_the_source(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path)
    files = {f"analytics/{name}": content for name, content in project_files().items()}
    commit = repo.commit({**files, "README.md": "monorepo"})
    with checkout_project(f"git+{repo.url}@main#subdirectory=analytics", cache_dir=tmp_path / "c") as checkout:
        assert checkout.version == commit
        assert checkout.path.name == "analytics" and checkout.path.parent.name == version_name(commit)


def test_a_git_tree_with_a_link_leaving_it_is_refused(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path)
    repo.commit(project_files())
    repo.symlink("models/passwd.sql", "/etc/passwd")
    cache = tmp_path / "cache"
    with (
        pytest.raises(DbtProjectSourceException, match="links outside"),
        checkout_project(f"git+{repo.url}@main", cache_dir=cache),
    ):
        pass
    assert _published(cache) == []


def test_a_remote_project_needs_a_cache_dir() -> None:
    with pytest.raises(DbtProjectSourceException, match="cache directory"), checkout_project("s3://b/shop.zip"):
        pass


def test_the_connection_gives_git_its_credentials(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path)
    repo.commit(project_files())
    asked: list[str] = []

    class Connection:
        login, password, extra_dejson = "deploy", "pw-123456", {}

    def lookup(conn_id: str) -> Connection:
        asked.append(conn_id)
        return Connection()

    with checkout_project(f"git+{repo.url}@main", conn_id="git_shop", cache_dir=tmp_path / "c",
                          connection=lookup) as checkout:  # fmt: skip
        assert (checkout.path / "dbt_project.yml").is_file()
    assert asked == ["git_shop"]
    leaked = [p for p in (tmp_path / "c").rglob("*") if p.is_file() and b"pw-123456" in p.read_bytes()]
    assert leaked == []


@pytest.mark.parametrize(
    ("info", "version"),
    [
        ({"ETag": '"abc"', "size": 3}, "etag:abc"),
        ({"VersionId": "7", "ETag": '"abc"'}, "versionid:7"),
        ({"VersionId": "null", "ETag": '"abc"'}, "etag:abc"),
        ({"size": 3, "mtime": 12.5}, "size:3:mtime:12.5"),
    ],
)
def test_object_versions_prefer_version_ids_then_etags(info: dict[str, object], version: str) -> None:
    assert _object_version(info) == version


def test_an_unknown_git_connection_is_a_typed_error(tmp_path: Path) -> None:
    def lookup(conn_id: str) -> None:
        raise LookupError(f"The conn_id `{conn_id}` isn't defined")

    with (
        pytest.raises(DbtProjectSourceException, match="connection 'nope' cannot be read"),
        checkout_project("git+https://h/shop.git@main", conn_id="nope", cache_dir=tmp_path, connection=lookup),
    ):
        pass


@pytest.mark.parametrize(
    ("error", "retryable"),
    [(ConnectionResetError("reset by peer"), True), (RuntimeError("bad endpoint_url"), False)],
)
def test_storage_client_errors_become_typed_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, retryable: bool
) -> None:
    from dlh_airflow_common.dbt import remote_project

    def failing(source: object) -> None:
        raise error

    monkeypatch.setattr(remote_project, "_open", failing)
    with (
        pytest.raises(DbtProjectSourceException, match="cannot be read through connection 'aws'") as caught,
        checkout_project("s3://bucket/shop.tar.gz", conn_id="aws", cache_dir=tmp_path),
    ):
        pass
    assert caught.value.retryable is retryable and str(caught.value).startswith("s3://bucket/shop.tar.gz")
