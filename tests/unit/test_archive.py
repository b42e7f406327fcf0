"""Unpacking project bundles: zip and tar.gz by content, and every way out of the root refused."""

from __future__ import annotations

import io
import secrets
import tarfile
from pathlib import Path

import pytest

from dlh_airflow_common.dbt.archive import check_links, extract_archive
from dlh_airflow_common.exceptions.dbt import DbtProjectSourceException
from remote_sources import project_files, tar_bytes, zip_bytes

URL = "s3://bucket/shop.tar.gz"


def _bundle(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bundle"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make", [tar_bytes, zip_bytes])
def test_extracts_both_formats_whatever_the_name(tmp_path: Path, make: object) -> None:
    data = make(project_files(), prefix="shop-main/")  # type: ignore[operator]
    extract_archive(_bundle(tmp_path, data), tmp_path / "out", url=URL)
    assert (tmp_path / "out" / "shop-main" / "models" / "orders.sql").read_text() == "select 1 as id\n"


def _special_tar(name: str, kind: bytes, content: bytes = b"") -> bytes:
    """A .tar.gz holding one member of type ``kind`` (directory, FIFO...) and then ``./dbt_project.yml``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        special = tarfile.TarInfo(name)
        special.type = kind
        bundle.addfile(special)
        info = tarfile.TarInfo("./dbt_project.yml")
        info.size = len(content)
        bundle.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_a_dot_root_entry_is_accepted(tmp_path: Path) -> None:
    data = _special_tar(".", tarfile.DIRTYPE, b"name: shop\n")
    extract_archive(_bundle(tmp_path, data), tmp_path / "out", url=URL)
    assert (tmp_path / "out" / "dbt_project.yml").read_bytes() == b"name: shop\n"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (tar_bytes({"../evil.sql": "x"}), "not a relative path"),
        (tar_bytes({"/etc/evil": "x"}), "not a relative path"),
        (zip_bytes({"../../evil.sql": "x"}), "not a relative path"),
        (tar_bytes({"dbt_project.yml": "x"}, links={"models": "/etc"}), "outside the bundle"),
        (tar_bytes({"dbt_project.yml": "x"}, links={"a/b": "../../x"}), "outside the bundle"),
    ],
)
def test_members_escaping_the_root_refuse_the_whole_bundle(tmp_path: Path, data: bytes, says: str) -> None:
    with pytest.raises(DbtProjectSourceException, match=says) as caught:
        extract_archive(_bundle(tmp_path, data), tmp_path / "out", url=URL)
    assert caught.value.url == URL
    assert not (tmp_path / "evil.sql").exists()
    assert list((tmp_path / "out").iterdir()) == []  # checked before anything was extracted


def test_a_link_inside_the_bundle_is_kept(tmp_path: Path) -> None:
    data = tar_bytes(project_files(), links={"models/alias.sql": "orders.sql"})
    extract_archive(_bundle(tmp_path, data), tmp_path / "out", url=URL)
    assert (tmp_path / "out" / "models" / "alias.sql").read_text() == "select 1 as id\n"


def test_device_members_are_refused(tmp_path: Path) -> None:
    data = _special_tar("pipe", tarfile.FIFOTYPE)
    with pytest.raises(DbtProjectSourceException, match="not a file, directory or link"):
        extract_archive(_bundle(tmp_path, data), tmp_path / "out", url=URL)


_BIG = project_files(models={"big": "-- " + secrets.token_hex(20_000) + "\nselect 1\n"})  # incompressible


@pytest.mark.parametrize(
    "data",
    [tar_bytes(_BIG)[:20_000], zip_bytes(_BIG)[:20_000], b"plain text, not a bundle"],
    ids=["truncated-tar", "truncated-zip", "not-an-archive"],
)
def test_corrupt_bundles_raise_a_typed_error_naming_the_url(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(DbtProjectSourceException) as caught:
        extract_archive(_bundle(tmp_path, data), tmp_path / "out", url=URL)
    assert str(caught.value).startswith(URL)


def test_check_links_refuses_a_link_chain_leaving_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "inner").symlink_to("outer")
    (tree / "outer").symlink_to(tmp_path)
    with pytest.raises(DbtProjectSourceException, match="links outside"):
        check_links(tree, URL)
