"""T3 of the task-graph benchmark: worker memory per node task, from RSS samples of the ``dag.test()`` process
tree taken while the group runs (``TreeSampler``) and each task instance's start and end."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from task_graph_harness import WARM_TASK, median

SAMPLE_S = 0.05
GOAL_MEMORY = 0.5


class TreeSampler:
    """Every 50 ms, the summed RSS of a process and its descendants (shared pages count in each process)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []  # (epoch, bytes, processes)
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        return tree

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, count = 0, 0
            for pid in self._tree():
                try:
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * self._page
                    count += 1
                except (OSError, IndexError, ValueError):
                    pass
            self.samples.append((time.time(), total, count))
            self._stop.wait(SAMPLE_S)

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def task_memory(run: dict[str, Any], samples: list[tuple[float, int, int]], keep: Callable[[str], bool]) -> list:
    """Per kept task instance: (peak tree RSS while it ran, growth over the sample before it started), bytes."""
    out = []
    for ti in run["tis"]:
        if not keep(ti["task_id"]) or ti["start"] is None or ti["end"] is None:
            continue
        inside = [rss for at, rss, _ in samples if ti["start"] - SAMPLE_S <= at <= ti["end"] + SAMPLE_S]
        before = [rss for at, rss, _ in samples if at < ti["start"]]
        if inside:
            out.append((max(inside), max(inside) - (before[-1] if before else inside[0])))
    return out


def floor_rss(run: dict[str, Any], samples: list[tuple[float, int, int]]) -> int:
    """The tree's RSS just before the group's first task started (Airflow, the DAG and dag.test() loaded)."""
    first = min(ti["start"] for ti in run["tis"] if ti["task_id"] != WARM_TASK and ti["start"])
    before = [rss for at, rss, _ in samples if at < first]
    return before[-1] if before else samples[0][1]


def memory_rows(runs: dict[str, list[dict[str, Any]]], lines: list[str]) -> dict[str, tuple[float, float]]:
    """T3 rows: per-node-task peak of the process tree and its growth, medians over every task of every run."""
    out: dict[str, tuple[float, float]] = {}
    rows = []
    for name, values in runs.items():
        if name == "plain dbt build":
            continue
        peaks = [peak / 2**20 for r in values for peak, _ in r["memory"]]
        growth = [grow / 2**20 for r in values for _, grow in r["memory"]]
        above = [(peak - r.get("floor", 0)) / 2**20 for r in values for peak, _ in r["memory"]]
        if not peaks:
            continue
        out[name] = (median(peaks), median(above))
        floor = median([r.get("floor", 0) / 2**20 for r in values])
        rows.append(f"| {name} | {len(peaks)} | {median(peaks):.0f} MB (max {max(peaks):.0f}) | {floor:.0f} MB | "
                    f"{median(above):.0f} MB (max {max(above):.0f}) | {median(growth):.0f} MB (max {max(growth):.0f}) "
                    f"| {median([r['peak_tree'] / 2**20 for r in values]):.0f} MB |")  # fmt: skip
    if rows:
        lines += [
            "T3, worker memory per node task: RSS of the `dag.test()` process and its descendants sampled every "
            f"{SAMPLE_S * 1000:.0f} ms (a detached dbt is not a descendant); per task instance other than the build, "
            "the peak while it ran. *Floor* is the tree just before the group's first task (Airflow, the parsed DAG "
            "and dag.test()'s machinery, after the warm-up task): what any task process holds. *Above floor* is "
            "what the task itself added; *growth* is over the sample before that task started (cosmos keeps dbt "
            "loaded in the dag.test() process after its first task, which a fresh worker task process would not).",
            "",
            "| Variant | Task instances | Peak tree RSS per task, median | Floor | Above floor, median | "
            "Growth during the task, median | Peak of the whole run |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    return out
