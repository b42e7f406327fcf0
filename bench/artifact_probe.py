"""Load and summarise one dbt artifact in a fresh interpreter; print time and peak-RSS growth as JSON.

Usage: python bench/artifact_probe.py PATH {run_results|manifest} {summary|whole|stdlib}

``summary`` is what a run does: for run results, the hook's own path after dbt ends (``summarize_run``:
the summary plus the compressed copy behind ``DbtTaskResult.run_results``); for a
manifest, ``summarize_manifest``. ``whole`` decodes the whole document with ``load_artifact`` (what
``result.run_results`` and ``get_manifest()`` do when asked) and counts statuses or resource types;
``stdlib`` is ``json.load`` of the whole file plus the same count. Peak RSS
growth is the peak RSS (VmHWM, reset just before) minus the RSS before the work. The timing includes a final
``gc.collect()``, so no variant looks faster by leaving collector work to its caller.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _reset_peak() -> None:
    """Forget the peak so far: the interpreter's start-up, and the parent's RSS that exec carries over."""
    Path("/proc/self/clear_refs").write_text("5")


def stdlib_run_results(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    return Counter(str(r.get("status")) for r in data["results"])


def stdlib_manifest(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    return Counter(str(n.get("resource_type")) for n in data["nodes"].values())


def main() -> None:
    path, kind, variant = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    from dlh_airflow_common.dbt import artifacts

    def whole() -> Any:
        data = artifacts.load_artifact(path)
        if kind == "run_results":
            return Counter(str(r.get("status")) for r in data["results"])
        return Counter(str(n.get("resource_type")) for n in data["nodes"].values())

    def summary() -> Any:
        if kind == "run_results":
            summary, kept = artifacts.summarize_run(path.parent)
            return {**summary.status_counts, "_kept_bytes": len(kept._compressed or b"")}
        return artifacts.summarize_manifest(path).resource_counts

    def stdlib() -> Any:
        return stdlib_run_results(path) if kind == "run_results" else stdlib_manifest(path)

    work = {"summary": summary, "whole": whole, "stdlib": stdlib}[variant]
    gc.collect()
    _reset_peak()
    before = _status_bytes("VmRSS")
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = work()
    gc.collect()  # collections a paused collector deferred are paid here, inside the measurement
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = _status_bytes("VmHWM")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "peak_growth": max(0, peak - before),
                "summary": dict(summary),
            }
        )
    )


if __name__ == "__main__":
    main()
