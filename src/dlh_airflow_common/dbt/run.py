"""DbtRun: one task try of a dbt command (run dir, profile, caches, resume state, attempts, invocation, result)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dlh_airflow_common.dbt import retry_state
from dlh_airflow_common.dbt.artifacts import KeptArtifacts, load_artifact
from dlh_airflow_common.dbt.caches import RunCaches
from dlh_airflow_common.dbt.channel import (
    DEFAULT_HEARTBEAT_INTERVAL,
    ChannelReader,
    ChannelSpec,
    ChannelStore,
    RunStatus,
)
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
    DEFAULT_GRACE_PERIOD,
    DbtInvocation,
    InvocationMode,
    InvocationResult,
)
from dlh_airflow_common.dbt.project import DbtProject, load_project
from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.dbt.report import ProgressReporter, format_summary, replay_progress
from dlh_airflow_common.dbt.result import AttemptRecord, DbtTaskResult, build_result
from dlh_airflow_common.dbt.retry import RetryPolicy, merge_summaries
from dlh_airflow_common.dbt.run_dir import RunDir, create_run_dir, run_dir_name
from dlh_airflow_common.dbt.run_dir_sweep import sweep_run_dirs
from dlh_airflow_common.dbt.run_report import write_run_report
from dlh_airflow_common.exceptions.dbt import DbtException, DbtExecutionTimeoutException

__all__ = ["PROFILE_DIR", "DbtRun", "PreparedRunProfile", "RunProfile", "RunSettings", "raise_or_return"]

PROFILE_DIR = "profile"  # the generated profiles.yml of a run, inside its run dir


class RunProfile(Protocol):
    """What dbt needs to find its profile: the dir, the names to select, and the environment (secrets)."""

    @property
    def profiles_dir(self) -> str | None: ...

    @property
    def profile_name(self) -> str | None: ...

    @property
    def target(self) -> str | None: ...

    @property
    def env(self) -> dict[str, str]: ...


class PreparedRunProfile(Protocol):
    """A checked profile (the hook's ``PreparedProfile``); written into the run dir once that exists."""

    def write(self, into: Path) -> RunProfile: ...


@dataclass(frozen=True)
class RunSettings:
    """How a try runs dbt and what it leaves behind: the hook's settings as plain values."""

    venv_path: str | None = None
    conn_id: str | None = None  # named in the errors of a failed run
    target_path: str | None = None
    run_dir_root: str | None = None
    retry_limit: int = 3
    retry_delay: float = 1
    keep_target_artifacts: bool = False
    ascii_only: bool = True
    invocation_mode: InvocationMode = "subprocess"
    execution_timeout: float | None = None
    grace_period: float = DEFAULT_GRACE_PERIOD
    caches: RunCaches = field(default_factory=RunCaches)
    orphan_run_dir_age: float | None = 3600.0
    run_channel: str | None = None
    run_channel_conn_id: str | None = None
    run_report: bool = True  # write run_report.html into the target path after the try

    def user_target(self, project_dir: Path) -> Path | None:
        """The user's ``target_path``, resolved as dbt does (relative to the project); None for the run dir's."""
        return project_dir / self.target_path if self.target_path else None


def _retry_command(command: DbtCommand) -> DbtCommand:
    return DbtCommand("retry", threads=command.threads, fail_fast=command.fail_fast)


def _cancelled_outcome() -> InvocationResult:
    return InvocationResult(return_code=2, stopped="killed")


class DbtRun:
    """Exactly one task try: ``run()`` runs dbt here; ``launch()`` starts it detached and ``collect(event)``
    (in any process that reaches the run channel) turns what it reported into the same result.

    Everything a try hands from step to step lives on its own instance; build a new one for every try.
    ``cancel()`` may come from another thread at any time. ``log`` is the task's logger. ``resume_state``
    (``retry_from_failure``) is a local directory or an ``ObjectStoragePath`` URL, reached with the settings'
    ``run_channel_conn_id``. ``project_version`` describes a remote project's version (``ProjectCheckout.describe``):
    it goes into the result, so the summary, XCom, lineage and the run report name it.
    """

    def __init__(
        self,
        project_dir: str | os.PathLike[str],
        settings: RunSettings,
        *,
        log: Any,
        run_name: str | None = None,
        resume_state: str | os.PathLike[str] | None = None,
        project_version: Mapping[str, str] | None = None,
    ) -> None:
        self.project_dir = Path(project_dir)
        self.project_version = dict(project_version or {})
        self.settings = settings
        self.log = log
        self.run_name = run_name
        self.resume_state = os.fspath(resume_state) if resume_state is not None else None
        self.invocation: DbtInvocation | None = None  # the dbt execution in progress, if any
        self.result: DbtTaskResult | None = None
        self.target_path: str | None = None  # dbt's target path while it exists
        self.kept: KeptArtifacts | None = None  # the artifacts read before the run dir was removed
        self._cancelled = threading.Event()

    @property
    def started(self) -> bool:
        """True once this try has a run dir: from then on its artifacts are the ones to read."""
        return self.target_path is not None or self.kept is not None

    def artifact(self, name: str) -> dict[str, Any]:
        """This try's artifact ``name``: from its target path while that exists, else the copy kept in memory."""
        if self.kept is not None:
            return self.kept.load(name)
        if self.target_path is None:
            return {}
        return load_artifact(Path(self.target_path) / name)

    def cancel(self) -> None:
        """Stop the running dbt (graceful, see ``grace_period``) and any pending retry; safe to call anytime."""
        self._cancelled.set()
        invocation = self.invocation
        if invocation is not None:
            invocation.stop("killed")

    # -- sync --------------------------------------------------------------------------------------
    def run(
        self,
        project: DbtProject,
        command: DbtCommand,
        profile: PreparedRunProfile,
        *,
        post_run: Callable[[DbtTaskResult], None] | None = None,
    ) -> DbtTaskResult:
        """Run ``command`` with in-try retries and return the result (its error attached, not raised)."""
        policy = RetryPolicy(self.settings.retry_limit, self.settings.retry_delay)
        run_dir = self._new_run_dir(project)
        try:
            written = profile.write(run_dir.path / PROFILE_DIR)
            first = self._resume_command(command, run_dir)
            result = self.result = self._run_attempts(first, command, project, written, run_dir, policy)
            stopped = isinstance(result.error, DbtExecutionTimeoutException) or self._cancelled.is_set()
            self._conclude(result, run_dir, post_run, stopped=stopped, redactor=Redactor.from_env(written.env))
        finally:
            self._release(run_dir, self.result)
        return _attach_error(result)

    # -- detached ----------------------------------------------------------------------------------
    def launch(
        self,
        project: DbtProject,
        command: DbtCommand,
        profile: PreparedRunProfile,
        *,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        channel_connection: Callable[[str], str] | None = None,
        node_results: bool = False,
    ) -> DetachedProcess:
        """Start dbt so that it outlives this process; ``collect`` turns the trigger's event into the result.

        ``channel_connection(conn_id)`` gives the run channel's connection as ``AIRFLOW_CONN_*`` JSON for the
        runner (never for dbt). ``node_results`` makes the channel carry every node's result (task graphs),
        including the ones a resumed try's previous try finished. No in-try retries here: Airflow's retries
        and ``retry_from_failure`` cover a failed detached run.
        """
        run_dir = self._new_run_dir(project)
        try:
            written = profile.write(run_dir.path / PROFILE_DIR)
            first = self._resume_command(command, run_dir)
            # Not run here: it states dbt's argv and environment for the caches, which seed the run dir (packages,
            # the last good partial parse); whoever collects the run on this host publishes its new parse.
            invocation = DbtInvocation(self._argv(first, project, written, run_dir), env=written.env,
                                       venv_path=self.settings.venv_path)  # fmt: skip
            caches = self.settings.caches
            caches.keep_seed(caches.seed(project.path, run_dir, first, invocation, self.log), run_dir)
            argv = invocation.subprocess_args
            env = {**os.environ, **invocation.env, "PYTHONUNBUFFERED": "1",
                   ORPHAN_GRACE_ENV: str(self.settings.grace_period)}  # fmt: skip
            channel = ChannelSpec.for_run(
                run_dir.path, self.settings.run_channel, self.settings.run_channel_conn_id,
                heartbeat_interval=heartbeat_interval, node_results=node_results,
            )  # fmt: skip
            if channel.conn_id:  # the runner reads it as Airflow reads AIRFLOW_CONN_*; it never reaches dbt
                if channel_connection is None:
                    raise DbtException(f"run_channel_conn_id {channel.conn_id!r} needs a connection lookup.")
                env[channel_conn_env(channel.conn_id)] = channel_connection(channel.conn_id)
            timeout = self.settings.execution_timeout
            meta = {
                "command": first.command,
                "channel": channel.to_dict(),
                "deadline": time.time() + timeout if timeout else None,
                "grace_period": self.settings.grace_period,
                "pack": [[str(run_dir.target_path), "target"], [str(run_dir.log_path), "logs"]],
                "keep_channel": self.settings.keep_target_artifacts,
                "prior_results": retry_state.finished_nodes(run_dir.path, run_dir.target_path)
                if node_results and first is not command
                else {},  # a resumed try: what its previous try finished
            }
            process = launch(run_dir.path, argv, env, meta=meta, channel=channel)
        except BaseException:
            run_dir.cleanup()
            raise
        self.log.info("Started dbt %s detached (pid %s on %s) in %s, reporting to %s", first.command, process.pid,
                      process.host, run_dir.path, channel.where)  # fmt: skip
        return process

    def collect(
        self,
        event: Mapping[str, Any],
        *,
        redactor: Callable[[], Redactor],
        post_run: Callable[[DbtTaskResult], None] | None = None,
    ) -> DbtTaskResult:
        """The result of a detached run from the trigger's event and its channel; then the same clean-up.

        ``redactor()`` masks the connection's secrets in what the run reported (called once, after the
        run dir is known, so a failing connection lookup still cleans up).
        """
        channel = ChannelSpec.from_dict(event.get("channel")) or ChannelSpec(str(event["run_dir"]))
        reader = ChannelReader(channel)
        run_dir = self._collected_run_dir(reader) if channel.remote else RunDir(
            Path(channel.run_dir), target=self.settings.user_target(self.project_dir)
        )  # fmt: skip
        self.target_path, self.kept = str(run_dir.target_path), None
        local = not channel.remote and event.get("stopped") is not False
        dbt = read_dbt_process(run_dir.path) if local else None
        still_running = dbt is not None and dbt.alive_here()
        try:
            status = reader.status()
            command = status.command if status is not None else "dbt"
            kind = str(event.get("status"))
            log_file = run_dir.log_path / EVENTS_FILE
            progress = replay_progress(log_file, self.log, ascii_only=self.settings.ascii_only)
            outcome = _detached_outcome(kind, status)
            started = float(event.get("started_at") or 0) or None
            ended = status.ended_at if status is not None and status.ended_at else time.time()
            wall = max(0.0, ended - started) if started else 0.0
            redact = redactor()
            result = self.result = self._result(command, outcome, run_dir, redact, progress, wall)
            if not channel.remote and not still_running:  # the launch's seed is on this host: share the new parse
                self.settings.caches.publish(
                    self.settings.caches.kept_seed(run_dir), run_dir, outcome.success, self.log
                )
            if kind == "lost":
                result.success = False
                result.error = DbtException(str(event.get("message") or "The detached dbt run was lost."))
            if still_running and dbt is not None:
                result.success = False
                reason = f"{result.error} " if result.error is not None else ""
                result.error = DbtException(f"{reason}dbt (pid {dbt.pid}) was still running; its run dir is kept.")
            self._log_summary(result, command, run_dir)
            self._conclude(result, run_dir, post_run, stopped=kind in ("timeout", "killed", "lost"), redactor=redact)
        finally:
            if event.get("stopped") is False:  # dbt may still be running on another host: leave its files
                self.log.warning("Keeping %s: dbt could not be stopped from this host", run_dir.path)
            elif still_running and dbt is not None:  # removing its files under a live dbt helps nobody
                self.log.warning(
                    "dbt (pid %s) is still running: not removing its run dir %s (a later run sweeps it once dbt "
                    "has ended)", dbt.pid, run_dir.path,
                )  # fmt: skip
            else:
                self._release(run_dir, self.result)
                if channel.remote and not self.settings.keep_target_artifacts:
                    self._remove_channel(reader)
        return _attach_error(result)

    def _collected_run_dir(self, reader: ChannelReader) -> RunDir:
        """A local run dir on this worker holding what the remote run published (empty if it published none)."""
        project = load_project(self.project_dir)
        name = f"{Path(reader.spec.run_dir).name}_collected"
        run_dir = create_run_dir(name, project.path, root=self.settings.run_dir_root)
        try:
            reader.collect(run_dir.path)
        except FileNotFoundError:
            self.log.warning("The dbt run published no artifacts to %s", reader.spec.url)
        except Exception:
            run_dir.cleanup()
            raise
        self.log.info("Collected the dbt run's artifacts from %s into %s", reader.spec.url, run_dir.path)
        return run_dir

    def _remove_channel(self, reader: ChannelReader) -> None:
        try:
            reader.remove()
        except Exception as err:  # retention: a later sweep or the bucket's lifecycle rule removes it
            self.log.warning("Could not remove the run channel %s: %s", reader.spec.url, err)

    # -- the steps of a try ------------------------------------------------------------------------
    def _new_run_dir(self, project: DbtProject) -> RunDir:
        name = self.run_name or run_dir_name("adhoc", "dbt", 1)
        run_dir = create_run_dir(name, project.path, root=self.settings.run_dir_root)
        if run_dir.fallback:
            self.log.info("Project dir is read-only; dbt target and logs go to %s", run_dir.path)
        target = self.settings.user_target(project.path)
        if target is not None:
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                run_dir.cleanup()
                raise DbtException(f"target_path {target} cannot be created: {err.strerror or err}.") from None
            run_dir = dataclasses.replace(run_dir, target=target)
        self.target_path, self.kept = str(run_dir.target_path), None
        if self.settings.orphan_run_dir_age:  # run dirs of killed tasks, that nothing else will ever remove
            sweep_run_dirs(run_dir.path.parent, self.settings.orphan_run_dir_age, self.log)
        return run_dir

    def _resume_command(self, command: DbtCommand, run_dir: RunDir) -> DbtCommand:
        """The command a resumed try starts with: ``dbt retry``, the command minus finished nodes, or itself."""
        store = self._state_store()
        if store is None:
            return command if self.resume_state is None else self._full_command(command)
        how = retry_state.restore(store, run_dir.path, run_dir.target_path, log=self.log)
        if how == "retry":
            self.log.info("Resuming the previous try's failed and skipped nodes with dbt retry")
            return _retry_command(command)
        if how == "exclude-succeeded" and command.accepts("exclude"):
            self.log.info("Previous try was stopped: running %s again without its succeeded nodes", command.command)
            return command.without_succeeded(str(run_dir.path / retry_state.STATE_SUBDIR))
        return self._full_command(command)

    def _full_command(self, command: DbtCommand) -> DbtCommand:
        self.log.info("No usable state from a previous try: running the full command")
        return command

    def _state_store(self) -> ChannelStore | None:
        """The store of this task's resume state; None without one, or (logged) when it cannot be opened."""
        if self.resume_state is None:
            return None
        return retry_state.open_state(self.resume_state, self.settings.run_channel_conn_id, log=self.log)

    def _run_attempts(
        self,
        first: DbtCommand,
        dbt_command: DbtCommand,
        project: DbtProject,
        profile: RunProfile,
        run_dir: RunDir,
        policy: RetryPolicy,
    ) -> DbtTaskResult:
        timeout = self.settings.execution_timeout
        deadline = time.monotonic() + timeout if timeout else None
        retry_command = _retry_command(dbt_command)
        state: dict[str, Any] = {"command": first, "summary": None}
        history: list[AttemptRecord] = []

        def attempt(number: int) -> DbtTaskResult:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = self._execute(state["command"], project, profile, run_dir, timeout=remaining)
            result.attempts = number
            history.append(AttemptRecord.of(number, result))
            result.attempt_history = tuple(history)
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
            self.log.warning("attempt %d/%d failed: %s; retrying in %gs", number, total, reason, wait)

        result = policy.run(attempt, should_retry=should_retry, on_retry=log_retry, cancelled=self._cancelled)
        if result.error is not None and result.attempts > 1:
            result.error.message += f" (after {result.attempts} attempts)"
        self._log_summary(result, dbt_command.command, run_dir)
        return result

    def _execute(
        self, command: DbtCommand, project: DbtProject, profile: RunProfile, run_dir: RunDir, *, timeout: float | None
    ) -> DbtTaskResult:
        redactor = Redactor.from_env(profile.env)
        reporter = ProgressReporter(self.log, ascii_only=self.settings.ascii_only, redactor=redactor)
        invocation = DbtInvocation(
            self._argv(command, project, profile, run_dir),
            env=profile.env,
            venv_path=self.settings.venv_path,
            mode=self.settings.invocation_mode,
            on_event=reporter,
            on_output=reporter.line,
            grace_period=self.settings.grace_period,
        )
        self.invocation = invocation
        self.log.info("Running dbt %s (%s) for %s in %s", command.command, invocation.mode, project.path, run_dir.path)
        started = time.monotonic()
        caches = self.settings.caches
        seed = caches.seed(project.path, run_dir, command, invocation, self.log)
        outcome = invocation.run(timeout=timeout) if not self._cancelled.is_set() else _cancelled_outcome()
        caches.publish(seed, run_dir, outcome.success, self.log)
        return self._result(command.command, outcome, run_dir, redactor, reporter, time.monotonic() - started)

    def _argv(self, command: DbtCommand, project: DbtProject, profile: RunProfile, run_dir: RunDir) -> list[str]:
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

    def _result(
        self,
        command: str,
        outcome: InvocationResult,
        run_dir: RunDir,
        redactor: Redactor,
        progress: ProgressReporter,
        wall: float,
    ) -> DbtTaskResult:
        result = build_result(
            command=command,
            outcome=outcome,
            run_dir=run_dir,
            redactor=redactor,
            progress=progress,
            wall_seconds=wall,
            conn_id=self.settings.conn_id,
            execution_timeout=self.settings.execution_timeout,
            artifacts_kept=self.settings.keep_target_artifacts,
            log=self.log,
        )
        result.project = dict(self.project_version)
        return result

    def _log_summary(self, result: DbtTaskResult, command: str, run_dir: RunDir) -> None:
        for line in format_summary(
            result.summary, command=command, run_name=run_dir.name, success=result.success,
            wall_seconds=result.elapsed_seconds, ascii_only=self.settings.ascii_only,
        ):  # fmt: skip
            self.log.info("%s", line)
        if self.project_version:
            self.log.info("dbt project %s at version %s", self.project_version["url"], self.project_version["version"])

    def _conclude(
        self,
        result: DbtTaskResult,
        run_dir: RunDir,
        post_run: Callable[[DbtTaskResult], None] | None,
        *,
        stopped: bool,
        redactor: Redactor,
    ) -> None:
        """Keep (secrets masked) or drop the retry_from_failure state, write the run report, then let the caller
        use the run dir (uploads, lineage)."""
        store = self._state_store()
        if store is not None:
            if result.success:
                retry_state.clear(store, log=self.log)
            else:
                retry_state.save(store, run_dir.target_path, complete=not stopped, redact=redactor, log=self.log)
        if self.settings.run_report:
            self._write_report(result, run_dir, redactor)
        if post_run is not None:
            post_run(result)

    def _write_report(self, result: DbtTaskResult, run_dir: RunDir, redactor: Redactor) -> None:
        """Best effort: a report that cannot be written is a warning, never a failed task."""
        try:
            path = write_run_report(run_dir.target_path, result=result, log_path=run_dir.log_path, redactor=redactor)
        except Exception as err:
            self.log.warning("Could not write the dbt run report: %s", redactor(f"{type(err).__name__}: {err}"))
            return
        self.log.info("dbt run report: %s", path)

    def _release(self, run_dir: RunDir, result: DbtTaskResult | None) -> None:
        """Remove the run dir unless it is kept; ``artifact`` then reads the copies kept in memory."""
        self.invocation = None
        shutil.rmtree(run_dir.path / PROFILE_DIR, ignore_errors=True)  # dbt has ended: no need for its profile
        if self.settings.keep_target_artifacts:
            run_dir.disown()  # the user's now: no sweep may remove it
            self.log.info("Keeping dbt artifacts in %s", run_dir.path)
            return
        if run_dir.target is not None:  # the user's target_path is never removed: artifact() reads it there
            run_dir.cleanup()
            return
        kept = KeptArtifacts.keep(run_dir.target_path, run_results=result.run_results_copy if result else None)
        if run_dir.cleanup():
            self.target_path, self.kept = None, kept


def _detached_outcome(kind: str, status: RunStatus | None) -> InvocationResult:
    """How a detached dbt ended, from the trigger's event kind and the run's final status."""
    stopped = kind if kind in ("timeout", "killed") else (status.stopped if status is not None else None)
    exit_code = status.exit_code if status is not None and status.finished else None
    return InvocationResult(
        return_code=int(exit_code) if exit_code is not None else 2,
        error_events=list(status.error_events) if status is not None else [],
        stopped="timeout" if stopped == "timeout" else ("killed" if stopped == "killed" else None),
    )


def _attach_error(result: DbtTaskResult) -> DbtTaskResult:
    """A failed result's error carries the result, so a caller that raises it hands both on."""
    if result.error is not None:
        result.error.result = result
    return result


def raise_or_return(result: DbtTaskResult, raise_on_failure: bool) -> DbtTaskResult:
    """The documented contract: a failed run raises its typed error, carrying the result with it."""
    _attach_error(result)
    if result.error is not None and raise_on_failure:
        raise result.error
    return result
