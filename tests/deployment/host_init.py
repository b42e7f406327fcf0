"""PID 1 of one test "host" (run by ``unshare --mount --uts --pid --fork --mount-proc``; standard library only).

Why: a container's init (the Airflow image uses dumb-init) sets the host up, forwards signals to the service
and reaps every orphan; without it, detached dbt runs that end would stay zombies of the service. This sets
the hostname, makes every mount private, mounts a tmpfs over each private dir (so no other host sees what is
written there), bind-mounts a private ``/etc/hosts`` naming the host, then runs the service and exits with its
status; when PID 1 exits the kernel ends every other process of the namespace, as when a machine goes down.

Usage: host_init.py HOSTNAME HOSTS_FILE PRIVATE_DIR[,PRIVATE_DIR...] -- ARGV...
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import types


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _set_up(hostname: str, hosts_file: str, private_dirs: list[str]) -> None:
    _mount("--make-rprivate", "/")  # nothing mounted here propagates to the machine, or back
    socket.sethostname(hostname)
    for path in private_dirs:
        os.makedirs(path, exist_ok=True)
        _mount("-t", "tmpfs", "-o", "mode=0755,size=512m", "tmpfs", path)
    _mount("--bind", hosts_file, "/etc/hosts")


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    hostname, hosts_file, private, command = argv[0], argv[1], argv[2], argv[4:]
    _set_up(hostname, hosts_file, [path for path in private.split(",") if path])
    service = subprocess.Popen(command)

    def forward(signum: int, frame: types.FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            service.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            pid, status = os.wait()  # reaps the service and every orphan re-parented to us
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == service.pid:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
