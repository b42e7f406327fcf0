"""Isolation: concurrent tries of one project never share artifacts; a read-only project is never written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from repo_paths import REPO_ROOT

pytestmark = pytest.mark.integration

CHILD = REPO_ROOT / "tests" / "hook_child.py"


def _child_cmd(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, str(CHILD), json.dumps(spec)]


def _child_env(conns: dict[str, Path]) -> dict[str, str]:
    env = os.environ.copy()
    for conn_id, database in conns.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({"conn_type": "duckdb", "host": str(database)})
    return env


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def test_four_concurrent_processes_keep_their_own_artifacts(example_project: Path, tmp_path: Path) -> None:
    selections = {"raw_customers": ["seed.shop.raw_customers"], "raw_orders": ["seed.shop.raw_orders"],
                  "raw_payments": ["seed.shop.raw_payments"],
                  "raw_customers raw_payments": ["seed.shop.raw_customers", "seed.shop.raw_payments"]}  # fmt: skip
    # One DuckDB file per task: DuckDB allows one writing process per file; the project dir is shared.
    conns = {f"iso_{i}": tmp_path / f"db{i}.duckdb" for i in range(len(selections))}
    procs = []
    for (conn_id, _), (selection, _) in zip(conns.items(), selections.items(), strict=True):
        spec = {
            "hook": {"dbt_project_dir": str(example_project), "conn_id": conn_id, "keep_target_artifacts": True},
            "run": {"command": "seed", "select": selection, "run_name": f"run_concurrent_{conn_id}"},
        }
        procs.append(subprocess.Popen(_child_cmd(spec), env=_child_env(conns), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(_last_json(out))

    run_dirs = {r["run_dir"] for r in results}
    assert len(run_dirs) == 4
    for result, expected in zip(results, selections.values(), strict=True):
        assert result["success"], result["error"]
        assert sorted(result["nodes"]) == expected
        run_results = json.loads((Path(result["target_path"]) / "run_results.json").read_text())
        assert sorted(r["unique_id"] for r in run_results["results"]) == expected
        assert run_results["metadata"]["invocation_id"] == result["invocation_id"]
        log_text = (Path(result["run_dir"]) / "logs" / "dbt.log").read_text()
        assert result["invocation_id"] in log_text
        for other in results:
            if other is not result:
                assert other["invocation_id"] not in log_text
        assert {"target/manifest.json", "target/run_results.json", "logs/dbt.log"} <= set(result["files"])
    invocation_ids = {r["invocation_id"] for r in results}
    assert len(invocation_ids) == 4


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_read_only_project_runs_and_stays_untouched(example_project: Path, tmp_path: Path) -> None:
    """The project is mounted read-only (as in a container); dbt runs and nothing is written into it."""
    mount_point = tmp_path / "ro_project"
    mount_point.mkdir()
    database = tmp_path / "ro.duckdb"
    spec = {
        "hook": {"dbt_project_dir": str(mount_point), "conn_id": "ro_duckdb"},
        "run": {"command": "build", "run_name": "run_read_only_check"},
    }
    before = _tree(example_project)
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.fail("unshare is needed to mount the project read-only as root")
        # A private mount namespace: the read-only bind mount disappears with the process.
        script = (
            f'mount --bind "{example_project}" "{mount_point}" && '
            f'mount -o remount,bind,ro "{mount_point}" && '
            f'touch "{mount_point}/probe" 2>/dev/null && echo "mount is writable" >&2 && exit 97; '
            f'exec "$@"'
        )
        cmd = ["unshare", "-m", "sh", "-c", script, "sh", *_child_cmd(spec)]
    else:
        mount_point.rmdir()
        mount_point.symlink_to(example_project)
        subprocess.run(["chmod", "-R", "a-w", str(example_project)], check=True)
        cmd = _child_cmd(spec)
    try:
        proc = subprocess.run(cmd, env=_child_env({"ro_duckdb": database}), capture_output=True, text=True, timeout=300)
    finally:
        if os.geteuid() != 0:
            subprocess.run(["chmod", "-R", "u+w", str(example_project)], check=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _last_json(proc.stdout)
    assert result["success"], result["error"]
    assert len(result["nodes"]) >= 30
    assert not result["run_dir"].startswith(str(mount_point)), "run dir must fall back outside the project"
    assert Path(result["run_dir"]).name == "run_read_only_check"
    assert not Path(result["run_dir"]).exists(), "fallback run dir is cleaned up too"
    assert _tree(example_project) == before, "nothing may be written into a read-only project"
