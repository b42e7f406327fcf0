"""Worker-slot seconds of deferred DbtOperator runs under a real Airflow deployment (issue 11, item 6).

Usage:
  python bench/worker_slot.py [--runs 5] [--warmup 1] [--command build] [--check-interval 1] [--json OUT]
                              [--run-channel local|s3]

The harness of tests/deployment (PostgreSQL metadata DB; api-server, scheduler with LocalExecutor,
dag-processor, triggerer as separate processes) runs a DAG of one ``DbtOperator(deferrable=True)`` on a copy
of examples/shop (DuckDB), triggered ``--runs`` times one after the other through the REST API, after
``--warmup`` runs that are not counted (first imports, partial-parse cache). ``--run-channel s3`` starts moto's
S3 server on 127.0.0.1 (tests/s3_server.py) and sets the operator's ``run_channel`` / ``run_channel_conn_id``
(the connection reaches every service as ``AIRFLOW_CONN_*``): the trigger and ``execute_complete`` then read
only the channel; the default is the local channel (the run dir).

Per run, two figures from two sources:
* worker-slot time of each half (before deferring, after resuming): the ``duration`` of the task
  supervisor's "Workload finished" line in the scheduler's log (LocalExecutor workers are its children),
  from the supervisor's start to the task process's exit;
* the library's own share, from the task log's timestamps: ``execute`` (end of Airflow's "Pre Execute"
  group to "Pausing task as DEFERRED") and ``execute_complete`` (end of the resumed "Pre Execute" group to
  "Post Execute"), and within the latter the time after the run summary's last line.
The rest is Airflow's (task process start, parsing the DAG file, which imports the operator, and the exit).

Logs go to stderr; the last stdout line is the result as JSON. ``measure()`` gives bench/run_bench.py
summary rows and a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (ROOT / "tests", ROOT / "tests" / "deployment"):  # the deployment harness and pg_server
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402
from airflow_deployment import AirflowDeployment, TaskLogLine  # noqa: E402
from bench_output import emit  # noqa: E402

from pg_server import PostgresServer  # noqa: E402

CONN_ID = "bench_slot_duckdb"
DAG_ID = "bench_worker_slot"
TIMEOUT = 600
GOAL_LIBRARY_S = 0.3
GOAL_TOTAL_S = 1.0
DAG = """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False, max_active_runs=1):
        DbtOperator(task_id="dbt", dbt_project_dir={project!r}, dbt_command={command!r}, conn_id={conn!r},
                    deferrable=True, check_interval={interval!r}, retries=0{channel})
"""
CHANNEL_CONN_ID = "bench_slot_channel"
_FIELD = re.compile(r"(\w+)=('[^']*'|\"[^\"]*\"|\S+)")
SUMMARY_END = "=== end of dbt run summary ==="


def log(message: str) -> None:
    print(f"[bench worker_slot {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def workload_durations(scheduler_log: Path, ti_id: str) -> list[tuple[str, float, float]]:
    """(final_state, duration, logged at) of each "Workload finished" line the supervisor logged for this TI."""
    found = []
    for line in scheduler_log.read_text(errors="replace").splitlines():
        if ti_id not in line or "Workload finished" not in line:
            continue
        tail = line[line.index("Workload finished") :]
        fields = {key: value.strip("'\"") for key, value in _FIELD.findall(tail)}
        at = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        found.append((fields.get("final_state", "?"), float(fields["duration"]), at))
    return found


def _first(lines: Sequence[TaskLogLine], start: int, predicate: Any) -> int:
    for index in range(start, len(lines)):
        if predicate(lines[index]):
            return index
    raise ValueError("expected task log line not found")


def log_shares(lines: Sequence[TaskLogLine], ended: Sequence[float]) -> dict[str, float]:
    """The library's share of each half and Airflow's parse of the DAG file, from the task log's timestamps.

    ``ended``: when the supervisor logged each half's end; from the half's last task-log line to then is the
    wait for the task process's exit to be noticed.
    """
    events = [line.event.strip() for line in lines]
    deferred = _first(lines, 0, lambda line: line.event.startswith("Pausing task as DEFERRED"))
    pre_end = max(i for i in range(deferred) if events[i] == "::endgroup::")
    resumed = _first(lines, deferred, lambda line: line.event.startswith("::group::Pre Execute"))
    pre2_end = _first(lines, resumed, lambda line: line.event.strip() == "::endgroup::")
    post = _first(lines, pre2_end, lambda line: line.event.startswith("::group::Post Execute"))
    summary_end = _first(lines, pre2_end, lambda line: line.event.strip() == SUMMARY_END)
    parse_start = _first(lines, resumed, lambda line: line.event.startswith("Filling up the DagBag"))
    parse_end = _first(lines, parse_start, lambda line: line.event.startswith("Worker startup parse complete"))
    return {
        "library_before_s": lines[deferred].at - lines[pre_end].at,
        "library_after_s": lines[post].at - lines[pre2_end].at,
        "after_summary_s": lines[post].at - lines[summary_end].at,
        "dag_parse_on_resume_s": lines[parse_end].at - lines[parse_start].at,
        "log_before_s": lines[deferred].at - lines[0].at,
        "log_after_s": lines[-1].at - lines[resumed].at,
        "exit_wait_before_s": ended[0] - lines[_first(lines, deferred, lambda x: x.event.strip() == "::endgroup::")].at,
        "exit_wait_after_s": ended[1] - lines[-1].at,
    }


def one_run(deployment: AirflowDeployment) -> dict[str, Any]:
    started = time.monotonic()
    run_id = deployment.trigger(DAG_ID)
    while True:  # on a loaded machine the API server may not answer one poll within the client's 30 s
        try:
            ti = deployment.wait_task_state(DAG_ID, run_id, "dbt", ["success"], limit=TIMEOUT)
            break
        except httpx.TimeoutException as err:
            if time.monotonic() - started > TIMEOUT:
                raise
            log(f"REST API slow ({err!r}); polling again")
    summary = deployment.xcom(DAG_ID, run_id, "dbt", "dbt_summary")
    scheduler_log = deployment.services["scheduler"].log_path
    halves: list[tuple[str, float, float]] = []
    deadline = time.monotonic() + 30  # the supervisor logs its line just after the task process exited
    while len(halves) < 2 and time.monotonic() < deadline:
        halves = workload_durations(scheduler_log, str(ti["id"]))
        time.sleep(0.2)
    if [half[0] for half in halves] != ["deferred", "success"]:
        raise RuntimeError(f"expected a deferred and a successful workload for {ti['id']}, found {halves}")
    result = {
        "run_id": run_id,
        "slot_before_s": halves[0][1],
        "slot_after_s": halves[1][1],
        "slot_total_s": halves[0][1] + halves[1][1],
        "node_count": summary.get("node_count"),
        "success": bool(summary.get("success")),
        "wall_s": time.monotonic() - started,
        **log_shares(deployment.task_log_lines(DAG_ID, run_id, "dbt"), [half[2] for half in halves]),
    }
    log(
        f"slot {result['slot_before_s']:.2f} + {result['slot_after_s']:.2f} s; library {result['library_before_s']:.2f}"
        f" + {result['library_after_s']:.2f} s ({result['after_summary_s']:.2f} s after the summary)"
    )
    return result


def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-worker-slot-"))
    try:
        project = work / "shop"
        shutil.copytree(ROOT / "examples" / "shop", project, ignore=shutil.ignore_patterns("target", "logs"))
        env = {
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps({"conn_type": "duckdb", "host": str(work / "shop.duckdb")})
        }
        env.update(dict(item.split("=", 1) for item in args.setting))
        load_before = os.getloadavg()
        with contextlib.ExitStack() as stack:
            channel = ""
            if args.run_channel == "s3":
                from s3_server import MotoS3

                s3 = stack.enter_context(MotoS3(bucket="bench-worker-slot"))
                env[f"AIRFLOW_CONN_{CHANNEL_CONN_ID.upper()}"] = s3.connection()
                channel = f", run_channel={s3.url('channel')!r}, run_channel_conn_id={CHANNEL_CONN_ID!r}"
            pg = stack.enter_context(PostgresServer())
            deployment = stack.enter_context(AirflowDeployment(pg, env=env, pythonpath=[ROOT / "src"]))
            log(f"deployment up: {deployment.timings}; run channel {args.run_channel}")
            source = DAG.format(dag_id=DAG_ID, project=str(project), command=args.command, conn=CONN_ID,
                                interval=args.check_interval, channel=channel)  # fmt: skip
            deployment.write_dag(DAG_ID, source)
            deployment.wait_parsed(DAG_ID)
            try:
                warmups = [one_run(deployment) for _ in range(args.warmup)]
                runs = [one_run(deployment) for _ in range(args.runs)]
            finally:  # a failed run's logs too
                if args.keep_logs:
                    shutil.copytree(deployment.logs_folder, args.keep_logs / "tasks", dirs_exist_ok=True)
                    for service in deployment.services.values():
                        shutil.copy(service.log_path, args.keep_logs)
                    for run_dir in (project / "target").glob("run_*"):  # kept by a failed run
                        shutil.copytree(run_dir, args.keep_logs / "runs" / run_dir.name, dirs_exist_ok=True)
            timings = deployment.timings
            left = s3.list_objects() if args.run_channel == "s3" else []
        return {
            "command": args.command,
            "run_channel": args.run_channel,
            "channel_objects_left": len(left),
            "check_interval": args.check_interval,
            "warmups": warmups,
            "runs": runs,
            "deployment": timings,
            "settings": args.setting,
            "load_before": load_before,
            "load_after": os.getloadavg(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- as a section of docs/benchmarks.md ---------------------------------------------------------------------------
def _span(runs: Sequence[dict[str, Any]], key: str) -> str:
    values = [run[key] for run in runs]
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _med(runs: Sequence[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def report(result: dict[str, Any]) -> tuple[list[tuple[str, ...]], str]:
    """Summary rows (name, goal, result, absolute, met) and the markdown section."""
    runs = result["runs"]
    for run in runs:  # what the slot would be if Airflow noticed the task process's exit at once
        run["slot_no_wait_s"] = run["slot_total_s"] - run["exit_wait_before_s"] - run["exit_wait_after_s"]
    waits = [run[key] for run in runs for key in ("exit_wait_before_s", "exit_wait_after_s")]
    long_waits = sum(1 for wait in waits if wait >= 1.0)
    ok = all(run["success"] for run in runs) and not result.get("channel_objects_left")
    remote = result.get("run_channel", "local") == "s3"
    tag, where = ("W2", ", remote run channel (S3)") if remote else ("W1", "")
    title = (
        "### Worker-slot time under a real deployment, remote run channel on S3 (issue 12, item 5; "
        "`bench/worker_slot.py --run-channel s3`)"
        if remote
        else "### Worker-slot time under a real deployment (issue 11, item 6; `bench/worker_slot.py`)"
    )
    library_met = max(_med(runs, "library_before_s"), _med(runs, "library_after_s")) <= GOAL_LIBRARY_S
    total_met = _med(runs, "slot_total_s") <= GOAL_TOTAL_S
    figures: list[tuple[str, ...]] = [
        (
            f"{tag} real deployment{where}: library's share of the worker slot, before / after deferring",
            f"<= {GOAL_LIBRARY_S} s each",
            f"{_med(runs, 'library_before_s'):.2f} / {_med(runs, 'library_after_s'):.2f} s",
            f"median of {len(runs)} deferred `dbt {result['command']}` runs",
            "yes" if library_met and ok else "no",
        ),
        (
            f"{tag} real deployment{where}: worker-slot seconds per deferred run, total",
            f"<= {GOAL_TOTAL_S} s",
            f"{_span(runs, 'slot_total_s')} s",
            f"before {_med(runs, 'slot_before_s'):.2f} s + after {_med(runs, 'slot_after_s'):.2f} s",
            "yes" if total_met and ok else "no",
        ),
    ]
    load = "/".join(f"{x:.1f}" for x in result["load_before"]), "/".join(f"{x:.1f}" for x in result["load_after"])
    section = "\n".join(
        [
            title,
            "",
            f"**{tag}.** The harness of `tests/deployment/` (PostgreSQL metadata DB; `api-server`, `scheduler` with "
            "LocalExecutor, `dag-processor`, `triggerer` as separate processes) runs a DAG of one "
            f"`DbtOperator(deferrable=True, check_interval={result['check_interval']:g})` doing `dbt "
            f"{result['command']}` on examples/shop (DuckDB, {runs[0]['node_count']} nodes), triggered through the "
            f"REST API {len(runs)} times one after the other, after {len(result['warmups'])} uncounted warm-up "
            "run(s). Worker-slot time of each half is the `duration` of the task supervisor's `Workload finished` "
            "line (supervisor start to task-process exit). The library's share comes from the task log's "
            "timestamps: `execute` = end of Airflow's *Pre Execute* group to *Pausing task as DEFERRED*; "
            "`execute_complete` = end of the resumed *Pre Execute* group to *Post Execute*. The rest is "
            "Airflow's: starting the task process, parsing the DAG file (which imports the operator), reporting "
            "the state, exiting. "
            + (
                "The operator's `run_channel` is an `s3://` prefix on moto's S3 server (127.0.0.1, in the "
                "benchmark's process; connection as `AIRFLOW_CONN_*` in every service's environment): the trigger "
                "polls the channel, `execute_complete` collects the published artifacts from it and removes it "
                f"({result.get('channel_objects_left', 0)} objects left after the runs). "
                if remote
                else ""
            )
            + f"Load average (1/5/15 min) before / after: {load[0]} / {load[1]}.",
            "",
            "| Measure | Median (min-max), s |",
            "|---|---|",
            f"| worker slot before deferring | {_span(runs, 'slot_before_s')} |",
            f"| worker slot after resuming | {_span(runs, 'slot_after_s')} |",
            f"| worker slot, total | {_span(runs, 'slot_total_s')} |",
            f"| library: `execute` (start dbt detached, defer) | {_span(runs, 'library_before_s')} |",
            f"| library: `execute_complete` (summary, XCom, clean-up) | {_span(runs, 'library_after_s')} |",
            f"| of which after the summary's last line | {_span(runs, 'after_summary_s')} |",
            f"| Airflow: last task-log line to the supervisor's *Workload finished*, before / after | "
            f"{_span(runs, 'exit_wait_before_s')} / {_span(runs, 'exit_wait_after_s')} "
            f"({long_waits} of {len(waits)} halves waited >= 1 s) |",
            f"| worker slot, total, without that wait | {_span(runs, 'slot_no_wait_s')} |",
            f"| Airflow: parsing the DAG file on resume | {_span(runs, 'dag_parse_on_resume_s')} |",
            f"| deployment start: `db migrate` / services healthy | {result['deployment']['db_migrate_s']:.0f} / "
            f"{result['deployment']['services_healthy_s']:.0f} |",
            f"| every run succeeded | {'yes' if ok else 'NO'} |",
            "",
        ]
    )
    return figures, section


def side_by_side(results: Sequence[dict[str, Any]]) -> str:
    """The same figures of runs with different run channels, one column each (medians, min-max)."""
    for result in results:
        for run in result["runs"]:
            run.setdefault("slot_no_wait_s", run["slot_total_s"] - run["exit_wait_before_s"] - run["exit_wait_after_s"])
    keys = [
        ("worker slot before deferring", "slot_before_s"),
        ("worker slot after resuming", "slot_after_s"),
        ("worker slot, total", "slot_total_s"),
        ("worker slot, total, without Airflow's exit wait", "slot_no_wait_s"),
        ("library: `execute`", "library_before_s"),
        ("library: `execute_complete`", "library_after_s"),
        ("of which after the summary's last line", "after_summary_s"),
        ("deferred run, trigger to success (wall)", "wall_s"),
    ]
    head = "| Median (min-max), s | " + " | ".join(f"run channel {r.get('run_channel', 'local')}" for r in results)
    rows = [head + " |", "|---|" + "---|" * len(results)]
    rows += [f"| {label} | " + " | ".join(_span(r["runs"], key) for r in results) + " |" for label, key in keys]
    return "\n".join(rows) + "\n"


def measure(env: dict[str, str], work: Path, *, quick: bool = False) -> tuple[list[tuple[str, ...]], str]:
    """For bench/run_bench.py: run this script in a fresh interpreter per run channel (local, then s3); return
    their rows and sections."""
    import subprocess

    figures: list[tuple[str, ...]] = []
    sections: list[str] = []
    results: list[dict[str, Any]] = []
    for channel in ("local", "s3"):
        runs = "2" if quick else "5"
        argv = [sys.executable, str(Path(__file__).resolve()), "--run-channel", channel, "--runs", runs]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600, cwd=work)
        if proc.returncode != 0:
            raise RuntimeError(f"bench/worker_slot.py --run-channel {channel} failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")  # fmt: skip
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        rows, section = report(results[-1])
        figures += rows
        sections.append(section)
    sections.append(
        "Local and S3 run channel side by side (same harness, one after the other):\n\n" + side_by_side(results)
    )
    return figures, "\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--command", default="build")
    parser.add_argument("--check-interval", type=float, default=1.0)
    parser.add_argument("--run-channel", choices=("local", "s3"), default="local", help="the operator's run channel")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--setting", action="append", default=[], help="KEY=VALUE for the services' environment")
    parser.add_argument("--keep-logs", type=Path, help="copy the services' and tasks' logs into this dir")
    parser.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md rows and section")
    args = parser.parse_args()
    result = bench(args)
    emit(result, args, report)


if __name__ == "__main__":
    main()
