"""dbt detached from the worker, for deferrable tasks: it outlives the task process and reports through files.

``launch`` starts ``python -m dlh_airflow_common.dbt.detached <run_dir>`` in a new session (so the worker
can exit and a kill of its process group does not reach dbt), records it in ``process.json`` without waiting
for it to start, and returns. The runner runs dbt with its JSON events going to ``logs/events.jsonl`` and,
when dbt ends, writes ``status.json`` atomically. Whoever watches the
run (the trigger) only ever reads those two small files. dbt gets SIGINT from the kernel if the runner dies
(parent-death signal), and its pid is recorded in ``dbt_process.json`` so the trigger, ``finish_detached``
and the run-dir sweep can tell whether dbt still runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.events import is_error_event
from dlh_airflow_common.dbt.processes import ProcessRecord, interrupt_when_parent_dies
from dlh_airflow_common.dbt.processes import process_alive as process_alive  # re-exported (bench, callers)
from dlh_airflow_common.dbt.processes import process_start_ticks as process_start_ticks

SPEC_FILE = "detached_spec.json"
PROCESS_FILE = "process.json"
STATUS_FILE = "status.json"
DBT_PROCESS_FILE = "dbt_process.json"
EVENTS_FILE = "events.jsonl"
_MAX_ERROR_EVENTS = 200


@dataclass(frozen=True)
class DetachedProcess:
    """Where and what the detached runner is: enough to find, check and stop it from another process."""

    run_dir: str
    pid: int
    pgid: int
    host: str
    started_at: float
    start_ticks: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DbtProcess(ProcessRecord):
    """dbt as started by the runner; ``parent_death_signal`` says the kernel SIGINTs it when the runner dies."""

    parent_death_signal: bool = False


def write_json_atomic(path: Path, content: Mapping[str, Any]) -> None:
    """Write-then-rename, so a reader sees the old file, no file, or the whole new one: never half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if it does not exist or is not (yet) a whole JSON object."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def read_runner_process(run_dir: Path) -> ProcessRecord | None:
    """The detached runner as recorded in ``process.json``; None before it recorded itself."""
    return ProcessRecord.from_dict(read_json(run_dir / PROCESS_FILE))


def read_dbt_process(run_dir: Path) -> DbtProcess | None:
    """dbt's process as the runner recorded it once dbt started (the only reader of ``dbt_process.json``)."""
    content = read_json(run_dir / DBT_PROCESS_FILE)
    record = ProcessRecord.from_dict(content)
    if content is None or record is None:
        return None
    return DbtProcess(record.pid, record.start_ticks, record.host, parent_death_signal=bool(content.get("pdeathsig")))


def _record_dbt(run_dir: Path, pid: int, *, parent_death_signal: bool) -> None:
    """The only writer of ``dbt_process.json``: the runner, right after dbt started."""
    record = ProcessRecord.of(pid)
    write_json_atomic(run_dir / DBT_PROCESS_FILE, {**record.to_dict(), "pdeathsig": parent_death_signal})


_RUNNERS: list[subprocess.Popen[bytes]] = []  # started by this process: reaped once they end


def reap_runners() -> None:
    """Reap runners this process started that have ended (a task process usually exits first: init reaps them)."""
    _RUNNERS[:] = [runner for runner in _RUNNERS if runner.poll() is None]


def launch(
    run_dir: Path, command: Sequence[str], env: Mapping[str, str], *, meta: Mapping[str, Any] | None = None
) -> DetachedProcess:
    """Start dbt detached and return at once: the runner's record is known from its pid (no start-up wait).

    ``meta`` is kept in the spec file for whoever finishes the run; it must hold no secret.
    """
    reap_runners()
    write_json_atomic(run_dir / SPEC_FILE, {**(meta or {}), "argv": list(command)})
    with (run_dir / "logs" / "detached.out").open("ab") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "dlh_airflow_common.dbt.detached", str(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )
    _RUNNERS.append(runner)
    process = DetachedProcess(
        run_dir=str(run_dir), pid=runner.pid, pgid=runner.pid, host=socket.gethostname(),
        started_at=time.time(), start_ticks=process_start_ticks(runner.pid),
    )  # fmt: skip
    write_json_atomic(run_dir / PROCESS_FILE, process.to_dict())  # the only writer of process.json
    return process


def stop_group(process: DetachedProcess, sig: int) -> bool:
    """Send ``sig`` to the runner's process group; False if it is already gone."""
    if not process_alive(process.pid, process.start_ticks):
        return False
    try:
        os.killpg(process.pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _run(run_dir: Path) -> int:
    """The runner: record itself, run dbt, write status.json when dbt ends (also when it was interrupted)."""
    spec = read_json(run_dir / SPEC_FILE)
    if spec is None:
        raise SystemExit(f"no readable {SPEC_FILE} in {run_dir}")
    # A Python handler (unlike SIG_IGN) is reset by exec, so dbt still gets SIGINT and cancels its queries,
    # while this runner survives long enough to write the status.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    error_events: list[dict[str, Any]] = []
    exit_code = -1
    try:
        with (run_dir / "logs" / EVENTS_FILE).open("w", encoding="utf-8") as events:
            arm = interrupt_when_parent_dies()  # a killed runner must not leave dbt running on its own
            dbt = subprocess.Popen(
                spec["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, encoding="utf-8", errors="replace", preexec_fn=arm,
            )  # fmt: skip
            _record_dbt(run_dir, dbt.pid, parent_death_signal=arm is not None)
            assert dbt.stdout is not None
            for line in dbt.stdout:
                events.write(line)
                events.flush()
                _keep_error(line, error_events)
            exit_code = dbt.wait()
    finally:
        write_json_atomic(
            run_dir / STATUS_FILE,
            {
                "exit_code": exit_code,
                "ended_at": time.time(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "error_events": error_events,
            },
        )
    return 0


def _keep_error(line: str, kept: list[dict[str, Any]]) -> None:
    if len(kept) >= _MAX_ERROR_EVENTS or not line.startswith("{"):
        return
    try:
        event = json.loads(line)
    except ValueError:
        return
    if isinstance(event, dict) and is_error_event(event):
        kept.append(event)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m dlh_airflow_common.dbt.detached <run_dir>", file=sys.stderr)
        return 2
    try:
        return _run(Path(args[0]))
    except BaseException:
        traceback.print_exc()  # into logs/detached.out: why dbt could not be started
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
