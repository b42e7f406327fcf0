"""One dbt execution, as a subprocess (default) or in-process (dbtRunner), with the same events.

Both modes hand every non-debug event to ``on_event`` as the dict dbt writes with ``--log-format json``,
so progress, classification and summaries never care which mode ran. Only the subprocess mode can be
stopped reliably: SIGINT to its process group (dbt then cancels its open queries), a grace period,
then SIGKILL. In-process dbt gets a KeyboardInterrupt, which dbt handles only between nodes' queries.
"""

from __future__ import annotations

import _thread
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dlh_airflow_common.dbt import event_runner
from dlh_airflow_common.dbt.event_runner import ORPHAN_GRACE_ENV, RUNNER_LOG_ARGS, event_dict, freeze_parsed_heap
from dlh_airflow_common.dbt.events import is_error_event
from dlh_airflow_common.dbt.processes import interrupt_when_parent_dies
from dlh_airflow_common.exceptions.dbt import DbtException

logger = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], None]
OutputHandler = Callable[[str], None]

# In-process dbt has global state (flags, adapters, os.environ): one run at a time per interpreter.
_IN_PROCESS_LOCK = threading.Lock()

# Keep the error events a run produced, but not without bound (a 10,000-node run can fail everywhere).
_MAX_ERROR_EVENTS = 500
# What dbt logs at error level when a SIGINT (our stop) interrupts it: "Encountered an error:" and the
# KeyboardInterrupt traceback. After a stop they are debug lines; the stopped error says what happened.
_INTERRUPTED_EVENTS = frozenset({"MainEncounteredError", "MainStackTrace"})

# dbt reads these itself; set for every run so no run phones home or differs by the worker's defaults.
BASE_ENV: dict[str, str] = {
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "DBT_VERSION_CHECK": "false",
}


InvocationMode = Literal["subprocess", "in-process"]
INVOCATION_MODES: tuple[str, ...] = ("subprocess", "in-process")
StopReason = Literal["timeout", "killed"]
DEFAULT_GRACE_PERIOD = 30.0
_POLL_SECONDS = 0.1


@dataclass
class InvocationResult:
    """Exit code, the exception (in-process only), the error events, and why it was stopped if it was."""

    return_code: int
    exception: BaseException | None = None
    error_events: list[dict[str, Any]] = field(default_factory=list)
    stopped: StopReason | None = None

    @property
    def success(self) -> bool:
        return self.return_code == 0


# A venv's dbt is another dbt whose internals we do not assume: its CLI writes the JSON events itself.
CLI_LOG_ARGS: tuple[str, ...] = (
    "--log-format", "json", "--log-level-file", "debug", "--log-format-file", "debug",
)  # fmt: skip


def subprocess_argv(venv_path: str | os.PathLike[str] | None, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``dbt <argv>`` writing JSON events to stdout: the venv's ``dbt``, or
    the dbt installed beside this interpreter through the event runner (no JSON for debug events)."""
    if venv_path is not None:
        return [str(dbt_executable(venv_path)), *argv, *CLI_LOG_ARGS]
    return [sys.executable, "-m", event_runner.__name__, *argv, *RUNNER_LOG_ARGS]


def dbt_executable(venv_path: str | os.PathLike[str]) -> Path:
    """The ``dbt`` entry point of a virtualenv, or a clear error naming the path that was checked."""
    venv = Path(venv_path)
    candidate = venv / "bin" / "dbt" if venv.name != "dbt" else venv
    if not venv.exists():
        raise DbtException(f"venv_path {venv} does not exist.")
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        raise DbtException(f"venv_path {venv} has no dbt executable at {candidate}; install dbt-core there.")
    return candidate


@contextmanager
def _patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Expose ``env`` to in-process dbt for the duration of the run only, then restore every key."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def release_adapters() -> None:
    """Close what in-process dbt keeps open between invocations.

    Adapters stay registered after ``dbtRunner.invoke``; dbt-duckdb even keeps the database file open
    (and locked against other processes) until the interpreter exits.
    """
    try:
        from dbt.adapters.base.connections import BaseConnectionManager
        from dbt.adapters.factory import reset_adapters

        reset_adapters()  # type: ignore[no-untyped-call]
        for manager in _subclasses(BaseConnectionManager):
            close_all = manager.__dict__.get("close_all_connections")
            if close_all is not None:
                manager.close_all_connections()  # type: ignore[attr-defined]
    except Exception as err:  # best effort: never mask the dbt result
        logger.debug("Releasing dbt adapters failed: %s", err)
    gc.collect()


class DbtInvocation:
    """Owns exactly one dbt execution: runs it, streams its events, remembers its errors, can stop it."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        venv_path: str | os.PathLike[str] | None = None,
        mode: InvocationMode = "subprocess",
        on_event: EventHandler | None = None,
        on_output: OutputHandler | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
    ) -> None:
        if mode not in INVOCATION_MODES:
            raise DbtException(f"Unknown invocation mode {mode!r}; use one of {', '.join(INVOCATION_MODES)}.")
        if mode == "in-process" and venv_path is not None:
            raise DbtException("venv_path runs dbt from another environment, so it needs the subprocess mode.")
        self.argv = list(argv)
        self.env = {**BASE_ENV, **(env or {})}
        self.mode: InvocationMode = mode
        self.subprocess_args = subprocess_argv(venv_path, self.argv)  # checks venv_path now, not at run time
        self.on_event = on_event
        self.on_output = on_output
        self.grace_period = grace_period
        self.error_events: list[dict[str, Any]] = []
        self.process: subprocess.Popen[str] | None = None
        self.stopped: StopReason | None = None
        self._stop_lock = threading.RLock()  # re-entrant: stop() may run in a signal handler on this thread
        self._in_process_thread: int | None = None

    def run(self, timeout: float | None = None) -> InvocationResult:
        """Run dbt to completion, or until ``timeout`` seconds pass (then stop it gracefully)."""
        if self.mode == "in-process":
            return self._run_in_process(timeout)
        return self._run_subprocess(timeout)

    def _handle(self, event: dict[str, Any]) -> None:
        if self.stopped is not None and (event.get("info") or {}).get("name") in _INTERRUPTED_EVENTS:
            logger.debug("dbt after stop: %s", (event.get("info") or {}).get("msg"))
            return
        if is_error_event(event) and len(self.error_events) < _MAX_ERROR_EVENTS:
            self.error_events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    # -- in-process ---------------------------------------------------------------------------------
    def _run_in_process(self, timeout: float | None) -> InvocationResult:
        from dbt.cli.main import dbtRunner

        # Freeze dbt's parsed heap for the run (see freeze_parsed_heap), unless the host process froze its
        # own heap already: unfreezing afterwards would undo that.
        may_freeze, froze = gc.get_freeze_count() == 0, False

        def callback(message: Any) -> None:
            nonlocal froze
            if may_freeze and not froze:
                froze = freeze_parsed_heap(message)
            event = event_dict(message)  # None for debug events: most of the stream, and nobody reads them
            if event is not None:
                self._handle(event)

        args = [*self.argv, *RUNNER_LOG_ARGS]
        timer = threading.Timer(timeout, self.stop, kwargs={"reason": "timeout"}) if timeout else None
        with _IN_PROCESS_LOCK, _patched_environ(self.env):
            self._in_process_thread = threading.get_ident()
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                result = dbtRunner(callbacks=[callback]).invoke(args)
            except KeyboardInterrupt:
                if self.stopped is None:
                    raise
                return InvocationResult(return_code=2, error_events=self.error_events, stopped=self.stopped)
            finally:
                if timer is not None:
                    timer.cancel()
                self._in_process_thread = None
                if froze:
                    gc.unfreeze()
                release_adapters()
        if result.success:
            code = 0
        elif result.exception is not None:
            code = 2
        else:
            code = 1
        return InvocationResult(
            return_code=code, exception=result.exception, error_events=self.error_events, stopped=self.stopped
        )

    # -- subprocess ---------------------------------------------------------------------------------
    def _run_subprocess(self, timeout: float | None) -> InvocationResult:
        args = self.subprocess_args
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", ORPHAN_GRACE_ENV: str(self.grace_period)}
        deadline = time.monotonic() + timeout if timeout else None
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            start_new_session=True,  # its own process group, so a stop reaches dbt's children too
            preexec_fn=interrupt_when_parent_dies(),
        )
        self.process = process
        assert process.stdout is not None
        reader = threading.Thread(target=self._pump, args=(process.stdout,), name="dbt-output", daemon=True)
        reader.start()
        try:
            # poll() instead of wait(): wait() holds a lock that a stop() run from a signal handler would need.
            while process.poll() is None:
                if deadline is not None and time.monotonic() >= deadline:
                    self.stop("timeout")
                reader.join(_POLL_SECONDS)
        except BaseException:
            # Airflow's own timeout, a KeyboardInterrupt, anything: never leave dbt running behind us.
            self.stop("killed")
            raise
        finally:
            reader.join(timeout=5)
            process.stdout.close()
            self._kill_group(process, signal.SIGKILL)  # stragglers of the group, if any
        return InvocationResult(return_code=process.returncode, error_events=self.error_events, stopped=self.stopped)

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._dispatch_line(line)

    def _dispatch_line(self, line: str) -> None:
        stripped = line.strip()
        if not stripped:
            return
        if stripped.startswith("{"):
            try:
                event = json.loads(stripped)
            except json.JSONDecodeError:
                event = None
            if isinstance(event, dict) and "info" in event:
                self._handle(event)
                return
        if self.stopped is not None:
            logger.debug("dbt after stop: %s", stripped)  # dbt's KeyboardInterrupt traceback is noise here
        elif self.on_output is not None:
            self.on_output(stripped)
        else:
            print(stripped, file=sys.stderr)

    # -- stopping -----------------------------------------------------------------------------------
    def stop(self, reason: StopReason = "killed") -> None:
        """Stop dbt gracefully: SIGINT, up to ``grace_period`` seconds for it to cancel queries, then SIGKILL."""
        with self._stop_lock:
            if self.stopped is not None:
                return
            self.stopped = reason
        if self.mode == "in-process":
            self._interrupt_in_process()
            return
        process = self.process
        if process is None or process.poll() is not None:
            return
        self._kill_group(process, signal.SIGINT)
        end = time.monotonic() + self.grace_period
        while time.monotonic() < end:
            if process.poll() is not None:
                return
            time.sleep(_POLL_SECONDS)
        logger.warning("dbt did not stop within %.0fs of SIGINT; sending SIGKILL", self.grace_period)
        self._kill_group(process, signal.SIGKILL)
        end = time.monotonic() + 5
        while process.poll() is None and time.monotonic() < end:
            time.sleep(_POLL_SECONDS)

    def _interrupt_in_process(self) -> None:
        logger.warning(
            "Stopping in-process dbt with a KeyboardInterrupt; queries already sent may keep running. "
            "Use the subprocess invocation mode for a reliable stop."
        )
        if self._in_process_thread is None:
            return
        if self._in_process_thread == threading.get_ident():
            raise KeyboardInterrupt  # called on dbt's own thread (e.g. from a signal handler)
        _thread.interrupt_main()

    @staticmethod
    def _kill_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
