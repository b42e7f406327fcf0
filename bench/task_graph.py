"""DbtTaskGroup against astronomer-cosmos: DAG parse time and memory, group wall time, worker memory per node task.

Usage:
  python bench/task_graph.py [--reps-parse 5] [--reps-run 3] [--work DIR] [--only parse,run] [--json OUT] [--markdown]

cosmos is never a dependency of this project: it is installed into its own virtualenv
(``bench/.work/cosmos-venv``, git-ignored, created on first use and kept) with
``pip install astronomer-cosmos==1.15.1 apache-airflow==3.3.2 "dbt-core>=1.11,<1.12" dbt-duckdb``, falling back to
``-c requirements/constraints.txt`` when that set does not resolve. Every measured process is a fresh
interpreter of one of the two virtualenvs, running this file in a child role (these use the standard library
and whatever the DAG file imports).

T1, parse: a DAG file holding one task group of the 1,000-model project is parsed with Airflow's ``DagBag``
(what the DAG processor does): ours (``DbtTaskGroup`` reading its warm graph file) and cosmos's
``DbtTaskGroup`` in ``dbt_manifest`` mode (given the project's manifest.json) and ``dbt_ls`` mode (its
cache, an Airflow Variable, warmed by one parse before measuring). Time is the ``DagBag`` call; peak RSS is
``ru_maxrss`` of that process, and also minus the peak of a baseline process of the same virtualenv that
imported Airflow and ``DagBag`` only.

T2, run: ``dag.test()`` of the group in a fresh process, on a fresh DuckDB file, against one plain
``dbt build`` of the same selection; ours / plain dbt / cosmos back to back, the order rotating. The whole
500-model project for ours and plain dbt; cosmos local mode on a slice of it (``tag:g7``, with ours and plain dbt
on the same slice beside it) because its per-node dbt processes make a whole-project run last about an hour here
(``--cosmos-full`` runs it anyway). ``dag.test()`` runs one task at a time.

T3, worker memory: during every ``dag.test()`` another thread samples the RSS of the test process and its
descendants every 50 ms; each task instance's start and end (from the metadata DB) give the peak of that tree
while the task ran, and its growth over the sample just before the task started.

Logs go to stderr; the last stdout line is the result as JSON. ``measure()`` gives bench/run_bench.py summary
rows and a section of docs/benchmarks.md. This file is the entry point and every child's; the parts live beside
it: task_graph_harness.py (paths, DAG files, child processes), task_graph_cosmos_venv.py, task_graph_parse.py
(T1), task_graph_run.py (T2) and task_graph_memory.py (T3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from bench_output import emit  # noqa: E402
from task_graph_cosmos_venv import cosmos_python, versions  # noqa: E402
from task_graph_harness import ROOT, TIMEOUT, WAIT_LIMIT_S, Bench, log  # noqa: E402
from task_graph_parse import child_baseline, child_parse, parse_phase, parse_report  # noqa: E402
from task_graph_run import child_run, run_phase, run_report  # noqa: E402


def child(args: argparse.Namespace) -> None:
    if args.role == "baseline":
        result = child_baseline()
    elif args.role == "parse":
        result = child_parse(args.dag_file)
    else:
        result = child_run(args.dag_file, args.dag_id)
    Path(args.result).write_text(json.dumps(result))


def report(result: dict[str, Any]) -> tuple[list[tuple[str, ...]], str]:
    """docs/benchmarks.md rows (figure, goal, result, absolute, met) and a section."""
    figures: list[tuple[str, ...]] = []
    lines = ["### Task graph (issue 13): DbtTaskGroup vs astronomer-cosmos (`bench/task_graph.py`)", ""]
    lines.append(f"cosmos: {result.get('cosmos_install')}; its virtualenv: {result.get('cosmos_versions')}; "
                 f"ours: {result.get('our_versions')}.")  # fmt: skip
    lines.append("")
    if "parse" in result:
        figures += parse_report(result, lines)
    if "runs" in result:
        figures += run_report(result, lines)
    return figures, "\n".join(lines) + "\n"


def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cosmos, how = cosmos_python()
    result: dict[str, Any] = {
        "cosmos_install": how,
        "cosmos_versions": versions(cosmos),
        "our_versions": versions(Path(sys.executable)),
        "load_start": os.getloadavg()[0],
    }
    runner = Bench(work, cosmos)
    # A DAG processor imports the installed library from bytecode; a fresh checkout has none, and the bench's
    # PYTHONDONTWRITEBYTECODE would make every parse compile src/ again (about 0.2 s of ours, none of cosmos's,
    # whose site-packages pip compiled at install).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    log(f"work dir {work}; airflow db migrate")
    runner.run([sys.executable, "-m", "airflow", "db", "migrate"])
    only = set(args.only.split(","))
    partial = work / "result.partial.json"  # what was measured so far, should a later phase fail
    if "parse" in only:
        parse_phase(runner, args.reps_parse, args.models_parse, result)
        partial.write_text(json.dumps(result))
    if "run" in only:
        run_phase(runner, args.reps_run, args.models_run, result, cosmos_full=args.cosmos_full, watcher=args.watcher)
    return result


def measure(env: dict[str, str], work: Path, *, quick: bool = False) -> tuple[list[tuple[str, ...]], str]:
    """For bench/run_bench.py: run this script in a fresh interpreter; return its rows and section."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--work", str(work / "task_graph")]
    if quick:
        argv += ["--reps-parse", "2", "--reps-run", "1", "--models-parse", "200", "--models-run", "100"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench/task_graph.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return report(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="bench", choices=("bench", "baseline", "parse", "run"))
    parser.add_argument("--reps-parse", type=int, default=5)
    parser.add_argument("--reps-run", type=int, default=3)
    parser.add_argument("--models-parse", type=int, default=1000)
    parser.add_argument("--models-run", type=int, default=500)
    parser.add_argument("--only", default="parse,run", help="comma-separated subset of parse,run")
    parser.add_argument("--cosmos-full", action="store_true", help="also run cosmos local on the whole project")
    parser.add_argument(
        "--watcher", action="store_true", help="add cosmos's watcher mode (under dag.test() its consumers wait forever)"
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "task_graph")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md rows and section")
    parser.add_argument("--max-wait", type=float, default=1200.0, help="seconds to wait for a load <= 2.5")
    parser.add_argument("--from-json", type=Path, help="report a saved result instead of measuring")
    # internal (the child roles' arguments)
    parser.add_argument("--result", default="")
    parser.add_argument("--dag-file", default="")
    parser.add_argument("--dag-id", default="")
    args = parser.parse_args()
    if args.role != "bench":
        child(args)
        return
    WAIT_LIMIT_S[0] = args.max_wait
    result = json.loads(args.from_json.read_text()) if args.from_json else bench(args)
    emit(result, args, report)


if __name__ == "__main__":
    main()
