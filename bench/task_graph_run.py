"""T2 of the task-graph benchmark: wall time of the group under ``dag.test()`` against one plain ``dbt build``
(the whole 500-model project, and its ``tag:g7`` slice with cosmos local beside), the runs sampled for T3."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from task_graph_harness import SLICE, WARM_TASK, Bench, log, median, spread, wait_for_quiet, write_dag
from task_graph_memory import GOAL_MEMORY, TreeSampler, floor_rss, memory_rows, task_memory

GOAL_WALL = 1.15


def child_run(dag_file: str, dag_id: str) -> dict[str, Any]:
    """``dag.test()`` of a DAG file in the dags folder; every task instance's state, start and end."""
    from airflow.dag_processing.dagbag import DagBag

    started = time.time()
    bag = DagBag(dag_file)
    if bag.import_errors:
        raise RuntimeError(f"import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    parsed = time.time()
    run = dag.test()
    ended = time.time()
    tis = [
        {"task_id": ti.task_id, "state": str(ti.state),
         "start": ti.start_date.timestamp() if ti.start_date else None,
         "end": ti.end_date.timestamp() if ti.end_date else None}
        for ti in run.get_task_instances()
    ]  # fmt: skip
    return {"state": str(run.state), "started": started, "parsed": parsed, "ended": ended, "tis": tis}


def group_span(run: dict[str, Any]) -> float:
    """First start to last end of the group's task instances (the warm-up task left out)."""
    tis = [ti for ti in run["tis"] if ti["task_id"] != WARM_TASK and ti["start"] and ti["end"]]
    return max(ti["end"] for ti in tis) - min(ti["start"] for ti in tis)


def run_phase(
    bench: Bench, reps: int, models: int, result: dict[str, Any], *, cosmos_full: bool, watcher: bool
) -> None:
    project, database, profiles, result["run_counts"] = bench.generated("run", models)
    log("T2: warm-up: plain dbt build of the whole project (partial parse warm; the slice's starting database)")
    bench.dbt(project, profiles, "build")
    built = bench.work / "built.duckdb"
    shutil.copy(database, built)
    for select in (None, SLICE):
        bench.graph(project, profiles, select)

    def fresh(copy_built: bool) -> None:
        for suffix in ("", ".wal"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        if copy_built:
            shutil.copy(built, database)

    def plain(select: str | None) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            fresh(select is not None)
            return {"wall": bench.dbt(project, profiles, "build", *(["--select", select] if select else []))}

        return go

    def dag(python: Path, path: Path, dag_id: str, select: str | None) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            fresh(select is not None)
            started = time.perf_counter()
            run, samples = bench.child(python, "run", "--dag-file", str(path), "--dag-id", dag_id, sample=TreeSampler)
            run["wall"] = time.perf_counter() - started
            run["span"] = group_span(run)
            durations = {ti["task_id"]: ti["end"] - ti["start"] for ti in run["tis"] if ti["start"] and ti["end"]}
            run["build_s"] = sum(v for k, v in durations.items() if k.endswith("dbt_build"))
            run["tasks_sum_s"] = sum(v for k, v in durations.items() if not k.endswith(("dbt_build", WARM_TASK)))
            run["memory"] = task_memory(run, samples, lambda task: not task.endswith(("dbt_build", WARM_TASK)))
            run["floor"] = floor_rss(run, samples) if samples else 0
            run["peak_tree"] = max(rss for _, rss, _ in samples) if samples else 0
            if run["state"] != "success":
                raise RuntimeError(
                    f"{dag_id} ended {run['state']}: " + str([t for t in run["tis"] if t["state"] != "success"][:5])
                )
            return run

        return go

    def cosmos(execution: str, select: str | None, suffix: str) -> Callable[[], dict[str, Any]]:
        dag_id = f"run_cosmos_{execution.lower()}_{suffix}"
        path = write_dag(
            bench, "cosmos", dag_id, project, profiles, select, True, load="DBT_MANIFEST", execution=execution
        )
        return dag(bench.cosmos, path, dag_id, select)

    def ours(select: str | None, suffix: str) -> Callable[[], dict[str, Any]]:
        dag_id = f"run_ours_{suffix}"
        return dag(bench.ours, write_dag(bench, "ours", dag_id, project, profiles, select, True), dag_id, select)

    bench.dbt(project, profiles, "parse")  # cosmos's manifest (dbt_manifest mode: its fastest offline)
    plans: dict[str, dict[str, Callable[[], dict[str, Any]]]] = {
        "whole": {"ours": ours(None, "whole"), "plain dbt build": plain(None)},
        "slice": {"ours": ours(SLICE, "slice"), "plain dbt build": plain(SLICE),
                  "cosmos local": cosmos("LOCAL", SLICE, "slice")},
    }  # fmt: skip
    if watcher:
        plans["slice"]["cosmos watcher"] = cosmos("WATCHER", SLICE, "slice")
    if cosmos_full:
        plans["whole"]["cosmos local"] = cosmos("LOCAL", None, "whole")
    result["runs"] = {}
    for scope, variants in plans.items():
        load = wait_for_quiet()
        log(f"T2 {scope}: warm-up of each variant (not counted), then {reps} repetitions; load {load:.2f}")
        failed: dict[str, str] = {}
        for name, go in list(variants.items()):
            try:
                go()
            except Exception as err:  # a cosmos mode that does not run here is reported, not fatal
                if name.startswith("cosmos"):
                    failed[name] = str(err)[-1500:]
                    log(f"  {name} failed in warm-up, left out: {str(err)[-600:]}")
                    del variants[name]
                else:
                    raise
        names = list(variants)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                runs[name].append(variants[name]())
            log(f"  rep {rep + 1}: " + ", ".join(f"{n}={runs[n][-1]['wall']:.1f}s" for n in names))
        result["runs"][scope] = {"load": load, "load_end": os.getloadavg()[0], "runs": runs, "failed": failed}
        (bench.work / "result.partial.json").write_text(json.dumps(result))


def run_report(result: dict[str, Any], lines: list[str]) -> list[tuple[str, ...]]:
    figures: list[tuple[str, ...]] = []
    counts = result["run_counts"]
    for scope, block in result["runs"].items():
        runs = block["runs"]
        what = f"the whole {counts['models']}-model project" if scope == "whole" else f"`{SLICE}` of it"
        lines += [
            f"**T2, group wall time, {what}** (`dag.test()` in a fresh process, fresh DuckDB file per run, "
            f"{len(runs['plain dbt build'])} repetitions, order rotating; load {block['load']:.2f} at the start, "
            f"{block['load_end']:.2f} at the end). *Group* is first task start to last task end; *process* adds "
            "interpreter start-up, the DagBag parse and dag.test()'s setup. dag.test() runs one task at a time, so "
            "a cosmos local group is the serialised sum of its tasks (each a dbt invocation).",
            "",
            "| Variant | Tasks | Group, median (min-max) | Process | / plain dbt build (same repetition) | "
            "Build task | Other tasks, sum |",
            "|---|---|---|---|---|---|---|",
        ]
        plain = [r["wall"] for r in runs["plain dbt build"]]
        lines.append(f"| plain `dbt build` | - | {spread(plain, 1, ' s')} | - | 1 | - | - |")
        ratios: dict[str, list[float]] = {}
        for name, values in runs.items():
            if name == "plain dbt build":
                continue
            span = [r["span"] for r in values]
            ratios[name] = [s / p for s, p in zip(span, plain, strict=True)]
            process = spread([r["wall"] for r in values], 1, " s")
            lines.append(
                f"| {name} | {len(values[0]['tis']) - 1} | {spread(span, 1, ' s')} | {process} | "
                f"{spread(ratios[name], 3, 'x')} | {spread([r.get('build_s', 0.0) for r in values], 1, ' s')} | "
                f"{spread([r.get('tasks_sum_s', 0.0) for r in values], 1, ' s')} |"
            )
        for name, failure in block["failed"].items():
            lines.append(f"| {name} | did not run: {failure.splitlines()[-1][:200] if failure else '?'} | | | | | |")
        lines.append("")
        if "ours" in ratios:
            figures.append((f"T2 group wall, {what}: ours one_process / plain `dbt build`", f"<= {GOAL_WALL}x",
                            spread(ratios["ours"], 3, "x"),
                            f"{median([r['span'] for r in runs['ours']]):.1f} s vs {median(plain):.1f} s",
                            "yes" if median(ratios["ours"]) <= GOAL_WALL else "no"))  # fmt: skip
        if "ours" in ratios:
            build = [r.get("build_s", 0.0) / p for r, p in zip(runs["ours"], plain, strict=True)]
            figures.append((f"T2 {what}: ours' `dbt_build` task alone / plain `dbt build`", "reported",
                            spread(build, 3, "x"), "the rest of the group is dag.test() running node tasks in turn",
                            "-"))  # fmt: skip
        for name in ratios:
            if name.startswith("cosmos"):
                figures.append((f"T2 group wall, {what}: {name} / plain `dbt build` (serialised by dag.test)",
                                "reported", spread(ratios[name], 2, "x"),
                                f"{median([r['span'] for r in runs[name]]):.1f} s", "-"))  # fmt: skip
        memory = memory_rows(runs, lines)
        if "ours" in memory and "cosmos local" in memory:
            ours, theirs = memory["ours"], memory["cosmos local"]
            share = ours[0] / theirs[0]
            figures.append(
                (
                    f"T3 worker memory per node task ({what}): ours one_process / cosmos local, peak RSS of "
                    "the task process tree",
                    f"<= {GOAL_MEMORY}x",
                    f"{share:.2f}x",
                    f"{ours[0]:.0f} MB vs {theirs[0]:.0f} MB",
                    "yes" if share <= GOAL_MEMORY else "no",
                )
            )
            figures.append((f"T3 worker memory per node task ({what}): above the task process floor, ours vs "
                            "cosmos local", "reported", f"{ours[1]:.0f} MB vs {theirs[1]:.0f} MB",
                            "floor: Airflow + DAG + dag.test()", "-"))  # fmt: skip
    return figures
