"""DbtHook: an Airflow Connection becomes a dbt profile, then one isolated dbt run is executed and reported."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from dlh_airflow_common.dbt import retry_state
from dlh_airflow_common.dbt.artifacts import (
    CATALOG,
    MANIFEST,
    RUN_RESULTS,
    SOURCES,
    KeptArtifacts,
    load_artifact,
)
from dlh_airflow_common.dbt.channel import DEFAULT_HEARTBEAT_INTERVAL, ChannelReader, ChannelSpec, RunStatus
from dlh_airflow_common.dbt.command import DbtCommand
from dlh_airflow_common.dbt.detached import (
    EVENTS_FILE,
    DetachedProcess,
    channel_conn_env,
    launch,
    read_dbt_process,
)
from dlh_airflow_common.dbt.event_runner import ORPHAN_GRACE_ENV
from dlh_airflow_common.dbt.invocation import (
    BASE_ENV,
    DEFAULT_GRACE_PERIOD,
    INVOCATION_MODES,
    DbtInvocation,
    InvocationMode,
    InvocationResult,
    dbt_executable,
    subprocess_argv,
)
from dlh_airflow_common.dbt.project import DbtProject, load_project
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.dbt.report import ProgressReporter, format_summary, replay_progress
from dlh_airflow_common.dbt.result import DbtTaskResult, build_result
from dlh_airflow_common.dbt.retry import RetryPolicy, merge_summaries
from dlh_airflow_common.dbt.run_dir import RunDir, create_run_dir, run_dir_name
from dlh_airflow_common.dbt.run_dir_sweep import sweep_run_dirs
from dlh_airflow_common.exceptions.dbt import (
    DbtException,
    DbtExecutionTimeoutException,
)
from dlh_airflow_common.hooks.dbt_connection_test import run_connection_test
from dlh_airflow_common.hooks.dbt_profile_source import Profile, ProfileSource
from dlh_airflow_common.settings import configured_seconds

__all__ = ["DbtHook", "DbtTaskResult"]


PROFILE_DIR = "profile"  # the generated profiles.yml of a run, inside its run dir


def _retry_command(command: DbtCommand) -> DbtCommand:
    return DbtCommand("retry", threads=command.threads, fail_fast=command.fail_fast)


def _cancelled_outcome() -> InvocationResult:
    return InvocationResult(return_code=2, stopped="killed")


class DbtHook(BaseHook):
    """Runs dbt commands for one project with a profile built from an Airflow connection (or your own).

    Each run gets its own run dir (dbt's log path, the generated profile and, unless ``target_path`` is
    given, dbt's target path), removed afterwards unless ``keep_target_artifacts``. A dbt failure raises
    the matching ``DbtException`` subclass with the run's ``DbtTaskResult`` as ``exc.result``.

    :param dbt_project_dir: The dbt project (the directory holding ``dbt_project.yml``).
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
        when that is read-only).
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
    """

    conn_name_attr = "conn_id"
    default_conn_name = "dbt_default"
    conn_type = "dbt"
    hook_name = "dbt Core"

    def __init__(
        self,
        dbt_project_dir: str | os.PathLike[str],
        *,
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
    ) -> None:
        super().__init__()
        self.dbt_project_dir = str(dbt_project_dir)
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
        self._cancelled = threading.Event()
        self.schema_override = schema_override
        self.keep_target_artifacts = keep_target_artifacts
        self.ascii_only = ascii_only
        self._logger = logger
        self.last_target_path: str | None = None
        self.invocation: DbtInvocation | None = None
        self.partial_parse_cache = partial_parse_cache
        self.deps_cache = deps_cache
        self.cache_dir = str(cache_dir) if cache_dir else None
        self._parse_seed: Any = None
        self._last_artifacts: KeptArtifacts | None = None
        self.orphan_run_dir_age = orphan_run_dir_age
        self.run_channel = run_channel or None
        self.run_channel_conn_id = run_channel_conn_id or None

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
        :param resume_state: Where a previous try's failed run is kept: that run is resumed with
            ``dbt retry``, and this run's state is kept there until the command succeeds.
        :param post_run: Called with the result while the run dir still exists (uploads, lineage).
        :param raise_on_failure: ``False`` returns a failed result (``result.error`` holds the exception)
            instead of raising it.
        """
        project, dbt_command = self._prepare(
            command, select=select, exclude=exclude, selector=selector, vars=vars, full_refresh=full_refresh,
            threads=threads, fail_fast=fail_fast, extra_args=tuple(extra_args), macro_args=macro_args,
        )  # fmt: skip
        policy = RetryPolicy(self.retry_limit, self.retry_delay)
        self._cancelled.clear()
        result: DbtTaskResult | None = None
        prepared = self.profile_source.prepare(project)  # every profile check, before anything is written
        run_dir = self._new_run_dir(project, run_name)
        try:
            profile = prepared.write(run_dir.path / PROFILE_DIR)
            state_dir = Path(resume_state) if resume_state is not None else None
            first = self._resume_command(dbt_command, state_dir, run_dir)
            result = self._run_attempts(first, dbt_command, project, profile, run_dir, policy)
            stopped = isinstance(result.error, DbtExecutionTimeoutException) or self._cancelled.is_set()
            self._conclude(result, run_dir, state_dir, post_run, stopped=stopped)
        finally:
            self._release(run_dir, result)
        return _raise_or_return(result, raise_on_failure)

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
    ) -> DetachedProcess:
        """Start dbt so that it outlives this process (deferrable tasks); ``finish_detached`` collects it.

        Raises like ``run_dbt_task`` on bad input, and ``DbtException`` when the runner does not start.
        The generated profile lives in the run dir (only ``env_var`` references; secrets stay in dbt's
        environment) and goes with it. No in-try retries here: Airflow's retries and
        ``retry_from_failure`` cover a failed detached run. The arguments are ``run_dbt_task``'s.
        """
        project, dbt_command = self._prepare(
            command, select=select, exclude=exclude, selector=selector, vars=vars, full_refresh=full_refresh,
            threads=threads, fail_fast=fail_fast, extra_args=tuple(extra_args),
        )  # fmt: skip
        prepared = self.profile_source.prepare(project)
        run_dir = self._new_run_dir(project, run_name)
        try:
            profile = prepared.write(run_dir.path / PROFILE_DIR)
            state_dir = Path(resume_state) if resume_state is not None else None
            first = self._resume_command(dbt_command, state_dir, run_dir)
            argv = subprocess_argv(self.venv_path, self._argv(first, project, profile, run_dir))
            self._before_invocation(project, run_dir, first)
            env = {**os.environ, **BASE_ENV, **profile.env, "PYTHONUNBUFFERED": "1",
                   ORPHAN_GRACE_ENV: str(self.grace_period)}  # fmt: skip
            channel = ChannelSpec.for_run(
                run_dir.path, self.run_channel, self.run_channel_conn_id,
                heartbeat_interval=configured_seconds("run_channel_heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL),
            )  # fmt: skip
            if channel.conn_id:  # the runner reads it as Airflow reads AIRFLOW_CONN_*; it never reaches dbt
                env[channel_conn_env(channel.conn_id)] = self.get_connection(channel.conn_id).as_json()
            meta = {
                "command": first.command,
                "channel": channel.to_dict(),
                "deadline": time.time() + self.execution_timeout if self.execution_timeout else None,
                "grace_period": self.grace_period,
                "pack": [[str(run_dir.target_path), "target"], [str(run_dir.log_path), "logs"]],
            }
            process = launch(run_dir.path, argv, env, meta=meta, channel=channel)
        except BaseException:
            run_dir.cleanup()
            raise
        self.run_log.info("Started dbt %s detached (pid %s on %s) in %s, reporting to %s", first.command, process.pid,
                          process.host, run_dir.path, channel.where)  # fmt: skip
        return process

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
        channel = ChannelSpec.from_dict(event.get("channel")) or ChannelSpec(str(event["run_dir"]))
        reader = ChannelReader(channel)
        run_dir = self._collected_run_dir(reader) if channel.remote else RunDir(
            Path(channel.run_dir), target=self._user_target(Path(self.dbt_project_dir))
        )  # fmt: skip
        self.last_target_path = str(run_dir.target_path)
        self._last_artifacts = None
        result: DbtTaskResult | None = None
        local = not channel.remote and event.get("stopped") is not False
        dbt = read_dbt_process(run_dir.path) if local else None
        still_running = dbt is not None and dbt.alive_here()
        try:
            status = reader.status()
            command = status.command if status is not None else "dbt"
            kind = str(event.get("status"))
            progress = replay_progress(run_dir.log_path / EVENTS_FILE, self.run_log, ascii_only=self.ascii_only)
            outcome = _detached_outcome(kind, status)
            started = float(event.get("started_at") or 0) or None
            ended = status.ended_at if status is not None and status.ended_at else time.time()
            wall = max(0.0, ended - started) if started else 0.0
            result = self._result(command, outcome, run_dir, self.profile_source.redactor(), progress, wall)
            if kind == "lost":
                result.success = False
                result.error = DbtException(str(event.get("message") or "The detached dbt run was lost."))
            if still_running and dbt is not None:
                result.success = False
                reason = f"{result.error} " if result.error is not None else ""
                result.error = DbtException(f"{reason}dbt (pid {dbt.pid}) was still running; its run dir is kept.")
            self._log_summary(result, command, run_dir)
            state_dir = Path(resume_state) if resume_state is not None else None
            self._conclude(result, run_dir, state_dir, post_run, stopped=kind in ("timeout", "killed", "lost"))
        finally:
            if event.get("stopped") is False:  # dbt may still be running on another host: leave its files
                self.run_log.warning("Keeping %s: dbt could not be stopped from this host", run_dir.path)
                self.invocation = None
            elif still_running and dbt is not None:  # removing its files under a live dbt helps nobody
                self.run_log.warning(
                    "dbt (pid %s) is still running: not removing its run dir %s (a later run sweeps it once dbt "
                    "has ended)", dbt.pid, run_dir.path,
                )  # fmt: skip
                self.invocation = None
            else:
                self._release(run_dir, result)
                if channel.remote and not self.keep_target_artifacts:
                    self._remove_channel(reader)
        return _raise_or_return(result, raise_on_failure)

    def _collected_run_dir(self, reader: ChannelReader) -> RunDir:
        """A local run dir on this worker holding what the remote run published (empty if it published none)."""
        project = load_project(self.dbt_project_dir)
        run_dir = create_run_dir(f"{Path(reader.spec.run_dir).name}_collected", project.path, root=self.run_dir_root)
        try:
            reader.collect(run_dir.path)
        except FileNotFoundError:
            self.run_log.warning("The dbt run published no artifacts to %s", reader.spec.url)
        except Exception:
            run_dir.cleanup()
            raise
        self.run_log.info("Collected the dbt run's artifacts from %s into %s", reader.spec.url, run_dir.path)
        return run_dir

    def _remove_channel(self, reader: ChannelReader) -> None:
        try:
            reader.remove()
        except Exception as err:  # retention: a later sweep or the bucket's lifecycle rule removes it
            self.run_log.warning("Could not remove the run channel %s: %s", reader.spec.url, err)

    def _prepare(self, command: str, **options: Any) -> tuple[DbtProject, DbtCommand]:
        """Check everything that can be checked before anything is written."""
        project = load_project(self.dbt_project_dir)
        if self.venv_path is not None:
            dbt_executable(self.venv_path)
        return project, DbtCommand(command=command, **options)

    def _new_run_dir(self, project: DbtProject, run_name: str | None) -> RunDir:
        run_dir = create_run_dir(run_name or run_dir_name("adhoc", "dbt", 1), project.path, root=self.run_dir_root)
        if run_dir.fallback:
            self.run_log.info("Project dir is read-only; dbt target and logs go to %s", run_dir.path)
        target = self._user_target(project.path)
        if target is not None:
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                run_dir.cleanup()
                raise DbtException(f"target_path {target} cannot be created: {err.strerror or err}.") from None
            run_dir = dataclasses.replace(run_dir, target=target)
        self.last_target_path = str(run_dir.target_path)
        self._last_artifacts = None
        if self.orphan_run_dir_age:  # run dirs of killed tasks, that nothing else will ever remove
            sweep_run_dirs(run_dir.path.parent, self.orphan_run_dir_age, self.run_log)
        return run_dir

    def _user_target(self, project_dir: Path) -> Path | None:
        """The user's ``target_path``, resolved as dbt does (relative to the project); None for the run dir's."""
        return project_dir / self.target_path if self.target_path else None

    def _conclude(
        self,
        result: DbtTaskResult,
        run_dir: RunDir,
        state_dir: Path | None,
        post_run: Callable[[DbtTaskResult], None] | None,
        *,
        stopped: bool,
    ) -> None:
        """Keep or drop the retry_from_failure state, then let the caller use the run dir (uploads, lineage)."""
        if state_dir is not None:
            if result.success:
                retry_state.clear(state_dir)
            else:
                retry_state.save(state_dir, run_dir.target_path, complete=not stopped)
        if post_run is not None:
            post_run(result)

    def _release(self, run_dir: RunDir, result: DbtTaskResult | None) -> None:
        """Remove the run dir unless it is kept; the getters then read the artifacts kept in memory."""
        self.invocation = None
        shutil.rmtree(run_dir.path / PROFILE_DIR, ignore_errors=True)  # dbt has ended: no need for its profile
        if self.keep_target_artifacts:
            run_dir.disown()  # the user's now: no sweep may remove it
            self.run_log.info("Keeping dbt artifacts in %s", run_dir.path)
            return
        if run_dir.target is not None:  # the user's target_path is never removed: the getters read it there
            run_dir.cleanup()
            return
        kept = KeptArtifacts.keep(run_dir.target_path, run_results=result.run_results_copy if result else None)
        if run_dir.cleanup():
            self.last_target_path = None
            self._last_artifacts = kept

    def cancel(self) -> None:
        """Stop the running dbt (graceful, see ``grace_period``) and any pending retry; safe to call anytime."""
        self._cancelled.set()
        invocation = self.invocation
        if invocation is not None:
            invocation.stop("killed")

    def _resume_command(self, command: DbtCommand, state_dir: Path | None, run_dir: RunDir) -> DbtCommand:
        """The command a resumed try starts with: ``dbt retry``, the command minus finished nodes, or itself."""
        if state_dir is None:
            return command
        how = retry_state.restore(state_dir, run_dir.path, run_dir.target_path)
        if how == "retry":
            self.run_log.info("Resuming the previous try's failed and skipped nodes with dbt retry")
            return _retry_command(command)
        if how == "exclude-succeeded" and command.accepts("exclude"):
            self.run_log.info("Previous try was stopped: running %s again without its succeeded nodes", command.command)
            return command.without_succeeded(str(run_dir.path / retry_state.STATE_SUBDIR))
        self.run_log.info("No usable state from a previous try: running the full command")
        return command

    def _run_attempts(
        self,
        first: DbtCommand,
        dbt_command: DbtCommand,
        project: DbtProject,
        profile: Profile,
        run_dir: RunDir,
        policy: RetryPolicy,
    ) -> DbtTaskResult:
        deadline = time.monotonic() + self.execution_timeout if self.execution_timeout else None
        retry_command = _retry_command(dbt_command)
        state: dict[str, Any] = {"command": first, "summary": None}

        def attempt(number: int) -> DbtTaskResult:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = self._execute(state["command"], project, profile, run_dir, timeout=remaining)
            result.attempts = number
            # After partial progress, only the failed and skipped nodes are run again.
            if not result.success and result.wrote_node_results:
                state["command"] = retry_command
            state["summary"] = result.summary = merge_summaries(state["summary"], result.summary)
            return result

        def should_retry(result: DbtTaskResult, wait: float) -> bool:
            if result.error is None or not result.error.retryable:
                return False
            return deadline is None or time.monotonic() + wait < deadline

        def log_retry(number: int, total: int, result: DbtTaskResult, wait: float) -> None:
            reason = str(result.error).split(": ", 1)[-1] if result.error else "unknown"
            self.run_log.warning("attempt %d/%d failed: %s; retrying in %gs", number, total, reason, wait)

        result = policy.run(attempt, should_retry=should_retry, on_retry=log_retry, cancelled=self._cancelled)
        if result.error is not None and result.attempts > 1:
            result.error.message += f" (after {result.attempts} attempts)"
        self._log_summary(result, dbt_command.command, run_dir)
        return result

    def _log_summary(self, result: DbtTaskResult, command: str, run_dir: RunDir) -> None:
        for line in format_summary(
            result.summary, command=command, run_name=run_dir.name, success=result.success,
            wall_seconds=result.elapsed_seconds, ascii_only=self.ascii_only,
        ):  # fmt: skip
            self.run_log.info("%s", line)

    def _argv(self, command: DbtCommand, project: DbtProject, profile: Profile, run_dir: RunDir) -> list[str]:
        if profile.target:
            command = dataclasses.replace(command, target=profile.target)
        argv = command.argv(
            project_dir=str(project.path),
            profiles_dir=profile.profiles_dir,
            target_path=str(run_dir.target_path),
            log_path=str(run_dir.log_path),
        )
        if profile.profile_name:
            argv += ["--profile", profile.profile_name]
        return argv

    def _execute(
        self, command: DbtCommand, project: DbtProject, profile: Profile, run_dir: RunDir, *, timeout: float | None
    ) -> DbtTaskResult:
        redactor = Redactor.from_env(profile.env)
        reporter = ProgressReporter(self.run_log, ascii_only=self.ascii_only, redactor=redactor)
        invocation = DbtInvocation(
            self._argv(command, project, profile, run_dir),
            env=profile.env,
            venv_path=self.venv_path,
            mode=self.invocation_mode,
            on_event=reporter,
            on_output=reporter.line,
            grace_period=self.grace_period,
        )
        self.invocation = invocation
        self.run_log.info(
            "Running dbt %s (%s) for %s in %s", command.command, invocation.mode, project.path, run_dir.path
        )
        started = time.monotonic()
        self._before_invocation(project, run_dir, command)
        outcome = invocation.run(timeout=timeout) if not self._cancelled.is_set() else _cancelled_outcome()
        self._after_invocation(project, run_dir, command, outcome.success)
        return self._result(command.command, outcome, run_dir, redactor, reporter, time.monotonic() - started)

    def _result(
        self,
        command: str,
        outcome: InvocationResult,
        run_dir: RunDir,
        redactor: Redactor,
        progress: ProgressReporter,
        wall: float,
    ) -> DbtTaskResult:
        return build_result(
            command=command,
            outcome=outcome,
            run_dir=run_dir,
            redactor=redactor,
            progress=progress,
            wall_seconds=wall,
            conn_id=self.conn_id,
            execution_timeout=self.execution_timeout,
            artifacts_kept=self.keep_target_artifacts,
            log=self.run_log,
        )

    def _before_invocation(self, project: DbtProject, run_dir: RunDir, command: DbtCommand) -> None:
        """Prepare the run dir before dbt starts: cached packages, then the last good partial parse."""
        from dlh_airflow_common.dbt import deps, partial_parse

        self._parse_seed = None
        invocation = self.invocation
        if invocation is None or not (self.partial_parse_cache or self.deps_cache):
            return
        env = {**os.environ, **invocation.env}
        version = partial_parse.dbt_version(self.venv_path)
        try:
            root = partial_parse.cache_root(run_dir.path.parent, self.cache_dir)
            prepared = self.deps_cache and deps.prepare_packages(
                project.path, env, dbt_version=version, cache_root=root, command=command.command,
                run_dir=run_dir.path, venv_path=self.venv_path, mode=invocation.mode, log=self.run_log,
            )  # fmt: skip
        except OSError as err:  # a cache is an optimisation: without it dbt runs as it would anyway
            self.run_log.warning("dbt cache dir unavailable, running without partial-parse/package cache: %s", err)
            return
        packages = None
        if prepared:
            invocation.env[deps.PACKAGES_PATH_ENV] = str(prepared.install_path)
            env[deps.PACKAGES_PATH_ENV] = str(prepared.install_path)
            packages = prepared.key
        if not self.partial_parse_cache or not command.accepts("target_path"):
            return
        if partial_parse.partial_parse_disabled(invocation.argv, env):
            return
        if command.command == "retry" and (run_dir.target_path / partial_parse.PARTIAL_PARSE_FILE).is_file():
            return  # the failed attempt's own parse is already there
        try:
            key = partial_parse.parse_key(invocation.argv, env, project_dir=project.path, version=version,
                                          packages=packages)  # fmt: skip
            seed = partial_parse.PartialParseCache(root / "partial_parse").seed(key, run_dir.target_path)
        except OSError as err:
            self.run_log.warning("Partial-parse cache unavailable, dbt parses in full: %s", err)
            return
        # dbt retry re-parses with the vars of the run it retries, which its argv does not show: seed but
        # never publish, so an entry is only ever written under the key that produced it.
        self._parse_seed = seed if command.command != "retry" else None
        if seed.seeded:
            self.run_log.info("Partial parse seeded from cache %s", seed.entry)
        else:
            self.run_log.info("No cached partial parse for this project, target and vars yet: full parse.")

    def _after_invocation(self, project: DbtProject, run_dir: RunDir, command: DbtCommand, success: bool) -> None:
        """Publish the msgpack dbt wrote (if it parsed) so the next isolated run starts from it."""
        from dlh_airflow_common.dbt.partial_parse import PartialParseCache

        seed, self._parse_seed = self._parse_seed, None
        # A failed run counts only if it got past parsing (a killed one may have left a truncated msgpack).
        if seed is None or not (success or (run_dir.target_path / RUN_RESULTS).is_file()):
            return
        try:
            if PartialParseCache(seed.entry.parent.parent).publish(seed):
                self.run_log.info("Published the new partial parse to cache %s", seed.entry)
        except OSError as err:
            self.run_log.warning("Could not publish the partial parse to the cache: %s", err)

    # -- artifacts ---------------------------------------------------------------------------------
    def _artifact(self, name: str) -> dict[str, Any]:
        """The last run's artifact: from its target path while it exists, else the copy kept in memory."""
        if self._last_artifacts is not None:
            return self._last_artifacts.load(name)
        if self.last_target_path:
            return load_artifact(Path(self.last_target_path) / name)
        project = Path(self.dbt_project_dir)
        return load_artifact((self._user_target(project) or project / "target") / name)

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


def _detached_outcome(kind: str, status: RunStatus | None) -> InvocationResult:
    """How a detached dbt ended, from the trigger's event kind and the run's final status."""
    stopped = kind if kind in ("timeout", "killed") else (status.stopped if status is not None else None)
    exit_code = status.exit_code if status is not None and status.finished else None
    return InvocationResult(
        return_code=int(exit_code) if exit_code is not None else 2,
        error_events=list(status.error_events) if status is not None else [],
        stopped="timeout" if stopped == "timeout" else ("killed" if stopped == "killed" else None),
    )


def _raise_or_return(result: DbtTaskResult | None, raise_on_failure: bool) -> DbtTaskResult:
    """The documented contract: a failed run raises its typed error, carrying the result with it."""
    assert result is not None  # only None when the run itself raised
    if result.error is not None:
        result.error.result = result
        if raise_on_failure:
            raise result.error
    return result
