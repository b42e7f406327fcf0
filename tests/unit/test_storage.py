"""Artifact layout, destination URIs and the streaming upload (local ObjectStoragePath and plain pathlib)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dlh_airflow_common.dbt import storage
from dlh_airflow_common.dbt.run_report import RUN_REPORT_FILE


def _run_dir(root: Path) -> tuple[Path, Path]:
    target, logs = root / "target", root / "logs"
    (target / "compiled" / "shop" / "models").mkdir(parents=True)
    logs.mkdir()
    manifest = {"nodes": {f"model.shop.m{i}": {"name": f"m{i}", "description": "x" * 50} for i in range(200)}}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (target / "run_results.json").write_text(json.dumps({"results": [{"unique_id": "model.shop.m1"}]}))
    (target / "compiled" / "shop" / "models" / "m1.sql").write_text("select 1\n")
    (target / "partial_parse.msgpack").write_bytes(b"\x00" * 10)
    (target / "static_index.html").write_text("<html>docs</html>")
    (logs / "dbt.log").write_text("line\n" * 100)
    return target, logs


def test_try_path_layout_uses_safe_characters_only() -> None:
    path = storage.try_path("shop/../dag", "tg.build", "manual__2025-01-01T00:00:00+00:00", 2)
    assert path == "shop___dag/tg.build/manual__2025-01-01T00_00_00_00_00/try_2"
    assert ".." not in path
    assert storage.try_path("d", "t", "r", 1, map_index=3) == "d/t/r/map_3/try_1"
    assert storage.try_path("d", "t", "r", 1, map_index=-1) == "d/t/r/try_1"


@pytest.mark.parametrize(
    ("destination", "bucket", "conn_type", "expected"),
    [
        ("s3://bucket/prefix/", None, None, "s3://bucket/prefix"),
        ("abfs://container@account.dfs.core.windows.net/dbt", None, "wasb", "abfs://container@account.dfs.core.windows.net/dbt"),
        (None, "bucket", None, "s3://bucket"),
        (None, "bucket/dbt/", "aws", "s3://bucket/dbt"),
        (None, "bucket", "google_cloud_platform", "gs://bucket"),
        (None, "container", "wasb", "abfs://container"),
    ],
)  # fmt: skip
def test_destination_uri(destination: str | None, bucket: str | None, conn_type: str | None, expected: str) -> None:
    assert storage.destination_uri(destination, bucket, conn_type) == expected


def test_destination_uri_of_a_local_path_is_a_file_uri(tmp_path: Path) -> None:
    assert storage.destination_uri(str(tmp_path / "a"), None) == (tmp_path / "a").as_uri()


@pytest.mark.parametrize(("destination", "bucket"), [(None, None), ("s3://a", "b"), (None, "s3://b")])
def test_destination_uri_refuses_ambiguous_input(destination: str | None, bucket: str | None) -> None:
    with pytest.raises(ValueError):
        storage.destination_uri(destination, bucket)


def test_collect_artifacts_picks_the_documented_files(tmp_path: Path) -> None:
    target, logs = _run_dir(tmp_path)
    names = [a.name for a in storage.collect_artifacts(target, logs)]
    assert names == ["manifest.json", "run_results.json", "dbt.log"], "no msgpack, no compiled SQL by default"
    full = storage.collect_artifacts(target, logs, compiled_sql=True, docs=True)
    assert [a.name for a in full][3:] == ["compiled/shop/models/m1.sql", "index.html"]
    assert [a.compress for a in full if a.name == "index.html"] == [False], "the docs page stays browsable"


def test_the_run_report_is_uploaded_uncompressed_and_located(tmp_path: Path) -> None:
    target, logs = _run_dir(tmp_path / "run")
    (target / RUN_REPORT_FILE).write_text("<html>report</html>")
    files = storage.collect_artifacts(target, logs)
    assert [a.name for a in files] == ["manifest.json", "run_results.json", "run_report.html", "dbt.log"]
    report = storage.upload_artifacts(tmp_path / "dest", "a/try_1", files, gzip_files=True)
    page = tmp_path / "dest" / "a" / "try_1" / "run_report.html"
    assert page.read_text() == "<html>report</html>", "a browser opens it directly: never gzipped"
    assert report.report_location == page.as_uri() == report.to_xcom()["report_location"]
    assert any("run report at" in line for line in storage.describe(report))


def test_upload_to_local_object_storage_with_gzip(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    target, logs = _run_dir(tmp_path / "run")
    root = ObjectStoragePath((tmp_path / "dest").as_uri())
    files = storage.collect_artifacts(target, logs, compiled_sql=True, docs=True)
    report = storage.upload_artifacts(root, "dag/task/run/try_1", files, gzip_files=True)

    base = tmp_path / "dest" / "dag" / "task" / "run" / "try_1"
    assert report.location == base.as_uri()
    stored = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    assert stored == [
        "compiled/shop/models/m1.sql.gz", "dbt.log.gz", "index.html", "manifest.json.gz", "run_results.json.gz",
    ]  # fmt: skip
    assert gzip.decompress((base / "manifest.json.gz").read_bytes()) == (target / "manifest.json").read_bytes()
    assert (base / "index.html").read_text() == "<html>docs</html>"
    assert report.docs_location == (base / "index.html").as_uri()
    for uploaded in report.files:
        assert uploaded.stored_bytes == (base / uploaded.name).stat().st_size
    assert report.raw_bytes == sum(f.source.stat().st_size for f in files)
    assert report.stored_bytes < report.raw_bytes / 4
    assert any("% smaller" in line for line in storage.describe(report))


def test_upload_without_gzip_copies_bytes_unchanged_to_a_plain_path(tmp_path: Path) -> None:
    target, logs = _run_dir(tmp_path / "run")
    report = storage.upload_artifacts(tmp_path / "dest", "a/b", storage.collect_artifacts(target, logs))
    assert (tmp_path / "dest" / "a" / "b" / "manifest.json").read_bytes() == (target / "manifest.json").read_bytes()
    assert report.stored_bytes == report.raw_bytes
    assert report.location == (tmp_path / "dest" / "a" / "b").as_uri()


def test_upload_failure_raises_for_the_caller_to_decide(tmp_path: Path) -> None:
    target, logs = _run_dir(tmp_path / "run")
    (tmp_path / "blocked").write_text("a file where a directory should be")
    with pytest.raises(OSError):
        storage.upload_artifacts(tmp_path / "blocked", "a", storage.collect_artifacts(target, logs))


def test_report_xcom_is_bounded() -> None:
    report = storage.UploadReport(location="s3://b/p", relative_path="p")
    report.files = [storage.UploadedFile(f"compiled/{i}.sql", 10, 5) for i in range(100)]
    payload = report.to_xcom(max_files=30)
    assert payload["file_count"] == 100 and len(payload["files"]) == 30
    assert payload["raw_bytes"] == 1000 and payload["stored_bytes"] == 500
    assert len(json.dumps(payload)) < 2000


def test_display_uri_hides_the_connection_id() -> None:
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath("s3://bucket/prefix", conn_id="my_aws") / "x"
    assert "my_aws" in str(path)
    assert storage.display_uri(path) == "s3://bucket/prefix/x"


def test_relative_url() -> None:
    assert (
        storage.relative_url("https://h/browse/", "d/t/r/try_1", "index.html")
        == "https://h/browse/d/t/r/try_1/index.html"
    )
    assert storage.relative_url("https://h/browse") == "https://h/browse"
