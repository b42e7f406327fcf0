"""What DbtOperator does after dbt ran and before its run dir goes: upload, link URLs, lineage, metrics.

Each step is best-effort: a failure is a warning in the task log and never changes the task's outcome,
except an artifact upload with ``strict=True``, which turns a successful run into a failed one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlh_airflow_common.dbt import metrics, storage
from dlh_airflow_common.dbt.run_dir import RunDir
from dlh_airflow_common.dbt.run_report import RUN_REPORT_FILE
from dlh_airflow_common.exceptions.dbt import DbtArtifactException
from dlh_airflow_common.links.dbt import ARTIFACTS_URL_KEY, DOCS_URL_KEY, REPORT_URL_KEY, docs_url, first_model

if TYPE_CHECKING:
    from dlh_airflow_common.dbt.lineage import DbtLineage
    from dlh_airflow_common.hooks.dbt import DbtTaskResult

logger = logging.getLogger(__name__)
ARTIFACTS_KEY = "artifacts"
# Commands whose results name nodes worth deep-linking to in the docs (not compile/docs/ls results).
_BUILDING_COMMANDS = frozenset({"run", "build", "seed", "snapshot", "retry"})
_MAX_ERROR = 300


@dataclass(frozen=True)
class ArtifactSettings:
    """The operator's upload and link arguments, checked once when the operator is built."""

    upload: bool = False
    conn_id: str | None = None
    bucket: str | None = None
    destination: str | None = None
    base_url: str | None = None
    docs_url: str | None = None
    compiled_sql: bool = False
    gzip: bool = False
    strict: bool = False
    publish_docs: bool = False

    def validate(self) -> None:
        if self.destination and self.bucket:
            raise ValueError("Pass artifacts_destination (a URI) or artifacts_bucket, not both.")
        if (self.upload or self.publish_docs) and not (self.destination or self.bucket):
            raise ValueError("upload_artifacts and publish_docs need artifacts_destination or artifacts_bucket.")


@dataclass(frozen=True)
class RunIdentity:
    """Which task try this is, for the upload layout and metric names."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int | None = None

    @classmethod
    def from_context(cls, context: Any) -> RunIdentity:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", None)
        return cls(ti.dag_id, ti.task_id, str(context["run_id"]), int(ti.try_number), map_index)


def upload(
    settings: ArtifactSettings, who: RunIdentity, result: DbtTaskResult, log: Any
) -> storage.UploadReport | None:
    """Upload the run's artifacts; on failure warn (or, strict, fail the result) and return None."""
    relative = storage.try_path(who.dag_id, who.task_id, who.run_id, who.try_number, map_index=who.map_index)
    files = storage.collect_artifacts(
        Path(result.target_path),
        RunDir(Path(result.run_dir)).log_path,
        compiled_sql=settings.compiled_sql,
        docs=settings.publish_docs,
    )
    where = settings.destination or settings.bucket
    try:
        uri = storage.destination_uri(settings.destination, settings.bucket, _conn_type(settings))
        where = uri
        report = storage.upload_artifacts(
            storage.open_destination(uri, settings.conn_id), relative, files, gzip_files=settings.gzip
        )
    except Exception as err:
        message = f"Uploading dbt artifacts to {where}/{relative} failed: {type(err).__name__}: {err}"
        result.extra[ARTIFACTS_KEY] = {"error": message[:_MAX_ERROR]}
        if settings.strict and result.error is None:
            log.error("%s (artifacts_strict=True: the task fails)", message)
            result.error = DbtArtifactException(message, retryable=True, artifact_path=f"{where}/{relative}")
            result.success = False
        else:
            log.warning("%s; the task result is not affected (artifacts_strict=True would fail it)", message)
        return None
    for line in storage.describe(report):
        log.info("%s", line)
    result.extra[ARTIFACTS_KEY] = report.to_xcom()
    return report


def _conn_type(settings: ArtifactSettings) -> str | None:
    """The connection type picks the scheme of a bare ``artifacts_bucket``; a URI destination needs none."""
    if not settings.bucket or not settings.conn_id:
        return None
    from airflow.sdk import BaseHook

    return str(BaseHook.get_connection(settings.conn_id).conn_type)


def record_links(
    settings: ArtifactSettings,
    result: DbtTaskResult,
    report: storage.UploadReport | None,
    who: RunIdentity | None = None,
) -> None:
    """Put the ``dbt Docs``, ``dbt Artifacts`` and ``dbt Run Report`` URLs into the summary the links read.

    The run report links to the Airflow UI plugin's page when the plugin serves the uploaded report (it lies
    under ``[dlh_dbt] artifacts_roots``): that page checks the user's access; otherwise to the upload itself.
    """
    command = result.command.split()[0] if result.command else ""
    node = first_model(n.unique_id for n in result.summary.nodes) if command in _BUILDING_COMMANDS else None
    docs: str | None = None
    if settings.docs_url:
        docs = docs_url(settings.docs_url, node)
    elif report is not None and report.docs_location:
        published = report.docs_location
        if settings.base_url:
            published = storage.relative_url(settings.base_url, report.relative_path, storage.DOCS_INDEX)
        docs = docs_url(published, node)
    artifacts: str | None = settings.base_url
    if report is not None:
        artifacts = report.location
        if settings.base_url:
            artifacts = storage.relative_url(settings.base_url, report.relative_path) + "/"
    report_url: str | None = None
    if report is not None and report.report_location:
        report_url = report.report_location
        if settings.base_url:
            report_url = storage.relative_url(settings.base_url, report.relative_path, RUN_REPORT_FILE)
        if who is not None:
            report_url = _plugin_report_url(report.report_location, who) or report_url
    if docs:
        result.extra[DOCS_URL_KEY] = docs
    if artifacts:
        result.extra[ARTIFACTS_URL_KEY] = artifacts
    if report_url:
        result.extra[REPORT_URL_KEY] = report_url


def _plugin_report_url(location: str, who: RunIdentity) -> str | None:
    try:
        from dlh_airflow_common.plugins.dbt_ui import served_report_url

        return served_report_url(location, who.dag_id, who.run_id, who.task_id, who.map_index, who.try_number)
    except Exception as err:  # a link must never fail the task
        logger.debug("No plugin page for the run report at %s: %s", location, err)
        return None


def openlineage_enabled() -> bool:
    """The OpenLineage provider is installed and configured (a transport, not disabled).

    The provider's configuration is read first: importing OpenLineage's dbt integration costs about a second
    of the worker slot, which a deployment without OpenLineage must not pay after every run.
    """
    try:
        from airflow.providers.openlineage.conf import is_disabled
    except ImportError:
        return False
    if is_disabled():
        return False
    from dlh_airflow_common.dbt.lineage import lineage_available

    return lineage_available()


def lineage(
    result: DbtTaskResult,
    *,
    project_dir: str,
    profile_name: str | None,
    target: str | None,
    log: Any,
    conn_id: str | None = None,
    schema_override: str | None = None,
) -> DbtLineage | None:
    """The run's OpenLineage datasets, or None (provider absent or disabled, adapter unsupported, ...).

    With ``conn_id`` the namespace comes from the target the connection renders to, so it does not depend on
    the generated profiles.yml still being there (a deferred run removes it when dbt ends).
    """
    if not openlineage_enabled():
        return None
    from dlh_airflow_common.dbt.lineage import build_lineage, project_job_facets

    try:
        profile_target = _connection_target(conn_id, schema_override) if conn_id else None
        found = build_lineage(
            project_dir=project_dir,
            target_path=result.target_path,
            profile_name=profile_name,
            target=target,
            profile_target=profile_target,
        )
    except Exception as err:  # lineage is informative; it never fails the task
        log.warning("No OpenLineage datasets for this run: %s: %s", type(err).__name__, err)
        return None
    found.job_facets.update(project_job_facets(result.project))
    log.info("OpenLineage: %d input and %d output dataset(s)", len(found.inputs), len(found.outputs))
    return found


def _connection_target(conn_id: str, schema_override: str | None) -> dict[str, Any]:
    """The dbt target an Airflow connection renders to (secrets stay ``env_var()`` references)."""
    from airflow.sdk import BaseHook

    from dlh_airflow_common.hooks.dbt_profiles import render_target

    conn: Any = BaseHook.get_connection(conn_id)  # airflow.sdk.Connection satisfies ConnectionLike structurally
    return dict(render_target(conn, schema_override=schema_override).target)


def emit_metrics(who: RunIdentity, result: DbtTaskResult, report: storage.UploadReport | None, log: Any) -> None:
    """Send the run's StatsD metrics through Airflow's Stats (a no-op unless ``[metrics]`` is configured)."""
    try:
        sent = metrics.emit(
            metrics.run_metrics(
                result.summary,
                dag_id=who.dag_id,
                task_id=who.task_id,
                command=result.command,
                success=result.success,
                wall_seconds=result.elapsed_seconds,
                attempts=result.attempts,
                error_type=type(result.error).__name__ if result.error is not None else None,
                uploaded_bytes=report.stored_bytes if report is not None else None,
                upload_failed="error" in result.extra.get(ARTIFACTS_KEY, {}),
            )
        )
    except Exception as err:
        log.warning("Could not send dbt metrics: %s", err)
        return
    logger.debug("Sent %d dbt metrics", sent)
