"""The graph file on a real (trimmed) manifest of tests/data/task_graph_project: content, round trip, errors."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from dlh_airflow_common.exceptions.dbt import DbtArtifactException
from dlh_airflow_common.task_graph.graph_file import (
    FORMAT_VERSION,
    GraphFile,
    Selection,
    graph_from_manifest,
    read_graph,
    write_graph,
)
from repo_paths import REPO_ROOT

MANIFEST = REPO_ROOT / "tests" / "data" / "task_graph_manifest.json"
ALL_IDS = list(json.loads(MANIFEST.read_text())["nodes"])
REL_INDEPENDENT = "test.graphy.relationships_stg_items_kind__kind__ref_stg_kinds_.d21b7aff87"
REL_REPORT = "test.graphy.relationships_item_report_kind__kind__ref_stg_kinds_.731099d033"
EPHEMERAL_TEST = "test.graphy.not_null_items_clean_id.d49b96728a"


def _graph(selected: list[str] | None = None) -> GraphFile:
    return graph_from_manifest(
        MANIFEST, ALL_IDS if selected is None else selected, project_hash="h" * 32, selection=Selection(select=("x",))
    )


def test_header_and_nodes_from_the_manifest() -> None:
    graph = _graph()
    assert graph.format_version == FORMAT_VERSION
    assert graph.dbt_version.startswith("1.") and graph.project_name == "graphy"
    assert graph.project_hash == "h" * 32 and graph.selection.select == ("x",)
    nodes = graph.by_id()
    report = nodes["model.graphy.item_report"]
    assert report.materialized == "table" and report.fqn == ("graphy", "marts", "item_report")
    assert report.original_file_path == "models/marts/item_report.sql"
    assert report.depends_on == ("model.graphy.items_clean", "model.graphy.stg_kinds")
    assert report.relation is not None and report.relation.identifier == "item_report"
    assert set(report.tests) == {
        "test.graphy.unique_item_report_id.6eb8c0e5b2", "test.graphy.not_null_item_report_id.dc3655cbce", REL_REPORT,
    }  # fmt: skip
    clean = nodes["model.graphy.items_clean"]
    assert clean.ephemeral and clean.relation is None and clean.tests == (EPHEMERAL_TEST,)


def test_tests_of_several_nodes_name_each_of_them() -> None:
    nodes = _graph().by_id()
    assert set(nodes[REL_INDEPENDENT].tested_nodes) == {"model.graphy.stg_items", "model.graphy.stg_kinds"}
    assert REL_INDEPENDENT in nodes["model.graphy.stg_items"].tests
    assert REL_INDEPENDENT in nodes["model.graphy.stg_kinds"].tests
    assert nodes[REL_INDEPENDENT].relation is None


def test_upstream_walks_through_nodes_dbt_did_not_select() -> None:
    graph = _graph(["model.graphy.item_report", "seed.graphy.raw_items", "seed.graphy.raw_kinds"])
    report = graph.by_id()["model.graphy.item_report"]
    assert report.upstream == ("seed.graphy.raw_items", "seed.graphy.raw_kinds")
    assert report.depends_on == ("model.graphy.items_clean", "model.graphy.stg_kinds")
    assert report.tests == ()  # none of its tests was selected


def test_round_trip_is_atomic_and_exact(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "graph.json"
    graph = _graph()
    write_graph(path, graph)
    assert read_graph(path) == graph
    assert [p.name for p in path.parent.iterdir()] == ["graph.json"]  # no temporary file left


def test_unreadable_corrupt_and_other_format_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "graph.json"
    with pytest.raises(DbtArtifactException, match="Cannot read task graph file"):
        read_graph(path)
    path.write_text('{"format_version": 1, "nodes": [')
    with pytest.raises(DbtArtifactException, match=r"graph\.json is corrupt") as info:
        read_graph(path)
    assert info.value.artifact_path == str(path)
    other = msgspec.structs.replace(_graph(), format_version=FORMAT_VERSION + 1)
    path.write_bytes(msgspec.json.encode(other))
    with pytest.raises(DbtArtifactException, match="rebuild it with `dlh-dbt graph`"):
        read_graph(path)


def test_a_corrupt_manifest_names_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(DbtArtifactException, match="Cannot read dbt manifest") as info:
        graph_from_manifest(manifest, [], project_hash="h", selection=Selection())
    assert info.value.artifact_path == str(manifest)
