"""T2 on a real deployment: the wall time of a whole DbtDag in one_process mode against one plain ``dbt build``.

Usage:
  python bench/task_graph_deployment.py [--models 500] [--check-interval 2] [--variants assets,no_assets]
                                        [--json OUT]

The harness of tests/deployment (PostgreSQL metadata DB; api-server, scheduler with LocalExecutor, dag-processor,
triggerer as separate processes) runs a ``DbtDag`` of the generated project (bench/generate_project.py, DuckDB)
triggered through the REST API; the figure is the DAG run's own span (its ``start_date`` to ``end_date``). The
reference is plain ``dbt build`` of the same project with a warm partial parse, measured just before on the same
machine. Variants: ``assets`` (the default ``model_assets=True``: each model task resumes once on a worker, which
registers its asset event) and ``no_assets`` (``model_assets=False``: on Airflow 3.3 node tasks start and end in
the triggerer, no worker run at all). Each variant runs twice; the first (imports, partial-parse cache) is not
counted. Logs go to stderr; the last stdout line is the result as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (BENCH, ROOT / "tests", ROOT / "tests" / "deployment"):  # the deployment harness and pg_server
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from airflow_deployment import AirflowDeployment  # noqa: E402
from bench_output import emit, run_script  # noqa: E402
from generate_project import generate  # noqa: E402

from pg_server import PostgresServer  # noqa: E402

CONN_ID = "bench_graph_duckdb"
GOAL_WALL = 1.15
DAG = """
    from datetime import datetime
    from dlh_airflow_common.task_graph import DbtDag

    DbtDag({dag_id!r}, dbt_project_dir={project!r}, conn_id={conn!r}, model_assets={assets!r}, schedule=None,
           start_date=datetime(2025, 1, 1), catchup=False, max_active_tasks=2048,
           operator_args={{"check_interval": {interval}, "retries": 0}})
"""


def log(message: str) -> None:
    print(f"[task_graph_deployment {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def plain_build(project: Path, work: Path) -> float:
    """Seconds of plain ``dbt build`` of the project, its partial parse warm (a first build is not counted)."""
    profiles = work / "profiles"
    profiles.mkdir(exist_ok=True)
    target = {"type": "duckdb", "path": str(work / "plain.duckdb"), "threads": 4}
    (profiles / "profiles.yml").write_text(json.dumps({"bench": {"target": "dev", "outputs": {"dev": target}}}))
    dbt = Path(sys.executable).parent / "dbt"
    argv = [str(dbt), "build", "--profiles-dir", str(profiles), "--project-dir", str(project), "--quiet"]
    subprocess.run(argv, check=True, cwd=project, capture_output=True)
    started = time.monotonic()
    subprocess.run(argv, check=True, cwd=project, capture_output=True)
    return time.monotonic() - started


def build_graph(project: Path) -> int:
    """What ``dlh-dbt graph <project> --conn-id ...`` does before the DAG is parsed; the number of nodes."""
    from dlh_airflow_common.task_graph.build import ensure_graph, graph_cache_root
    from dlh_airflow_common.task_graph.cli import hook_lister
    from dlh_airflow_common.task_graph.graph_file import Selection

    lister = hook_lister(dbt_project_dir=project, conn_id=CONN_ID)
    return len(ensure_graph(project, Selection(), lister, graph_cache_root(project)).graph.nodes)


def _span(run: dict[str, Any]) -> float:
    started, ended = (datetime.fromisoformat(str(run[key])) for key in ("start_date", "end_date"))
    return (ended - started).total_seconds()


def one_run(deployment: AirflowDeployment, dag_id: str, limit: float) -> dict[str, Any]:
    run_id = deployment.trigger(dag_id)
    final, _, run = deployment.follow_run(dag_id, run_id, limit=limit)
    states: dict[str, int] = {}
    for state in final.values():
        states[state] = states.get(state, 0) + 1
    return {"state": run.get("state"), "span_s": _span(run), "tasks": len(final), "task_states": states}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-graph-deploy-"))
    try:
        project = work / "project"
        counts = generate(project, args.models)
        log(f"project: {counts}")
        plain = [plain_build(project, work) for _ in range(2)]
        log(f"plain dbt build: {plain}")
        conn = json.dumps({"conn_type": "duckdb", "host": str(work / "graph.duckdb"), "extra": {"threads": 4}})
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = conn
        nodes = build_graph(project)
        env = {f"AIRFLOW_CONN_{CONN_ID.upper()}": conn, "AIRFLOW__CORE__PARALLELISM": "64"}
        load_before = os.getloadavg()
        variants: dict[str, list[dict[str, Any]]] = {}
        with contextlib.ExitStack() as stack:
            pg = stack.enter_context(PostgresServer())
            deployment = stack.enter_context(AirflowDeployment(pg, env=env, pythonpath=[ROOT / "src"]))
            for variant in args.variants:
                dag_id = f"bench_graph_{variant}"
                source = DAG.format(dag_id=dag_id, project=str(project), conn=CONN_ID, assets=variant == "assets",
                                    interval=args.check_interval)  # fmt: skip
                deployment.write_dag(dag_id, source)
                deployment.wait_parsed(dag_id, limit=600)
                runs = [one_run(deployment, dag_id, args.limit) for _ in range(2)]
                log(f"{variant}: {runs}")
                variants[variant] = runs
        return {"models": args.models, "nodes": nodes, "counts": counts, "plain_s": plain, "variants": variants,
                "check_interval": args.check_interval, "load_before": load_before,
                "load_after": os.getloadavg()}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any]) -> tuple[list[tuple[str, ...]], str]:
    """Summary rows (figure, goal, measured) and the docs/benchmarks.md section."""
    plain = result["plain_s"][-1]
    rows: list[tuple[str, ...]] = []
    lines = [
        f"**T2 on a real deployment** (LocalExecutor scheduler, dag-processor, triggerer, api-server; "
        f"{result['models']} generated models, {result['nodes']} graph nodes, DuckDB, `check_interval` "
        f"{result['check_interval']} s; load {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} "
        "after). The DAG run's span against plain `dbt build` (warm partial parse) just before; the second run of "
        "each variant counts.",
        "",
        "| Variant | Run state | Tasks | DAG run span | / plain `dbt build` |",
        "|---|---|---|---|---|",
        f"| plain `dbt build` | - | - | {plain:.1f} s | 1 |",
    ]
    for variant, runs in result["variants"].items():
        run = runs[-1]
        ratio = run["span_s"] / plain
        lines.append(f"| {variant} | {run['state']} | {run['tasks']} | {run['span_s']:.1f} s | {ratio:.2f}x |")
        rows.append((f"T2 deployment, {variant}: DAG run span / plain `dbt build`", f"<= {GOAL_WALL}x",
                     f"{ratio:.2f}x ({run['span_s']:.0f} s vs {plain:.0f} s)"))  # fmt: skip
    return rows, "\n".join(lines) + "\n"


def measure(env: dict[str, str], work: Path, *, quick: bool = False) -> tuple[list[tuple[str, ...]], str]:
    """For bench/run_bench.py: this script in a fresh interpreter; its rows and section."""
    return report(run_script(__file__, ["--models", "100"] if quick else [], env, work, timeout=7200))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--check-interval", type=float, default=2.0)
    parser.add_argument("--variants", type=lambda v: v.split(","), default=["assets", "no_assets"])
    parser.add_argument("--limit", type=float, default=3600.0, help="Seconds a DAG run may take.")
    parser.add_argument("--json", type=Path, help="Also write the result here.")
    parser.add_argument("--markdown", action="store_true", help="Print the docs/benchmarks.md rows and section.")
    args = parser.parse_args()
    emit(bench(args), args, report)


if __name__ == "__main__":
    main()
