"""Fault scenarios on a real PostgreSQL server the tests stop, start and watch.

Outage recovery with backoff, retries exhausted, ``dbt retry`` after partial progress, the graceful stop
on timeout, on_kill through Airflow's own SIGTERM handling, and resuming a killed try with
``retry_from_failure``. Observed timings are printed (``-s``) for the record; nothing asserts on them.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dag_runner import run_dag_file
from dlh_airflow_common.exceptions.dbt import DbtConnectionException, DbtExecutionTimeoutException
from dlh_airflow_common.hooks.dbt import DbtHook
from pg_faults import AUDIT, builds, dbt_processes, fault_conn, sleeping_queries, sql, wait_for
from pg_server import PostgresServer


class _Watch(logging.Handler):
    """Collects the hook's log lines and runs an action once when a line matches."""

    def __init__(self, pattern: str | None = None, action: Callable[[], None] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[float, str]] = []
        self.pattern, self.action = pattern, action

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append((time.monotonic(), line))
        if self.pattern and self.action and re.search(self.pattern, line):
            action, self.action = self.action, None
            action()

    def waits(self) -> list[float]:
        return [float(m.group(1)) for _, line in self.lines if (m := re.search(r"retrying in ([\d.]+)s", line))]


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"dlh.test.{name}")
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def test_outage_recovers_when_server_returns_during_backoff(
    fault_project: Path, pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAULT_PG", fault_conn(pg_server))
    (fault_project / "models" / "c.sql").unlink()
    pg_server.stop()
    restarted: list[float] = []
    watch = _Watch(r"attempt 2/4 failed", lambda: (pg_server.start_again(), restarted.append(time.monotonic())))
    hook = DbtHook(fault_project, conn_id="fault_pg", retry_limit=4, retry_delay=1, logger=_logger("outage", watch))
    started = time.monotonic()
    result = hook.run_dbt_task("build")
    assert result.success, result.error
    assert result.attempts == 3
    assert watch.waits() == [1.0, 2.0], "exponential backoff: 1s, then 2s"
    failures = [line for _, line in watch.lines if "failed:" in line and "attempt" in line]
    assert all("Connection refused" in line for line in failures), failures
    assert restarted, "the server was started during the backoff"
    assert builds(pg_server) == {"a": 1, "b": 1}
    attempts = [t - started for t, line in watch.lines if line.startswith("Running dbt")]
    print(f"\noutage: attempts started at {[round(a, 2) for a in attempts]}s, server back at "
          f"{restarted[0] - started:.2f}s, success after {time.monotonic() - started:.2f}s")  # fmt: skip


def test_server_that_never_returns_fails_after_retry_limit_attempts(
    fault_project: Path, pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_FAULT_PG", fault_conn(pg_server, port=closed_port))
    watch = _Watch()
    hook = DbtHook(fault_project, conn_id="fault_pg", retry_limit=3, retry_delay=0.5, logger=_logger("down", watch))
    started = time.monotonic()
    with pytest.raises(DbtConnectionException) as raised:
        hook.run_dbt_task("run")
    result = raised.value.result
    assert result is not None and not result.success
    assert isinstance(result.error, DbtConnectionException)
    assert result.error.conn_id == "fault_pg"
    assert result.attempts == 3
    assert watch.waits() == [0.5, 1.0]
    assert "after 3 attempts" in str(result.error)
    assert len([line for _, line in watch.lines if line.startswith("Running dbt")]) == 3
    assert result.to_xcom()["attempts"] == 3
    print(f"\nnever returns: 3 attempts, gave up after {time.monotonic() - started:.2f}s")


def test_retry_after_partial_progress_runs_only_unfinished_nodes(
    fault_project: Path, pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection dropped under model c: the next attempt is ``dbt retry`` and a, b are not rebuilt."""
    monkeypatch.setenv("AIRFLOW_CONN_FAULT_PG", fault_conn(pg_server))
    sql(pg_server, f"update {AUDIT}.control set seconds = 600")

    def drop_connection() -> None:
        wait_for(lambda: sleeping_queries(pg_server) > 0, 120, "model c to start sleeping")
        sql(pg_server, f"update {AUDIT}.control set seconds = 0")
        sql(pg_server, "select pg_terminate_backend(pid) from pg_stat_activity where query like '%pg_sleep%' "
                        "and pid <> pg_backend_pid()")  # fmt: skip

    killer = threading.Thread(target=drop_connection, daemon=True)
    killer.start()
    watch = _Watch()
    hook = DbtHook(fault_project, conn_id="fault_pg", retry_limit=3, retry_delay=0.5, logger=_logger("partial", watch))
    result = hook.run_dbt_task("run")
    killer.join(timeout=5)
    assert result.success, result.error
    assert result.attempts == 2
    assert [r["unique_id"] for r in result.run_results["results"]] == ["model.faults.c"], "dbt retry ran only c"
    assert result.summary.status_counts == {"success": 3}, "the summary covers every node of the task"
    assert builds(pg_server) == {"a": 1, "b": 1, "c": 1}
    assert any(line.startswith("Running dbt retry") for _, line in watch.lines)


TIMEOUT_S = 40


def test_timeout_stops_dbt_and_cancels_its_query(
    fault_project: Path, pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAULT_PG", fault_conn(pg_server))
    sql(pg_server, f"update {AUDIT}.control set seconds = 600")
    watch = _Watch()
    # Long enough for a slow machine to parse and build a and b; c sleeps far longer.
    hook = DbtHook(fault_project, conn_id="fault_pg", execution_timeout=TIMEOUT_S, logger=_logger("timeout", watch))
    started = time.monotonic()
    result = hook.run_dbt_task("run", raise_on_failure=False)
    stopped_after = time.monotonic() - started
    assert isinstance(result.error, DbtExecutionTimeoutException)
    assert "2 of 3 nodes had succeeded" in str(result.error)
    assert result.attempts == 1, "a timeout is never retried"
    assert sleeping_queries(pg_server) == 0, "dbt cancelled its query before exiting"
    assert not Path(result.run_dir).exists()
    print(f"\ntimeout: {TIMEOUT_S}s limit, dbt stopped and the task returned after {stopped_after:.2f}s")


class _Records(logging.Handler):
    """Keeps (level, message) of every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.getMessage()))


def test_stopped_run_warns_once_and_counts_the_interrupted_node(
    fault_project: Path, pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while model c runs: c is in the summary although dbt's run_results.json lacks it, and dbt's
    KeyboardInterrupt traceback stays out of the task log's warnings and errors."""
    monkeypatch.setenv("AIRFLOW_CONN_FAULT_PG", fault_conn(pg_server))
    sql(pg_server, f"update {AUDIT}.control set seconds = 600")
    seen = _Records()
    hook = DbtHook(fault_project, conn_id="fault_pg", logger=_logger("stopped", seen))

    def stop_while_c_sleeps() -> None:
        wait_for(lambda: sleeping_queries(pg_server) > 0, 180, "model c to start sleeping")
        hook.cancel()

    stopper = threading.Thread(target=stop_while_c_sleeps, daemon=True)
    stopper.start()
    result = hook.run_dbt_task("run", raise_on_failure=False)
    stopper.join(timeout=5)

    assert "was stopped because the task was killed; 2 of 3 nodes had succeeded" in str(result.error)
    written = [r["unique_id"] for r in result.run_results.get("results", [])]
    assert "model.faults.c" not in written, "dbt did not record the node it was running"
    assert result.summary.node_count == 3
    assert [(n.unique_id, n.status) for n in result.summary.failed] == [("model.faults.c", "error")]
    loud = [(level, line) for level, line in seen.records if level >= logging.WARNING]
    assert [line for _, line in loud if "was stopped" in line] == [str(result.error)], "one warning says it"
    assert not [line for _, line in loud if "Traceback" in line or "KeyboardInterrupt" in line], loud
    assert not [line for _, line in loud if "Encountered an error" in line], loud
    assert any(level == logging.ERROR and "ERROR model.faults.c" in line for level, line in loud)
    assert sleeping_queries(pg_server) == 0


ON_KILL_DAG = textwrap.dedent(
    """
    from datetime import datetime, timedelta
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtOperator(task_id="dbt_run", dbt_project_dir={project!r}, dbt_command="run", conn_id="fault_pg",
                    kill_grace_period=30, {extra})
    """
)

CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from dag_runner import run_dag_file
    from pathlib import Path
    run = run_dag_file(Path({dag_file!r}), Path({dags!r}), {dag_id!r})
    print("DAG-RESULT", run.state, run.task_states, flush=True)
    """
)


def test_on_kill_through_airflow_sigterm_cancels_the_query(
    fault_project: Path, pg_server: PostgresServer, airflow_db: Path, tmp_path: Path
) -> None:
    """SIGTERM to the task process (what Airflow's supervisor sends) runs on_kill: dbt stops, query cancelled."""
    sql(pg_server, f"update {AUDIT}.control set seconds = 600")
    dag_file = tmp_path / "dbt_on_kill.py"
    dag_file.write_text(ON_KILL_DAG.format(dag_id="dbt_on_kill", project=str(fault_project), extra=""))
    script = CHILD.format(tests=str(Path(__file__).parents[1]), dag_file=str(dag_file),
                          dags=str(airflow_db / "dags"), dag_id="dbt_on_kill")  # fmt: skip
    env = {**os.environ, "AIRFLOW_CONN_FAULT_PG": fault_conn(pg_server)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for(lambda: sleeping_queries(pg_server) > 0, 180, "model c to start sleeping")
        assert dbt_processes(str(fault_project)), "dbt runs as its own process"
        killed_at = time.monotonic()
        child.send_signal(signal.SIGTERM)
        gone = wait_for(lambda: sleeping_queries(pg_server) == 0, 30, "the pg_sleep query to be cancelled")
        output, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert "was stopped because the task was killed; 2 of 3 nodes had succeeded" in output, output[-4000:]
    assert "DAG-RESULT failed" in output, output[-4000:]
    assert dbt_processes(str(fault_project)) == [], "no dbt process (or zombie) is left"
    assert not list((fault_project / "target").glob("run_*")), "the run dir was cleaned"
    print(f"\non_kill: query gone {gone:.2f}s after SIGTERM; task process exited after "
          f"{time.monotonic() - killed_at:.2f}s")  # fmt: skip


def test_killed_try_is_resumed_without_rebuilding_finished_models(
    fault_project: Path, pg_server: PostgresServer, airflow_db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Try 1 stops half-way (timeout); Airflow's try 2 with retry_from_failure builds only what was left."""
    monkeypatch.setenv("AIRFLOW_CONN_FAULT_PG", fault_conn(pg_server))
    sql(pg_server, f"update {AUDIT}.control set seconds = 600")

    def shorten_sleep_for_next_try() -> None:
        wait_for(lambda: sleeping_queries(pg_server) > 0, 180, "model c to start sleeping")
        sql(pg_server, f"update {AUDIT}.control set seconds = 0")  # the running query keeps its 600 s

    helper = threading.Thread(target=shorten_sleep_for_next_try, daemon=True)
    helper.start()
    extra = "execution_timeout=30, retries=1, retry_delay=timedelta(seconds=0), retry_from_failure=True"
    dag_file = tmp_path / "dbt_resume.py"
    dag_file.write_text(ON_KILL_DAG.format(dag_id="dbt_resume", project=str(fault_project), extra=extra))
    run = run_dag_file(dag_file, airflow_db / "dags", "dbt_resume")
    helper.join(timeout=5)
    assert run.state == "success", run.task_states
    assert builds(pg_server) == {"a": 1, "b": 1, "c": 1}, "a and b were not rebuilt by the second try"
    summary = run.xcom("dbt_run")
    assert summary["status_counts"] == {"success": 1} and summary["node_count"] == 1
    state_root = fault_project / "target" / ".dlh_state"
    assert not any(p.is_file() for p in state_root.rglob("*")), "resume state is removed once the task succeeds"
