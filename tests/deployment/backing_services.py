"""The servers a CeleryExecutor deployment leans on, throwaway and on 127.0.0.1 (plain Python, no pytest).

:class:`RedisServer`: Debian's ``redis-server`` on a free loopback port, in a dir of its own, no persistence
(the Celery broker). :class:`MotoS3`: moto's S3 server in this process with one bucket (the remote run channel).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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


class MotoS3:
    """moto's S3 on 127.0.0.1 (threaded server in this process) with ``bucket`` created; dummy credentials."""

    ACCESS_KEY = "channel-test-key"
    SECRET_KEY = "channel-test-secret"  # moto accepts any key: nothing real
    REGION = "us-east-1"

    def __init__(self, bucket: str = "dlh-channel") -> None:
        self.bucket = bucket
        self.port = 0
        self._server: Any = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            from moto.server import ThreadedMotoServer  # noqa: F401
        except ImportError as err:
            return False, f"moto[server] is not importable ({err}); the dev extra has it"
        return True, "moto server importable"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
        self.port = _free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.REGION,
            aws_access_key_id=self.ACCESS_KEY, aws_secret_access_key=self.SECRET_KEY,
        )  # fmt: skip

    def connection(self) -> str:
        """An ``AIRFLOW_CONN_*`` value (JSON) for the amazon provider's aws connection to this server."""
        return json.dumps(
            {"conn_type": "aws", "login": self.ACCESS_KEY, "password": self.SECRET_KEY,
             "extra": {"endpoint_url": self.endpoint_url, "region_name": self.REGION}}
        )  # fmt: skip

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix.lstrip('/')}"

    def list_objects(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under ``prefix``."""
        keys: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(str(item["Key"]) for item in page.get("Contents", []))
        return sorted(keys)

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
