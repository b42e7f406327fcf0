"""DbtHook: an Airflow Connection becomes a dbt profile, then one isolated dbt run is executed and reported."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from dlh_airflow_common.dbt import retry_state
from dlh_airflow_common.dbt.artifacts import (
    CATALOG,
    MANIFEST,
    RUN_RESULTS,
    SOURCES,
    RunSummary,
    load_artifact,
)
from dlh_airflow_common.dbt.command import DbtCommand
from dlh_airflow_common.dbt.invocation import (
    DEFAULT_GRACE_PERIOD,
    INVOCATION_MODES,
    DbtInvocation,
    InvocationMode,
    InvocationResult,
    dbt_executable,
)
from dlh_airflow_common.dbt.profiles_file import PROFILES_FILE, temporary_profiles_dir
from dlh_airflow_common.dbt.project import DbtProject, load_project
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.dbt.report import ProgressReporter, format_summary
from dlh_airflow_common.dbt.retry import RetryPolicy, merge_summaries
from dlh_airflow_common.dbt.run_dir import RunDir, create_run_dir, run_dir_name
from dlh_airflow_common.exceptions.dbt import (
    DbtException,
    DbtExecutionTimeoutException,
    DbtProfileException,
    classify_dbt_error,
)
from dlh_airflow_common.hooks.dbt_profiles import render_target

GENERATED_PROFILE_NAME = "dlh_airflow"
GENERATED_TARGET_NAME = "airflow"


@dataclass
class DbtTaskResult:
    """Outcome of one dbt command: what ran, how it ended, its results and the classified error if any."""

    success: bool
    command: str
    return_code: int
    run_results: dict[str, Any]
    summary: RunSummary
    target_path: str
    run_dir: str
    elapsed_seconds: float
    error: DbtException | None = None
    artifacts_kept: bool = False
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_xcom(self, *, max_nodes: int = 20, max_message: int = 300) -> dict[str, Any]:
        """A bounded, JSON-safe summary for XCom (never a whole artifact)."""
        payload: dict[str, Any] = {
            "command": self.command,
            "success": self.success,
            "return_code": self.return_code,
            "run_dir": Path(self.run_dir).name,
            "wall_seconds": round(self.elapsed_seconds, 3),
            "attempts": self.attempts,
            **self.summary.to_dict(max_nodes=max_nodes, max_message=max_message),
        }
        if self.artifacts_kept:
            payload["target_path"] = self.target_path
        if self.error is not None:
            message = str(self.error)
            payload["error"] = {
                "type": type(self.error).__name__,
                "message": message if len(message) <= max_message else message[: max_message - 3] + "...",
                "node_id": self.error.node_id,
                "retryable": self.error.retryable,
            }
        return payload


@dataclass(frozen=True)
class _Profile:
    profiles_dir: str | None
    profile_name: str | None
    target: str | None
    env: dict[str, str]


def _retry_command(command: DbtCommand) -> DbtCommand:
    return DbtCommand("retry", threads=command.threads, fail_fast=command.fail_fast)


def _cancelled_outcome() -> InvocationResult:
    return InvocationResult(return_code=2, stopped="killed")


class DbtHook(BaseHook):
    """Runs dbt commands for one project with a profile built from an Airflow connection (or your own)."""

    conn_name_attr = "conn_id"
    default_conn_name = "dbt_default"
    conn_type = "dbt"
    hook_name = "dbt Core"

    def __init__(
        self,
        dbt_project_dir: str | os.PathLike[str],
        venv_path: str | os.PathLike[str] | None = None,
        conn_id: str | None = None,
        target: str | None = None,
        profiles_dir: str | os.PathLike[str] | None = None,
        env_vars: Mapping[str, str] | None = None,
        target_path: str | os.PathLike[str] | None = None,
        retry_limit: int = 3,
        retry_delay: float = 1,
        *,
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
    ) -> None:
        super().__init__()
        self.dbt_project_dir = str(dbt_project_dir)
        self.venv_path = str(venv_path) if venv_path else None
        self.conn_id = conn_id
        self.target = target
        self.profiles_dir = str(profiles_dir) if profiles_dir else None
        self.env_vars = {str(k): str(v) for k, v in (env_vars or {}).items()}
        self.target_path = str(target_path) if target_path else None
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

    @property
    def run_log(self) -> Any:
        """Where progress and summaries go: the operator's task logger when given, else the hook's."""
        return self._logger or self.log

    # -- profile -----------------------------------------------------------------------------------
    @contextmanager
    def _profile(self, project: DbtProject) -> Iterator[_Profile]:
        if self.conn_id and self.profiles_dir:
            raise DbtProfileException(
                f"Pass either conn_id ({self.conn_id!r}) or profiles_dir ({self.profiles_dir}), not both.",
                conn_id=self.conn_id,
            )
        env = dict(self.env_vars)
        if not self.conn_id:
            if self.schema_override:
                env["DBT_SCHEMA_OVERRIDE"] = self.schema_override
            profiles_dir = self.profiles_dir
            if profiles_dir is None and (project.path / PROFILES_FILE).is_file():
                profiles_dir = str(project.path)
            if profiles_dir is not None and not (Path(profiles_dir) / PROFILES_FILE).is_file():
                raise DbtProfileException(f"profiles_dir {profiles_dir} has no {PROFILES_FILE}.")
            yield _Profile(profiles_dir=profiles_dir, profile_name=None, target=self.target, env=env)
            return
        rendered = render_target(self._connection(self.conn_id), schema_override=self.schema_override)
        profile_name = project.profile or GENERATED_PROFILE_NAME
        target_name = self.target or GENERATED_TARGET_NAME
        with temporary_profiles_dir(profile_name, target_name, rendered.target) as directory:
            yield _Profile(
                profiles_dir=str(directory),
                profile_name=profile_name,
                target=target_name,
                env={**env, **rendered.secret_env},
            )

    def _connection(self, conn_id: str) -> Any:
        try:
            return self.get_connection(conn_id)
        except Exception as err:
            if type(err).__name__ != "AirflowNotFoundException":
                raise
            raise DbtProfileException(
                f"Airflow connection {conn_id!r} is not defined (neither in the metadata database, "
                f"nor as AIRFLOW_CONN_{conn_id.upper()}, nor in a secrets backend).",
                conn_id=conn_id,
            ) from None

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
    ) -> DbtTaskResult:
        """Run one dbt command in its own run dir; dbt failures come back classified in ``result.error``.

        Bad input (unknown command, missing project, broken connection definition) raises before anything
        is written. Transient failures are retried (``retry_limit``, ``retry_delay``); after partial
        progress the retry is ``dbt retry``. With ``resume_state`` a previous try's failed run is resumed
        with ``dbt retry`` and this run's state is kept there until the command succeeds. ``post_run`` is
        called with the result while the run dir still exists (uploads, lineage).
        """
        project = load_project(self.dbt_project_dir)
        if self.venv_path is not None:
            dbt_executable(self.venv_path)
        dbt_command = DbtCommand(
            command=command,
            select=select,
            exclude=exclude,
            selector=selector,
            vars=vars,
            full_refresh=full_refresh,
            threads=threads,
            fail_fast=fail_fast,
            extra_args=tuple(extra_args),
            macro_args=macro_args,
        )
        policy = RetryPolicy(self.retry_limit, self.retry_delay)
        self._cancelled.clear()
        with self._profile(project) as profile:
            run_dir = create_run_dir(run_name or run_dir_name("adhoc", "dbt", 1), project.path, root=self.target_path)
            if run_dir.fallback:
                self.run_log.info("Project dir is read-only; dbt target and logs go to %s", run_dir.path)
            self.last_target_path = str(run_dir.target_path)
            try:
                state_dir = Path(resume_state) if resume_state is not None else None
                first = self._resume_command(dbt_command, state_dir, run_dir)
                result = self._run_attempts(first, dbt_command, project, profile, run_dir, policy)
                if state_dir is not None:
                    if result.success:
                        retry_state.clear(state_dir)
                    else:
                        stopped = isinstance(result.error, DbtExecutionTimeoutException) or self._cancelled.is_set()
                        retry_state.save(state_dir, run_dir.target_path, complete=not stopped)
                if post_run is not None:
                    post_run(result)
                return result
            finally:
                self.invocation = None
                if self.keep_target_artifacts:
                    self.run_log.info("Keeping dbt artifacts in %s", run_dir.path)
                elif run_dir.cleanup():
                    self.last_target_path = None

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
        how = retry_state.restore(state_dir, run_dir.path)
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
        profile: _Profile,
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
            state["summary"] = result.summary = merge_summaries(state["summary"], result.summary)
            # After partial progress, only the failed and skipped nodes are run again.
            if not result.success and result.run_results.get("results"):
                state["command"] = retry_command
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
        for line in format_summary(
            result.summary, command=dbt_command.command, run_name=run_dir.name, success=result.success,
            wall_seconds=result.elapsed_seconds, ascii_only=self.ascii_only,
        ):  # fmt: skip
            self.run_log.info("%s", line)
        return result

    def _execute(
        self, command: DbtCommand, project: DbtProject, profile: _Profile, run_dir: RunDir, *, timeout: float | None
    ) -> DbtTaskResult:
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
        redactor = Redactor.from_env(profile.env)
        reporter = ProgressReporter(self.run_log, ascii_only=self.ascii_only, redactor=redactor)
        invocation = DbtInvocation(
            argv,
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
        wall = time.monotonic() - started
        log_file = str(run_dir.log_path / "dbt.log")
        run_results = load_artifact(run_dir.target_path / RUN_RESULTS)
        summary = redactor.summary(RunSummary.from_artifacts(run_results, load_artifact(run_dir.target_path / SOURCES)))
        error: DbtException | None = None
        if outcome.stopped is not None:
            error = self._stopped_error(command.command, outcome.stopped, reporter, log_file)
        elif not outcome.success:
            failures: list[Any] = [outcome.exception] if outcome.exception is not None else []
            failures += outcome.error_events
            error = classify_dbt_error(failures, conn_id=self.conn_id, log_path=log_file)
            error.message = redactor(self._failure_message(command.command, outcome.return_code, error, summary))
        return DbtTaskResult(
            success=outcome.success and error is None,
            command=command.command,
            return_code=outcome.return_code,
            run_results=run_results,
            summary=summary,
            target_path=str(run_dir.target_path),
            run_dir=str(run_dir.path),
            elapsed_seconds=wall,
            error=error,
            artifacts_kept=self.keep_target_artifacts,
        )

    def _stopped_error(self, command: str, reason: str, reporter: ProgressReporter, log_file: str) -> DbtException:
        progress = f"{reporter.nodes_succeeded} of {reporter.nodes_total or '?'} nodes had succeeded"
        self.run_log.warning("dbt %s was stopped (%s); %s", command, reason, progress)
        if reason == "timeout":
            return DbtExecutionTimeoutException(
                f"dbt {command} exceeded the execution timeout of {self.execution_timeout:g}s and was stopped; "
                f"{progress}.",
                conn_id=self.conn_id,
                log_path=log_file,
            )
        return DbtException(
            f"dbt {command} was stopped because the task was killed; {progress}.",
            conn_id=self.conn_id,
            log_path=log_file,
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
        root = partial_parse.cache_root(run_dir.path.parent, self.cache_dir)
        packages = None
        if self.deps_cache:
            prepared = deps.prepare_packages(
                project.path, env, dbt_version=version, cache_root=root, command=command.command,
                run_dir=run_dir.path, venv_path=self.venv_path, mode=invocation.mode, log=self.run_log,
            )  # fmt: skip
            if prepared is not None:
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

    def _failure_message(self, command: str, return_code: int, error: DbtException, summary: RunSummary) -> str:
        """One message naming the command, the node, dbt's own words, and how many other nodes failed."""
        where = f" in {error.node_id}" if error.node_id else ""
        text = " ".join(error.message.split()) if error.message else f"exit code {return_code}"
        others = len([n for n in summary.failed if n.unique_id != error.node_id]) if error.node_id else 0
        more = f" (+{others} more failed node{'s' if others != 1 else ''}, see the summary above)" if others else ""
        kept = f" Log: {error.log_path}" if self.keep_target_artifacts and error.log_path else ""
        return f"dbt {command} failed{where}: {text}{more}.{kept}"

    # -- artifacts ---------------------------------------------------------------------------------
    def _artifacts_dir(self) -> Path:
        if self.last_target_path:
            return Path(self.last_target_path)
        if self.target_path:
            return Path(self.target_path)
        return Path(self.dbt_project_dir) / "target"

    def get_manifest(self) -> dict[str, Any]:
        return load_artifact(self._artifacts_dir() / MANIFEST)

    def get_run_results(self) -> dict[str, Any]:
        return load_artifact(self._artifacts_dir() / RUN_RESULTS)

    def get_catalog(self) -> dict[str, Any]:
        return load_artifact(self._artifacts_dir() / CATALOG)

    def get_sources(self) -> dict[str, Any]:
        return load_artifact(self._artifacts_dir() / SOURCES)
