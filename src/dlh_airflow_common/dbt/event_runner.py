"""Run dbt through its programmatic API and write its non-debug events (and a failed node's NodeFinished) as JSON lines.

``dbt --log-format json`` turns every event into JSON, debug ones included, before its level filter
drops them: on a 500-model build that conversion alone costs dbt about 4 % of its CPU. This runner
checks the level first, so the subprocess mode pays no more than plain ``dbt``. It also freezes the
heap once dbt starts running nodes (see ``freeze_parsed_heap``). Used as
``python -m dlh_airflow_common.dbt.event_runner <dbt args>``; exit codes are the dbt CLI's
(0 success, 1 failed nodes, 2 error). Imports nothing but the standard library (and ``events``) until dbt runs.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from dlh_airflow_common.dbt.events import NODE_FAILURE_STATUSES

# dbt's console logger is off (the runner writes the events); the full debug log still goes to dbt.log.
RUNNER_LOG_ARGS: tuple[str, ...] = ("--log-level", "none", "--log-level-file", "debug", "--log-format-file", "debug")


def event_dict(message: Any) -> dict[str, Any] | None:
    """The dict dbt writes for ``message`` with ``--log-format json``, or None for a debug event nobody reads.

    One debug event is read: ``NodeFinished`` of a failed node, which carries its message while the run goes on
    (dbt's info-level result line does not; its ``RunResultError`` comes only at the end of the run).
    """
    if message.info.level == "debug" and not _failed_node_finished(message):
        return None
    from dbt_common.events.functions import msg_to_dict

    return msg_to_dict(message)


def _failed_node_finished(message: Any) -> bool:
    if message.info.name != "NodeFinished":
        return False
    status = str(getattr(getattr(message.data, "run_result", None), "status", "")).lower()
    return status in NODE_FAILURE_STATUSES


# dbt fires this once its manifest and graph are built, right before the first node runs.
NODES_START_EVENT = "ConcurrencyLine"


def freeze_parsed_heap(message: Any) -> bool:
    """At ``NODES_START_EVENT``, move every object alive (chiefly dbt's parsed manifest) out of the cyclic
    garbage collector's reach; True if it did.

    Without it each full collection during the run rescans the whole manifest: on a 500-model build
    that is about 4 of dbt's 50 CPU seconds. Frozen objects are still freed by reference counting; only
    cyclic garbage that exists at this moment stays until ``gc.unfreeze()``. Whoever freezes must
    unfreeze once dbt has run: frozen cycles are never collected, and an interpreter teardown then has DuckDB's
    bindings report everything they keep alive as leaked (``nanobind: leaked ...`` on stderr).
    """
    if message.info.name != NODES_START_EVENT:
        return False
    gc.freeze()
    return True


def _scrubber() -> Callable[[str], str]:
    try:
        from dbt_common.events.functions import env_scrubber
    except ImportError:  # pragma: no cover - every dbt-core we support has it
        return lambda text: text
    return env_scrubber


# Set by whoever starts the runner: once that process has died, seconds dbt gets to stop on the kernel's
# parent-death SIGINT before the runner ends itself.
ORPHAN_GRACE_ENV = "DLH_DBT_ORPHAN_GRACE_SECONDS"


def end_when_orphaned(grace: float, *, poll: float = 0.5) -> threading.Thread:
    """Once the parent is gone and ``grace`` seconds have passed, SIGKILL this process (its group when it
    leads one): dbt does not always stop on SIGINT alone, its rollback can wait on the very query it cancels.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        time.sleep(grace)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="dlh-orphan-watch", daemon=True)
    thread.start()
    return thread


def main(argv: Sequence[str]) -> int:
    """Run ``dbt <argv>``, streaming its events; return the dbt CLI's exit code."""
    grace = os.environ.get(ORPHAN_GRACE_ENV)
    if grace:
        end_when_orphaned(float(grace))
    from dbt.cli.main import dbtRunner

    scrub = _scrubber()
    lock = threading.Lock()
    errors_reported = froze = False

    def emit(message: Any) -> None:
        nonlocal errors_reported, froze
        froze = freeze_parsed_heap(message) or froze
        event = event_dict(message)
        if event is None:
            return
        line = scrub(json.dumps(event, default=str))
        errors_reported = errors_reported or message.info.level == "error"
        with lock:  # node events come from dbt's worker threads
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    try:
        result = dbtRunner(callbacks=[emit]).invoke([*argv, *RUNNER_LOG_ARGS])
    finally:
        if froze:
            gc.unfreeze()  # a later collection, or a caller's teardown, then frees dbt's cycles
    if result.success:
        return 0
    if result.exception is None:
        return 1
    if not errors_reported:  # e.g. a bad option: dbt failed before its event logging started
        print(f"{type(result.exception).__name__}: {result.exception}", file=sys.stderr, flush=True)
    return 2


def skip_teardown_after(exit_code: list[int]) -> None:
    """When the interpreter exits after the caller put the exit code into ``exit_code``, end the process with
    that code right after the other exit handlers, skipping the interpreter's teardown; a no-op if it stays empty.

    Registered before dbt is imported, it runs after every exit handler dbt and its adapters register (they
    run last-registered first): dbt's log is flushed, DuckDB's connections closed. The teardown it skips
    collects and frees all of dbt's heap, about 1 CPU second per run even on the example project, and is
    where DuckDB's bindings would report objects held by dbt's cycles (``nanobind: leaked ...``).
    """

    def end_now() -> None:
        if not exit_code:  # main raised: the normal exit prints its traceback
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # the reader has gone, or the stream was closed
                stream.flush()
        os._exit(exit_code[0])

    atexit.register(end_now)


if __name__ == "__main__":
    _exit_code: list[int] = []
    skip_teardown_after(_exit_code)
    _exit_code.append(main(sys.argv[1:]))
    sys.exit(_exit_code[0])
