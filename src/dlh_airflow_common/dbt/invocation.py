"""One dbt execution, in-process (dbtRunner) or in another virtualenv (subprocess), with the same events.

Both modes hand every event to ``on_event`` as the dict dbt writes with ``--log-format json``, so
progress, classification and summaries never care which mode ran.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlh_airflow_common.exceptions.dbt import DbtException, is_error_event

logger = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], None]
OutputHandler = Callable[[str], None]

# In-process dbt has global state (flags, adapters, os.environ): one run at a time per interpreter.
_IN_PROCESS_LOCK = threading.Lock()

# Keep the error events a run produced, but not without bound (a 10,000-node run can fail everywhere).
_MAX_ERROR_EVENTS = 500

# dbt reads these itself; set for every run so no run phones home or differs by the worker's defaults.
BASE_ENV: dict[str, str] = {
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "DBT_VERSION_CHECK": "false",
}


@dataclass
class InvocationResult:
    """Exit code, the exception (in-process only) and the error events of one dbt execution."""

    return_code: int
    exception: BaseException | None = None
    error_events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.return_code == 0


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
    """Owns exactly one dbt execution: runs it, streams its events, remembers its errors."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        venv_path: str | os.PathLike[str] | None = None,
        on_event: EventHandler | None = None,
        on_output: OutputHandler | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = {**BASE_ENV, **(env or {})}
        self.venv_path = venv_path
        self.executable = dbt_executable(venv_path) if venv_path is not None else None
        self.on_event = on_event
        self.on_output = on_output
        self.error_events: list[dict[str, Any]] = []
        self.process: subprocess.Popen[str] | None = None

    @property
    def mode(self) -> str:
        return "subprocess" if self.executable is not None else "in-process"

    def run(self) -> InvocationResult:
        if self.executable is not None:
            return self._run_subprocess(self.executable)
        return self._run_in_process()

    def _handle(self, event: dict[str, Any]) -> None:
        if is_error_event(event) and len(self.error_events) < _MAX_ERROR_EVENTS:
            self.error_events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _run_in_process(self) -> InvocationResult:
        from dbt.cli.main import dbtRunner
        from dbt_common.events.functions import msg_to_dict

        def callback(message: Any) -> None:
            self._handle(msg_to_dict(message))

        args = [*self.argv, "--log-level", "none", "--log-level-file", "debug", "--log-format-file", "debug"]
        with _IN_PROCESS_LOCK, _patched_environ(self.env):
            try:
                result = dbtRunner(callbacks=[callback]).invoke(args)
            finally:
                release_adapters()
        if result.success:
            code = 0
        elif result.exception is not None:
            code = 2
        else:
            code = 1
        return InvocationResult(return_code=code, exception=result.exception, error_events=self.error_events)

    def _run_subprocess(self, executable: Path) -> InvocationResult:
        args = [
            str(executable),
            *self.argv,
            "--log-format",
            "json",
            "--log-level-file",
            "debug",
            "--log-format-file",
            "debug",
        ]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            start_new_session=True,  # its own process group, so a stop reaches dbt's children too
        ) as process:
            self.process = process
            assert process.stdout is not None
            for line in process.stdout:
                self._dispatch_line(line)
            code = process.wait()
        return InvocationResult(return_code=code, error_events=self.error_events)

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
        if self.on_output is not None:
            self.on_output(stripped)
        else:
            print(stripped, file=sys.stderr)
