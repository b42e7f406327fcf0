"""Upload one try's dbt artifacts to object storage (s3://, gs://, abfs://, file://) through ``ObjectStoragePath``.

Layout: ``<destination>/<dag_id>/<task_id>/<run_id>/[map_<i>/]try_<n>/`` with every id reduced to
``[A-Za-z0-9_.-]``. The storage client is whatever Airflow registers for the scheme (the amazon provider's
s3fs for s3://, google's gcsfs for gs://, ...): this module only opens paths and copies bytes.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dlh_airflow_common.dbt.artifacts import CATALOG, MANIFEST, RUN_RESULTS, SOURCES
from dlh_airflow_common.dbt.run_dir import sanitize
from dlh_airflow_common.dbt.run_report import RUN_REPORT_FILE

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

logger = logging.getLogger(__name__)

ARTIFACT_FILES = (MANIFEST, RUN_RESULTS, CATALOG, SOURCES)
LOG_FILE = "dbt.log"
COMPILED_DIR = "compiled"
STATIC_DOCS_FILE = "static_index.html"
DOCS_INDEX = "index.html"
GZIP_SUFFIX = ".gz"
DEFAULT_BUCKET_SCHEME = "s3"
# Connection type -> scheme for ``artifacts_bucket``; matches the filesystems the providers register.
SCHEME_BY_CONN_TYPE = {
    "aws": "s3",
    "s3": "s3",
    "google_cloud_platform": "gs",
    "gcp": "gs",
    "wasb": "abfs",
    "adls": "abfs",
    "azure_data_lake": "abfs",
}
_LOCAL_SCHEMES = frozenset({"", "file", "local"})
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class LocalArtifact:
    """A file of the run dir and where it goes, relative to the try's directory (posix)."""

    source: Path
    name: str
    compress: bool = True


@dataclass(frozen=True)
class UploadedFile:
    name: str
    raw_bytes: int
    stored_bytes: int


@dataclass
class UploadReport:
    """Where one try's artifacts went and how big they were before and after compression."""

    location: str
    relative_path: str
    files: list[UploadedFile] = field(default_factory=list)
    docs_location: str | None = None
    report_location: str | None = None
    error: str | None = None

    @property
    def raw_bytes(self) -> int:
        return sum(f.raw_bytes for f in self.files)

    @property
    def stored_bytes(self) -> int:
        return sum(f.stored_bytes for f in self.files)

    def to_xcom(self, *, max_files: int = 30) -> dict[str, Any]:
        """Bounded: counts and the first file names, never the contents."""
        payload: dict[str, Any] = {
            "location": self.location,
            "file_count": len(self.files),
            "files": [f.name for f in self.files[:max_files]],
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
        }
        if self.docs_location:
            payload["docs_location"] = self.docs_location
        if self.report_location:
            payload["report_location"] = self.report_location
        if self.error:
            payload["error"] = self.error
        return payload


def try_path(dag_id: str, task_id: str, run_id: str, try_number: int, *, map_index: int | None = None) -> str:
    """``<dag_id>/<task_id>/<run_id>/[map_<i>/]try_<n>``, each part limited to safe characters."""
    parts = [sanitize(dag_id, max_length=200), sanitize(task_id, max_length=200), sanitize(run_id, max_length=200)]
    if map_index is not None and map_index >= 0:
        parts.append(f"map_{int(map_index)}")
    parts.append(f"try_{int(try_number)}")
    return "/".join(parts)


def destination_uri(destination: str | None, bucket: str | None, conn_type: str | None = None) -> str:
    """One URI from either ``artifacts_destination`` (any scheme, or a local path) or ``artifacts_bucket``.

    A bucket may carry a prefix (``my-bucket/dbt``); its scheme follows the connection type (aws -> s3,
    google_cloud_platform -> gs, wasb/adls -> abfs), s3 when there is no connection.
    """
    if bool(destination) == bool(bucket):
        raise ValueError("Give exactly one of artifacts_destination (a URI) or artifacts_bucket.")
    if destination:
        if "://" not in destination:
            return Path(destination).expanduser().resolve().as_uri()
        return destination.rstrip("/")
    assert bucket is not None
    if "://" in bucket:
        raise ValueError(f"artifacts_bucket is a bucket name (optionally bucket/prefix), not a URI: {bucket!r}")
    scheme = SCHEME_BY_CONN_TYPE.get((conn_type or "").lower(), DEFAULT_BUCKET_SCHEME)
    return f"{scheme}://{bucket.strip('/')}"


def open_destination(uri: str, conn_id: str | None = None) -> ObjectStoragePath:
    """The destination as Airflow's ``ObjectStoragePath`` (the scheme's filesystem comes from its provider)."""
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri, conn_id=conn_id)


def display_uri(path: Any) -> str:
    """A path's URI without the ``conn_id@`` Airflow puts into ``str()`` of remote paths."""
    protocol = getattr(path, "protocol", "") or "file"
    raw = str(getattr(path, "path", path))
    if protocol in _LOCAL_SCHEMES:
        return Path(raw).as_uri() if raw.startswith("/") else f"file://{raw}"
    return f"{protocol}://{raw}"


def collect_artifacts(
    target_path: Path,
    log_path: Path,
    *,
    compiled_sql: bool = False,
    docs: bool = False,
) -> list[LocalArtifact]:
    """The files of one run worth keeping: the JSON artifacts, the run report, dbt.log, optionally compiled SQL
    and static docs."""
    found = [LocalArtifact(target_path / name, name) for name in ARTIFACT_FILES if (target_path / name).is_file()]
    if (target_path / RUN_REPORT_FILE).is_file():  # a browser opens it directly, so it stays uncompressed
        found.append(LocalArtifact(target_path / RUN_REPORT_FILE, RUN_REPORT_FILE, compress=False))
    if (log_path / LOG_FILE).is_file():
        found.append(LocalArtifact(log_path / LOG_FILE, LOG_FILE))
    compiled = target_path / COMPILED_DIR
    if compiled_sql and compiled.is_dir():
        for sql in sorted(compiled.rglob("*.sql")):
            found.append(LocalArtifact(sql, f"{COMPILED_DIR}/{sql.relative_to(compiled).as_posix()}"))
    if docs and (target_path / STATIC_DOCS_FILE).is_file():
        # A browser opens the docs page directly, so it stays uncompressed.
        found.append(LocalArtifact(target_path / STATIC_DOCS_FILE, DOCS_INDEX, compress=False))
    return found


class _CountingWriter:
    """Counts what reaches the destination, so the report shows the stored (compressed) size."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def _copy(artifact: LocalArtifact, target: Any, *, compress: bool) -> int:
    """Stream one file to ``target``; returns the bytes written there."""
    with artifact.source.open("rb") as src, target.open("wb") as dst:
        counter = _CountingWriter(dst)
        if compress:
            # mtime=0 keeps the output reproducible: the same artifact always uploads the same bytes.
            with gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as zipped:  # type: ignore[call-overload]
                shutil.copyfileobj(src, zipped, _COPY_CHUNK)
        else:
            shutil.copyfileobj(src, counter, _COPY_CHUNK)  # type: ignore[misc]
        return counter.count


def upload_artifacts(
    root: Any,
    relative_path: str,
    artifacts: Iterable[LocalArtifact],
    *,
    gzip_files: bool = False,
) -> UploadReport:
    """Copy ``artifacts`` under ``root/relative_path``; raises on the first failure (the caller decides).

    ``root`` is an ``ObjectStoragePath`` (or any pathlib-like object with ``/`` and ``open``). Local
    destinations get their directories created; object stores have none to create.
    """
    base = root.joinpath(*relative_path.split("/"))
    report = UploadReport(location=display_uri(base), relative_path=relative_path)
    local = (getattr(base, "protocol", "") or "") in _LOCAL_SCHEMES
    for artifact in artifacts:
        compress = gzip_files and artifact.compress
        name = artifact.name + (GZIP_SUFFIX if compress else "")
        target = base.joinpath(*name.split("/"))
        if local:
            target.parent.mkdir(parents=True, exist_ok=True)
        stored = _copy(artifact, target, compress=compress)
        report.files.append(UploadedFile(name=name, raw_bytes=artifact.source.stat().st_size, stored_bytes=stored))
        if artifact.name == DOCS_INDEX:
            report.docs_location = display_uri(target)
        elif artifact.name == RUN_REPORT_FILE:
            report.report_location = display_uri(target)
    return report


def relative_url(base_url: str, *parts: str) -> str:
    """``base_url`` joined with path parts, for the public HTTP URL the destination is served at."""
    joined = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    return f"{base_url.rstrip('/')}/{joined}" if joined else base_url


def describe(report: UploadReport) -> Sequence[str]:
    """Log lines for the task log: where, how many files, and the compression achieved."""
    lines = [f"Uploaded {len(report.files)} dbt artifact file(s) to {report.location}"]
    if report.raw_bytes and report.stored_bytes != report.raw_bytes:
        saved = 100.0 * (1 - report.stored_bytes / report.raw_bytes)
        lines.append(f"  {report.raw_bytes:,} bytes -> {report.stored_bytes:,} bytes stored ({saved:.0f}% smaller)")
    if report.docs_location:
        lines.append(f"  dbt docs published at {report.docs_location}")
    if report.report_location:
        lines.append(f"  dbt run report at {report.report_location}")
    return lines
