"""A real Airflow 3 deployment for tests and benchmarks (plain Python, no pytest).

Why: ``dag.test()`` runs tasks inline; only separate services show what a worker slot, the triggerer and the
REST API really do. This module gives the deployment a private AIRFLOW_HOME and dags folder, a PostgreSQL
metadata DB (on a :class:`pg_server.PostgresServer`), runs ``airflow db migrate``, then ``api-server``,
``scheduler`` (LocalExecutor by default; ``executor`` and ``extra_services`` leave room for others),
``dag-processor`` and ``triggerer`` as separate process groups, and talks to it through the REST API.
``stop()`` ends every process group and any process that still carries this deployment's AIRFLOW_HOME.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from pg_server import PostgresServer

SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
# The /monitor/health components that must report "healthy" for each service.
_HEALTH_COMPONENTS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
TERMINAL_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
_ADMIN = "admin"


class DeploymentError(RuntimeError):
    """A service did not start, became unhealthy, or the API answered something unexpected."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], limit: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; raise DeploymentError after ``limit`` s."""
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DeploymentError(f"gave up after {limit:.0f}s waiting for {what}")
        time.sleep(interval)


def _environ_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def processes_with_env(marker: str) -> list[int]:
    """Live pids whose environment holds ``marker`` (``KEY=value``): everything a deployment started."""
    needle = marker.encode() + b"\0"
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != own and needle in _environ_of(int(entry.name)) + b"\0":
            found.append(int(entry.name))
    return found


@dataclass
class Service:
    """One Airflow service: its process (leader of its own process group) and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class TaskLogLine:
    """One structured line of a task's log file: when, what, and the logger that wrote it."""

    at: float
    event: str
    logger: str
    level: str
    raw: dict[str, Any] = field(repr=False)


class AirflowDeployment:
    """api-server, scheduler, dag-processor and triggerer on a private AIRFLOW_HOME and a PostgreSQL metadata DB.

    ``env`` is given to every service (connections as ``AIRFLOW_CONN_*``, extra ``AIRFLOW__*`` settings).
    ``pythonpath`` goes first on the services' ``PYTHONPATH`` (the sources under test).
    """

    def __init__(
        self,
        pg: PostgresServer,
        *,
        env: Mapping[str, str] | None = None,
        pythonpath: Sequence[str | Path] = (),
        executor: str = "LocalExecutor",
        parallelism: int = 4,
        extra_services: Sequence[Sequence[str]] = (),
        base_dir: str | Path | None = None,
        start_timeout: float = 240,
        db_name: str = "airflow_meta",
    ) -> None:
        self.pg = pg
        self.extra_env = dict(env or {})
        self.pythonpath = [str(p) for p in pythonpath]
        self.executor = executor
        self.parallelism = parallelism
        self.extra_services = [list(argv) for argv in extra_services]
        self.start_timeout = start_timeout
        self.db_name = db_name  # the metadata DB and its role on ``pg``
        self.home = Path(tempfile.mkdtemp(prefix="dlh-deploy-airflow-", dir=str(base_dir) if base_dir else None))
        self.dags_folder = self.home / "dags"
        self.logs_folder = self.home / "logs"
        self.port = 0
        self.log_server_ports = (0, 0)  # worker's, triggerer's: free ones, so deployments side by side never clash
        self.services: dict[str, Service] = {}
        self._password = secrets.token_urlsafe(16)
        self._db_password = secrets.token_urlsafe(16)
        self._token: str | None = None
        self._client: httpx.Client | None = None
        self.timings: dict[str, float] = {}  # seconds per start-up step, for the record

    # ------------------------------------------------------------------ set-up
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def home_marker(self) -> str:
        """``AIRFLOW_HOME=<home>``: every process of this deployment carries it in its environment."""
        return f"AIRFLOW_HOME={self.home}"

    def environment(self) -> dict[str, str]:
        """The services' environment: this process's, minus any Airflow setting, plus the deployment's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST", "PG"))}
        db = f"postgresql+psycopg2://{self.db_name}:{self._db_password}@{self.pg.host}:{self.pg.port}/{self.db_name}"
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{_ADMIN}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._db_password + "-jwt",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_folder),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_server_ports[0]),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.log_server_ports[1]),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                # A DAG file's first import (dbt, the provider) takes ~8 s on an idle 2-core machine and past
                # the 30 s default when the machine is loaded: the worker's parse then fails the task.
                "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "180",
                # The one api-server worker stalls past the task supervisor's 5 s default on a loaded machine;
                # after its retries the supervisor SIGKILLs the task (seen: ReadTimeout, exit -9, task failed).
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
                "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "240",
                "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            }
        )
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, *filter(None, [os.environ.get("PYTHONPATH")])])
        env.update(self.extra_env)
        return env

    def start(self) -> Self:
        """Create the metadata DB, migrate it, start every service and wait until all are healthy."""
        try:
            self.dags_folder.mkdir()
            self.logs_folder.mkdir()
            (self.home / "passwords.json").write_text(json.dumps({_ADMIN: self._password}))
            self.port = _free_port()
            self.log_server_ports = (_free_port(), _free_port())
            started = time.monotonic()
            self._create_metadata_db()
            self.airflow("db", "migrate", timeout=self.start_timeout)
            self.timings["db_migrate_s"] = time.monotonic() - started
            started = time.monotonic()
            self._start_services()
            self._wait_healthy()
            self.timings["services_healthy_s"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def _start_services(self) -> None:
        """Every service, each in its own process group (a subclass may place some elsewhere)."""
        self._start_service("api-server", ["api-server", "--port", str(self.port)])
        for name in SERVICES[1:]:
            self._start_service(name, [name])
        for argv in self.extra_services:
            self._start_service(argv[0], list(argv))

    def _create_metadata_db(self) -> None:
        name = self.db_name
        self.pg.psql(
            f"DROP DATABASE IF EXISTS {name};\nDROP ROLE IF EXISTS {name};\n"
            f"CREATE ROLE {name} LOGIN PASSWORD '{self._db_password}';\n"
            f"CREATE DATABASE {name} OWNER {name};\n"
        )

    def airflow(self, *args: str, timeout: float = 120) -> str:
        """Run an ``airflow`` CLI command against this deployment; its output, or DeploymentError."""
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.environment(),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise DeploymentError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout

    def _start_service(self, name: str, argv: list[str]) -> None:
        log_path = self.home / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "airflow", *argv],
                env=self.environment(),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.services[name] = Service(name, process, log_path)

    def watched(self) -> dict[str, Service]:
        """The services that must stay up, by the name /monitor/health knows them (a subclass adds its own)."""
        return dict(self.services)

    def check_alive(self) -> None:
        """Raise DeploymentError naming the first service that exited, with the tail of its log."""
        for service in self.watched().values():
            code = service.process.poll()
            if code is not None:
                raise DeploymentError(f"airflow {service.name} exited ({code}):\n{service.log_tail()}")

    def _wait_healthy(self) -> None:
        def healthy() -> bool:
            self.check_alive()
            try:
                response = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
            except httpx.HTTPError:
                return False
            if response.status_code != 200:
                return False
            health = response.json()
            wanted = [_HEALTH_COMPONENTS[name] for name in self.watched() if name in _HEALTH_COMPONENTS]
            return all(health.get(part, {}).get("status") == "healthy" for part in ["metadatabase", *wanted])

        try:
            wait_until(healthy, self.start_timeout, "every Airflow service to report healthy", interval=0.5)
        except DeploymentError as err:
            tails = "\n".join(f"--- {s.name} ---\n{s.log_tail(15)}" for s in self.watched().values())
            raise DeploymentError(f"{err}\n{tails}") from None

    # ------------------------------------------------------------------ tear-down
    def leftover_processes(self) -> list[int]:
        """Pids outside the services' process groups that carry this deployment's AIRFLOW_HOME (detached runs)."""
        groups = {s.process.pid for s in self.services.values() if s.process.poll() is None}
        found = []
        for pid in processes_with_env(self.home_marker):
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) not in groups:
                    found.append(pid)
        return found

    def stop(self, grace: float = 20) -> None:
        """SIGTERM every service's process group, SIGKILL what remains, then anything with our AIRFLOW_HOME."""
        if self._client is not None:
            self._client.close()
            self._client = None
        for service in self.services.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in self.services.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for service in self.services.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=10)
        for _ in range(3):  # detached dbt runs live in their own sessions: find them by environment
            pids = processes_with_env(self.home_marker)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.services.clear()
        with contextlib.suppress(Exception):
            self.pg.psql(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE);\nDROP ROLE IF EXISTS {self.db_name};\n")
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST API
    @property
    def admin_login(self) -> tuple[str, str]:
        """The admin's user name and password, for a login through the UI."""
        return _ADMIN, self._password

    def token(self) -> str:
        """A JWT for the admin user (``POST /auth/token``, simple auth manager)."""
        if self._token is None:
            response = httpx.post(
                f"{self.base_url}/auth/token", json={"username": _ADMIN, "password": self._password}, timeout=30
            )
            if response.status_code not in (200, 201):
                raise DeploymentError(f"POST /auth/token answered {response.status_code}: {response.text[:300]}")
            self._token = str(response.json()["access_token"])
        return self._token

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=f"{self.base_url}/api/v2", headers={"Authorization": f"Bearer {self.token()}"}, timeout=30
            )
        return self._client

    def api(self, method: str, path: str, *, ok: Iterable[int] = (200,), **kwargs: Any) -> Any:
        """One REST API call (``path`` under /api/v2); its JSON, or DeploymentError on another status.

        A GET that times out is asked again (twice at most): on a loaded 2-core machine the single api-server
        worker can stall past the client's timeout, and a read is safe to repeat.
        """
        attempts = 3 if method.upper() == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self.client.request(method, path, **kwargs)
                break
            except httpx.TimeoutException:
                if attempt == attempts:
                    raise
        if response.status_code not in set(ok):
            raise DeploymentError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    # ------------------------------------------------------------------ DAGs and runs
    def write_dag(self, name: str, source: str) -> Path:
        """Write ``source`` (dedented) as ``<dags folder>/<name>.py``, atomically so no half file is parsed."""
        path = self.dags_folder / f"{name}.py"
        partial = self.dags_folder / f".{name}.py.partial"
        partial.write_text(textwrap.dedent(source), encoding="utf-8")
        partial.replace(path)
        return path

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/importErrors").get("import_errors", []))

    def wait_parsed(self, dag_id: str, limit: float = 120) -> dict[str, Any]:
        """Wait until the dag-processor has serialized ``dag_id``; fail early with its import error."""

        def parsed() -> dict[str, Any] | None:
            self.check_alive()
            response = self.client.get(f"/dags/{dag_id}")
            if response.status_code == 200:
                return dict(response.json())
            errors = self.import_errors()
            if errors:
                raise DeploymentError(f"DAG {dag_id} did not import: {json.dumps(errors)[:3000]}")
            return None

        dag: dict[str, Any] = wait_until(parsed, limit, f"DAG {dag_id} to be parsed", interval=0.5)
        return dag

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Unpause ``dag_id`` and trigger a run through the REST API; the run id."""
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})})
        return str(run["dag_run_id"])

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"))

    def wait_task_state(
        self, dag_id: str, run_id: str, task_id: str, states: Iterable[str], limit: float = 300
    ) -> dict[str, Any]:
        """Wait until the task instance is in one of ``states``; fail early when it ends in another one."""
        wanted = set(states)

        def reached() -> dict[str, Any] | None:
            self.check_alive()
            ti = self.task_instance(dag_id, run_id, task_id)
            if ti.get("state") in wanted:
                return ti
            if ti.get("state") in TERMINAL_TI_STATES:
                try_number = int(ti.get("try_number") or 1)
                raise DeploymentError(
                    f"{dag_id}.{task_id} ended {ti.get('state')!r}, not {sorted(wanted)}; errors: "
                    f"{self.task_errors(dag_id, run_id, task_id, try_number)}; log:\n"
                    f"{self.task_log_text(dag_id, run_id, task_id, try_number)[-4000:]}\n{self.failure_context(ti)}"
                )
            return None

        ti: dict[str, Any] = wait_until(reached, limit, f"{dag_id}.{task_id} to be {sorted(wanted)}", interval=0.3)
        return ti

    def failure_context(self, ti: Mapping[str, Any]) -> str:
        """What else explains a task that ended unexpectedly: the log of the service that ran its supervisor."""
        service = self.services.get("scheduler")  # LocalExecutor: task supervisors are the scheduler's children
        return f"--- scheduler (tail) ---\n{service.log_tail(60)}" if service is not None else ""

    def wait_run_state(self, dag_id: str, run_id: str, states: Iterable[str], limit: float = 300) -> dict[str, Any]:
        wanted = set(states)

        def reached() -> dict[str, Any] | None:
            self.check_alive()
            run = dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))
            return run if run.get("state") in wanted else None

        run: dict[str, Any] = wait_until(reached, limit, f"run {run_id} to be {sorted(wanted)}", interval=0.3)
        return run

    def follow_run(
        self, dag_id: str, run_id: str, limit: float = 300
    ) -> tuple[dict[str, str], dict[str, set[str]], dict[str, Any]]:
        """Poll the run and its task instances until the run and every task have ended: the final task states,
        every state each task was seen in, and the run. (A run fails once its leaves ended; tasks of other
        branches may still be finishing then.)"""
        ended = {"success", "failed", "upstream_failed", "skipped", "removed"}
        seen: dict[str, set[str]] = {}
        final: dict[str, str] = {}
        run: dict[str, Any] = {}
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            listed = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
            for ti in listed:
                seen.setdefault(ti["task_id"], set()).add(str(ti["state"]))
            final = {ti["task_id"]: str(ti["state"]) for ti in listed}
            run = dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))
            if run.get("state") in ("success", "failed") and set(final.values()) <= ended:
                break
            time.sleep(0.5)
        return final, seen, run

    def mark_failed(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """What a user's "mark failed" does: Airflow then kills the task (or the trigger of a deferred one)."""
        return self.api(
            "PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", json={"new_state": "failed"}
        )

    def task_try(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> dict[str, Any]:
        """One try of a task instance as the REST API records it (state, hostname, pid, times)."""
        return dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries/{try_number}"))

    def ran_on(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The hostname Airflow recorded for a task try: the worker that ran its latest part (TI ``hostname``)."""
        return str(self.task_try(dag_id, run_id, task_id, try_number).get("hostname") or "")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
        entry = self.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": "true", "stringify": "false"},
        )  # fmt: skip
        return entry["value"]

    def task_log_items(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[Any]:
        """The task try's log as served by the REST API: one dict per structured line (or plain strings)."""
        body = self.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true"}, headers={"Accept": "application/json"},
        )  # fmt: skip
        content = body.get("content", []) if isinstance(body, dict) else body
        return [content] if isinstance(content, str) else list(content)

    def task_log_text(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task try's log as served by the REST API, one ``event`` per line."""
        items = self.task_log_items(dag_id, run_id, task_id, try_number)
        return "\n".join(str(item.get("event", "")) if isinstance(item, dict) else str(item) for item in items)

    def task_errors(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[str]:
        """``ExceptionType: message`` of every exception the task try's log records (its ``error_detail``)."""
        errors = []
        for item in self.task_log_items(dag_id, run_id, task_id, try_number):
            for detail in item.get("error_detail", []) if isinstance(item, dict) else []:
                errors.append(f"{detail.get('exc_type', '')}: {detail.get('exc_value', '')}")
        return errors

    def task_log_lines(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[TaskLogLine]:
        """The task try's structured log file (JSON lines, as the worker wrote them), with timestamps."""
        from datetime import datetime

        folder = self.logs_folder / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        files = sorted(folder.glob(f"attempt={try_number}*.log"))
        lines = []
        for path in files:
            for text in path.read_text(errors="replace").splitlines():
                try:
                    raw = json.loads(text)
                except ValueError:
                    continue
                stamp = raw.get("timestamp")
                if not isinstance(stamp, str):
                    continue
                at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                event, logger, level = (str(raw.get(key, "")) for key in ("event", "logger", "level"))
                lines.append(TaskLogLine(at, event, logger, level, raw))
        return sorted(lines, key=lambda line: line.at)
