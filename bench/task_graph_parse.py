"""T1 of the task-graph benchmark: DAG parse time and peak RSS of one task group of the 1,000-model project,
ours against cosmos's ``dbt_manifest`` and ``dbt_ls`` load modes, each parse a fresh interpreter running ``DagBag``."""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from task_graph_harness import Bench, log, median, spread, wait_for_quiet, write_dag

GOAL_PARSE_S = 0.3
GOAL_PARSE_MB = 60.0
GOAL_PARSE_SPEEDUP = 10.0


def child_baseline() -> dict[str, Any]:
    """What a DAG processor holds before it parses a file: Airflow and DagBag imported."""
    from airflow.dag_processing.dagbag import DagBag  # noqa: F401

    return {"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def child_parse(dag_file: str) -> dict[str, Any]:
    """Parse one DAG file with DagBag: seconds, CPU seconds and peak RSS of this process."""
    from airflow.dag_processing.dagbag import DagBag

    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, started = time.process_time(), time.perf_counter()
    bag = DagBag(dag_folder=dag_file, include_examples=False) if _has_include_examples() else DagBag(dag_file)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
    if bag.import_errors:
        raise RuntimeError(f"import errors: {bag.import_errors}")
    tasks = sum(len(dag.tasks) for dag in bag.dags.values())
    return {"seconds": seconds, "cpu_seconds": cpu, "tasks": tasks, "maxrss_kb_before": before.ru_maxrss,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}  # fmt: skip


def _has_include_examples() -> bool:
    import inspect

    from airflow.dag_processing.dagbag import DagBag

    return "include_examples" in inspect.signature(DagBag.__init__).parameters


def parse_phase(bench: Bench, reps: int, models: int, result: dict[str, Any]) -> None:
    project, _, profiles, result["parse_counts"] = bench.generated("parse", models)
    log("T1: dbt parse (cosmos's manifest) and dlh-dbt graph (our graph file)")
    bench.dbt(project, profiles, "parse")
    bench.graph(project, profiles, None)
    files = {
        "ours": (bench.ours, write_dag(bench, "ours", "parse_ours", project, profiles, None)),
        "cosmos dbt_manifest": (bench.cosmos, write_dag(bench, "cosmos", "parse_cosmos_manifest", project, profiles,
                                                        None, load="DBT_MANIFEST", execution="LOCAL")),
        "cosmos dbt_ls (cache warm)": (bench.cosmos, write_dag(bench, "cosmos", "parse_cosmos_ls", project,
                                                               profiles, None, load="DBT_LS", execution="LOCAL")),
    }  # fmt: skip
    log("T1: warming cosmos's dbt ls cache (one parse, not counted)")
    cold = bench.child(bench.cosmos, "parse", "--dag-file", str(files["cosmos dbt_ls (cache warm)"][1]))[0]
    result["cosmos_dbt_ls_cold_s"] = cold["seconds"]
    result["parse_load"] = wait_for_quiet()
    log(f"T1: {reps} repetitions, load {result['parse_load']:.2f}")
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in files}
    baselines: dict[str, list[int]] = {"ours": [], "cosmos": []}
    names = list(files)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            python, path = files[name]
            samples[name].append(bench.child(python, "parse", "--dag-file", str(path))[0])
        for side, python in (("ours", bench.ours), ("cosmos", bench.cosmos)):
            baselines[side].append(bench.child(python, "baseline")[0]["maxrss_kb"])
        log(f"  rep {rep + 1}: " + ", ".join(f"{n}={samples[n][-1]['seconds']:.2f}s" for n in names))
    result["parse"] = samples
    result["parse_baselines_kb"] = baselines
    result["parse_load_end"] = os.getloadavg()[0]


def parse_report(result: dict[str, Any], lines: list[str]) -> list[tuple[str, ...]]:
    parse, base = result["parse"], result["parse_baselines_kb"]
    counts = result["parse_counts"]
    mb = {side: median(values) / 1024 for side, values in base.items()}
    lines += [
        f"**T1, DAG parse** of one task group of the {counts['models']}-model project ({counts['tests']} tests), "
        "`DagBag(file)` in a fresh interpreter per measurement, the variants rotating; "
        f"load average {result['parse_load']:.2f} at the start, {result['parse_load_end']:.2f} at the end. "
        f"Baseline peak RSS (Airflow and DagBag imported): ours {mb['ours']:.0f} MB, cosmos's virtualenv "
        f"{mb['cosmos']:.0f} MB. cosmos's dbt_ls cache was warmed by one parse of "
        f"{result['cosmos_dbt_ls_cold_s']:.1f} s.",
        "",
        "| Variant | Tasks | Parse, best / median (min-max) | CPU, median | Peak RSS, median | Peak RSS - baseline |",
        "|---|---|---|---|---|---|",
    ]
    stats: dict[str, tuple[float, float, float]] = {}
    for name, samples in parse.items():
        seconds = [s["seconds"] for s in samples]
        rss = [s["maxrss_kb"] / 1024 for s in samples]
        delta = [r - mb["cosmos" if name.startswith("cosmos") else "ours"] for r in rss]
        stats[name] = (min(seconds), median(seconds), median(delta))
        lines.append(f"| {name} | {samples[0]['tasks']} | {min(seconds):.2f} s / {spread(seconds, 2, ' s')} | "
                     f"{median([s['cpu_seconds'] for s in samples]):.2f} s | {median(rss):.0f} MB | "
                     f"{spread(delta, 0, ' MB')} |")  # fmt: skip
    lines.append("")
    ours = stats.pop("ours")
    fastest_name, fastest = min(stats.items(), key=lambda item: item[1][1])
    speedup = fastest[1] / ours[1]
    ours_rss = median([s["maxrss_kb"] / 1024 for s in parse["ours"]])
    return [
        (f"T1 parse, {counts['models']}-model project: ours (DbtTaskGroup, warm graph file)", f"<= {GOAL_PARSE_S} s",
         f"{ours[1]:.3f} s median, best {ours[0]:.3f} s", f"load {result['parse_load']:.2f}",
         "yes" if ours[1] <= GOAL_PARSE_S else "no"),
        (f"T1 parse, {counts['models']}-model project: ours, peak RSS over an Airflow-only interpreter",
         f"<= {GOAL_PARSE_MB:.0f} MB", f"{ours[2]:.0f} MB", f"{ours_rss:.0f} MB absolute",
         "yes" if ours[2] <= GOAL_PARSE_MB else "no"),
        (f"T1 parse: cosmos's fastest mode ({fastest_name}) / ours", f">= {GOAL_PARSE_SPEEDUP:.0f}x",
         f"{speedup:.1f}x", f"{fastest[1]:.2f} s vs {ours[1]:.3f} s (medians)",
         "yes" if speedup >= GOAL_PARSE_SPEEDUP else "no"),
    ]  # fmt: skip
