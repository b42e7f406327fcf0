"""The servers a CeleryExecutor deployment leans on, throwaway and on 127.0.0.1 (plain Python, no pytest).

:class:`RedisServer`: Debian's ``redis-server`` on a free loopback port, in a dir of its own, no persistence
(the Celery broker). :class:`MotoS3`: moto's S3 server in this process with one bucket (the remote run channel).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from s3_server import MotoS3 as MotoS3  # one moto helper for integration and deployment tests

REDIS_SERVER = "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerError(RuntimeError):
    """A backing server did not start or answer."""


class RedisServer:
    """A private redis-server: loopback only, no RDB snapshots, no AOF, its files in a temp dir."""

    def __init__(self, *, binary: str | None = None, base_dir: str | Path | None = None) -> None:
        self.binary = binary or shutil.which("redis-server") or REDIS_SERVER
        self.base_dir = str(base_dir) if base_dir else None
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        found = shutil.which("redis-server") or (REDIS_SERVER if Path(REDIS_SERVER).exists() else None)
        if found is None:
            return False, "redis-server not found (Debian: redis-server; `make test` installs it as root)"
        try:
            import redis  # noqa: F401
        except ImportError:
            return False, "the redis Python client is not installed (the dev extra has it)"
        return True, found

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> Self:
        self.dir = Path(tempfile.mkdtemp(prefix="dlh-redis-", dir=self.base_dir))
        self.port = _free_port()
        argv = [
            self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:] if self.dir.exists() else ""
                self.stop()
                raise ServerError(f"redis-server did not answer PING on port {self.port}:\n{log}")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        import redis

        with contextlib.suppress(redis.RedisError, OSError):
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2).ping())
        return False

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
