"""The task graph built with real dbt (``dbt ls`` through DbtHook) on DuckDB: examples/shop and
tests/data/task_graph_project (an ephemeral model, tests of several nodes), the cache, the lock, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.task_graph.build import BuiltGraph, Lister, ManifestUse, ensure_graph, find_graph
from dlh_airflow_common.task_graph.cli import hook_lister
from dlh_airflow_common.task_graph.graph_file import GraphFile, Selection
from dlh_airflow_common.task_graph.render import render
from modes import MODES
from repo_paths import EXAMPLE_PROJECT, REPO_ROOT

pytestmark = pytest.mark.integration

FIXTURE = REPO_ROOT / "tests" / "data" / "task_graph_project"
SRC = REPO_ROOT / "src"


def _project(tmp_path: Path, source: Path, profile: str) -> tuple[Path, Path]:
    """A private copy of ``source`` and a profiles dir with a DuckDB target for ``profile``."""
    project = Path(shutil.copytree(source, tmp_path / source.name, ignore=shutil.ignore_patterns("target", "logs")))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    database = tmp_path / f"{profile}.duckdb"
    (profiles / "profiles.yml").write_text(
        json.dumps({profile: {"target": "dev", "outputs": {"dev": {"type": "duckdb", "path": str(database)}}}})
    )
    return project, profiles


def _build(project: Path, profiles: Path, selection: Selection, **hook: Any) -> BuiltGraph:
    lister = hook_lister(dbt_project_dir=project, profiles_dir=profiles, **hook)
    return ensure_graph(project, selection, lister, project / "target" / ".dlh_cache")


@pytest.mark.parametrize("mode", MODES)
def test_shop_graph_renders_like_dbt_build(mode: str, tmp_path: Path) -> None:
    project, profiles = _project(tmp_path, EXAMPLE_PROJECT, "shop")
    built = _build(project, profiles, Selection(), **MODES[mode])
    assert built.built and built.graph.project_name == "shop" and built.graph.dbt_version.startswith("1.")
    kinds = [node.resource_type for node in built.graph.nodes]
    assert kinds.count("model") == 6 and kinds.count("seed") == 3 and kinds.count("snapshot") == 1
    assert kinds.count("test") == 26 and "source" not in kinds
    tasks = render(built.graph).by_id()
    assert tasks["orders"].upstream == ("stg_orders", "stg_payments")
    assert tasks["customers"].upstream == ("orders", "stg_customers")
    assert tasks["customers_snapshot"].upstream == ("stg_customers",)
    # relationships(orders.customer_id -> customers): customers is downstream of orders, so it runs there.
    assert any("relationships_orders_customer_id" in test for test in tasks["customers"].tests)
    orders = built.graph.by_id()["model.shop.orders"]
    assert orders.relation is not None and (orders.relation.schema, orders.relation.identifier) == ("main", "orders")
    # OpenLineage's namespace for the profile's DuckDB target, from the user's own profiles.yml.
    assert built.graph.dataset_namespace == f"duckdb://{tmp_path / 'shop.duckdb'}"
    assert not list(project.glob("target/run_*")), "the dbt ls run dir must be removed"


def test_selection_is_resolved_by_dbt(tmp_path: Path) -> None:
    project, profiles = _project(tmp_path, EXAMPLE_PROJECT, "shop")
    built = _build(project, profiles, Selection(select=("+orders",), exclude=("stg_payments",)))
    buildable = {n.unique_id for n in built.graph.nodes if n.resource_type != "test"}
    assert buildable == {"model.shop.orders", "model.shop.stg_orders", "seed.shop.raw_orders", "seed.shop.raw_payments"}
    tasks = render(built.graph, test_behavior="none").by_id()
    assert tasks["orders"].upstream == ("raw_payments", "stg_orders")  # through the excluded stg_payments
    assert built.graph.selection == Selection(select=("+orders",), exclude=("stg_payments",))


def test_ephemeral_models_and_tests_of_several_nodes(tmp_path: Path) -> None:
    project, profiles = _project(tmp_path, FIXTURE, "graphy")
    rendered = render(_build(project, profiles, Selection()).graph)
    tasks = rendered.by_id()
    assert "items_clean" not in tasks
    assert tasks["item_report"].upstream == ("stg_items", "stg_kinds")
    own = {t.task_id: t.upstream for t in rendered.tasks if t.kind == "tests"}
    assert own == {
        "test_relationships_stg_items_kind__kind__ref_stg_kinds": ("stg_items", "stg_kinds"),
        "test_not_null_items_clean_id": ("stg_items",),
    }
    assert len(tasks["item_report"].tests) == 3


def test_a_changed_model_is_detected_and_rebuilt(tmp_path: Path) -> None:
    project, profiles = _project(tmp_path, FIXTURE, "graphy")
    first = _build(project, profiles, Selection())
    cache = project / "target" / ".dlh_cache"
    assert find_graph(project, Selection(), cache) == first.graph
    (project / "models" / "marts" / "kind_count.sql").write_text(
        "select kind, count(*) as n from {{ ref('stg_items') }} group by 1"
    )
    assert find_graph(project, Selection(), cache) is None
    second = _build(project, profiles, Selection())
    assert second.built and second.graph.project_hash != first.graph.project_hash
    assert render(second.graph).by_id()["kind_count"].upstream == ("stg_items",)
    assert not first.path.exists()


def test_concurrent_builders_run_dbt_once(tmp_path: Path) -> None:
    project, profiles = _project(tmp_path, FIXTURE, "graphy")
    real = hook_lister(dbt_project_dir=project, profiles_dir=profiles)
    runs: list[Selection] = []

    def counting(selection: Selection, use: ManifestUse) -> GraphFile:
        runs.append(selection)
        return real(selection, use)

    lister: Lister = counting
    outcomes: list[BuiltGraph] = []
    cache = project / "target" / ".dlh_cache"
    threads = [
        threading.Thread(target=lambda: outcomes.append(ensure_graph(project, Selection(), lister, cache)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs) == 1 and sorted(o.built for o in outcomes) == [False, True]
    assert outcomes[0].graph == outcomes[1].graph


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dlh_airflow_common.task_graph.cli", *args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_cli_builds_then_reports_fresh(tmp_path: Path) -> None:
    project = Path(shutil.copytree(EXAMPLE_PROJECT, tmp_path / "shop", ignore=shutil.ignore_patterns("target")))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["AIRFLOW_CONN_TEST_DUCKDB"] = json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "shop.duckdb")})
    args = ("graph", str(project), "--conn-id", "test_duckdb", "--select", "+orders")
    first = _cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    path, count, state = first.stdout.strip().split("\t")
    assert state == "built" and count == f"{len(json.loads(Path(path).read_text())['nodes'])} nodes"
    assert Path(path).is_relative_to(project / "target" / ".dlh_cache" / "task_graph")
    # The namespace comes from the target the connection renders to.
    assert json.loads(Path(path).read_text())["dataset_namespace"] == f"duckdb://{tmp_path / 'shop.duckdb'}"
    second = _cli(*args, env=env)
    assert second.returncode == 0 and second.stdout.strip().split("\t") == [path, count, "fresh"]
    missing = _cli("graph", str(tmp_path / "nowhere"), "--conn-id", "test_duckdb", env=env)
    assert missing.returncode == 1 and "nowhere" in missing.stderr


def test_model_assets_name_the_relations_openlineage_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ``dbt build`` of examples/shop: every model, seed and snapshot it wrote, as OpenLineage's dbt
    processing names it, is the asset its task declares (same namespace, same ``database.schema.alias``)."""
    from dlh_airflow_common.dbt.lineage import build_lineage
    from dlh_airflow_common.hooks.dbt import DbtHook, DbtTaskResult
    from dlh_airflow_common.hooks.dbt_profiles import render_target
    from dlh_airflow_common.task_graph.assets import asset_uri, dataset_name

    project = Path(shutil.copytree(EXAMPLE_PROJECT, tmp_path / "shop", ignore=shutil.ignore_patterns("target")))
    monkeypatch.setenv(
        "AIRFLOW_CONN_SHOP_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "w.duckdb")})
    )
    lister = hook_lister(dbt_project_dir=project, conn_id="shop_duckdb")
    built = ensure_graph(project, Selection(), lister, project / "target" / ".dlh_cache")
    namespace = built.graph.dataset_namespace
    assert namespace == f"duckdb://{tmp_path / 'w.duckdb'}"
    hook = DbtHook(project, conn_id="shop_duckdb")
    target = dict(render_target(hook.profile_source.connection()).target)
    seen: list[tuple[list[str], list[str]]] = []

    def post_run(result: DbtTaskResult) -> None:
        lineage = build_lineage(project_dir=project, target_path=result.target_path, profile_target=target)
        seen.append(lineage.names())

    hook.run_dbt_task("build", post_run=post_run)
    outputs = set(seen[0][1])
    declared = {f"{namespace}/{dataset_name(node)}" for node in built.graph.nodes if node.relation is not None}
    assert outputs == declared and len(declared) == 10  # 6 models, 3 seeds, 1 snapshot
    orders = built.graph.by_id()["model.shop.orders"]
    assert asset_uri(str(namespace), orders) == f"{namespace}/w/main/orders"
