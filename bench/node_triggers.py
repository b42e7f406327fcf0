"""Triggerer CPU per node task of a task graph (issue 13): N ``DbtNodeTrigger``s following one build's channel.

Usage:
  python bench/node_triggers.py [--nodes 500] [--window 30] [--poll-interval 2] [--channel local,s3] [--markdown]

One asyncio loop runs ``--nodes`` real node triggers (as one triggerer would) on one build's run channel: a run dir
(``local``) or moto's S3 server on 127.0.0.1 in its own process (``s3``). Another process plays the build through
the real ``ChannelWriter``: it reports the N nodes evenly over ``--window`` seconds, publishing its status every
second, then finishes. Measured in the trigger process: CPU seconds (``time.process_time``) from the first trigger
to the last verdict, per node, and the status reads the shared reader made. Logs go to stderr; the last stdout
line is the result as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (BENCH, ROOT / "tests", ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_output import emit, run_script  # noqa: E402

CONN_ID = "bench_nodes_s3"
BUILD = """
import json, sys, time
from dlh_airflow_common.dbt.channel import ChannelSpec, ChannelWriter
spec, nodes, window = ChannelSpec.from_dict(json.loads(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3])
writer = ChannelWriter(spec, command="build")
writer.heartbeat()
started, done = time.monotonic(), 0
while done < nodes:
    due = min(nodes, int((time.monotonic() - started) / window * nodes) + 1)
    for index in range(done, due):
        node = {"unique_id": f"model.p.m{index}", "node_status": "success"}
        data = {"index": index + 1, "total": nodes, "node_info": node}
        writer.event({"info": {"name": "LogModelResult", "level": "info"}, "data": data})
    done = due
    writer.heartbeat()
    time.sleep(1.0)
writer.finish(0, stopped=None)
"""
S3 = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from s3_server import MotoS3
server = MotoS3(bucket="bench-nodes").start()
print(json.dumps({"url": server.url("channel"), "connection": server.connection()}), flush=True)
time.sleep(1e6)
"""


def log(message: str) -> None:
    print(f"[node_triggers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def follow(spec: Any, nodes: int, poll: float) -> dict[str, Any]:
    from dlh_airflow_common.task_graph import shared_reads
    from dlh_airflow_common.task_graph.trigger import DbtNodeTrigger

    triggers = [
        DbtNodeTrigger(spec.to_dict(), f"model.p.m{i}", [], poll_interval=poll, min_wait=0) for i in range(nodes)
    ]
    reads: list[int] = []

    async def first(trigger: DbtNodeTrigger) -> str:
        async for event in trigger.run():
            for entry in shared_reads._SHARED.values():
                reads.append(entry.reads)
            return str(event.payload.get("verdict"))
        return "none"

    cpu, wall = time.process_time(), time.monotonic()
    verdicts = await asyncio.gather(*(first(trigger) for trigger in triggers))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return {"cpu_s": cpu, "wall_s": wall, "verdicts": {v: verdicts.count(v) for v in set(verdicts)},
            "status_reads": max(reads) if reads else 0}  # fmt: skip


def one(channel: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from dlh_airflow_common.dbt.channel import ChannelSpec

    server = None
    run_dir = work / f"run_{channel}"
    if channel == "s3":
        server = subprocess.Popen([sys.executable, "-c", S3, str(ROOT / "tests")], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = info["connection"]
        spec = ChannelSpec.for_run(run_dir, info["url"], CONN_ID, heartbeat_interval=1.0, node_results=True)
    else:
        run_dir.mkdir(parents=True)
        spec = ChannelSpec(str(run_dir), heartbeat_interval=1.0, node_results=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    try:
        build = subprocess.Popen([sys.executable, "-c", BUILD, json.dumps(spec.to_dict()), str(args.nodes),
                                  str(args.window)], env=env)  # fmt: skip
        result = asyncio.run(follow(spec, args.nodes, args.poll_interval))
        build.wait(timeout=120)
    finally:
        if server is not None:
            server.kill()
    result["cpu_ms_per_node"] = result["cpu_s"] * 1000 / args.nodes
    log(f"{channel}: {result}")
    return result


def bench(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-node-triggers-") as work:
        channels = {channel: one(channel, args, Path(work)) for channel in args.channel}
    return {"nodes": args.nodes, "window_s": args.window, "poll_interval_s": args.poll_interval,
            "channels": channels, "load_before": load_before, "load_after": os.getloadavg()}  # fmt: skip


def report(result: dict[str, Any]) -> tuple[list[tuple[str, ...]], str]:
    """Summary rows (figure, goal, measured) and the docs/benchmarks.md section."""
    rows: list[tuple[str, ...]] = []
    lines = [
        f"**Triggerer CPU per node task** (`bench/node_triggers.py`): {result['nodes']} `DbtNodeTrigger`s in one "
        f"loop following one build whose {result['nodes']} nodes are reported evenly over {result['window_s']:g} s "
        f"(status published every second), polling every {result['poll_interval_s']:g} s; load "
        f"{result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after.",
        "",
        "| Channel | Verdicts | Wall | CPU (trigger process) | CPU per node | Status reads |",
        "|---|---|---|---|---|---|",
    ]
    for channel, got in result["channels"].items():
        lines.append(f"| {channel} | {got['verdicts']} | {got['wall_s']:.1f} s | {got['cpu_s']:.2f} s | "
                     f"{got['cpu_ms_per_node']:.2f} ms | {got['status_reads']} |")  # fmt: skip
        rows.append((f"Triggerer CPU per node task ({channel} channel, {result['nodes']} nodes)", "reported",
                     f"{got['cpu_ms_per_node']:.2f} ms, {got['status_reads']} status reads"))  # fmt: skip
    return rows, "\n".join(lines) + "\n"


def measure(env: dict[str, str], work: Path, *, quick: bool = False) -> tuple[list[tuple[str, ...]], str]:
    """For bench/run_bench.py: this script in a fresh interpreter; its rows and section."""
    return report(run_script(__file__, ["--nodes", "100"] if quick else [], env, work, timeout=1800))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--channel", type=lambda v: v.split(","), default=["local", "s3"])
    parser.add_argument("--json", type=Path, help="Also write the result here.")
    parser.add_argument("--markdown", action="store_true", help="Print the docs/benchmarks.md rows and section.")
    args = parser.parse_args()
    emit(bench(args), args, report)


if __name__ == "__main__":
    main()
