"""Run one DbtHook command in a fresh interpreter, as an Airflow task would, and print timings as JSON.

Usage: python bench/hook_driver.py '<json spec>' with keys: project, conn_id, command, select, threads, vars,
mode ("in-process"|"subprocess"), cache (bool), cache_dir, run_name, keep (bool). The last stdout line is
JSON: ``import_s`` (interpreter start to DbtHook imported: Airflow and this package, which a worker has
already paid), ``run_s`` (run_dbt_task alone), ``run_cpu_s`` (its CPU time, dbt's included), ``dbt_s``
(dbt itself, from starting it to its exit: ``run_s - dbt_s`` is the hook's own work around dbt),
``success``, ``nodes``, ``statuses``, ``run_dir``, ``invocation_id``, ``node_ids``.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (dbt in subprocess mode)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from dlh_airflow_common.dbt.invocation import DbtInvocation
    from dlh_airflow_common.hooks.dbt import DbtHook

    imported = time.perf_counter()
    dbt_seconds: list[float] = []
    run_dbt = DbtInvocation.run

    def timed_run(self: DbtInvocation, timeout: float | None = None) -> Any:
        """Time dbt itself (process start to exit), so the hook's own work around it can be told apart."""
        started = time.perf_counter()
        try:
            return run_dbt(self, timeout)
        finally:
            dbt_seconds.append(time.perf_counter() - started)

    DbtInvocation.run = timed_run  # type: ignore[method-assign]
    hook = DbtHook(
        spec["project"],
        conn_id=spec["conn_id"],
        invocation_mode=spec.get("mode", "subprocess"),
        partial_parse_cache=spec.get("cache", True),
        cache_dir=spec.get("cache_dir"),
        keep_target_artifacts=spec.get("keep", False),
        retry_limit=0,
        logger=logging.getLogger("bench.hook"),
    )
    begin, cpu_begin = time.perf_counter(), cpu_seconds()
    result = hook.run_dbt_task(
        spec["command"],
        select=spec.get("select"),
        threads=spec.get("threads"),
        vars=spec.get("vars"),
        run_name=spec.get("run_name"),
        raise_on_failure=False,
    )
    end, cpu_end = time.perf_counter(), cpu_seconds()
    print(
        json.dumps(
            {
                "import_s": imported - STARTED,
                "run_s": end - begin,
                "run_cpu_s": cpu_end - cpu_begin,
                "dbt_s": sum(dbt_seconds),
                "success": result.success,
                "error": str(result.error) if result.error else None,
                "nodes": result.summary.node_count,
                "statuses": result.summary.status_counts,
                "run_dir": result.run_dir,
                "invocation_id": result.summary.invocation_id,
                "node_ids": sorted(n.unique_id for n in result.summary.nodes),
            }
        )
    )


if __name__ == "__main__":
    main()
