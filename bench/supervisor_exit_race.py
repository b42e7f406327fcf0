"""Airflow's task supervisor can miss a task process's exit for `[workers] min_heartbeat_interval` (W1).

Usage:
  python bench/supervisor_exit_race.py [--children 200] [--threads 0] [--ballast-mb 0]

Reproduces, without Airflow's services or this library, the order of events the supervisor's monitor loop
(``airflow.sdk.execution_time.supervisor``: ``_monitor_subprocess`` / ``_service_subprocess`` /
``_check_subprocess_exit``) does not expect: a forked child writes a line to a socket that is its stdout and
calls ``os._exit(0)``; the parent reads to EOF with a selector, unregisters the socket, then asks
``psutil.Process.wait(timeout=0)`` whether the child has exited, as the supervisor does. The kernel closes
the exiting child's descriptors (EOF) before the child becomes waitable, so that check can fail. The
supervisor then loops on with nothing left in its selector, and ``select()`` sleeps its whole timeout,
``min(heartbeat timeout, min_heartbeat_interval)`` = 5 s by default, before it looks again.

Prints how many children were not yet waitable when their EOF had been read, and the last stdout line is
the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import threading
import time

import psutil


def one_child(threads: int, ballast_mb: int) -> bool:
    """True when the child was not yet waitable after the parent had read its socket to EOF."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: a task process that finished its work
        parent.close()
        os.dup2(child.fileno(), 1)
        child.close()
        ballast = bytearray(ballast_mb * 1024 * 1024)  # noqa: F841 - a bigger address space to tear down
        for _ in range(threads):
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        os.write(1, b"done\n")
        os._exit(0)
    child.close()
    process = psutil.Process(pid)
    selector = selectors.DefaultSelector()
    selector.register(parent, selectors.EVENT_READ)
    while True:
        selector.select(5)
        if not parent.recv(4096):
            break
    selector.unregister(parent)
    selector.close()
    parent.close()
    try:
        process.wait(timeout=0)  # what the supervisor's _check_subprocess_exit does after the last EOF
    except psutil.TimeoutExpired:
        process.wait()
        return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="idle daemon threads in each child")
    parser.add_argument("--ballast-mb", type=int, default=0, help="memory each child allocates before exiting")
    args = parser.parse_args()
    late = sum(one_child(args.threads, args.ballast_mb) for _ in range(args.children))
    print(
        f"{late} of {args.children} children were not yet waitable when their socket's EOF had been read "
        f"(threads={args.threads}, ballast={args.ballast_mb} MB, load average {os.getloadavg()[0]:.1f})"
    )
    print(json.dumps({"children": args.children, "late": late, "threads": args.threads, "mb": args.ballast_mb}))


if __name__ == "__main__":
    main()
