"""Separate "hosts" on one machine for the deployment tests (plain Python, no pytest).

Why: a deferred run must work when the worker and the triggerer cannot see each other's files or processes,
as in separate containers. Each :class:`Host` runs one service under ``unshare --mount --uts --pid --fork
--mount-proc``: its own hostname, its own PID namespace (no host sees another's processes) and a tmpfs over each
private dir (the same path on every host, different contents), with the network (loopback) shared. PID 1 of a
host is ``host_init.py``. From the test process (the machine's root namespaces) every host's processes are
visible in /proc; a host's files are visible through ``/proc/<its pid 1>/root``, i.e. inside its mount namespace.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from airflow_deployment import Service

HOST_INIT = Path(__file__).resolve().parent / "host_init.py"
_UNSHARE = ("unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child")


class HostError(RuntimeError):
    """A host did not come up, or was asked about something that is not its own."""


@functools.cache
def namespaces_available() -> tuple[bool, str]:
    """Whether hosts can be made here (root, unshare, nsenter, mount), and why not when they cannot."""
    if os.geteuid() != 0:
        return False, "only root can unshare a mount namespace (the tier runs as root in CI)"
    missing = [tool for tool in ("unshare", "nsenter", "mount") if shutil.which(tool) is None]
    if missing:
        return False, f"{', '.join(missing)} not found (Debian: util-linux, mount)"
    probe = subprocess.run([*_UNSHARE, "true"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return False, f"`{' '.join(_UNSHARE)} true` failed: {probe.stderr.strip()[:300]}"
    return True, "unshare works"


@dataclass(frozen=True)
class HostProcess:
    """One process of a host: ``pid`` as the machine sees it (what os.kill takes), ``ns_pid`` as the host does."""

    pid: int
    ns_pid: int
    ppid: int
    state: str
    cmdline: str


def _status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


class Host:
    """One service on a host of its own; ``service`` is what AirflowDeployment watches and stops."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        private_dirs: Sequence[Path],
        state_dir: Path,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.private_dirs = [Path(p) for p in private_dirs]
        self.state_dir = state_dir
        self.service: Service | None = None
        self.killed = False  # went down through kill() or stop(): not a crash
        self._log_start = 0  # where this start's output begins in the log (it is appended to)
        self._init_pid: int | None = None
        self._namespace: str | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self, timeout: float = 30) -> Host:
        """Start the host and wait until its PID 1 has mounted the private dirs."""
        hosts_file = self.state_dir / f"{self.name}.hosts"
        hosts_file.write_text(f"{Path('/etc/hosts').read_text()}\n127.0.1.1\t{self.name}\n")
        private = ",".join(str(path) for path in self.private_dirs)
        command = [*_UNSHARE, sys.executable, str(HOST_INIT), self.name, str(hosts_file), private, "--", *self.argv]
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            process = subprocess.Popen(
                command, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.service = Service(self.name, process, self.log_path)
        self.killed = False
        self._init_pid = None
        self._namespace = None
        deadline = time.monotonic() + timeout
        while not self._ready():
            if process.poll() is not None:
                raise HostError(f"host {self.name} exited ({process.returncode}):\n{self.service.log_tail()}")
            if time.monotonic() > deadline:
                raise HostError(f"host {self.name} did not come up within {timeout:.0f}s")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        init = self._find_init()
        if init is None:
            return False
        try:
            mounts = Path(f"/proc/{init}/mountinfo").read_text()
            namespace = _pid_namespace(init)
        except OSError:
            return False
        if namespace == _pid_namespace(os.getpid()) or not all(f" {p} " in mounts for p in self.private_dirs):
            return False
        self._init_pid, self._namespace = init, namespace
        return True

    def _find_init(self) -> int | None:
        """The forked child of ``unshare``: PID 1 of the host's namespace."""
        assert self.service is not None
        parent = self.service.process.pid
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                        return int(entry.name)
        return None

    @property
    def init_pid(self) -> int:
        """PID 1 of the host, as the machine numbers it."""
        if self._init_pid is None:
            raise HostError(f"host {self.name} was never started")
        return self._init_pid

    @property
    def pid_namespace(self) -> str:
        """``pid:[inode]`` of the host's PID namespace (``readlink /proc/<pid>/ns/pid``)."""
        if self._namespace is None:
            raise HostError(f"host {self.name} was never started")
        return self._namespace

    def alive(self) -> bool:
        return self.service is not None and self.service.process.poll() is None

    def kill(self, timeout: float = 30) -> None:
        """The host goes down at once: SIGKILL to its PID 1, after which the kernel ends all its processes."""
        if self.service is None:
            return
        self.killed = True
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.service.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self._namespace is not None and self.processes():
            if time.monotonic() > deadline:
                raise HostError(f"host {self.name} still has processes after SIGKILL of its PID 1: {self.processes()}")
            time.sleep(0.05)

    def terminate(self) -> None:
        """SIGTERM to the host's PID 1, which forwards it to the service: a graceful shutdown begins."""
        self.killed = True
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGTERM)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the host to go down; whether it did."""
        if self.service is None:
            return True
        try:
            self.service.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the service (PID 1 forwards it), ``grace`` seconds, then :meth:`kill`."""
        self.terminate()
        self.wait(grace)
        self.kill()

    def log_text(self, *, since_start: bool = False) -> str:
        """What the host's service wrote to stdout and stderr: every start's, or the latest start's only."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start if since_start else 0)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------------ what the host has
    def processes(self) -> list[HostProcess]:
        """Every live process in the host's PID namespace (zombies included), seen from the machine's /proc."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            with contextlib.suppress(OSError, KeyError, ValueError):
                if _pid_namespace(pid) != self.pid_namespace:
                    continue
                fields = _status_fields(pid)
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                ns_pid = int(fields["NSpid"].split()[-1])
                found.append(HostProcess(pid, ns_pid, int(fields["PPid"]), fields["State"].split()[0], cmdline))
        return sorted(found, key=lambda process: process.ns_pid)

    def find_processes(self, text: str) -> list[HostProcess]:
        """The host's processes whose command line contains ``text``."""
        return [process for process in self.processes() if text in process.cmdline]

    def kill_process(self, pid: int, signum: int = signal.SIGKILL) -> None:
        """Signal one process of this host (``pid`` as the machine numbers it); refuse any other process."""
        if pid not in {process.pid for process in self.processes()}:
            raise HostError(f"pid {pid} is not a process of host {self.name}")
        os.kill(pid, signum)

    def path(self, path: str | Path) -> Path:
        """``path`` as this host sees it (through its PID 1's root, so inside its mount namespace)."""
        return Path(f"/proc/{self.init_pid}/root") / Path(path).relative_to("/")

    def listdir(self, path: str | Path) -> list[str]:
        """Names in ``path`` on this host, as ``nsenter -t <pid 1> -m ls -A`` gives them ([] when it is missing)."""
        if not self.alive():
            raise HostError(f"host {self.name} is down: its files went with it")
        proc = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-m", "ls", "-A", str(path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            if not self.path(path).exists():
                return []
            raise HostError(f"nsenter ls {path} on {self.name} failed: {proc.stderr.strip()}")
        return sorted(proc.stdout.split())

    def __repr__(self) -> str:
        state = f"pid 1 = {self._init_pid}" if self.alive() else "down"
        return f"Host({self.name}, {state})"
