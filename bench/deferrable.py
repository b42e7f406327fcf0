"""Deferrable-mode benchmarks (issue 4): worker-slot seconds of one deferred run; 500 triggers on one event loop.

Usage:
  python bench/deferrable.py slot --work DIR [--models 6] [--seconds 10] [--check-interval 10]
  python bench/deferrable.py loop [--runs 500] [--interval 1] [--duration 30] [--processes 4] [--lines-per-s 100]
  python bench/deferrable.py all [--quick] [--work DIR]      (both, printed as the docs/benchmarks.md section)

``slot`` (fresh interpreter, as a worker's task process): a generated DuckDB project whose Python models
sleep (``--models`` x ``--seconds``, one thread) runs through ``DbtOperator(deferrable=True)``. ``execute``
is called with a minimal context until it raises ``TaskDeferred``; the trigger is re-created from its
``serialize()`` output (as the triggerer does) and run with asyncio until its event; then
``execute_complete``. Reported: seconds inside ``execute`` and inside ``execute_complete`` (the worker-slot
time), the dbt run's wall time (process start to status.json), and how long after dbt ended the event came.

``loop``: one asyncio loop (``asyncio.run``, default executor, as the triggerer) runs ``--runs`` triggers at
``--interval`` s polling, each watching its own run dir; the run dirs share ``--processes`` live ``sleep``
processes (pid and start time recorded per run dir; the trigger only checks liveness and reads files). A
separate process appends dbt node-result lines to the runs' events.jsonl (``--lines-per-s`` in total), so
the triggers tail and log real progress (to a file, as the triggerer's per-trigger logs). A probe coroutine
sleeps 10 ms in a loop and records how late it wakes: that lag is what every trigger on the loop suffers.
CPU seconds per poll = process CPU time / polls, over the steady window. Then status.json is written for
every run (one in ten failed) and every trigger must yield exactly its one right event.

``slot`` and ``loop`` log to stderr; the last stdout line is the result as JSON. ``all`` (and ``make bench``,
through ``measure``) runs ``slot`` three times (once with ``--quick``) and ``loop`` once, each in a fresh
interpreter, and prints the summary rows and the section that bench/run_bench.py puts in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TIMEOUT = 1800
CONN_ID = "bench_deferrable_duckdb"
PROBE_SECONDS = 0.010
RUN_RESULT_ERROR = {
    "info": {"name": "RunResultError", "level": "error", "msg": "Database Error in model m (models/m.sql)"},
    "data": {
        "msg": "Database Error in model m (models/m.sql)\n  division by zero",
        "node_info": {"unique_id": "model.bench.m", "node_status": "None", "resource_type": "model"},
    },
}


def log(message: str) -> None:
    print(f"[bench deferrable {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- slot: worker-slot seconds of one deferred run ---------------------------------------------------------------
def sleepy_project(out: Path, models: int, seconds: float) -> Path:
    """A DuckDB project of ``models`` chained Python models, each sleeping ``seconds`` (DuckDB has no sleep())."""
    if out.exists():
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    (out / "dbt_project.yml").write_text(
        "name: bench_deferrable\nversion: '1.0'\nprofile: bench_deferrable\nmodel-paths: [models]\n", encoding="utf-8"
    )
    for index in range(models):
        upstream = f'dbt.ref("step_{index - 1}")' if index else 'session.sql("select 1 as id")'
        (out / "models" / f"step_{index}.py").write_text(
            "import time\n\n\ndef model(dbt, session):\n"
            '    dbt.config(materialized="table")\n'
            f"    upstream = {upstream}\n"
            f"    time.sleep({seconds})\n"
            "    return upstream\n",
            encoding="utf-8",
        )
    return out


@dataclass
class FakeTaskInstance:
    """What DbtOperator reads from ``context["ti"]``: ids and xcom_push."""

    dag_id: str = "bench_deferrable"
    task_id: str = "dbt"
    try_number: int = 1
    map_index: int = -1
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


async def _first_event(trigger: Any) -> tuple[dict[str, Any], float, int]:
    """The trigger's one event, when it came (epoch), and how many events it yielded in all."""
    events = [event async for event in trigger.run()]
    return events[0].payload, time.time(), len(events)


def slot(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    project = sleepy_project(work / "sleepy", args.models, args.seconds)
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {"conn_type": "duckdb", "host": str(work / "sleepy.duckdb")}
    )
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    started_import = time.perf_counter()
    from airflow.sdk.exceptions import TaskDeferred

    from dlh_airflow_common.dbt.detached import STATUS_FILE, read_json
    from dlh_airflow_common.operators.dbt import DbtOperator

    import_s = time.perf_counter() - started_import  # a worker has paid this when it parsed the DAG file
    operator = DbtOperator(
        task_id="dbt", dbt_project_dir=str(project), dbt_command="run", conn_id=CONN_ID, threads=1,
        deferrable=True, check_interval=args.check_interval,
    )  # fmt: skip
    ti = FakeTaskInstance()
    context: Any = {"ti": ti, "task_instance": ti, "run_id": "manual__bench"}

    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        operator.execute(context)
    except TaskDeferred as deferred:
        execute_s, execute_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        trigger_path, trigger_kwargs = deferred.trigger.serialize()
        method = deferred.method_name
    else:
        raise RuntimeError("execute() finished without deferring: the dbt run was too short")
    module, _, name = trigger_path.rpartition(".")
    trigger = getattr(__import__(module, fromlist=[name]), name)(**json.loads(json.dumps(trigger_kwargs)))
    trigger_log = logging.getLogger("bench.trigger")  # the triggerer writes these to the trigger's log file
    trigger_log.addHandler(logging.StreamHandler(sys.stderr))
    trigger_log.setLevel(logging.INFO)
    trigger._log = trigger_log
    log(f"deferred after {execute_s:.2f}s; the trigger watches pid {trigger.pid} in {trigger.run_dir}")
    payload, event_at, events = asyncio.run(_first_event(trigger))
    status = read_json(Path(trigger.run_dir) / STATUS_FILE) or {}
    cpu1, t1 = time.process_time(), time.perf_counter()
    summary = getattr(operator, method)(context, payload)
    complete_s, complete_cpu = time.perf_counter() - t1, time.process_time() - cpu1
    dbt_wall = float(status.get("ended_at", event_at)) - float(trigger_kwargs["started_at"])
    result = {
        "import_s": import_s,
        "execute_s": execute_s,
        "execute_cpu_s": execute_cpu,
        "execute_complete_s": complete_s,
        "execute_complete_cpu_s": complete_cpu,
        "slot_s": execute_s + complete_s,
        "dbt_wall_s": dbt_wall,
        "event_delay_s": event_at - float(status.get("ended_at", event_at)),
        "check_interval": args.check_interval,
        "events": events,
        "event_status": payload["status"],
        "success": bool(summary.get("success")),
        "node_count": summary.get("node_count"),
        "xcom_pushed": sorted(ti.xcoms),
        "run_dir_removed": not Path(trigger.run_dir).exists(),
    }
    log(
        f"execute {execute_s:.2f}s + execute_complete {complete_s:.2f}s = {result['slot_s']:.2f}s of worker slot "
        f"for a {dbt_wall:.1f}s dbt run ({summary.get('node_count')} nodes, success={summary.get('success')})"
    )
    return result


# -- loop: many triggers on one event loop -----------------------------------------------------------------------
WRITER = """\
import json, sys, time
from pathlib import Path
root, rate, seconds = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
files = sorted(root.glob("run_*/logs/events.jsonl"))
end, n = time.monotonic() + seconds, 0
while time.monotonic() < end:
    path = files[n % len(files)]
    line = {"info": {"name": "LogModelResult", "level": "info", "msg": "OK created sql table model"},
            "data": {"index": n // len(files) + 1, "total": 1000, "status": "success", "execution_time": 1.5,
                     "node_info": {"unique_id": f"model.bench.m{n}", "node_status": "success"}}}
    with path.open("a") as handle:
        handle.write(json.dumps(line) + "\\n")
    n += 1
    time.sleep(1 / rate)
print(n)
"""

ENDER = """\
import json, sys
from pathlib import Path
from dlh_airflow_common.dbt.channel import ChannelSpec, ChannelWriter
root, runs, error = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
for index in range(runs):  # the final status as the runner publishes it (run channel, local store)
    failed = index % 10 == 3
    writer = ChannelWriter(ChannelSpec(str(root / f"run_{index:04d}")), command="run")
    if failed:
        writer.event(error)
    writer.finish(1 if failed else 0, stopped=None)
"""


async def _watch_many(args: argparse.Namespace, root: Path, processes: list[tuple[int, int]]) -> dict[str, Any]:
    from dlh_airflow_common.triggers.dbt import DbtExecutionTrigger

    polls = 0

    class CountingTrigger(DbtExecutionTrigger):
        def _tail(self, reporter: Any) -> None:  # one call per poll
            nonlocal polls
            polls += 1
            super()._tail(reporter)

    trigger_log = logging.getLogger("bench.triggers")
    trigger_log.propagate = False
    trigger_log.setLevel(logging.INFO)
    handler = logging.FileHandler(root / "triggers.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    trigger_log.addHandler(handler)

    host = socket.gethostname()
    triggers = []
    for index in range(args.runs):
        pid, ticks = processes[index % len(processes)]
        trigger = CountingTrigger(
            str(root / f"run_{index:04d}"), pid, host, pgid=pid, start_ticks=ticks, started_at=time.time(),
            poll_interval=args.interval,
        )  # fmt: skip
        trigger._log = trigger_log  # type: ignore[assignment]  # stdlib logger: the triggerer's is structlog
        triggers.append(trigger)

    async def watch(trigger: Any) -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(PROBE_SECONDS)
            lags.append(time.perf_counter() - before - PROBE_SECONDS)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(args.baseline)  # the probe alone: what the machine's own load does to the lag
    baseline_lags = list(lags)
    lags.clear()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(args.lines_per_s), str(args.duration + args.warmup)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    tasks = [asyncio.create_task(watch(t)) for t in triggers]  # all at once, as after a triggerer restart
    await asyncio.sleep(args.warmup)
    start_lags = list(lags)  # the first polls of all triggers at once: what a triggerer restart looks like
    lags.clear()
    polls0, cpu0, wall0 = polls, time.process_time(), time.perf_counter()
    await asyncio.sleep(args.duration)
    steady_polls, steady_cpu = polls - polls0, time.process_time() - cpu0
    steady_wall = time.perf_counter() - wall0
    steady_lags = list(lags)
    lines_written = int((await asyncio.to_thread(writer.communicate, None, 60))[0] or 0)
    log(f"steady window: {steady_polls} polls in {steady_wall:.1f}s, {steady_cpu:.2f} CPU s")

    # Every run ends: one in ten fails. Each trigger must yield exactly its own event.
    # The runners write them from their own processes: so does a helper process here, not this loop.
    lags.clear()
    failed = {index for index in range(args.runs) if index % 10 == 3}
    ended = time.perf_counter()
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", ENDER, str(root), str(args.runs), json.dumps(RUN_RESULT_ERROR)],
        check=True, timeout=TIMEOUT,
    )  # fmt: skip
    written = time.perf_counter()
    done, pending = await asyncio.wait(tasks, timeout=max(30.0, 10 * args.interval))
    all_events_s, after_last_status_s = time.perf_counter() - ended, time.perf_counter() - written
    stop.set()
    await prober
    for task in pending:
        task.cancel()
    wrong = len(pending)
    for index, task in enumerate(tasks):
        if task not in done:
            continue
        events = task.result()
        expected = ("error", "DbtRuntimeException") if index in failed else ("success", None)
        if len(events) != 1 or (events[0]["status"], events[0].get("reason")) != expected:
            wrong += 1
    handler.close()
    progress_lines = sum(1 for _ in (root / "triggers.log").open())
    return {
        "runs": args.runs,
        "processes": len(processes),
        "interval_s": args.interval,
        "window_s": steady_wall,
        "polls": steady_polls,
        "polls_per_s": steady_polls / steady_wall,
        "cpu_s": steady_cpu,
        "cpu_ms_per_poll": 1000 * steady_cpu / max(1, steady_polls),
        "cpu_share_of_one_core": steady_cpu / steady_wall,
        "lag_samples": len(steady_lags),
        "lag_p50_ms": 1000 * percentile(steady_lags, 50),
        "lag_p99_ms": 1000 * percentile(steady_lags, 99),
        "lag_max_ms": 1000 * max(steady_lags),
        "baseline_lag_p50_ms": 1000 * percentile(baseline_lags, 50),
        "baseline_lag_p99_ms": 1000 * percentile(baseline_lags, 99),
        "baseline_lag_max_ms": 1000 * max(baseline_lags),
        "start_lag_max_ms": 1000 * max(start_lags),
        "end_lag_p99_ms": 1000 * percentile(lags, 99),
        "end_lag_max_ms": 1000 * max(lags) if lags else float("nan"),
        "all_events_s": all_events_s,
        "after_last_status_s": after_last_status_s,
        "events_ok": args.runs - wrong,
        "events_wrong": wrong,
        "progress_lines_written": lines_written,
        "progress_lines_logged": progress_lines,
    }


def loop(args: argparse.Namespace) -> dict[str, Any]:
    from dlh_airflow_common.dbt.detached import EVENTS_FILE, process_start_ticks

    root = Path(tempfile.mkdtemp(prefix="bench-deferrable-loop-"))
    sleep = shutil.which("sleep")
    argv = [sleep, "3600"] if sleep else [sys.executable, "-c", "import time; time.sleep(3600)"]
    procs = [subprocess.Popen(argv, start_new_session=True) for _ in range(args.processes)]
    try:
        processes = []
        for proc in procs:
            ticks = process_start_ticks(proc.pid)
            if ticks is None:
                raise RuntimeError(f"no start time for pid {proc.pid}")
            processes.append((proc.pid, ticks))
        for index in range(args.runs):
            logs = root / f"run_{index:04d}" / "logs"
            logs.mkdir(parents=True)
            (logs / EVENTS_FILE).touch()
        log(f"{args.runs} triggers, {args.interval}s poll, {len(procs)} shared live processes, {args.duration}s")
        result = asyncio.run(_watch_many(args, root, processes))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    log(
        f"loop lag p50 {result['lag_p50_ms']:.2f} ms, p99 {result['lag_p99_ms']:.2f} ms, max {result['lag_max_ms']:.1f}"
        f" ms; {result['cpu_ms_per_poll']:.3f} CPU ms/poll; events ok {result['events_ok']}/{args.runs}"
    )
    return result


# -- all: both, as a section of docs/benchmarks.md ---------------------------------------------------------------
def _run_json(argv: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def measure(env: dict[str, str], work: Path, *, quick: bool = False) -> tuple[list[tuple[str, ...]], str]:
    """Run both benchmarks; return summary rows (name, goal, result, absolute, met) and a markdown section."""
    env = {**env, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    script = str(Path(__file__).resolve())
    models, seconds, reps = (2, 5, 1) if quick else (5, 10, 3)  # full: ~50 s of models + dbt start-up
    duration = 10 if quick else 30
    slots = []
    for rep in range(reps):
        log(f"D1 rep {rep + 1}/{reps}: deferred dbt run of {models} x {seconds}s models")
        argv = [sys.executable, script, "slot", "--work", str(work / "deferrable"), "--models", str(models),
                "--seconds", str(seconds)]  # fmt: skip
        slots.append(_run_json(argv, env))
    log(f"D2: 500 triggers on one loop for {duration}s")
    many = _run_json([sys.executable, script, "loop", "--duration", str(duration)], env)

    def med(key: str) -> float:
        return float(statistics.median(s[key] for s in slots))

    def span(key: str, digits: int = 2) -> str:
        values = [s[key] for s in slots]
        return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    ok = all(s["success"] and s["events"] == 1 and s["run_dir_removed"] for s in slots)
    figures: list[tuple[str, ...]] = [
        (
            f"D1 deferrable: worker-slot seconds for a {med('dbt_wall_s'):.0f} s dbt run",
            "<= 3 s",
            f"{span('slot_s')} s",
            f"execute {med('execute_s'):.2f} s + execute_complete {med('execute_complete_s'):.2f} s; "
            f"dbt {med('dbt_wall_s'):.0f} s",
            "yes" if max(s["slot_s"] for s in slots) <= 3.0 and ok else "no",
        ),
        (
            f"D2 deferrable: event-loop lag, {many['runs']} triggers at {many['interval_s']:g} s",
            "p99 <= 50 ms",
            f"p99 {many['lag_p99_ms']:.1f} ms (p50 {many['lag_p50_ms']:.1f}, max {many['lag_max_ms']:.1f})",
            f"{many['cpu_ms_per_poll']:.3f} CPU ms/poll",
            "yes" if many["lag_p99_ms"] <= 50 and many["events_wrong"] == 0 else "no",
        ),
    ]
    section = "\n".join(
        [
            "### Deferrable mode (issue 4): worker-slot time and triggerer load (`bench/deferrable.py`)",
            "",
            f"**D1.** `DbtOperator(deferrable=True)`, `dbt run` of a generated DuckDB project of {models} chained "
            f"Python models that each sleep {seconds} s (one thread), in a fresh interpreter per repetition "
            f"({reps}). `execute` is called with a minimal context until it raises `TaskDeferred`; the trigger is "
            "re-created from `serialize()` and run with asyncio; then `execute_complete`. Worker-slot time is "
            "the time inside those two calls; importing Airflow and the operator (paid by the worker when it "
            "parsed the DAG) is listed apart.",
            "",
            "| Measure | Median (min-max) |",
            "|---|---|",
            f"| inside `execute` (start dbt detached, defer) | {span('execute_s')} s |",
            f"| inside `execute_complete` (summary, XCom, clean-up) | {span('execute_complete_s')} s |",
            f"| worker-slot time, total | {span('slot_s')} s |",
            f"| CPU in `execute` / `execute_complete` | {span('execute_cpu_s')} s / "
            f"{span('execute_complete_cpu_s')} s |",
            f"| dbt run, wall (runner start to status.json) | {span('dbt_wall_s', 1)} s |",
            f"| event after dbt ended (poll interval {slots[0]['check_interval']:g} s) | {span('event_delay_s')} s |",
            f"| import of Airflow + operator (not slot time) | {span('import_s')} s |",
            f"| one event, success, XCom pushed, run dir removed | {'yes' if ok else 'NO'} |",
            "",
            f"**D2.** One asyncio loop runs {many['runs']} `DbtExecutionTrigger`s polling every "
            f"{many['interval_s']:g} s, all created at once (as after a triggerer restart), each on its own run dir; "
            f"the run dirs share {many['processes']} live processes (the trigger only checks liveness and reads "
            "files). Another process appends node-result lines to the runs' events.jsonl "
            f"({many['progress_lines_written']} lines in all), which the triggers tail and log to a file. A probe "
            "coroutine sleeps 10 ms in a loop; lag is how late it wakes. The probe first runs alone (baseline: "
            "the machine's own load), then with the triggers: the first seconds (every trigger's first poll) apart, "
            f"then a {many['window_s']:.0f} s steady window. CPU is the process's CPU time (event loop and the "
            "executor threads that read the files) per poll. Finally every run ends at once (status.json written "
            "by another process, one run in ten failed).",
            "",
            "| Measure | Value |",
            "|---|---|",
            f"| polls in the steady window | {many['polls']} ({many['polls_per_s']:.0f}/s) |",
            f"| loop lag p50 / p99 / max, steady | {many['lag_p50_ms']:.2f} / {many['lag_p99_ms']:.2f} / "
            f"{many['lag_max_ms']:.1f} ms |",
            f"| loop lag p50 / p99 / max, probe alone (baseline) | {many['baseline_lag_p50_ms']:.2f} / "
            f"{many['baseline_lag_p99_ms']:.2f} / {many['baseline_lag_max_ms']:.1f} ms |",
            f"| loop lag max while all triggers start | {many['start_lag_max_ms']:.1f} ms |",
            f"| CPU per poll | {many['cpu_ms_per_poll']:.3f} ms ({many['cpu_share_of_one_core']:.0%} of one core) |",
            f"| all runs end: last event after the last status.json / loop lag p99 meanwhile | "
            f"{many['after_last_status_s']:.2f} s / {many['end_lag_p99_ms']:.1f} ms |",
            f"| right event from every trigger (1 in 10 failed) | {many['events_ok']}/{many['runs']} |",
            f"| progress lines logged by the triggers / written | {many['progress_lines_logged']} / "
            f"{many['progress_lines_written']} |",
            "",
        ]
    )
    return figures, section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("slot")
    one.add_argument("--work", required=True)
    one.add_argument("--models", type=int, default=6)
    one.add_argument("--seconds", type=float, default=10)
    one.add_argument("--check-interval", type=float, default=10.0)
    many = sub.add_parser("loop")
    many.add_argument("--runs", type=int, default=500)
    many.add_argument("--interval", type=float, default=1.0)
    many.add_argument("--duration", type=float, default=30)
    many.add_argument("--warmup", type=float, default=3)
    many.add_argument("--baseline", type=float, default=10, help="seconds of probing before any trigger starts")
    many.add_argument("--processes", type=int, default=4)
    many.add_argument("--lines-per-s", type=float, default=100)
    both = sub.add_parser("all")
    both.add_argument("--quick", action="store_true")
    both.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-deferrable")
    args = parser.parse_args()
    if args.what == "slot":
        print(json.dumps(slot(args)))
    elif args.what == "loop":
        print(json.dumps(loop(args)))
    else:
        figures, section = measure(dict(os.environ), args.work.resolve(), quick=args.quick)
        print("| Figure | Goal | Result | Absolute | Met |\n|---|---|---|---|---|")
        print("\n".join("| " + " | ".join(row) + " |" for row in figures))
        print()
        print(section)


if __name__ == "__main__":
    main()
