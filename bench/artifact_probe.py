"""Load and summarise one dbt artifact in a fresh interpreter; print time and peak-RSS growth as JSON.

Usage: python bench/artifact_probe.py PATH {run_results|manifest} {full|stream|stdlib}

``full`` is what the hook does (``load_artifact``, then ``RunSummary.from_artifacts`` for run results or
a count by resource type for a manifest); ``stream`` reads the file item by item (``RunSummary.from_file``,
``summarize_manifest``); ``stdlib`` is ``json.load`` of the whole file plus the same count. Peak RSS
growth is ``ru_maxrss`` after the work minus the RSS before it.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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

    def ours_full() -> Any:
        data = artifacts.load_artifact(path)
        if kind == "run_results":
            return artifacts.RunSummary.from_artifacts(data).status_counts
        return Counter(str(n.get("resource_type")) for n in data["nodes"].values())

    def ours_stream() -> Any:
        if kind == "run_results":
            return artifacts.RunSummary.from_file(path).status_counts
        return artifacts.summarize_manifest(path).resource_counts

    def stdlib() -> Any:
        return stdlib_run_results(path) if kind == "run_results" else stdlib_manifest(path)

    work = {"full": ours_full, "stream": ours_stream, "stdlib": stdlib}[variant]
    before = _rss_bytes()
    started = time.perf_counter()
    summary = work()
    seconds = time.perf_counter() - started
    peak = _peak_bytes()
    print(json.dumps({"seconds": seconds, "peak_growth": max(0, peak - before), "summary": dict(summary)}))


if __name__ == "__main__":
    main()
