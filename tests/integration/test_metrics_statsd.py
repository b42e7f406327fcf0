"""StatsD metrics of real dbt runs, received as UDP packets on 127.0.0.1 from Airflow's own StatsD client."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from operability import run_dag_in_subprocess, write_dag

pytestmark = pytest.mark.integration

PREFIX = "airflow"
PACKET = re.compile(r"^(?P<name>[^:]+):(?P<value>[-0-9.]+)\|(?P<type>c|ms|g)(?:\|@[0-9.]+)?$")


@pytest.fixture
def statsd_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def _drain(sock: socket.socket) -> list[tuple[str, float, str]]:
    """Every dbt metric the run sent: (name without prefix, value, StatsD type)."""
    sock.setblocking(False)
    found = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return found
        for line in data.decode().splitlines():
            match = PACKET.match(line)
            if match and match["name"].startswith(f"{PREFIX}.dbt."):
                found.append((match["name"][len(PREFIX) + 1 :], float(match["value"]), match["type"]))


def test_statsd_packets_of_a_successful_and_a_failed_run(
    example_project: Path, airflow_db: Path, tmp_path: Path, statsd_socket: socket.socket
) -> None:
    broken = "select 1 / 'x' as nope from {{ ref('orders') }}\n"
    (example_project / "models" / "marts" / "broken.sql").write_text(broken)
    port = statsd_socket.getsockname()[1]
    env = {
        "AIRFLOW_CONN_DBT_DUCKDB": json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "shop.duckdb")}),
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(port),
        "AIRFLOW__METRICS__STATSD_PREFIX": PREFIX,
    }
    conn = {"conn_id": "dbt_duckdb", "invocation_mode": "in-process"}
    dag_file = write_dag(tmp_path, "dbt_metrics", example_project, [("seed", "seed", conn), ("build", "build", conn)])
    run, output = run_dag_in_subprocess(dag_file, airflow_db / "dags", "dbt_metrics", env)
    assert run.task_states == {"seed": "success", "build": "failed"}, output

    packets = _drain(statsd_socket)
    by_name: dict[str, list[float]] = {}
    for name, value, _kind in packets:
        by_name.setdefault(name, []).append(value)
    kinds = {name: kind for name, _value, kind in packets}

    # Run duration: one tagged-name timer per task plus the per-task copy plain StatsD can tell apart.
    assert len(by_name["dbt.run.duration"]) == 2 and kinds["dbt.run.duration"] == "ms"
    assert by_name["dbt.run.duration.dbt_metrics.seed"][0] > 0
    assert by_name["dbt.run.duration.dbt_metrics.build"][0] > 0
    # Outcome, and failures by exception type.
    assert by_name["dbt.run.success.dbt_metrics.seed"] == [1]
    assert by_name["dbt.run.failure.dbt_metrics.build"] == [1]
    assert by_name["dbt.run.failure.DbtRuntimeException"] == [1]
    assert "dbt.run.failure.dbt_metrics.seed" not in by_name
    assert by_name["dbt.run.retries.dbt_metrics.seed"] == [0]
    # Node counts per status.
    assert by_name["dbt.nodes.success.dbt_metrics.seed"] == [3]
    assert by_name["dbt.nodes.error.dbt_metrics.build"] == [1]
    assert kinds["dbt.nodes.success"] == "c"
    # Per-node execution time of the slowest nodes (five per task, in milliseconds).
    assert len(by_name["dbt.node.duration"]) == 3 + 5
    seed_nodes = [n for n in by_name if n.startswith("dbt.node.duration.dbt_metrics.seed.")]
    assert sorted(seed_nodes) == [
        f"dbt.node.duration.dbt_metrics.seed.seed__shop__{name}"
        for name in ("raw_customers", "raw_orders", "raw_payments")
    ]
    assert all(kinds[n] == "ms" for n in seed_nodes)
    print("statsd packets:", *(f"{PREFIX}.{name}:{value:g}|{kind}" for name, value, kind in packets), sep="\n")
