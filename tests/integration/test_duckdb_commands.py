"""Every command the example DAG can run, with real dbt on a real DuckDB file, in both invocation modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dlh_airflow_common.hooks.dbt import DbtHook, DbtTaskResult
from modes import MODES

pytestmark = pytest.mark.integration


@pytest.fixture
def duckdb_conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    database = tmp_path / "shop.duckdb"
    monkeypatch.setenv("AIRFLOW_CONN_TEST_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(database)}))
    return "test_duckdb", database


def _tables(database: Path) -> dict[str, int]:
    with duckdb.connect(str(database), read_only=True) as con:
        names = [
            f"{schema}.{name}"
            for schema, name in con.execute(
                "select table_schema, table_name from information_schema.tables order by 1, 2"
            ).fetchall()
        ]
        return {name: con.execute(f"select count(*) from {name}").fetchone()[0] for name in names}  # type: ignore[index]


class _Seen:
    """Records what existed in the run dir while the run was live (post_run sees it before cleanup)."""

    def __init__(self) -> None:
        self.files: dict[str, set[str]] = {}

    def __call__(self, result: DbtTaskResult) -> None:
        target = Path(result.target_path)
        self.files[result.command] = {p.name for p in target.iterdir()} | {
            p.name for p in (Path(result.run_dir) / "logs").iterdir()
        }


@pytest.mark.parametrize("mode", MODES)
def test_every_example_command(mode: str, example_project: Path, duckdb_conn: tuple[str, Path]) -> None:
    conn_id, database = duckdb_conn
    hook = DbtHook(example_project, conn_id=conn_id, **MODES[mode])
    seen = _Seen()

    def run(command: str, **kwargs: Any) -> DbtTaskResult:
        result = hook.run_dbt_task(command, post_run=seen, **kwargs)
        assert result.success, f"dbt {command} failed in {mode} mode: {result.error}"
        assert result.error is None and result.return_code == 0
        assert not Path(result.run_dir).exists(), "run dir must be removed after the run"
        return result

    seed = run("seed")
    assert seed.summary.status_counts == {"success": 3}
    assert _tables(database)["main.raw_orders"] > 0

    models = run("run")
    assert models.summary.node_count >= 5
    assert set(models.summary.status_counts) == {"success"}
    assert "manifest.json" in seen.files["run"] and "dbt.log" in seen.files["run"]

    tests = run("test")
    assert set(tests.summary.status_counts) == {"pass"}
    assert tests.summary.node_count >= 10

    snapshot = run("snapshot")
    assert snapshot.summary.status_counts == {"success": 1}

    build = run("build", select="+customers", threads=2, vars={"revenue_lookback_days": 3})
    built = {n.unique_id for n in build.summary.nodes}
    assert "model.shop.customers" in built and "model.shop.daily_revenue" not in built

    compiled = run("compile", select="orders")
    assert {n.unique_id for n in compiled.summary.nodes if n.unique_id.startswith("model.")} == {"model.shop.orders"}

    run("docs generate")
    assert {"catalog.json", "index.html", "manifest.json"} <= seen.files["docs generate"]

    freshness = run("source freshness")
    assert freshness.summary.node_count >= 1
    assert set(freshness.summary.status_counts) <= {"pass", "warn"}
    assert "sources.json" in seen.files["source freshness"]

    listed = run("ls", select="staging")
    assert listed.summary.node_count == 0 and listed.run_results == {}

    run("run-operation log_row_count")
    run("parse")

    tables = _tables(database)
    for table in ("main.customers", "main.orders", "main.daily_revenue", "main.stg_orders"):
        assert table in tables, f"{table} missing after the run; have {sorted(tables)}"
    assert tables["main.customers"] == tables["main.raw_customers"]


def test_modes_agree_on_a_failing_build(example_project: Path, duckdb_conn: tuple[str, Path]) -> None:
    conn_id, _ = duckdb_conn
    broken = example_project / "models" / "marts" / "broken_model.sql"
    broken.write_text("select * from {{ ref('stg_orders') }} where no_such_column = 1\n")
    assert DbtHook(example_project, conn_id=conn_id).run_dbt_task("seed").success  # one database for all modes
    outcomes = {}
    for mode, kwargs in MODES.items():
        hook = DbtHook(example_project, conn_id=conn_id, **kwargs)
        result = hook.run_dbt_task("build", raise_on_failure=False)
        assert not result.success
        assert result.error is not None
        outcomes[mode] = (
            type(result.error).__name__,
            result.error.node_id,
            result.summary.status_counts,
            [n.unique_id for n in result.summary.failed],
        )
    assert outcomes["subprocess"] == outcomes["in-process"] == outcomes["venv"]
    error_type, node_id, counts, failed = outcomes["in-process"]
    assert error_type == "DbtRuntimeException"
    assert node_id == "model.shop.broken_model"
    assert failed == ["model.shop.broken_model"]
    assert counts.get("error") == 1


def test_keep_target_artifacts_and_getters(
    example_project: Path, duckdb_conn: tuple[str, Path], tmp_path: Path
) -> None:
    conn_id, _ = duckdb_conn
    root = tmp_path / "runs"
    hook = DbtHook(example_project, conn_id=conn_id, run_dir_root=root, keep_target_artifacts=True)
    result = hook.run_dbt_task("seed")
    assert result.success
    assert Path(result.target_path).parent.parent == root
    assert hook.get_run_results()["results"]
    assert "nodes" in hook.get_manifest()
    assert hook.get_catalog() == {}
    assert hook.get_sources() == {}
    assert (Path(result.run_dir) / "logs" / "dbt.log").is_file()
    assert result.to_xcom()["target_path"] == result.target_path
    assert not (example_project / "target").exists(), "nothing is written into the project when a root is given"


def test_target_path_is_dbts_target_path_and_outlives_the_run(
    example_project: Path, duckdb_conn: tuple[str, Path], tmp_path: Path
) -> None:
    """``target_path`` is dbt's --target-path: the artifacts stay there; only the run dir is removed."""
    conn_id, _ = duckdb_conn
    target, runs = tmp_path / "my_target", tmp_path / "runs"
    hook = DbtHook(example_project, conn_id=conn_id, target_path=target, run_dir_root=runs)
    result = hook.run_dbt_task("seed")
    assert result.target_path == str(target)
    assert not Path(result.run_dir).exists() and Path(result.run_dir).parent == runs, "the run dir is removed"
    on_disk = json.loads((target / "run_results.json").read_text())
    assert {r["unique_id"] for r in on_disk["results"]} == {n.unique_id for n in result.summary.nodes}
    assert hook.get_run_results() == on_disk
    assert "nodes" in hook.get_manifest()
    second = hook.run_dbt_task("compile", select="stg_orders")
    assert (target / "compiled").is_dir() and (target / "manifest.json").is_file(), "the user's path is kept"
    assert hook.get_run_results()["metadata"]["invocation_id"] == second.summary.invocation_id


def test_getters_return_the_last_run_after_its_run_dir_is_removed(
    example_project: Path, duckdb_conn: tuple[str, Path]
) -> None:
    conn_id, _ = duckdb_conn
    hook = DbtHook(example_project, conn_id=conn_id)
    assert hook.get_run_results() == {}, "no run yet and nothing in <project>/target"
    result = hook.run_dbt_task("seed")
    assert not Path(result.run_dir).exists()
    assert hook.get_run_results()["metadata"]["invocation_id"] == result.summary.invocation_id
    assert "seed.shop.raw_orders" in hook.get_manifest()["nodes"]
    assert hook.get_catalog() == {} and hook.get_sources() == {}, "dbt seed writes neither"
    hook.run_dbt_task("docs generate")
    assert "nodes" in hook.get_catalog(), "docs generate wrote catalog.json"
