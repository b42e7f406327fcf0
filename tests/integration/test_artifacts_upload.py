"""Artifact upload through ObjectStoragePath: a local path and a real S3 API (moto server on 127.0.0.1)."""

from __future__ import annotations

import gzip
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dag_runner import run_dag_file
from operability import write_dag

pytestmark = pytest.mark.integration

SAFE_PART = re.compile(r"[A-Za-z0-9_.-]+")
BROKEN_MODEL = "select 1 / 'x' as nope from {{ ref('orders') }}\n"


@pytest.fixture
def duckdb_conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    conn = {"conn_type": "duckdb", "host": str(tmp_path / "shop.duckdb")}
    monkeypatch.setenv("AIRFLOW_CONN_DBT_DUCKDB", json.dumps(conn))
    return "dbt_duckdb"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback: real S3 API calls over HTTP, nothing leaves the machine."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """A fresh bucket and the Airflow connection ``artifacts_s3`` pointing at the moto server."""
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    extra = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
    conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_ARTIFACTS_S3", json.dumps(conn))
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"dbt-artifacts-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def _keys(client: Any, bucket: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def test_local_upload_layout_and_published_docs(
    example_project: Path, duckdb_conn: str, airflow_db: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "artifacts"
    upload = {"conn_id": duckdb_conn, "artifacts_destination": str(destination)}
    dag_file = write_dag(
        tmp_path,
        "dbt_upload_local",
        example_project,
        [
            ("dbt_build", "build", {**upload, "upload_artifacts": True, "artifacts_compiled_sql": True}),
            ("dbt_docs", "docs generate", {**upload, "publish_docs": True}),
        ],
    )
    run = run_dag_file(dag_file, airflow_db / "dags", "dbt_upload_local")
    assert run.task_states == {"dbt_build": "success", "dbt_docs": "success"}

    (build_dir,) = (destination / "dbt_upload_local" / "dbt_build").glob("*/try_1")
    layout = build_dir.relative_to(destination).parts
    assert all(SAFE_PART.fullmatch(part) for part in layout), layout
    assert layout[2].startswith("manual__"), "the run id is a directory of its own"
    files = sorted(p.relative_to(build_dir).as_posix() for p in build_dir.rglob("*") if p.is_file())
    assert {"manifest.json", "run_results.json", "dbt.log"} <= set(files)
    assert "compiled/shop/models/marts/orders.sql" in files
    results = json.loads((build_dir / "run_results.json").read_text())
    assert {r["status"] for r in results["results"]} <= {"success", "pass"}

    summary = run.xcom("dbt_build", "dbt_summary")
    assert summary["artifacts"]["location"] == build_dir.as_uri()
    assert summary["artifacts"]["file_count"] == len(files)
    assert summary["artifacts_url"] == build_dir.as_uri()
    assert "run_report.html" in files and summary["report_url"] == (build_dir / "run_report.html").as_uri()

    (docs_dir,) = (destination / "dbt_upload_local" / "dbt_docs").glob("*/try_1")
    index = docs_dir / "index.html"
    assert index.is_file() and (docs_dir / "catalog.json").is_file()
    assert "model.shop.orders" in index.read_text(), "the static page carries the manifest inline"
    docs_summary = run.xcom("dbt_docs", "dbt_summary")
    assert docs_summary["docs_url"] == index.as_uri()
    assert docs_summary["artifacts"]["docs_location"] == index.as_uri()


def test_failed_run_uploads_to_s3_gzipped(
    example_project: Path, duckdb_conn: str, airflow_db: Path, tmp_path: Path, s3: tuple[Any, str]
) -> None:
    client, bucket = s3
    (example_project / "models" / "marts" / "broken.sql").write_text(BROKEN_MODEL)
    kwargs = {
        "conn_id": duckdb_conn,
        "upload_artifacts": True,
        "artifacts_bucket": f"{bucket}/dbt",
        "artifacts_conn_id": "artifacts_s3",
        "artifacts_gzip": True,
    }
    dag_file = write_dag(tmp_path, "dbt_upload_s3", example_project, [("dbt_build", "build", kwargs)])
    run = run_dag_file(dag_file, airflow_db / "dags", "dbt_upload_s3")
    assert run.task_states == {"dbt_build": "failed"}

    keys = _keys(client, bucket)
    (prefix,) = {key.rsplit("/", 1)[0] for key in keys if key.endswith("run_results.json.gz")}
    assert prefix.startswith("dbt/dbt_upload_s3/dbt_build/manual__") and prefix.endswith("/try_1")
    assert {f"{prefix}/{name}" for name in ("manifest.json.gz", "run_results.json.gz", "dbt.log.gz")} <= set(keys)

    body = client.get_object(Bucket=bucket, Key=f"{prefix}/run_results.json.gz")["Body"].read()
    results = json.loads(gzip.decompress(body))
    statuses = {r["unique_id"]: r["status"] for r in results["results"]}
    assert statuses["model.shop.broken"] == "error", "the failed run's results are what was uploaded"
    page = client.get_object(Bucket=bucket, Key=f"{prefix}/run_report.html")["Body"].read().decode()
    assert '<article class="failure" data-unique-id="model.shop.broken">' in page, "the report, not gzipped"

    summary = run.xcom("dbt_build", "dbt_summary")
    assert summary["error"]["type"] == "DbtRuntimeException"
    artifacts = summary["artifacts"]
    assert artifacts["location"] == f"s3://{bucket}/{prefix}"
    assert summary["report_url"] == f"s3://{bucket}/{prefix}/run_report.html"
    assert 0 < artifacts["stored_bytes"] < artifacts["raw_bytes"] / 3, "JSON artifacts compress well"
    stored_manifest = client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json.gz")["Body"].read()
    manifest, raw_manifest = len(stored_manifest), len(gzip.decompress(stored_manifest))
    print(
        f"gzip: all files {artifacts['raw_bytes']} -> {artifacts['stored_bytes']} bytes "
        f"({100 * (1 - artifacts['stored_bytes'] / artifacts['raw_bytes']):.1f}% smaller); "
        f"manifest.json {raw_manifest} -> {manifest} bytes ({100 * (1 - manifest / raw_manifest):.1f}% smaller)"
    )


def test_upload_failure_is_a_warning_unless_strict(
    example_project: Path, duckdb_conn: str, airflow_db: Path, tmp_path: Path, s3: tuple[Any, str]
) -> None:
    missing = {"conn_id": duckdb_conn, "upload_artifacts": True, "artifacts_conn_id": "artifacts_s3"}
    missing["artifacts_bucket"] = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    dag_file = write_dag(
        tmp_path,
        "dbt_upload_fails",
        example_project,
        [("lenient", "seed", missing), ("strict", "seed", {**missing, "artifacts_strict": True})],
    )
    run = run_dag_file(dag_file, airflow_db / "dags", "dbt_upload_fails")
    assert run.task_states == {"lenient": "success", "strict": "failed"}

    lenient = run.xcom("lenient", "dbt_summary")
    assert lenient["success"] is True
    assert "NoSuchBucket" in lenient["artifacts"]["error"] or "does not exist" in lenient["artifacts"]["error"]
    assert run.xcom("lenient") == lenient, "dbt succeeded, so the task returns its summary"

    strict = run.xcom("strict", "dbt_summary")
    assert strict["status_counts"] == {"success": 3}, "dbt itself succeeded"
    assert strict["success"] is False
    assert strict["error"]["type"] == "DbtArtifactException"
    assert strict["error"]["retryable"] is True
