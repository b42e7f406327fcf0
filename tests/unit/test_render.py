"""Rendering the graph of tests/data/task_graph_project (a real, trimmed manifest) into task descriptions."""

from __future__ import annotations

import json

import msgspec
import pytest

from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.task_graph.graph_file import GraphFile, Selection, graph_from_manifest
from dlh_airflow_common.task_graph.render import ALL_TESTS_TASK_ID, MAX_TASK_ID_LENGTH, render, sanitize_task_id
from repo_paths import REPO_ROOT

MANIFEST = REPO_ROOT / "tests" / "data" / "task_graph_manifest.json"
REL_INDEPENDENT = "test.graphy.relationships_stg_items_kind__kind__ref_stg_kinds_.d21b7aff87"
REL_REPORT = "test.graphy.relationships_item_report_kind__kind__ref_stg_kinds_.731099d033"
EPHEMERAL_TEST = "test.graphy.not_null_items_clean_id.d49b96728a"


@pytest.fixture(scope="module")
def graph() -> GraphFile:
    ids = list(json.loads(MANIFEST.read_text())["nodes"])
    return graph_from_manifest(MANIFEST, ids, project_hash="h", selection=Selection())


def test_task_ids_and_dependencies_mirror_dbt_through_the_ephemeral_model(graph: GraphFile) -> None:
    tasks = render(graph).by_id()
    node_tasks = {tid: t for tid, t in tasks.items() if t.kind == "node"}
    assert set(node_tasks) == {"item_report", "stg_kinds", "stg_items", "raw_kinds", "raw_items"}
    assert "items_clean" not in tasks  # ephemeral: never a task
    assert tasks["item_report"].upstream == ("stg_items", "stg_kinds")
    assert tasks["stg_items"].upstream == ("raw_items",) and tasks["raw_items"].upstream == ()
    assert tasks["item_report"].node_id == "model.graphy.item_report"
    assert tasks["raw_items"].resource_type == "seed"


def test_after_each_puts_tests_with_their_node_like_dbt_build(graph: GraphFile) -> None:
    rendered = render(graph, test_behavior="after_each")
    report = rendered.for_node("model.graphy.item_report")
    assert report is not None
    # relationships(item_report -> stg_kinds): item_report is downstream of stg_kinds, so it runs there.
    assert set(report.tests) == {
        "test.graphy.unique_item_report_id.6eb8c0e5b2", "test.graphy.not_null_item_report_id.dc3655cbce", REL_REPORT,
    }  # fmt: skip
    own = {t.task_id: t for t in rendered.tasks if t.kind == "tests"}
    # A test of independent nodes, and a test of the ephemeral model, get their own task after their nodes.
    independent = own["test_relationships_stg_items_kind__kind__ref_stg_kinds"]
    assert independent.tests == (REL_INDEPENDENT,) and independent.upstream == ("stg_items", "stg_kinds")
    ephemeral = own["test_not_null_items_clean_id"]
    assert ephemeral.tests == (EPHEMERAL_TEST,) and ephemeral.upstream == ("stg_items",)
    placed = [test for task in rendered.tasks for test in task.tests]
    assert len(placed) == len(set(placed)) == 5  # every test exactly once


def test_after_all_and_none(graph: GraphFile) -> None:
    after_all = render(graph, test_behavior="after_all")
    tests_task = after_all.by_id()[ALL_TESTS_TASK_ID]
    assert len(tests_task.tests) == 5
    assert set(tests_task.upstream) == {t.full_id for t in after_all.tasks if t.kind == "node"}
    assert all(not t.tests for t in after_all.tasks if t.kind == "node")
    none = render(graph, test_behavior="none")
    assert all(t.kind == "node" and not t.tests for t in none.tasks)
    with pytest.raises(DbtException, match="test_behavior must be one of"):
        render(graph, test_behavior="sometimes")  # type: ignore[arg-type]


def test_groups_by_folder_prefix_ids_and_dependencies(graph: GraphFile) -> None:
    tasks = render(graph, group_by_folder=True).by_id()
    assert tasks["marts.item_report"].group == ("marts",) and tasks["marts.item_report"].task_id == "item_report"
    assert tasks["marts.item_report"].upstream == ("base.stg_items", "base.stg_kinds")
    assert tasks["raw_items"].group == ()  # seeds/raw_items.csv sits in no folder


def test_ids_are_stable_and_safe(graph: GraphFile) -> None:
    assert render(graph) == render(graph)
    assert sanitize_task_id("model with spaces/é") == "model_with_spaces"
    long = sanitize_task_id("x" * 400)
    assert len(long) == MAX_TASK_ID_LENGTH and long != sanitize_task_id("x" * 401)


def test_colliding_ids_get_a_digest(graph: GraphFile) -> None:
    nodes = list(graph.nodes)
    twin = msgspec.structs.replace(
        graph.by_id()["model.graphy.stg_items"], unique_id="model.graphy.stg items", name="stg items"
    )
    tasks = render(msgspec.structs.replace(graph, nodes=(*nodes, twin)), test_behavior="none").tasks
    ids = [t.task_id for t in tasks]
    assert len(ids) == len(set(ids))
    assert {i for i in ids if i.startswith("stg_items")} != {"stg_items"}


def test_other_packages_and_versions_in_ids(graph: GraphFile) -> None:
    base = graph.by_id()["model.graphy.stg_items"]
    versioned = msgspec.structs.replace(
        base, unique_id="model.graphy.stg_items.v2", fqn=("graphy", "base", "stg_items", "v2")
    )
    foreign = msgspec.structs.replace(base, unique_id="model.other.stg_items", package_name="other")
    tasks = render(msgspec.structs.replace(graph, nodes=(versioned, foreign)), group_by_folder=True).tasks
    assert [t.full_id for t in tasks] == ["base.stg_items_v2", "base.other__stg_items"]
