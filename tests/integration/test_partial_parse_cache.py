"""The partial-parse cache with real dbt: isolated runs reuse the parse, keys stay apart, damage costs a parse.

Whether dbt used the seeded parse is read from dbt's own debug log of each run (kept for the test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.partial_parse import PARTIAL_PARSE_FILE, looks_like_msgpack
from dlh_airflow_common.hooks.dbt import DbtHook, DbtTaskResult
from modes import MODES
from repo_paths import REPO_ROOT

pytestmark = pytest.mark.integration

CHILD = REPO_ROOT / "tests" / "hook_child.py"
PARTIAL = "Partial parsing enabled"
FULL = ("Unable to do partial parsing", "Failed to load parsed file")


@pytest.fixture
def conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_PP_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "pp.db")}))
    return "pp_duckdb"


def parse_kind(result: DbtTaskResult | dict[str, Any]) -> str:
    """ "partial" or "full", from the run's dbt.log."""
    run_dir = result["run_dir"] if isinstance(result, dict) else result.run_dir
    log = (Path(run_dir) / "logs" / "dbt.log").read_text(encoding="utf-8")
    full, partial = any(marker in log for marker in FULL), PARTIAL in log
    assert full != partial, f"expected exactly one parse mode in {run_dir}"
    return "partial" if partial else "full"


def entries(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "partial_parse").glob("*/*.msgpack"))


def run(
    project: Path, conn: str, cache_dir: Path, command: str = "parse", *, mode: str = "in-process", **kwargs: Any
) -> DbtTaskResult:
    """One hook run with the cache in ``cache_dir``. The cache is the hook's, around dbt whichever way it runs:
    test_isolated_runs_reuse_the_parse runs it in every mode, the other tests in-process (no interpreter to start).
    """
    hook_kwargs = {**MODES[mode], **{key: kwargs.pop(key) for key in ("target",) if key in kwargs}}
    hook = DbtHook(project, conn_id=conn, cache_dir=cache_dir, keep_target_artifacts=True, **hook_kwargs)
    result = hook.run_dbt_task(command, **kwargs)
    assert result.success, result.error
    return result


@pytest.mark.parametrize("mode", MODES)
def test_isolated_runs_reuse_the_parse(mode: str, example_project: Path, conn: str, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = run(example_project, conn, cache_dir, mode=mode)
    second = run(example_project, conn, cache_dir, "build", select="+customers", mode=mode)
    assert first.run_dir != second.run_dir
    assert (parse_kind(first), parse_kind(second)) == ("full", "partial")
    [entry] = entries(cache_dir)
    assert looks_like_msgpack(entry)
    assert (Path(second.target_path) / PARTIAL_PARSE_FILE).read_bytes() == entry.read_bytes()
    assert not (example_project / "target" / PARTIAL_PARSE_FILE).exists(), "only run dirs and the cache hold it"


def test_targets_and_vars_keep_separate_entries(example_project: Path, conn: str, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    sequence = [
        ({"target": "dev"}, "full"),
        ({"target": "prod"}, "full"),
        ({"target": "dev"}, "partial"),  # prod did not evict dev
        ({"target": "dev", "vars": {"revenue_lookback_days": 9}}, "full"),
        ({"target": "dev"}, "partial"),
        ({"target": "dev", "vars": {"revenue_lookback_days": 9}}, "partial"),
    ]
    kinds = [parse_kind(run(example_project, conn, cache_dir, **dict(options))) for options, _ in sequence]
    assert kinds == [expected for _, expected in sequence]
    assert len(entries(cache_dir)) == 3


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_entry_costs_only_a_full_parse(damage: str, example_project: Path, conn: str, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    run(example_project, conn, cache_dir)
    [entry] = entries(cache_dir)
    good = entry.read_bytes()
    entry.write_bytes({"truncated": good[: len(good) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    os.utime(entry, ns=(1, 1))  # as if written long ago: the repairing run may replace it

    repaired = run(example_project, conn, cache_dir, "ls", select="customers")
    assert parse_kind(repaired) == "full"
    assert "model.shop.customers" in json.loads((Path(repaired.target_path) / "manifest.json").read_text())["nodes"]
    assert looks_like_msgpack(entry) and len(entry.read_bytes()) > len(good) // 2, "the full parse replaced it"
    assert parse_kind(run(example_project, conn, cache_dir)) == "partial"


def test_a_changed_project_is_reparsed_partially(example_project: Path, conn: str, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    run(example_project, conn, cache_dir)
    model = next(example_project.glob("models/**/customers.sql"))
    model.write_text(model.read_text() + "\n-- changed\n")
    changed = run(example_project, conn, cache_dir)
    log = (Path(changed.run_dir) / "logs" / "dbt.log").read_text()
    assert "0 files deleted, 0 files added, 1 files changed" in log
    manifest = json.loads((Path(changed.target_path) / "manifest.json").read_text())
    assert "-- changed" in manifest["nodes"]["model.shop.customers"]["raw_code"]


def test_project_copies_never_share_an_entry(example_project: Path, conn: str, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    other = tmp_path / "copy" / "shop"
    shutil.copytree(example_project, other)
    run(example_project, conn, cache_dir)
    copy_run = run(other, conn, cache_dir)
    assert parse_kind(copy_run) == "full", "a parse of another copy embeds that copy's paths"
    manifest = json.loads((Path(copy_run.target_path) / "manifest.json").read_text())
    assert manifest["nodes"]["model.shop.customers"]["original_file_path"].startswith("models")
    assert len({e.parent for e in entries(cache_dir)}) == 2


def test_cache_can_be_turned_off(example_project: Path, conn: str, tmp_path: Path) -> None:
    hook = DbtHook(example_project, conn_id=conn, partial_parse_cache=False, keep_target_artifacts=True,
                   **MODES["in-process"])  # fmt: skip
    for _ in range(2):
        result = hook.run_dbt_task("parse")
        assert parse_kind(result) == "full"
    assert not (example_project / "target" / ".dlh_cache" / "partial_parse").exists()


def _child(spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(spec)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_eight_concurrent_runs_share_one_entry(example_project: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    env = os.environ.copy()
    env["AIRFLOW_CONN_PAR"] = json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "db.duckdb")})

    def wave(name: str, command: str) -> list[dict[str, Any]]:
        children = []
        for i in range(8):
            # parse and ls never open the database, so all eight share one profile, hence one cache key.
            spec = {
                "hook": {"dbt_project_dir": str(example_project), "conn_id": "par", "cache_dir": str(cache_dir),
                         "keep_target_artifacts": True},
                "run": {"command": command, "run_name": f"run_{name}_{i}"},
            }  # fmt: skip
            children.append(_child(spec, env))
        results = []
        for child in children:
            out, err = child.communicate(timeout=600)
            assert child.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results

    cold = wave("cold", "parse")
    assert all(r["success"] for r in cold)
    assert len({r["run_dir"] for r in cold}) == 8
    [entry] = entries(cache_dir)
    assert looks_like_msgpack(entry)
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")]

    warm = wave("warm", "ls")
    assert all(r["success"] for r in warm)
    assert [parse_kind(r) for r in warm] == ["partial"] * 8
    manifests = [json.loads((Path(r["target_path"]) / "manifest.json").read_text()) for r in warm]
    assert all("model.shop.customers" in m["nodes"] for m in manifests)
    assert len({m["metadata"]["invocation_id"] for m in manifests}) == 8, "each run wrote its own manifest"


def test_read_only_project_keeps_its_cache_outside(example_project: Path, tmp_path: Path) -> None:
    """A read-only project mount: the cache lands under the private temp root and the second run uses it."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a read-only bind mount")
    mount_point = tmp_path / "ro_project"
    mount_point.mkdir()
    env = os.environ.copy()
    env["AIRFLOW_CONN_RO_PP"] = json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "ro.duckdb")})
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    script = (
        f'mount --bind "{example_project}" "{mount_point}" && mount -o remount,bind,ro "{mount_point}" && exec "$@"'
    )
    kinds = []
    for i in range(2):
        spec = {
            "hook": {"dbt_project_dir": str(mount_point), "conn_id": "ro_pp", "keep_target_artifacts": True},
            "run": {"command": "parse", "run_name": f"run_ro_{i}"},
        }
        cmd = ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, str(CHILD), json.dumps(spec)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["success"], result["error"]
        assert result["run_dir"].startswith(str(tmp_path / "tmp"))
        kinds.append(parse_kind(result))
    assert kinds == ["full", "partial"]
    assert list((tmp_path / "tmp").glob("dlh-airflow-dbt-*/.dlh_cache/partial_parse/*/*.msgpack"))
    assert not (example_project / "target").exists() or not list((example_project / "target").iterdir())


def test_an_unusable_cache_dir_costs_only_the_cache(example_project: Path, conn: str, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache_is_a_file"
    not_a_dir.write_text("")
    result = run(example_project, conn, not_a_dir)
    assert parse_kind(result) == "full"
    assert not_a_dir.is_file()


def _detached(project: Path, conn: str, cache_dir: Path) -> DbtTaskResult:
    """A detached run through the hook, collected on this host once its runner reported it finished."""
    import time

    from dlh_airflow_common.dbt.channel import ChannelReader, ChannelSpec

    hook = DbtHook(project, conn_id=conn, cache_dir=cache_dir, keep_target_artifacts=True)
    process = hook.start_detached("build", select="+customers")
    reader = ChannelReader(ChannelSpec.from_dict(process.channel) or ChannelSpec(process.run_dir))
    deadline = time.monotonic() + 300
    while not ((status := reader.status()) is not None and status.finished) and time.monotonic() < deadline:
        time.sleep(0.2)
    return hook.finish_detached({"status": "finished", **process.to_dict()})


def test_detached_runs_are_seeded_and_publish_their_parse(example_project: Path, conn: str, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = _detached(example_project, conn, cache_dir)
    [entry] = entries(cache_dir)  # published by the collecting side, from the runner's run dir
    second = _detached(example_project, conn, cache_dir)
    assert (parse_kind(first), parse_kind(second)) == ("full", "partial")
    assert (Path(second.target_path) / PARTIAL_PARSE_FILE).read_bytes() == entry.read_bytes()
