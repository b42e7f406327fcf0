"""A CeleryExecutor deployment whose Celery workers and triggerer are separate "hosts" (plain Python, no pytest).

Topology, all on one machine and its loopback network::

    machine (root namespaces)                 host worker-a      host worker-b      host triggerer-host
    ---------------------------------         ----------------   ----------------   -------------------
    pytest; PostgreSQL (metadata DB,          airflow celery     airflow celery     airflow triggerer
      Celery results, dbt's database);          worker -c 8        worker -c 8
      redis-server (the broker);                -> task supervisor -> dbt
      moto S3 (in the pytest process);
      api-server, scheduler, dag-processor     each host: own PID, mount and UTS namespace (hosts.py)

Every host mounts a tmpfs over the same path, :attr:`CeleryDeployment.run_dir_root`, so a run dir a worker makes
there is invisible to the other worker and to the triggerer; no host sees another's processes. What is shared
is what docker-compose shares: the network (execution API, broker, databases, S3), the dags folder, the logs
folder and the dbt projects. Workers reach the api-server's execution API over loopback; serve-logs is off
(the logs folder is shared, as the official docker-compose mounts it into every container).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from airflow_deployment import AirflowDeployment, DeploymentError, Service, processes_with_env, wait_until
from backing_services import MotoS3, RedisServer
from hosts import Host, HostError

from pg_server import PostgresServer

WORKERS = ("worker-a", "worker-b")
TRIGGERER_HOST = "triggerer-host"
CHANNEL_CONN_ID = "aws_channel"
# What the Celery worker logs when it hands a workload to a supervisor (airflow.providers.celery).
_WORKLOAD_LINE = re.compile(r"dag_id='(?P<dag_id>[^']*)'.*?run_id='(?P<run_id>[^']*)'.*?try_number=(?P<try>\d+)")


class CeleryDeployment(AirflowDeployment):
    """api-server, scheduler (CeleryExecutor), dag-processor here; two Celery workers and the triggerer as hosts.

    ``redis`` is the broker; ``s3`` (optional) gets the ``aws_channel`` connection in every service's environment.
    ``heartbeat_timeout`` is the scheduler's ``task_instance_heartbeat_timeout``: how soon a task whose worker
    vanished is failed (Airflow's default, 300 s, would outlast the tests).
    """

    def __init__(
        self,
        pg: PostgresServer,
        redis: RedisServer,
        *,
        s3: MotoS3 | None = None,
        env: Mapping[str, str] | None = None,
        pythonpath: Sequence[str | Path] = (),
        workers: Sequence[str] = WORKERS,
        concurrency: int = 8,
        heartbeat_timeout: int = 30,
        base_dir: str | Path | None = None,
        start_timeout: float = 240,
    ) -> None:
        super().__init__(
            pg, env=env, pythonpath=pythonpath, executor="CeleryExecutor", parallelism=len(workers) * concurrency,
            base_dir=base_dir, start_timeout=start_timeout, db_name="airflow_celery",
        )  # fmt: skip
        self.redis = redis
        self.s3 = s3
        self.worker_names = list(workers)
        self.concurrency = concurrency
        self.heartbeat_timeout = heartbeat_timeout
        self.hosts_dir = self.home / "hosts"
        self.run_dir_root = self.hosts_dir / "runs"  # a tmpfs of its own on every host; empty on the machine
        self.hosts: dict[str, Host] = {}

    # ------------------------------------------------------------------ set-up
    def environment(self) -> dict[str, str]:
        env = super().environment()
        results = (
            f"db+postgresql+psycopg2://{self.db_name}:{self._db_password}@{self.pg.host}:{self.pg.port}/{self.db_name}"
        )
        env.update(
            {
                "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": results,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            }
        )
        if self.s3 is not None:
            env[f"AIRFLOW_CONN_{CHANNEL_CONN_ID.upper()}"] = self.s3.connection()
        env.update(self.extra_env)
        return env

    def _start_services(self) -> None:
        self.hosts_dir.mkdir()
        self.run_dir_root.mkdir()
        self._start_service("api-server", ["api-server", "--port", str(self.port)])
        for name in ("scheduler", "dag-processor"):
            self._start_service(name, [name])
        self._start_host(TRIGGERER_HOST, ["triggerer", "--skip-serve-logs"])
        for name in self.worker_names:
            self._start_host(name, ["celery", "worker", "--concurrency", str(self.concurrency), "--skip-serve-logs",
                                    "--without-gossip", "--without-mingle"])  # fmt: skip

    def _start_host(self, name: str, airflow_args: list[str]) -> Host:
        argv = [sys.executable, "-m", "airflow", *airflow_args, "--pid", str(self.hosts_dir / f"{name}.pid")]
        host = Host(
            name, argv, env=self.environment(), cwd=self.home, log_path=self.home / f"{name}.log",
            private_dirs=[self.run_dir_root], state_dir=self.hosts_dir,
        )  # fmt: skip
        self.hosts[name] = host
        host.start()
        return host

    def watched(self) -> dict[str, Service]:
        """Root services, the triggerer (as ``triggerer``, for /monitor/health) and workers; a host killed on
        purpose (``host(name).kill()``) is not watched until it is started again."""
        watched = dict(self.services)
        for name, host in self.hosts.items():
            if host.service is not None and not host.killed:
                watched["triggerer" if name == TRIGGERER_HOST else name] = host.service
        return watched

    def _wait_healthy(self) -> None:
        super()._wait_healthy()
        for name in self.worker_names:
            self.wait_worker_ready(name)

    def wait_worker_ready(self, name: str, limit: float = 120) -> None:
        """Until worker ``name`` has connected to the broker and says ``celery@<name> ready.``"""
        host = self.hosts[name]

        def ready() -> bool:
            self.check_alive()
            return f"celery@{name} ready." in host.log_text(since_start=True)

        wait_until(ready, limit, f"Celery worker {name} to be ready", interval=0.3)

    # ------------------------------------------------------------------ hosts
    def host(self, name: str) -> Host:
        """``worker-a``, ``worker-b`` or ``triggerer-host``."""
        try:
            return self.hosts[name]
        except KeyError:
            raise HostError(f"no host {name!r}; hosts: {sorted(self.hosts)}") from None

    def restart_host(self, name: str) -> Host:
        """Start host ``name`` again (after :meth:`Host.kill`, or kill it first), and wait until it serves."""
        host = self.host(name)
        if host.alive():
            host.kill()
        since = datetime.now().astimezone()
        host.start()
        if name == TRIGGERER_HOST:
            self.wait_triggerer_heartbeat(since)
        else:
            self.wait_worker_ready(name)
        return host

    def restart_triggerer(self, *, graceful: bool = False) -> Host:
        """The triggerer host goes down (SIGKILL of its PID 1, or SIGTERM when ``graceful``) and comes back."""
        host = self.host(TRIGGERER_HOST)
        if graceful:
            host.stop()
        else:
            host.kill()
        return self.restart_host(TRIGGERER_HOST)

    def wait_triggerer_heartbeat(self, since: datetime, limit: float = 120) -> None:
        """Until /monitor/health shows a triggerer heartbeat newer than ``since`` (the new triggerer is up)."""

        def beat() -> bool:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError, ValueError):
                health = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()["triggerer"]
                stamp = health.get("latest_triggerer_heartbeat")
                return bool(stamp) and datetime.fromisoformat(stamp) > since and health.get("status") == "healthy"
            return False

        wait_until(beat, limit, "a heartbeat of the restarted triggerer", interval=0.5)

    def consume(self, worker: str, queue: str, *, stop: bool = False, limit: float = 60) -> None:
        """Worker ``worker`` starts (``stop``: stops) taking workloads from the Celery queue ``queue`` (a task's
        ``queue=``), through Celery's remote control on the broker; returns once the worker lists (or no longer
        lists) the queue among those it consumes. Workers start on the default queue only; a test that adds
        one removes it again."""
        from celery import Celery

        app = Celery(broker=self.redis.url)
        node = f"celery@{worker}"
        replies: list[Any] = []

        def done() -> bool:
            act = app.control.cancel_consumer if stop else app.control.add_consumer
            replies.append(act(queue, destination=[node], reply=True, timeout=10))
            active = app.control.inspect(destination=[node], timeout=10).active_queues() or {}
            return (queue in {q.get("name") for q in active.get(node, [])}) != stop

        try:
            wait_until(done, limit, f"{node} to {'stop' if stop else 'start'} consuming {queue!r}", 1)
        except DeploymentError as err:
            raise DeploymentError(f"{err}; its replies: {replies[-3:]}") from None
        finally:
            app.close()

    def hosts_that_ran(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[str]:
        """Every worker host that was handed a workload of this task try (``execute``, then each resume), by the
        order in which they got them: what each Celery worker's own log says."""
        found: list[tuple[str, str]] = []
        for name in self.worker_names:
            for line in self.host(name).log_text().splitlines():
                if "Executing workload in Celery" not in line or f"task_id='{task_id}'" not in line:
                    continue
                match = _WORKLOAD_LINE.search(line)
                if match and (match["dag_id"], match["run_id"], int(match["try"])) == (dag_id, run_id, try_number):
                    found.append((line[:40], name))
        return [name for _, name in sorted(found)]

    def failure_context(self, ti: Mapping[str, Any]) -> str:
        """The tail of the log of the worker host that ran the task (its supervisor logs there), and the scheduler's."""
        host = self.hosts.get(str(ti.get("hostname") or ""))
        worker = f"--- {host.name} (tail) ---\n{host.log_text()[-6000:]}\n" if host is not None else ""
        return worker + super().failure_context(ti)

    # ------------------------------------------------------------------ tear-down
    def stop(self, grace: float = 20, host_grace: float = 5) -> None:
        """Hosts first (SIGTERM, then after ``host_grace`` SIGKILL of each PID 1, which empties its namespace;
        no run is meant to outlive the tests), then the services here, then a check that nothing is left."""
        started = time.monotonic()
        hosts = [host for host in self.hosts.values() if host.alive()]
        for host in hosts:
            host.terminate()
        deadline = time.monotonic() + host_grace
        for host in hosts:
            host.wait(max(0.1, deadline - time.monotonic()))
        for host in self.hosts.values():
            with contextlib.suppress(HostError):
                host.kill()
        self.timings["stop_hosts_s"] = time.monotonic() - started
        super().stop(grace=grace)
        self.timings["stop_s"] = time.monotonic() - started
        left = self.leftovers()
        if left:
            raise DeploymentError(f"the Celery deployment left behind: {left}")

    def leftovers(self) -> list[str]:
        """Processes, mounts and files of this deployment that outlived it (none after :meth:`stop`)."""
        marker = str(self.home)
        left = [f"process {pid}" for pid in processes_with_env(self.home_marker)]
        for name, host in self.hosts.items():
            with contextlib.suppress(HostError):
                left.extend(f"{name} process {p.pid} {p.cmdline[:80]}" for p in host.processes())
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        left.extend(f"mount {line.split()[4]}" for line in mounts if marker in line)
        if self.home.exists():
            left.append(f"dir {self.home}")
        return left

    def describe(self) -> dict[str, Any]:
        """Where every process runs: each host's processes, for a report or a failure message."""
        described: dict[str, Any] = {"machine": {name: s.process.pid for name, s in self.services.items()}}
        for name, host in self.hosts.items():
            described[name] = (
                [f"{p.ns_pid}:{p.pid} {p.cmdline[:100]}" for p in host.processes()] if host.alive() else "down"
            )
        return described
