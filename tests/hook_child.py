"""Run one DbtHook command in a fresh process, as an Airflow task would, and print the result as JSON.

Usage: python hook_child.py '<json spec>' where the spec holds the DbtHook kwargs under "hook" and the
run_dbt_task kwargs under "run". The last stdout line is the JSON result.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main() -> None:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from dlh_airflow_common.hooks.dbt import DbtHook

    seen: dict[str, list[str]] = {}

    def record(result: object) -> None:
        run_dir = Path(result.run_dir)  # type: ignore[attr-defined]
        seen["files"] = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))

    hook = DbtHook(**spec["hook"], logger=logging.getLogger("child"))
    result = hook.run_dbt_task(**spec["run"], post_run=record, raise_on_failure=False)
    print(
        json.dumps(
            {
                "success": result.success,
                "run_dir": result.run_dir,
                "target_path": result.target_path,
                "nodes": [n.unique_id for n in result.summary.nodes],
                "invocation_id": result.summary.invocation_id,
                "files": seen.get("files", []),
                "error": str(result.error) if result.error else None,
            }
        )
    )


if __name__ == "__main__":
    main()
