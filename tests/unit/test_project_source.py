"""Parsing ``dbt_project_dir``: local paths, object URLs (folder or bundle), git URLs with a ref."""

from __future__ import annotations

import pytest

from dlh_airflow_common.dbt.project_source import parse_source, safe_relative
from dlh_airflow_common.exceptions.dbt import DbtProjectSourceException


def test_a_plain_path_stays_local() -> None:
    source = parse_source("/opt/dbt/shop")
    assert (source.kind, source.location, source.remote) == ("local", "/opt/dbt/shop", False)


@pytest.mark.parametrize(
    ("url", "kind", "location"),
    [
        ("s3://bucket/projects/shop/", "objects", "s3://bucket/projects/shop"),
        ("s3://bucket/bundles/shop.tar.gz", "archive", "s3://bucket/bundles/shop.tar.gz"),
        ("gs://bucket/shop.ZIP", "archive", "gs://bucket/shop.ZIP"),
        ("file:///srv/bundles/shop.tgz", "archive", "file:///srv/bundles/shop.tgz"),
    ],
)
def test_object_urls_are_folders_or_bundles_by_their_suffix(url: str, kind: str, location: str) -> None:
    source = parse_source(url, "aws_default")
    assert (source.kind, source.location, source.conn_id, source.remote) == (kind, location, "aws_default", True)


@pytest.mark.parametrize(
    ("url", "remote", "ref"),
    [
        ("git+https://git.example.com/team/shop.git@main", "https://git.example.com/team/shop.git", "main"),
        ("git+ssh://git@git.example.com/team/shop.git@v1.4", "ssh://git@git.example.com/team/shop.git", "v1.4"),
        ("git+file:///srv/git/shop.git", "file:///srv/git/shop.git", "HEAD"),
        ("git+git://127.0.0.1:9418/shop.git@refs/tags/v1", "git://127.0.0.1:9418/shop.git", "refs/tags/v1"),
    ],
)
def test_git_urls_split_into_remote_and_ref(url: str, remote: str, ref: str) -> None:
    source = parse_source(url)
    assert (source.kind, source.location, source.ref) == ("git", remote, ref)


def test_subdirectory_fragment_is_kept_apart_from_the_location() -> None:
    source = parse_source("git+https://h/mono.git@main#subdirectory=analytics/dbt")
    assert source.subdirectory == "analytics/dbt"
    assert source.location == "https://h/mono.git"
    assert "#" not in source.url


@pytest.mark.parametrize(
    "url",
    ["git+https://h/mono.git@main#subdirectory=../etc", "s3://b/p/#subdirectory=/abs", "s3://b/p/#branch=x"],
)
def test_bad_fragments_are_refused(url: str) -> None:
    with pytest.raises(DbtProjectSourceException) as caught:
        parse_source(url)
    assert caught.value.url == url


def test_a_password_in_the_url_is_refused_without_repeating_it() -> None:
    with pytest.raises(DbtProjectSourceException, match="connection") as caught:
        parse_source("git+https://deploy:hunter22@git.example.com/shop.git@main")
    assert "hunter22" not in str(caught.value)
    assert "hunter22" not in caught.value.url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("git+ftp://h/shop.git@main", "git URLs are"),
        ("git+https://h/shop.git@", "empty git ref"),
        ("git+https://h/shop.git@--upload-pack=x", "may not start with '-'"),
        ("s3:///no-bucket/shop/", "no bucket"),
    ],
)
def test_malformed_urls_raise_naming_the_url(url: str, says: str) -> None:
    with pytest.raises(DbtProjectSourceException, match=says) as caught:
        parse_source(url)
    assert url in str(caught.value)


def test_slot_is_stable_per_location_and_differs_between_sources() -> None:
    main = parse_source("git+https://h/shop.git@main")
    tag = parse_source("git+https://h/shop.git@v1")
    other = parse_source("git+https://h/other.git@main")
    assert main.slot == tag.slot  # versions of one repository share a slot, whatever the ref
    assert main.slot != other.slot
    assert main.slot.startswith("shop-")


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a\\b", "C:/x", ""])
def test_safe_relative_refuses_names_leaving_the_root(name: str) -> None:
    with pytest.raises(DbtProjectSourceException, match="refused"):
        safe_relative(name, url="s3://b/p", what="object")


def test_safe_relative_normalises_harmless_names() -> None:
    assert safe_relative("./models//orders.sql", url="u", what="member").as_posix() == "models/orders.sql"
