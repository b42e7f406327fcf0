"""Unit tests for dlh_airflow_common.task_graph.assets: asset URIs named as OpenLineage names the relations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlh_airflow_common.task_graph.assets import (
    asset_uri,
    dataset_name,
    dataset_namespace,
    node_assets,
    profiles_file_target,
    target_namespace,
)
from dlh_airflow_common.task_graph.graph_file import GraphNode, Relation


def _node(resource_type: str = "model", materialized: str = "table", **relation: str | None) -> GraphNode:
    return GraphNode(
        unique_id=f"{resource_type}.shop.orders", resource_type=resource_type, name="orders", package_name="shop",
        original_file_path="models/orders.sql", materialized=materialized,
        relation=Relation(**relation) if relation else None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"type": "postgres", "host": "db.internal", "port": 5432, "user": "u"}, "postgres://db.internal:5432"),
        ({"type": "duckdb", "path": "/data/shop.duckdb"}, "duckdb:///data/shop.duckdb"),
        ({"type": "trino", "host": "trino", "port": 8080}, "trino://trino:8080"),
        ({"type": "bigquery", "project": "p"}, "bigquery"),
        ({"type": "no_such_adapter"}, None),
        ({"type": "postgres"}, None),  # no host: OpenLineage cannot name it
    ],
)
def test_the_namespace_is_openlineages_own(target: dict[str, object], expected: str | None) -> None:
    assert dataset_namespace(target) == expected


def test_a_relation_becomes_one_path_segment_per_name_part() -> None:
    node = _node(database="analytics", schema="marts", identifier="orders", alias="orders_v2")
    assert dataset_name(node) == "analytics.marts.orders_v2"  # the alias, as OpenLineage names a model
    assert asset_uri("postgres://db:5432", node) == "postgres://db:5432/analytics/marts/orders_v2"
    assert asset_uri("bigquery", node) == "bigquery://analytics/marts/orders_v2"
    odd = _node(database=None, schema="my schema", identifier="a/b")
    assert dataset_name(odd) == "my schema.a/b" and asset_uri("spark://h:443", odd) == "spark://h:443/my%20schema/a%2Fb"


def test_nodes_without_a_relation_have_no_asset() -> None:
    assert asset_uri("duckdb:///x.duckdb", _node("test", "test")) is None
    assert node_assets("duckdb:///x.duckdb", _node(materialized="ephemeral", schema="main", identifier="o")) == []
    assert node_assets(None, _node(schema="main", identifier="orders")) == []
    (asset,) = node_assets("duckdb:///x.duckdb", _node(database="x", schema="main", identifier="orders"))
    assert asset.name == "duckdb:///x.duckdb/x/main/orders"


def test_a_users_profiles_file_is_read_as_dbt_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "shop"
    project.mkdir()
    (project / "dbt_project.yml").write_text("name: shop\nprofile: shop\n")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    outputs = {
        "dev": {"type": "postgres", "host": "{{ env_var('PG_HOST') }}", "port": 5433},
        "prod": {"type": "duckdb", "path": "/srv/prod.duckdb"},
    }
    (profiles / "profiles.yml").write_text(json.dumps({"shop": {"target": "dev", "outputs": outputs}}))
    monkeypatch.setenv("PG_HOST", "pg.internal")
    found = profiles_file_target(project, str(profiles), None)
    assert found is not None and found["host"] == "pg.internal"
    assert target_namespace(project, rendered_target=None, profiles_dir=str(profiles), target=None) == (
        "postgres://pg.internal:5433"
    )
    assert target_namespace(project, rendered_target=None, profiles_dir=str(profiles), target="prod") == (
        "duckdb:///srv/prod.duckdb"
    )
    # a rendered connection target wins; a project with no profiles file anywhere has no namespace
    rendered = {"type": "duckdb", "path": "/a.duckdb"}
    assert target_namespace(project, rendered_target=rendered, profiles_dir=None, target=None) == "duckdb:///a.duckdb"
    monkeypatch.setenv("DBT_PROFILES_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert profiles_file_target(project, None, None) is None
    assert profiles_file_target(project, str(profiles), "missing") is None
