"""DbtOperator: one dbt command as one Airflow task, isolated per try, summarised in the log and in XCom."""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from dlh_airflow_common.dbt import retry_state
from dlh_airflow_common.dbt.channel import DEFAULT_HEARTBEAT_TIMEOUT, ChannelReader, ChannelSpec
from dlh_airflow_common.dbt.detached import DetachedProcess, stop_group
from dlh_airflow_common.dbt.invocation import DEFAULT_GRACE_PERIOD, InvocationMode
from dlh_airflow_common.dbt.retry_state import resume_state_dir, resume_state_url
from dlh_airflow_common.dbt.run_dir import run_dir_name
from dlh_airflow_common.hooks.dbt import DbtHook, DbtTaskResult
from dlh_airflow_common.hooks.dbt_profile_source import GENERATED_PROFILE_NAME, GENERATED_TARGET_NAME
from dlh_airflow_common.links.dbt import DbtArtifactsLink, DbtDocsLink, DbtRunReportLink
from dlh_airflow_common.operators import after_run
from dlh_airflow_common.settings import configured, configured_seconds
from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger, resume_delay

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dlh_airflow_common.dbt.lineage import DbtLineage

XCOM_SUMMARY_KEY = "dbt_summary"
_BACKSTOP_MARGIN_SECONDS = 30


def as_timedelta(value: timedelta | int | float | None) -> timedelta | None:
    """Accept seconds as well as a timedelta for ``execution_timeout``."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"execution_timeout must be a positive number of seconds or a timedelta, got {value!r}")
    return timedelta(seconds=value)


def refuse_local_channel_on_kubernetes(task_executor: str | None) -> None:
    """A KubernetesExecutor pod is deleted once its task defers, and the detached dbt with it: say so up front."""
    from airflow.configuration import conf

    executor = task_executor or str(conf.get("core", "executor", fallback="")).split(",")[0]
    if "kubernetes" in executor.lower():
        from dlh_airflow_common.exceptions.dbt import DbtException

        raise DbtException(
            f"deferrable=True with the {executor.strip()} needs a remote run channel: the worker pod is deleted "
            "when the task defers, and dbt with it. Set run_channel (and run_channel_conn_id) on the operator, or "
            "[dlh_dbt] run_channel in the Airflow config, to an object store URL; or run with deferrable=False. "
            "See docs/deployment.md."
        )


class DbtOperator(BaseOperator):
    """Run a dbt command (``build``, ``run``, ``test``, ``seed``, ...) against a project.

    The profile comes from ``conn_id`` (an Airflow connection, secrets only in environment variables)
    or from ``profiles_dir``. Each try runs in its own directory, so concurrent tasks never share
    artifacts. The summary is pushed to XCom (key ``dbt_summary`` and, on success, the return value)
    and a failure raises the matching ``DbtException`` subclass.

    :param dbt_project_dir: The dbt project (the directory holding ``dbt_project.yml``), or a remote one fetched
        once per version on each worker: an ``ObjectStoragePath`` URL of a folder or a ``.zip``/``.tar.gz``
        bundle, or ``git+https://...@<ref>`` / ``git+ssh://...@<ref>`` (docs/remote-projects.md). Templated.
    :param dbt_project_conn_id: The Airflow connection that reaches a remote ``dbt_project_dir``.
    :param project_cache_dir: Where this worker keeps fetched project versions; default
        ``[dlh_dbt] project_cache_dir``, else ``.dlh_cache/projects`` under the run dir root.
    :param dbt_command: The dbt command, e.g. ``build``, ``run``, ``seed``, ``source freshness``,
        ``docs generate``. Templated.
    :param venv_path: A virtualenv (or its ``bin/dbt``) whose dbt runs, with its own dbt version and adapters.
    :param conn_id: Airflow connection rendered into a generated dbt profile (secrets only in dbt's
        environment). Leave unset to use ``profiles_dir`` or the project's own ``profiles.yml``.
    :param target: dbt target to select (default ``airflow`` for a generated profile). Templated.
    :param profiles_dir: A directory holding your own ``profiles.yml`` (not with ``conn_id``). Templated.
    :param dbt_models: ``--select``: one selection string or a list. Templated.
    :param exclude: ``--exclude``: one selection string or a list. Templated.
    :param selector: ``--selector`` from the project's ``selectors.yml``. Templated.
    :param dbt_vars: ``--vars``: a mapping (sent as JSON) or a YAML/JSON string. Templated.
    :param full_refresh: ``--full-refresh``.
    :param threads: ``--threads``.
    :param fail_fast: ``--fail-fast``.
    :param env_vars: Extra environment variables for dbt (``env_var()`` in the project). Templated.
    :param schema_override: Schema that replaces the connection's or profile's schema. Templated.
    :param keep_target_artifacts: Keep the try's run dir (artifacts, ``dbt.log``); its path goes to XCom.
    :param dbt_args: More dbt arguments, checked like the others (no shell is involved).
    :param run_dir_root: Where each try's run dir is created (default ``<project>/target``; a private temp
        dir when that is read-only). Retry state for ``retry_from_failure`` lives beside the run dirs, or
        under ``run_channel`` when one is set.
    :param invocation_mode: ``subprocess`` (default, stoppable) or ``in-process`` (dbtRunner in the task).
    :param retry_limit: Attempts within one try when dbt fails transiently (1 = none).
    :param transient_retry_delay: Seconds before the first in-try retry; doubles each time.
    :param retry_from_failure: Make Airflow's next try resume this try's failed run (``dbt retry``). With a
        ``run_channel`` its state (the failed try's run_results.json) is kept under
        ``<run_channel>/.dlh_state/``, so that a try on another worker resumes it too.
    :param kill_grace_period: Seconds dbt gets after SIGINT (kill, timeout) to cancel its queries.
    :param execution_timeout: Seconds or a timedelta: dbt is stopped gracefully and
        ``DbtExecutionTimeoutException`` raised; Airflow's own timeout backs it up.
    :param deferrable: Run dbt detached and free the worker slot while ``DbtExecutionTrigger`` watches it.
    :param check_interval: Seconds between the trigger's looks at a deferred run.
    :param dbt_docs_url: Base URL of your dbt docs site: the "dbt Docs" link deep-links to the first model
        the run built (default: the docs this task published, if any).
    :param artifacts_url: Base URL under which the artifact destination is browsable: the "dbt Artifacts"
        link points at this try's folder.
    :param upload_artifacts: Upload the try's artifacts (also on failure) through ``ObjectStoragePath``.
    :param artifacts_conn_id: Connection for the artifact destination (S3, GCS, Azure).
    :param artifacts_bucket: A bare bucket name instead of ``artifacts_destination``; the scheme comes from
        the ``artifacts_conn_id`` connection type.
    :param artifacts_destination: Where artifacts go: an ``ObjectStoragePath`` URL or a local path.
    :param artifacts_compiled_sql: Upload the compiled SQL as well.
    :param artifacts_gzip: Gzip uploaded JSON artifacts.
    :param artifacts_strict: Fail the task when the upload fails (default: a warning).
    :param publish_docs: With ``docs generate``: write the static docs page and publish it with the
        artifacts (implies ``upload_artifacts``).
    :param run_channel: Where a deferred run reports to the triggerer and to ``execute_complete``: unset for
        the run dir itself (worker and triggerer on one host or a shared volume), or an ``ObjectStoragePath``
        URL (``s3://bucket/prefix``, ``gs://...``, ``file:///shared/volume``) that every worker and the
        triggerer can reach, for CeleryExecutor and other multi-host deployments; it also holds the
        ``retry_from_failure`` state, in sync mode too. Default: the Airflow config ``[dlh_dbt] run_channel``.
    :param run_channel_conn_id: Airflow connection for ``run_channel``; default ``[dlh_dbt] run_channel_conn_id``.
    :param orphan_run_dir_age: Seconds after which a run dir left by a killed task (its task, runner and
        dbt all gone on this host) is removed by the next run under the same root; ``None`` turns it off.
    :param run_report: Write the try's run report, ``run_report.html`` (timeline by thread, sortable node
        table, failures and warnings with their compiled SQL, slowest nodes, attempts), into its target dir;
        uploaded with the artifacts, where the "dbt Run Report" link points. Best effort: a report that cannot
        be written is a warning in the task log. See docs/ui.md.
    :param kwargs: Every ``BaseOperator`` argument (``retries``, ``retry_delay``, ``pool``, ...).
    """

    template_fields: Sequence[str] = (
        "dbt_command",
        "dbt_project_dir",
        "dbt_models",
        "exclude",
        "selector",
        "dbt_vars",
        "env_vars",
        "target",
        "schema_override",
        "profiles_dir",
    )
    template_fields_renderers = {"dbt_vars": "json", "env_vars": "json"}
    ui_color = "#ff694a"
    ui_fgcolor = "#ffffff"
    operator_extra_links = (DbtDocsLink(), DbtArtifactsLink(), DbtRunReportLink())

    # The settings below are read from the class while they keep their default: an instance sets only those given
    # otherwise (``_set_given``), since every attribute set on an operator goes through BaseOperator.__setattr__
    # and a task graph builds a thousand operators at each DAG parse. Each equals its ``__init__`` default.
    dbt_project_conn_id: str | None = None
    project_cache_dir: str | None = None
    venv_path: str | None = None
    conn_id: str | None = None
    full_refresh: bool = False
    threads: int | None = None
    fail_fast: bool = False
    keep_target_artifacts: bool = False
    run_dir_root: str | None = None
    invocation_mode: InvocationMode = "subprocess"
    retry_limit: int = 3
    transient_retry_delay: float = 1
    retry_from_failure: bool = False
    kill_grace_period: float = DEFAULT_GRACE_PERIOD
    deferrable: bool = False
    check_interval: float = 10.0
    dbt_docs_url: str | None = None
    artifacts_url: str | None = None
    upload_artifacts: bool = False
    artifacts_conn_id: str | None = None
    artifacts_bucket: str | None = None
    artifacts_destination: str | None = None
    artifacts_compiled_sql: bool = False
    artifacts_gzip: bool = False
    artifacts_strict: bool = False
    publish_docs: bool = False
    orphan_run_dir_age: float | None = 3600.0
    run_channel: str | None = None
    run_channel_conn_id: str | None = None
    run_report: bool = True
    dbt_timeout: timedelta | None = None
    _lineage: DbtLineage | None = None
    # Whether this task pushed its summary: Airflow stores the extra links when the task ends, and a task that
    # pushed none (it failed early, or a task-graph node followed the build) has nothing to look up.
    summary_pushed: bool = False

    def __init__(
        self,
        *,
        dbt_project_dir: str,
        dbt_project_conn_id: str | None = None,
        project_cache_dir: str | None = None,
        dbt_command: str = "build",
        venv_path: str | None = None,
        conn_id: str | None = None,
        target: str | None = None,
        profiles_dir: str | None = None,
        dbt_models: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        selector: str | None = None,
        dbt_vars: Mapping[str, Any] | str | None = None,
        full_refresh: bool = False,
        threads: int | None = None,
        fail_fast: bool = False,
        env_vars: Mapping[str, str] | None = None,
        schema_override: str | None = None,
        keep_target_artifacts: bool = False,
        dbt_args: Sequence[str] | None = None,
        run_dir_root: str | None = None,
        invocation_mode: InvocationMode = "subprocess",
        retry_limit: int = 3,
        transient_retry_delay: float = 1,
        retry_from_failure: bool = False,
        kill_grace_period: float = DEFAULT_GRACE_PERIOD,
        execution_timeout: timedelta | int | float | None = None,
        deferrable: bool = False,
        check_interval: float = 10.0,
        dbt_docs_url: str | None = None,
        artifacts_url: str | None = None,
        upload_artifacts: bool = False,
        artifacts_conn_id: str | None = None,
        artifacts_bucket: str | None = None,
        artifacts_destination: str | None = None,
        artifacts_compiled_sql: bool = False,
        artifacts_gzip: bool = False,
        artifacts_strict: bool = False,
        publish_docs: bool = False,
        orphan_run_dir_age: float | None = 3600.0,
        run_channel: str | None = None,
        run_channel_conn_id: str | None = None,
        run_report: bool = True,
        **kwargs: Any,
    ) -> None:
        timeout = as_timedelta(execution_timeout)
        # dbt is stopped gracefully at the timeout by the hook; Airflow's own timeout only backs it up.
        backstop = timeout + timedelta(seconds=kill_grace_period + _BACKSTOP_MARGIN_SECONDS) if timeout else None
        super().__init__(execution_timeout=backstop, **kwargs)
        # the template fields are always the instance's own (Airflow renders and serializes them per task)
        self.dbt_project_dir = dbt_project_dir
        self.dbt_command = dbt_command
        self.target = target
        self.profiles_dir = profiles_dir
        self.dbt_models = dbt_models
        self.exclude = exclude
        self.selector = selector
        self.dbt_vars = dbt_vars
        self.env_vars = env_vars
        self.schema_override = schema_override
        self.dbt_args = list(dbt_args or ())  # pre_execute may add to it
        self._set_given(
            dbt_timeout=timeout, dbt_project_conn_id=dbt_project_conn_id, project_cache_dir=project_cache_dir,
            venv_path=venv_path, conn_id=conn_id, full_refresh=full_refresh, threads=threads,
            fail_fast=fail_fast, keep_target_artifacts=keep_target_artifacts, run_dir_root=run_dir_root,
            invocation_mode=invocation_mode, retry_limit=retry_limit, transient_retry_delay=transient_retry_delay,
            retry_from_failure=retry_from_failure, kill_grace_period=kill_grace_period, deferrable=deferrable,
            check_interval=check_interval, dbt_docs_url=dbt_docs_url, artifacts_url=artifacts_url,
            upload_artifacts=upload_artifacts or publish_docs, artifacts_conn_id=artifacts_conn_id,
            artifacts_bucket=artifacts_bucket, artifacts_destination=artifacts_destination,
            artifacts_compiled_sql=artifacts_compiled_sql, artifacts_gzip=artifacts_gzip,
            artifacts_strict=artifacts_strict, publish_docs=publish_docs, orphan_run_dir_age=orphan_run_dir_age,
            run_channel=run_channel, run_channel_conn_id=run_channel_conn_id, run_report=run_report,
        )  # fmt: skip
        self._artifact_settings().validate()

    def _set_given(self, **settings: Any) -> None:
        """Set on the instance each setting that differs from its class default (the default is read from the
        class): an equal value of the same type is left unset."""
        for name, value in settings.items():
            default = getattr(DbtOperator, name)
            if value is not default and (type(value) is not type(default) or value != default):
                setattr(self, name, value)

    @cached_property
    def hook(self) -> DbtHook:
        return DbtHook(
            dbt_project_dir=self.dbt_project_dir,
            dbt_project_conn_id=self.dbt_project_conn_id,
            project_cache_dir=self.project_cache_dir,
            venv_path=self.venv_path,
            conn_id=self.conn_id,
            target=self.target,
            profiles_dir=self.profiles_dir,
            env_vars=self.env_vars,
            run_dir_root=self.run_dir_root,
            schema_override=self.schema_override,
            keep_target_artifacts=self.keep_target_artifacts,
            retry_limit=self.retry_limit,
            retry_delay=self.transient_retry_delay,
            invocation_mode=self.invocation_mode,
            execution_timeout=self.dbt_timeout.total_seconds() if self.dbt_timeout else None,
            grace_period=self.kill_grace_period,
            logger=self.log,
            orphan_run_dir_age=self.orphan_run_dir_age,
            run_channel=self.run_channel or configured("run_channel"),
            run_channel_conn_id=self.run_channel_conn_id or configured("run_channel_conn_id"),
            run_report=self.run_report,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", None)
        run_name = run_dir_name(ti.dag_id, ti.task_id, ti.try_number, map_index=map_index)
        if self.deferrable:
            return self._execute_deferrable(context, run_name)
        result = self.hook.run_dbt_task(
            **self._command_options(context, run_name),
            post_run=lambda result: self._after_run(context, result),
            raise_on_failure=False,  # the summary goes to XCom first; _finish raises
        )
        return self._finish(context, result)

    def _command_options(self, context: Context, run_name: str) -> dict[str, Any]:
        """The dbt command and its options, the same for a sync run and a detached one."""
        return {
            "command": self.dbt_command,
            "select": self.dbt_models,
            "exclude": self.exclude,
            "selector": self.selector,
            "vars": self.dbt_vars,
            "full_refresh": self.full_refresh,
            "threads": self.threads,
            "fail_fast": self.fail_fast,
            "extra_args": self.dbt_args,
            "run_name": run_name,
            "resume_state": self._resume_state(context) if self.retry_from_failure else None,
        }

    def _execute_deferrable(self, context: Context, run_name: str) -> dict[str, Any]:
        """Start dbt detached, then free the worker slot until the trigger reports it finished."""
        if not self.hook.run_channel:
            refuse_local_channel_on_kubernetes(getattr(self, "executor", None))
        process = self.hook.start_detached(**self._command_options(context, run_name), **self._detached_options())
        self._detached_process = process
        self._launched(context, process)
        channel = ChannelSpec.from_dict(process.channel) or ChannelSpec(process.run_dir)
        status = ChannelReader(channel).status() if not channel.remote else None
        if status is not None and status.finished:  # finished already: no need to defer
            return self.execute_complete(context, {"status": "finished", **process.to_dict()})
        timeout = self.dbt_timeout.total_seconds() if self.dbt_timeout else None
        trigger = DbtExecutionTrigger(
            run_dir=process.run_dir,
            pid=process.pid,
            host=process.host,
            pgid=process.pgid,
            start_ticks=process.start_ticks,
            started_at=process.started_at,
            poll_interval=self.check_interval,
            deadline=process.started_at + timeout if timeout else None,
            grace_period=self.kill_grace_period,
            keep_run_dir=self.keep_target_artifacts,
            channel=process.channel,
            heartbeat_timeout=configured_seconds("run_channel_heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT),
            min_wait=resume_delay(),
        )
        self.defer(trigger=trigger, method_name="execute_complete", timeout=self.execution_timeout)

    def _detached_options(self) -> dict[str, Any]:
        """More ``start_detached`` arguments of a subclass (a task graph's build asks for node results)."""
        return {}

    def _launched(self, context: Context, process: DetachedProcess) -> None:
        """Called once dbt runs detached, before the task defers (a task graph's build announces its channel)."""

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume on the worker: load artifacts, log the summary, push XCom, clean up, raise typed errors."""
        return self._finish(context, self._collect(context, event))

    def _collect(self, context: Context, event: dict[str, Any]) -> DbtTaskResult:
        """The detached run's result from the trigger's event, after the same clean-up as a sync run."""
        return self.hook.finish_detached(
            event,
            resume_state=self._resume_state(context) if self.retry_from_failure else None,
            post_run=lambda result: self._after_run(context, result),
            raise_on_failure=False,
        )

    def _after_run(self, context: Context, result: DbtTaskResult) -> None:
        """Runs while the run dir still exists, on success and failure: artifact upload, lineage, metrics."""
        who = after_run.RunIdentity.from_context(context)
        settings = self._artifact_settings()
        report = after_run.upload(settings, who, result, self.log) if settings.upload else None
        after_run.record_links(settings, result, report, who)
        generated = bool(self.conn_id)  # the hook generated the profile: its profile and target names
        self._lineage = after_run.lineage(
            result,
            project_dir=str(self._project_path()),
            profile_name=GENERATED_PROFILE_NAME if generated and not self._project_profile() else None,
            target=self.target or (GENERATED_TARGET_NAME if generated else None),
            log=self.log,
            conn_id=self.conn_id,
            schema_override=self.schema_override,
        )
        after_run.emit_metrics(who, result, report, self.log)

    def _artifact_settings(self) -> after_run.ArtifactSettings:
        return after_run.ArtifactSettings(
            upload=self.upload_artifacts,
            conn_id=self.artifacts_conn_id,
            bucket=self.artifacts_bucket,
            destination=self.artifacts_destination,
            base_url=self.artifacts_url,
            docs_url=self.dbt_docs_url,
            compiled_sql=self.artifacts_compiled_sql,
            gzip=self.artifacts_gzip,
            strict=self.artifacts_strict,
            publish_docs=self.publish_docs,
        )

    def _project_path(self) -> Path:
        """The local project dir of the try in progress (a remote project's cached version), else the argument."""
        checkout = self.hook.last_checkout
        return checkout.path if checkout is not None else Path(self.dbt_project_dir)

    def _project_profile(self) -> str | None:
        from dlh_airflow_common.dbt.project import load_project

        return load_project(self._project_path()).profile

    def pre_execute(self, context: Any) -> None:
        """With ``publish_docs``, ``docs generate`` also writes the self-contained ``static_index.html``."""
        docs = " ".join(str(self.dbt_command).split()) == "docs generate"
        if self.publish_docs and docs and "--static" not in self.dbt_args:
            self.dbt_args.append("--static")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs (sources, seeds, upstream models) and outputs (models, snapshots, loaded seeds) of the run."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        if self._lineage is None:
            return OperatorLineage()
        return OperatorLineage(
            inputs=self._lineage.inputs, outputs=self._lineage.outputs, run_facets=self._lineage.run_facets,
            job_facets=self._lineage.job_facets,
        )  # fmt: skip

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """A failed run still read its inputs and may have built some models before the failure."""
        return self.get_openlineage_facets_on_complete(task_instance)

    def _finish(self, context: Context, result: DbtTaskResult) -> dict[str, Any]:
        """Push the bounded summary to XCom, then return it or raise the typed error (sync and deferrable)."""
        summary = result.to_xcom()
        summary.update(result.extra)  # upload location and link URLs from _after_run (small, bounded)
        context["ti"].xcom_push(key=XCOM_SUMMARY_KEY, value=summary)
        self.summary_pushed = True
        if result.error is not None:
            raise result.error
        return summary

    def _resume_state(self, context: Context) -> str | None:
        """Where this task instance keeps the state ``dbt retry`` needs in its next try: under the run channel
        when one is set (the next try may run on another worker), else beside the run dirs."""
        ti = context["ti"]
        key = (ti.dag_id, ti.task_id, context["run_id"], f"map{getattr(ti, 'map_index', -1)}")
        channel = self.hook.run_channel
        if channel:
            state = resume_state_url(channel, *key)
        else:
            run_root = self.hook.run_root()
            root = Path(run_root) if run_root else Path(self.dbt_project_dir) / "target"
            state = str(resume_state_dir(root, *key))
        if ti.try_number <= 1:  # a first try never resumes leftovers of an older run
            store = retry_state.open_state(state, self.hook.run_channel_conn_id, log=self.log)
            if store is None or not retry_state.clear(store, log=self.log):
                return None  # leftovers that could not be removed are never resumed: this try keeps no state
        return state

    def on_kill(self) -> None:
        """Stop dbt gracefully: SIGINT to its process group, ``kill_grace_period`` seconds, then SIGKILL."""
        hook = self.__dict__.get("hook")
        if hook is not None:
            hook.cancel()
        process = self.__dict__.get("_detached_process")
        if process is not None:  # killed between starting detached dbt and deferring
            stop_group(process, signal.SIGINT)
