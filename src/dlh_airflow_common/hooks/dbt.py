"""DbtHook: an Airflow Connection becomes a dbt profile, then one isolated dbt run is executed and reported."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from dlh_airflow_common.dbt.artifacts import CATALOG, MANIFEST, RUN_RESULTS, SOURCES, load_artifact
from dlh_airflow_common.dbt.caches import RunCaches
from dlh_airflow_common.dbt.channel import DEFAULT_HEARTBEAT_INTERVAL
from dlh_airflow_common.dbt.command import DbtCommand
from dlh_airflow_common.dbt.detached import DetachedProcess
from dlh_airflow_common.dbt.invocation import (
    DEFAULT_GRACE_PERIOD,
    INVOCATION_MODES,
    DbtInvocation,
    InvocationMode,
    dbt_executable,
)
from dlh_airflow_common.dbt.partial_parse import cache_root
from dlh_airflow_common.dbt.project import DbtProject, load_project
from dlh_airflow_common.dbt.project_cache import DEFAULT_KEEP, DEFAULT_MIN_IDLE
from dlh_airflow_common.dbt.project_source import ProjectSource, parse_source
from dlh_airflow_common.dbt.remote_project import ProjectCheckout, checkout_project
from dlh_airflow_common.dbt.result import DbtTaskResult
from dlh_airflow_common.dbt.retry import RetryPolicy
from dlh_airflow_common.dbt.run import DbtRun, RunSettings, raise_or_return
from dlh_airflow_common.dbt.run_dir import private_temp_root
from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.hooks.dbt_connection_test import run_connection_test
from dlh_airflow_common.hooks.dbt_profile_source import ProfileSource
from dlh_airflow_common.settings import configured, configured_count, configured_seconds

__all__ = ["DbtHook", "DbtTaskResult"]


class DbtHook(BaseHook):
    """Runs dbt commands for one project with a profile built from an Airflow connection (or your own).

    Each run gets its own run dir (dbt's log path, the generated profile and, unless ``target_path`` is
    given, dbt's target path), removed afterwards unless ``keep_target_artifacts``. A dbt failure raises
    the matching ``DbtException`` subclass with the run's ``DbtTaskResult`` as ``exc.result``.

    :param dbt_project_dir: The dbt project: the directory holding ``dbt_project.yml``, or a remote one
        fetched once per version into ``project_cache_dir`` (docs/remote-projects.md): an ``ObjectStoragePath``
        URL of a folder or a ``.zip``/``.tar.gz`` bundle (``s3://bucket/shop.tar.gz``), or a git URL with a
        ref (``git+https://git.example.com/shop.git@main``, ``git+ssh://...``).
    :param dbt_project_conn_id: The Airflow connection that reaches a remote ``dbt_project_dir`` (object
        storage, or git: login/password for HTTPS, ``private_key``/``known_hosts`` in the extra for SSH);
        default ``[dlh_dbt] project_conn_id``.
    :param project_cache_dir: Where fetched project versions are kept on this worker; default
        ``[dlh_dbt] project_cache_dir``, else ``<cache dir>/projects`` (``cache_dir``'s default).
    :param venv_path: A virtualenv (or its ``bin/dbt``) whose dbt runs instead of the one beside Airflow.
    :param conn_id: Airflow connection rendered into a generated profile; secrets only reach dbt's
        environment. Leave unset to use ``profiles_dir`` or the project's own ``profiles.yml``.
    :param target: dbt target to select (default ``airflow`` for a generated profile).
    :param profiles_dir: A directory holding your own ``profiles.yml`` (not with ``conn_id``).
    :param env_vars: Extra environment variables for dbt (``env_var()`` in the project).
    :param target_path: dbt's ``--target-path`` for this hook's runs (relative paths are relative to the
        project, as in dbt): artifacts stay there after the run and the hook never deletes it. Concurrent
        runs sharing it share their artifacts. Default: the run dir's own ``target``, removed with it.
    :param run_dir_root: Where run dirs are created (default ``<project>/target``, or a private temp dir
        when that is read-only or the project is remote).
    :param retry_limit: Attempts of a command within one call when dbt fails transiently (1 = no retry).
    :param retry_delay: Seconds before the first in-call retry; doubles each time.
    :param schema_override: Schema (dataset) that replaces the connection's or profile's schema.
    :param keep_target_artifacts: Keep each run dir after the run (its artifacts and ``dbt.log``).
    :param ascii_only: Strip characters outside ASCII from the lines this hook logs.
    :param invocation_mode: ``subprocess`` (default, stoppable) or ``in-process`` (dbtRunner in this process).
    :param execution_timeout: Seconds after which dbt is stopped and ``DbtExecutionTimeoutException`` raised.
    :param grace_period: Seconds dbt gets after SIGINT to cancel its queries before SIGKILL.
    :param logger: Where progress and summaries are logged (the operator passes its task logger).
    :param partial_parse_cache: Seed each run with the last good ``partial_parse.msgpack`` of the same
        project, dbt version, target and vars.
    :param deps_cache: Install ``packages.yml`` packages once per lock and share them between runs.
    :param cache_dir: Where those caches live (default ``<run dir root>/.dlh_cache``).
    :param run_channel: Where detached (deferrable) runs report: ``None`` for the run dir itself (worker and
        triggerer share a host or volume), or an ``ObjectStoragePath`` URL (``s3://bucket/prefix``,
        ``file:///shared/volume``) that every worker and the triggerer can reach.
    :param run_channel_conn_id: The Airflow connection for ``run_channel`` (S3, GCS, Azure...).
    :param orphan_run_dir_age: At the start of each run, remove run dirs under the same root whose task,
        runner and dbt are all gone on this host and that have been idle this many seconds (leftovers
        of killed tasks); ``None`` or 0 turns this off.
    :param run_report: After each try, write ``run_report.html`` (timeline, node table, failures with their
        compiled SQL) into the try's target path; it goes with the uploaded artifacts. Best effort: a report
        that cannot be written is a warning.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "dbt_default"
    conn_type = "dbt"
    hook_name = "dbt Core"

    def __init__(
        self,
        dbt_project_dir: str | os.PathLike[str],
        *,
        dbt_project_conn_id: str | None = None,
        project_cache_dir: str | os.PathLike[str] | None = None,
        venv_path: str | os.PathLike[str] | None = None,
        conn_id: str | None = None,
        target: str | None = None,
        profiles_dir: str | os.PathLike[str] | None = None,
        env_vars: Mapping[str, str] | None = None,
        target_path: str | os.PathLike[str] | None = None,
        run_dir_root: str | os.PathLike[str] | None = None,
        retry_limit: int = 3,
        retry_delay: float = 1,
        schema_override: str | None = None,
        keep_target_artifacts: bool = False,
        ascii_only: bool = True,
        invocation_mode: InvocationMode = "subprocess",
        execution_timeout: float | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        logger: Any = None,
        partial_parse_cache: bool = True,
        deps_cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        orphan_run_dir_age: float | None = 3600.0,
        run_channel: str | None = None,
        run_channel_conn_id: str | None = None,
        run_report: bool = True,
    ) -> None:
        super().__init__()
        self.dbt_project_dir = str(dbt_project_dir)
        self.dbt_project_conn_id = dbt_project_conn_id or configured("project_conn_id")
        self.project_cache_dir = str(project_cache_dir) if project_cache_dir else None
        self.project_source: ProjectSource = parse_source(self.dbt_project_dir, self.dbt_project_conn_id)
        self.last_checkout: ProjectCheckout | None = None  # the project dir (and version) of the last try
        self.venv_path = str(venv_path) if venv_path else None
        self.conn_id = conn_id
        self.target = target
        self.profiles_dir = str(profiles_dir) if profiles_dir else None
        self.env_vars = {str(k): str(v) for k, v in (env_vars or {}).items()}
        self.target_path = str(target_path) if target_path else None
        self.run_dir_root = str(run_dir_root) if run_dir_root else None
        self.retry_limit = retry_limit
        self.retry_delay = retry_delay
        RetryPolicy(retry_limit, retry_delay)  # refuse bad values when the hook is built
        if invocation_mode not in INVOCATION_MODES:
            raise DbtException(
                f"invocation_mode must be one of {', '.join(INVOCATION_MODES)}, not {invocation_mode!r}."
            )
        if invocation_mode == "in-process" and venv_path:
            raise DbtException("venv_path runs dbt from another environment; it cannot be combined with in-process.")
        self.invocation_mode: InvocationMode = invocation_mode
        self.execution_timeout = execution_timeout
        self.grace_period = grace_period
        self.schema_override = schema_override
        self.keep_target_artifacts = keep_target_artifacts
        self.ascii_only = ascii_only
        self._logger = logger
        self.partial_parse_cache = partial_parse_cache
        self.deps_cache = deps_cache
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.orphan_run_dir_age = orphan_run_dir_age
        self.run_channel = run_channel or None
        self.run_channel_conn_id = run_channel_conn_id or None
        self.run_report = run_report
        self._run: DbtRun | None = None  # the try in progress, else the last one that got a run dir

    @property
    def run_log(self) -> Any:
        """Where progress and summaries go: the operator's task logger when given, else the hook's."""
        return self._logger or self.log

    # -- profile -----------------------------------------------------------------------------------
    @property
    def profile_source(self) -> ProfileSource:
        return ProfileSource(
            get_connection=self.get_connection, conn_id=self.conn_id, profiles_dir=self.profiles_dir,
            target=self.target, schema_override=self.schema_override, env_vars=self.env_vars,
        )  # fmt: skip

    def _connection(self, conn_id: str) -> Any:
        return dataclasses.replace(self.profile_source, conn_id=conn_id).connection()

    # -- running -----------------------------------------------------------------------------------
    def run_dbt_task(
        self,
        command: str,
        select: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        selector: str | None = None,
        vars: Mapping[str, Any] | str | None = None,
        full_refresh: bool = False,
        threads: int | None = None,
        fail_fast: bool = False,
        extra_args: Sequence[str] = (),
        *,
        macro_args: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        resume_state: str | os.PathLike[str] | None = None,
        post_run: Callable[[DbtTaskResult], None] | None = None,
        raise_on_failure: bool = True,
    ) -> DbtTaskResult:
        """Run one dbt command in its own run dir and return its result; a dbt failure raises.

        Bad input (unknown command, missing project, broken connection definition) raises before anything
        is written. Transient failures are retried (``retry_limit``, ``retry_delay``); after partial
        progress the retry is ``dbt retry``. A failure that remains raises its ``DbtException`` subclass,
        with the result as ``exc.result``.

        :param command: The dbt command (``build``, ``run``, ``test``, ``seed``, ``source freshness``...).
        :param select: ``--select``: one selection string or a list of them.
        :param exclude: ``--exclude``: one selection string or a list of them.
        :param selector: ``--selector``: a selector defined in the project's ``selectors.yml``.
        :param vars: ``--vars``: a mapping (sent as JSON) or a YAML/JSON string.
        :param full_refresh: ``--full-refresh`` (commands that take it).
        :param threads: ``--threads``.
        :param fail_fast: ``--fail-fast``.
        :param extra_args: More dbt arguments, checked like the others (no shell is involved).
        :param macro_args: ``--args`` of ``run-operation``.
        :param run_name: Name of the run dir (the operator derives it from the task instance).
        :param resume_state: Where a previous try's failed run is kept (a local directory, or an
            ``ObjectStoragePath`` URL reached with ``run_channel_conn_id``): that run is resumed with
            ``dbt retry``, and this run's state is kept there until the command succeeds. State that cannot
            be read or written is logged and the full command runs.
        :param post_run: Called with the result while the run dir still exists (uploads, lineage).
        :param raise_on_failure: ``False`` returns a failed result (``result.error`` holds the exception)
            instead of raising it.
        """
        with self.checkout() as checkout:
            project, dbt_command = self._prepare(
                checkout, command, select=select, exclude=exclude, selector=selector, vars=vars,
                full_refresh=full_refresh, threads=threads, fail_fast=fail_fast, extra_args=tuple(extra_args),
                macro_args=macro_args,
            )  # fmt: skip
            with self._trying(run_name, resume_state, checkout) as run:
                prepared = self.profile_source.prepare(project)  # every profile check, before anything is written
                result = run.run(project, dbt_command, prepared, post_run=post_run)
        return raise_or_return(result, raise_on_failure)

    def start_detached(
        self,
        command: str,
        select: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        selector: str | None = None,
        vars: Mapping[str, Any] | str | None = None,
        full_refresh: bool = False,
        threads: int | None = None,
        fail_fast: bool = False,
        extra_args: Sequence[str] = (),
        *,
        run_name: str | None = None,
        resume_state: str | os.PathLike[str] | None = None,
        node_results: bool = False,
    ) -> DetachedProcess:
        """Start dbt so that it outlives this process (deferrable tasks); ``finish_detached`` collects it.

        Raises like ``run_dbt_task`` on bad input, and ``DbtException`` when the runner does not start.
        The generated profile lives in the run dir (only ``env_var`` references; secrets stay in dbt's
        environment) and goes with it. No in-try retries here: Airflow's retries and
        ``retry_from_failure`` cover a failed detached run. The arguments are ``run_dbt_task``'s, plus
        ``node_results``: the run channel carries every node's result (what a task graph's node tasks read).
        """
        with self.checkout() as checkout:
            project, dbt_command = self._prepare(
                checkout, command, select=select, exclude=exclude, selector=selector, vars=vars,
                full_refresh=full_refresh, threads=threads, fail_fast=fail_fast, extra_args=tuple(extra_args),
            )  # fmt: skip
            return self._launch(checkout, project, dbt_command, run_name, resume_state, node_results)

    def _launch(
        self,
        checkout: ProjectCheckout,
        project: DbtProject,
        dbt_command: DbtCommand,
        run_name: str | None,
        resume_state: str | os.PathLike[str] | None,
        node_results: bool,
    ) -> DetachedProcess:
        with self._trying(run_name, resume_state, checkout) as run:
            prepared = self.profile_source.prepare(project)
            interval = configured_seconds("run_channel_heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL)
            return run.launch(
                project, dbt_command, prepared, heartbeat_interval=interval,
                channel_connection=lambda conn_id: str(self.get_connection(conn_id).as_json()),
                node_results=node_results,
            )  # fmt: skip

    def finish_detached(
        self,
        event: Mapping[str, Any],
        *,
        resume_state: str | os.PathLike[str] | None = None,
        post_run: Callable[[DbtTaskResult], None] | None = None,
        raise_on_failure: bool = True,
    ) -> DbtTaskResult:
        """Collect a detached run from its run dir: same summary, error types and clean-up as a sync run.

        :param event: The trigger's event (``DbtExecutionTrigger``): its status and the run dir.
        :param resume_state: As for ``run_dbt_task``: where this task keeps its state for the next try.
        :param post_run: Called with the result while the run dir still exists (uploads, lineage).
        :param raise_on_failure: ``False`` returns a failed result instead of raising its exception.
        """
        with self.checkout() as checkout, self._trying(None, resume_state, checkout) as run:
            result = run.collect(event, redactor=self.profile_source.redactor, post_run=post_run)
        return raise_or_return(result, raise_on_failure)

    def checkout(self) -> AbstractContextManager[ProjectCheckout]:
        """The project as a local directory while the block runs: a remote one's current version, fetched into
        the project cache unless it is there already, and leased so that no pruning removes it meanwhile."""
        source = self.project_source
        return checkout_project(
            self.dbt_project_dir, conn_id=self.dbt_project_conn_id,
            cache_dir=self.project_cache_root() if source.remote else None, connection=self.get_connection,
            keep=configured_count("project_cache_keep", DEFAULT_KEEP),
            min_idle=configured_seconds("project_cache_min_idle", DEFAULT_MIN_IDLE), log=self.run_log,
        )  # fmt: skip

    def run_root(self) -> str | None:
        """Where run dirs go: ``run_dir_root``; for a remote project the private temp dir when unset (never
        inside the shared project cache); None for a local project's own ``target``."""
        if self.run_dir_root or not self.project_source.remote:
            return self.run_dir_root
        return str(private_temp_root())

    def project_cache_root(self) -> Path:
        """Where remote project versions are cached on this worker (see ``project_cache_dir``)."""
        configured_dir = self.project_cache_dir or configured("project_cache_dir")
        if configured_dir:
            return Path(configured_dir).expanduser()
        return cache_root(self.run_root() or private_temp_root(), self.cache_dir) / "projects"

    def _prepare(self, checkout: ProjectCheckout, command: str, **options: Any) -> tuple[DbtProject, DbtCommand]:
        """Check everything that can be checked before anything is written."""
        project = load_project(checkout.path)
        if self.venv_path is not None:
            dbt_executable(self.venv_path)
        return project, DbtCommand(command=command, **options)

    def _settings(self) -> RunSettings:
        """This hook's settings for one try (read at each call: they are plain attributes)."""
        return RunSettings(
            venv_path=self.venv_path, conn_id=self.conn_id, target_path=self.target_path,
            run_dir_root=self.run_root(), retry_limit=self.retry_limit, retry_delay=self.retry_delay,
            keep_target_artifacts=self.keep_target_artifacts, ascii_only=self.ascii_only,
            invocation_mode=self.invocation_mode, execution_timeout=self.execution_timeout,
            grace_period=self.grace_period,
            caches=RunCaches(partial_parse=self.partial_parse_cache, deps=self.deps_cache, cache_dir=self.cache_dir,
                             venv_path=self.venv_path),
            orphan_run_dir_age=self.orphan_run_dir_age, run_channel=self.run_channel,
            run_channel_conn_id=self.run_channel_conn_id, run_report=self.run_report,
        )  # fmt: skip

    @contextmanager
    def _trying(
        self, run_name: str | None, resume_state: str | os.PathLike[str] | None, checkout: ProjectCheckout
    ) -> Iterator[DbtRun]:
        """A new try, current while it runs (``cancel``, the getters); one that never got a run dir leaves
        the getters on the last one that did."""
        self.last_checkout = checkout
        run = DbtRun(checkout.path, self._settings(), log=self.run_log, run_name=run_name,
                     resume_state=resume_state, project_version=checkout.describe())  # fmt: skip
        previous, self._run = self._run, run
        try:
            yield run
        finally:
            if not run.started:
                self._run = previous

    def cancel(self) -> None:
        """Stop the running dbt (graceful, see ``grace_period``) and any pending retry; safe to call anytime."""
        run = self._run
        if run is not None:
            run.cancel()

    @property
    def invocation(self) -> DbtInvocation | None:
        """The dbt execution in progress, if any."""
        return self._run.invocation if self._run is not None else None

    @property
    def last_target_path(self) -> str | None:
        """dbt's target path of the last run while it exists (None once its run dir is removed)."""
        return self._run.target_path if self._run is not None else None

    # -- artifacts ---------------------------------------------------------------------------------
    def _artifact(self, name: str) -> dict[str, Any]:
        """The last run's artifact: from its target path while it exists, else the copy kept in memory."""
        if self._run is not None and self._run.started:
            return self._run.artifact(name)
        if self.last_checkout is None and self.project_source.remote:
            return {}  # no run yet: the remote project has no target path on this worker
        project = self.last_checkout.path if self.last_checkout is not None else Path(self.dbt_project_dir)
        return load_artifact((self._settings().user_target(project) or project / "target") / name)

    def get_manifest(self) -> dict[str, Any]:
        """The last run's manifest.json (before any run: the one in the target path); ``{}`` if none."""
        return self._artifact(MANIFEST)

    def get_run_results(self) -> dict[str, Any]:
        """The last run's run_results.json; ``{}`` if dbt wrote none."""
        return self._artifact(RUN_RESULTS)

    def get_catalog(self) -> dict[str, Any]:
        """The last run's catalog.json (``docs generate``); ``{}`` if dbt wrote none."""
        return self._artifact(CATALOG)

    def get_sources(self) -> dict[str, Any]:
        """The last run's sources.json (``source freshness``); ``{}`` if dbt wrote none."""
        return self._artifact(SOURCES)

    # -- Airflow connection form -------------------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        """The connection form's Test button: ``dbt debug --connection`` with this connection as the profile."""
        return run_connection_test(self)
