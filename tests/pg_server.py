"""A real, throwaway PostgreSQL server for tests and scripts (plain Python, no pytest).

Why: the dbt/Airflow code paths we care about (auth failures, outages, permission errors) only
behave realistically against a real server. This module runs ``initdb`` + ``pg_ctl`` in a temp
dir, listens on 127.0.0.1 only, and tears everything down afterwards. When running as root it
runs the server binaries as the ``postgres`` OS user through ``runuser`` (initdb refuses root).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
_SPEED_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin directories (numeric, highest last)."""
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(p) for p in parts) if parts else (-1,)


def _has_binaries(bindir: Path) -> bool:
    """Whether ``bindir`` holds every server binary we need."""
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED_BINARIES)


def find_bindir() -> Path | None:
    """Locate the PostgreSQL server binaries: highest /usr/lib/postgresql/*/bin, then pg_config, PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if _has_binaries(bindir):
            return bindir
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and _has_binaries(Path(out)):
                return Path(out)
    initdb = shutil.which("initdb")
    if initdb and _has_binaries(Path(initdb).parent):
        return Path(initdb).parent
    return None


def _free_port() -> int:
    """Ask the kernel for a currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """Environment without PG* variables so a developer's PGHOST/PGPORT cannot redirect us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


class PostgresServerError(RuntimeError):
    """Raised when the throwaway server cannot be created, started or queried."""


class PostgresServer:
    """A disposable PostgreSQL cluster on 127.0.0.1 with a dbt owner role and a read-only role."""

    DEFAULT_PASSWORD = "Dlh-Pw-7f3a9c"
    DEFAULT_READONLY_PASSWORD = "Dlh-RoPw-2b8e41"
    SUPERUSER = "postgres"
    OS_USER = "postgres"

    def __init__(
        self,
        *,
        password: str = DEFAULT_PASSWORD,
        readonly_password: str = DEFAULT_READONLY_PASSWORD,
        database: str = "dlh_test",
        user: str = "dbt_user",
        readonly_user: str = "dbt_readonly",
        bindir: str | Path | None = None,
        base_dir: str | Path | None = None,
        start_timeout: int = 30,
    ) -> None:
        self.host = "127.0.0.1"
        self.port: int = 0
        self.database = database
        self.user = user
        self.password = password
        self.readonly_user = readonly_user
        self.readonly_password = readonly_password
        self.start_timeout = start_timeout
        self._bindir = Path(bindir) if bindir else None
        self._base_dir = str(base_dir) if base_dir else None
        self.root_dir: Path | None = None
        self._started_once = False

    # ------------------------------------------------------------------ discovery
    @staticmethod
    def _is_root() -> bool:
        """Whether we must drop to the postgres OS user (initdb/postgres refuse to run as root)."""
        return os.geteuid() == 0

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether a server can be started here, and why not if it cannot."""
        bindir = find_bindir()
        if bindir is None:
            return False, (
                "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) not found in "
                "/usr/lib/postgresql/*/bin, `pg_config --bindir` or PATH"
            )
        if cls._is_root():
            try:
                pwd.getpwnam(cls.OS_USER)
            except KeyError:
                return False, f"running as root but there is no {cls.OS_USER!r} OS user to run initdb as"
            if shutil.which("runuser") is None:
                return False, "running as root but `runuser` is not available"
        return True, f"PostgreSQL binaries found in {bindir}"

    # ------------------------------------------------------------------ paths
    @property
    def bindir(self) -> Path:
        """Directory holding initdb/pg_ctl/psql."""
        if self._bindir is None:
            found = find_bindir()
            if found is None:
                raise PostgresServerError(self.available()[1])
            self._bindir = found
        return self._bindir

    def _root(self) -> Path:
        if self.root_dir is None:
            raise PostgresServerError("server was never started")
        return self.root_dir

    @property
    def data_dir(self) -> Path:
        """PGDATA of the cluster."""
        return self._root() / "data"

    @property
    def socket_dir(self) -> Path:
        """Directory holding the server's unix socket (used for superuser access)."""
        return self._root()

    @property
    def log_file(self) -> Path:
        """Server log written by pg_ctl."""
        return self._root() / "postgres.log"

    # ------------------------------------------------------------------ process helpers
    def _as_server_user(self, argv: list[str]) -> list[str]:
        """Prefix ``argv`` with runuser when we are root."""
        if self._is_root():
            return ["runuser", "-u", self.OS_USER, "--", *argv]
        return argv

    def _run(
        self, argv: list[str], *, timeout: float = 60, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command with a clean env in the temp dir (readable by the server user)."""
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            env=_clean_env(),
            cwd=str(self._root()),
            check=False,
        )

    def _run_checked(self, argv: list[str], what: str, *, timeout: float = 60) -> str:
        proc = self._run(argv, timeout=timeout)
        if proc.returncode != 0:
            raise PostgresServerError(
                f"{what} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
                f"{self._log_tail()}"
            )
        return proc.stdout

    def _log_tail(self, lines: int = 20) -> str:
        """Last lines of the server log, to make start failures debuggable."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- {self.log_file} (tail) ---\n{tail}" if tail else ""

    def _server_options(self) -> str:
        """Options for `pg_ctl -o`: TCP on 127.0.0.1 only, socket in our dir, durability off."""
        opts = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={self.port}",
            f"-c unix_socket_directories={self.socket_dir}",
            *(f"-c {opt}" for opt in _SPEED_OPTIONS),
        ]
        return " ".join(opts)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Create the cluster, start it on a free port and create the test database and roles."""
        if self.root_dir is not None:
            raise PostgresServerError("start() was already called; use start_again() to restart")
        ok, reason = self.available()
        if not ok:
            raise PostgresServerError(reason)
        self.root_dir = Path(tempfile.mkdtemp(prefix="dlh-pg-", dir=self._base_dir))
        atexit.register(self.cleanup)
        try:
            if self._is_root():
                entry = pwd.getpwnam(self.OS_USER)
                os.chown(self.root_dir, entry.pw_uid, entry.pw_gid)
            self._initdb()
            self._start_on_free_port()
            self._create_objects()
        except BaseException:
            self.cleanup()
            raise
        self._started_once = True
        return self

    def _initdb(self) -> None:
        argv = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        self._run_checked(self._as_server_user(argv), "initdb", timeout=120)

    def _start_on_free_port(self, attempts: int = 3) -> None:
        """Start on a free port; retry with another port if one was grabbed in between."""
        last_error: PostgresServerError | None = None
        for _ in range(attempts):
            self.port = _free_port()
            try:
                self._pg_ctl_start()
                return
            except PostgresServerError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def _pg_ctl_start(self) -> None:
        argv = [
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(self.start_timeout),
            "-o",
            self._server_options(),
            "start",
        ]
        self._run_checked(self._as_server_user(argv), "pg_ctl start", timeout=self.start_timeout + 30)

    def _create_objects(self) -> None:
        """Create the owner role + database and a read-only role that cannot create anything."""
        self.psql(
            f"CREATE ROLE {self.user} LOGIN PASSWORD {_literal(self.password)};\n"
            f"CREATE ROLE {self.readonly_user} LOGIN PASSWORD {_literal(self.readonly_password)};\n"
            f"CREATE DATABASE {self.database} OWNER {self.user};\n"
            f"REVOKE CREATE ON DATABASE {self.database} FROM PUBLIC;\n"
            f"GRANT CONNECT ON DATABASE {self.database} TO {self.readonly_user};\n"
        )
        # No grants on public for the read-only role: it keeps PUBLIC's USAGE, never CREATE.
        self.psql("REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n", dbname=self.database)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``smart``, ``fast`` or ``immediate``); no-op when it is not running."""
        if self.root_dir is None or not self.data_dir.exists() or not self.is_running():
            return
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]
        self._run_checked(self._as_server_user(argv), "pg_ctl stop", timeout=60)

    def start_again(self) -> None:
        """Restart the same data dir on the same port (to simulate an outage ending)."""
        if not self._started_once:
            raise PostgresServerError("start_again() needs a server that was started before")
        if self.is_running():
            return
        self._pg_ctl_start()

    def is_running(self) -> bool:
        """Whether the postmaster for our data dir is alive (``pg_ctl status``)."""
        if self.root_dir is None or not self.data_dir.exists():
            return False
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "status"]
        return self._run(self._as_server_user(argv), timeout=30).returncode == 0

    def cleanup(self) -> None:
        """Stop the server (immediately if a fast stop fails) and delete the temp dir."""
        atexit.unregister(self.cleanup)
        if self.root_dir is None:
            return
        try:
            self.stop("fast")
        except (PostgresServerError, subprocess.SubprocessError, OSError):
            with contextlib.suppress(PostgresServerError, subprocess.SubprocessError, OSError):
                self.stop("immediate")
        shutil.rmtree(self.root_dir, ignore_errors=True)
        self.root_dir = None
        self._started_once = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ access
    def dsn(self, user: str | None = None, password: str | None = None, dbname: str | None = None) -> str:
        """libpq key/value DSN for a TCP connection (defaults: owner role on the test database)."""
        user = user or self.user
        if password is None:
            password = self.readonly_password if user == self.readonly_user else self.password
        parts = {
            "host": self.host,
            "port": str(self.port),
            "dbname": dbname or self.database,
            "user": user,
            "password": password,
        }
        return " ".join(f"{key}={_dsn_value(value)}" for key, value in parts.items())

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as superuser through the unix socket; return unaligned, tuples-only output."""
        argv = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.SUPERUSER,
            "-d",
            dbname,
            "-f",
            "-",
        ]
        proc = self._run(argv, timeout=60, input_text=sql)
        if proc.returncode != 0:
            raise PostgresServerError(f"psql failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip()

    def __repr__(self) -> str:
        state = "running" if self.root_dir is not None and self.is_running() else "stopped"
        return f"PostgresServer({self.host}:{self.port}, root={self.root_dir}, {state})"


def _literal(value: str) -> str:
    """SQL string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _dsn_value(value: str) -> str:
    """Quote a libpq DSN value when it contains spaces, quotes or backslashes."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


if __name__ == "__main__":
    started = time.monotonic()
    with PostgresServer() as server:
        print(f"started {server!r} in {time.monotonic() - started:.2f}s")
        print(server.psql("SELECT version();"))
        print(server.dsn())


@contextlib.contextmanager
def started_server(unavailable: Callable[[str], NoReturn]) -> Iterator[PostgresServer]:
    """A started throwaway server, removed afterwards; ``unavailable`` (skip, or fail under CI) says why not."""
    ok, reason = PostgresServer.available()
    if not ok:
        unavailable(reason)
    server = PostgresServer()
    try:
        server.start()
    except (PostgresServerError, OSError) as exc:
        unavailable(f"could not start: {exc}")
    try:
        yield server
    finally:
        server.cleanup()
