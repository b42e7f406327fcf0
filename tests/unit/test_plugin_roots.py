"""The plugin reads only below its configured roots: ids, URIs from summaries, symlinks, gzip, size."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from dlh_airflow_common.plugins import roots


def test_parse_roots_turns_local_paths_into_file_uris_and_keeps_remote_ones(tmp_path: Path) -> None:
    value = f" {tmp_path} , s3://aws_art@bucket/dbt/ ,,"
    assert roots.parse_roots(value) == [tmp_path.resolve().as_uri(), "s3://aws_art@bucket/dbt"]
    assert roots.parse_roots(None) == []


def test_configured_roots_come_from_the_dlh_dbt_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__DLH_DBT__ARTIFACTS_ROOTS", str(tmp_path))
    [root] = roots.configured_roots()
    assert root.shown == tmp_path.resolve().as_uri() and roots.roots_hint() == "[dlh_dbt] artifacts_roots"


@pytest.mark.parametrize(
    ("dag_id", "run_id", "task_id"),
    [
        ("..", "r", "t"),
        ("d", "r", "."),
        ("d/x", "r", "t"),
        ("d", "../../etc", "t"),
        ("d", "r\x00", "t"),
        ("d", "r", "t\\x"),
        ("", "r", "t"),
        ("d" * 251, "r", "t"),
    ],
)
def test_odd_ids_are_refused(dag_id: str, run_id: str, task_id: str) -> None:
    with pytest.raises(roots.RefusedPath):
        roots.check_ids(dag_id, run_id, task_id)


def test_airflow_ids_pass() -> None:
    roots.check_ids("shop.dbt-v2", "manual__2026-12-02T04:00:00.123+00:00", "group.build_1")


def _root(path: Path) -> roots.Root:
    return roots.open_root(path.as_uri())


def test_find_file_uses_the_upload_layout_and_its_gzip_twin(tmp_path: Path) -> None:
    base = tmp_path / "root"
    identity = roots.TryIdentity("dag", "manual__1", "task", 2, map_index=3)
    folder = base / "dag" / "task" / "manual__1" / "map_3" / "try_2"
    folder.mkdir(parents=True)
    (folder / "run_report.html.gz").write_bytes(gzip.compress(b"<html>report</html>"))
    found = roots.find_file([_root(tmp_path / "other"), _root(base)], identity.relative_path(), roots.REPORT_FILE)
    assert found is not None and roots.read_html(found) == b"<html>report</html>"
    assert roots.find_file([_root(base)], roots.TryIdentity("dag", "manual__1", "task", 1).relative_path(), "x") is None


def test_a_symlink_out_of_the_root_is_not_found(tmp_path: Path) -> None:
    base = tmp_path / "root"
    folder = base / "d" / "t" / "r" / "try_1"
    folder.mkdir(parents=True)
    secret = tmp_path / "secret.html"
    secret.write_text("secret")
    (folder / roots.REPORT_FILE).symlink_to(secret)
    assert roots.find_file([_root(base)], "d/t/r/try_1", roots.REPORT_FILE) is None
    (base / "d" / "t" / "r" / "try_2").symlink_to(tmp_path)  # a directory link out of the root
    assert roots.find_file([_root(base)], "d/t/r/try_2", "secret.html") is None


def test_a_symlink_inside_the_root_is_followed(tmp_path: Path) -> None:
    base = tmp_path / "root"
    (base / "real").mkdir(parents=True)
    (base / "real" / roots.REPORT_FILE).write_text("ok")
    (base / "linked").symlink_to(base / "real")
    found = roots.find_file([_root(base)], "linked", roots.REPORT_FILE)
    assert found is not None and roots.read_html(found) == b"ok"


def test_under_root_maps_a_reported_uri_and_refuses_traversal_and_other_places(tmp_path: Path) -> None:
    base = tmp_path / "root"
    base.mkdir()
    root = _root(base)
    placed = roots.under_root([root], f"{base.as_uri()}/d/t/r/try_1/index.html")
    assert placed is not None and placed[0] is root and str(placed[1].path).endswith("/d/t/r/try_1/index.html")
    assert roots.under_root([root], f"{base.as_uri()}/d/../../x/index.html") is None
    assert roots.under_root([root], f"{base.as_uri()}//etc/passwd") is None
    assert roots.under_root([root], f"{base.as_uri()}-sibling/index.html") is None
    assert roots.under_root([root], (tmp_path / "elsewhere").as_uri()) is None


def test_remote_paths_compare_keys_and_protocols() -> None:
    root = roots.open_root("s3://aws_art@bucket/dbt")
    assert roots.inside(root, root.path / "d" / "try_1" / "x.html")
    assert not roots.inside(root, root.path)
    assert not roots.inside(root, roots.open_root("s3://bucket/dbt-other/x").path)
    assert not roots.inside(root, roots.open_root("gs://bucket/dbt/x").path)


def test_a_huge_file_is_refused_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roots, "_MAX_HTML_BYTES", 10)
    (tmp_path / "big.html").write_bytes(b"x" * 11)
    with pytest.raises(roots.RefusedPath, match="larger than"):
        roots.read_html(roots.open_root(tmp_path.as_uri()).path / "big.html")


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://aws_art@bucket/dbt", "s3://bucket/dbt"),
        ("s3://bucket/dbt", "s3://bucket/dbt"),
        ("abfs://container@account.dfs.core.windows.net/p", "abfs://account.dfs.core.windows.net/p"),
        ("file:///srv/a@b/c", "file:///srv/a@b/c"),
    ],
)
def test_shown_uri_drops_the_connection_id(uri: str, shown: str) -> None:
    assert roots.shown_uri(uri) == shown
