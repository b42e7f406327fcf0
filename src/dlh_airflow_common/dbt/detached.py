"""dbt detached from the worker, for deferrable tasks: it outlives the task process and reports through a channel.

``launch`` starts ``python -m dlh_airflow_common.dbt.detached <run_dir>`` in a new session (so the worker
can exit and a kill of its process group does not reach dbt), records it in ``process.json`` without waiting
for it to start, and returns. The runner runs dbt with its JSON events going to ``logs/events.jsonl`` and
publishes its status through the run channel (``channel.py``: the run dir, or an object store for runs
across hosts) every heartbeat and when dbt ends; it obeys the channel's cancel request and, as a backstop,
its deadline. dbt gets SIGINT from the kernel if the runner dies (parent-death signal), and its pid is
recorded in ``dbt_process.json`` so the trigger, ``finish_detached`` and the run-dir sweep can tell whether
dbt still runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.channel import STATUS_FILE as STATUS_FILE  # re-exported (callers, tests)
from dlh_airflow_common.dbt.channel import ChannelSpec, ChannelWriter, write_bytes_atomic
from dlh_airflow_common.dbt.processes import ProcessRecord, interrupt_when_parent_dies
from dlh_airflow_common.dbt.processes import process_alive as process_alive  # re-exported (bench, callers)
from dlh_airflow_common.dbt.processes import process_start_ticks as process_start_ticks

SPEC_FILE = "detached_spec.json"
PROCESS_FILE = "process.json"
DBT_PROCESS_FILE = "dbt_process.json"
EVENTS_FILE = "events.jsonl"
_KILLED_LINGER_SECONDS = 5.0  # how long a killed run's final status stays for the trigger that asked
_DEADLINE_BACKSTOP = 10.0  # seconds after the trigger's deadline (and two heartbeats) that the runner acts
_PUBLISH_ATTEMPTS = 5  # tries of the final publish, each of them a store request already retried (channel.py)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetachedProcess:
    """Where and what the detached runner is: enough to find, check and stop it from another process."""

    run_dir: str
    pid: int
    pgid: int
    host: str
    started_at: float
    start_ticks: int | None
    channel: dict[str, Any] | None = None  # the run's ChannelSpec, as plain JSON

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DbtProcess(ProcessRecord):
    """dbt as started by the runner; ``parent_death_signal`` says the kernel SIGINTs it when the runner dies."""

    parent_death_signal: bool = False


def write_json_atomic(path: Path, content: Mapping[str, Any]) -> None:
    """Write-then-rename, so a reader sees the old file, no file, or the whole new one: never half of it."""
    write_bytes_atomic(path, json.dumps(content).encode("utf-8"))


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
    run_dir: Path,
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    meta: Mapping[str, Any] | None = None,
    channel: ChannelSpec | None = None,
) -> DetachedProcess:
    """Start dbt detached and return at once: the runner's record is known from its pid (no start-up wait).

    ``meta`` is the runner's spec (``command``, ``channel``, ``deadline``, ``grace_period``, ``pack``: what to
    publish to a remote channel); it must hold no secret.
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
        channel=channel.to_dict() if channel is not None else None,
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
    """The runner: run dbt, publish its progress through the channel, then its final status (also when it was
    interrupted), and obey a cancel request or its own deadline."""
    spec = read_json(run_dir / SPEC_FILE)
    if spec is None:
        raise SystemExit(f"no readable {SPEC_FILE} in {run_dir}")
    channel = ChannelSpec.from_dict(spec.get("channel")) or ChannelSpec(str(run_dir))
    prior = spec.get("prior_results")
    writer = ChannelWriter(channel, command=str(spec.get("command") or "dbt"),
                           prior_results=prior if isinstance(prior, dict) else None)  # fmt: skip
    # A Python handler (unlike SIG_IGN) is reset by exec, so dbt still gets SIGINT and cancels its queries,
    # while this runner survives long enough to write the status.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    exit_code = -1
    dbt_env = _dbt_env(channel)
    if channel.remote:
        _without_metadata_db()
    watch = _Watch(writer, deadline=spec.get("deadline"), grace=float(spec.get("grace_period") or 30.0))
    try:
        with (run_dir / "logs" / EVENTS_FILE).open("w", encoding="utf-8") as events:
            arm = interrupt_when_parent_dies()  # a killed runner must not leave dbt running on its own
            dbt = subprocess.Popen(
                spec["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, encoding="utf-8", errors="replace", preexec_fn=arm, env=dbt_env,
            )  # fmt: skip
            _record_dbt(run_dir, dbt.pid, parent_death_signal=arm is not None)
            watch.start(dbt)
            assert dbt.stdout is not None
            for line in dbt.stdout:
                events.write(line)
                events.flush()
                event = _event(line)
                if event is not None:
                    writer.event(event)
            exit_code = dbt.wait()
    finally:
        watch.stop()
        files = [(Path(path), name) for path, name in spec.get("pack") or ()]
        published = _publish(writer, exit_code, watch.stopped, files)
    if published and channel.remote:
        shutil.rmtree(run_dir, ignore_errors=True)  # everything a reader needs is in the channel now
        if watch.stopped == "killed" and not spec.get("keep_channel"):
            _remove_killed_channel(writer)
    return 0


def _remove_killed_channel(writer: ChannelWriter) -> None:
    """A killed task never runs ``execute_complete``: once the trigger has had time to read the final status,
    the runner removes the channel itself, so a trigger that gave up waiting leaves nothing behind either."""
    time.sleep(_KILLED_LINGER_SECONDS)
    try:
        writer.store.remove()
    except Exception:
        traceback.print_exc()  # retention then falls to the store's lifecycle rule


def _dbt_env(channel: ChannelSpec) -> dict[str, str]:
    """dbt's environment: the runner's, without the channel connection (dbt has no use for its secret)."""
    env = dict(os.environ)
    if channel.conn_id:
        env.pop(channel_conn_env(channel.conn_id), None)
    return env


def _without_metadata_db() -> None:
    """Let the runner import Airflow (for the remote channel's store) in a task's environment.

    Airflow's task supervisor blocks the metadata DB by setting ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` to a URL
    that does not parse, so a fresh interpreter dies in Airflow's settings before anything runs. The runner
    never uses the metadata DB: an in-memory SQLite URL that nothing connects to keeps it that way."""
    for name in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__SQL_ALCHEMY_CONN"):
        os.environ[name] = "sqlite://"
    for name in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET"):
        os.environ.pop(name, None)


def channel_conn_env(conn_id: str) -> str:
    """The variable that hands the channel's connection to the runner (Airflow reads ``AIRFLOW_CONN_<ID>``)."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _publish(writer: ChannelWriter, exit_code: int, stopped: str | None, files: list[tuple[Path, str]]) -> bool:
    """The final status (and artifacts), retried: without it every reader would wait for the heartbeat to age."""
    from tenacity import Retrying, stop_after_attempt, wait_exponential

    def warn(state: Any) -> None:
        log.warning("Publishing the final status to %s failed (try %d of %d): %s", writer.spec.where,
                    state.attempt_number, _PUBLISH_ATTEMPTS, state.outcome.exception())  # fmt: skip

    retrying = Retrying(stop=stop_after_attempt(_PUBLISH_ATTEMPTS), wait=wait_exponential(0.5, max=8),
                        before_sleep=warn, reraise=True)  # fmt: skip
    try:
        for attempt in retrying:
            with attempt:
                writer.finish(exit_code, stopped=stopped, files=files)
    except Exception:
        traceback.print_exc()  # into logs/detached.out; the run dir is kept for whoever looks
        return False
    return True


def _event(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class _Watch:
    """The runner's heartbeat thread: publishes the status every ``heartbeat_interval`` and stops dbt
    (SIGINT to the group, ``grace`` seconds, SIGKILL) on a cancel request or once the deadline has passed.

    The deadline it enforces itself is a backstop, a little after the trigger's, for a triggerer that is down.
    """

    def __init__(self, writer: ChannelWriter, *, deadline: float | None, grace: float) -> None:
        self.writer = writer
        interval = writer.spec.heartbeat_interval
        self.interval = interval
        self.deadline = float(deadline) + 2 * interval + _DEADLINE_BACKSTOP if deadline else None
        self.grace = grace
        self.stopped: str | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, dbt: subprocess.Popen[str]) -> None:
        self._thread = threading.Thread(target=self._beat, args=(dbt,), name="dlh-dbt-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 30)

    def _beat(self, dbt: subprocess.Popen[str]) -> None:
        while True:
            try:
                self.writer.heartbeat()
            except Exception as err:  # the store is down for a while (its requests were retried): the next one will do
                log.warning("Heartbeat to %s failed: %s", self.writer.spec.where, err)
            if self.stopped is None:
                reason = self._cancel_request()
                if reason is None and self.deadline is not None and time.time() >= self.deadline:
                    reason = "timeout"
                if reason is not None:
                    self.stopped = reason
                    self._stop_dbt(dbt, reason)
            if self._done.wait(self.interval):
                return

    def _cancel_request(self) -> str | None:
        try:
            return self.writer.cancel_request()
        except Exception as err:  # read again at the next heartbeat
            log.warning("Could not read a cancel request from %s: %s", self.writer.spec.where, err)
            return None

    def _stop_dbt(self, dbt: subprocess.Popen[str], reason: str) -> None:
        print(f"stopping dbt (pid {dbt.pid}): {reason}", flush=True)
        with suppress(ProcessLookupError):
            os.killpg(os.getpgrp(), signal.SIGINT)  # the runner ignores it; dbt cancels its queries
        try:
            dbt.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            print(f"dbt did not stop within {self.grace:g}s: SIGKILL", flush=True)
            dbt.kill()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m dlh_airflow_common.dbt.detached <run_dir>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(Path(args[0]))
    except BaseException:
        traceback.print_exc()  # into logs/detached.out: why dbt could not be started
        return 1


def _exit(code: int) -> None:
    """Exit at once once the final status is out: readers may check that the runner is gone right after it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
