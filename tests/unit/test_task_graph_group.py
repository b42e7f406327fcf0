"""Unit tests for dlh_airflow_common.task_graph.group: Airflow tasks from a graph file, without dbt.

The graph comes from tests/data/task_graph_manifest.json (a real, trimmed manifest); the cache is written the
way ``dlh-dbt graph`` writes it, so DAG parsing reads one small file.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from airflow.sdk import DAG

from airflow_compat import dag_serialization
from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.task_graph import DbtDag, DbtTaskGroup
from dlh_airflow_common.task_graph.build import locate
from dlh_airflow_common.task_graph.graph_file import Selection, graph_from_manifest, write_graph
from dlh_airflow_common.task_graph.operators import DbtGraphBuildOperator, DbtNodeOperator
from repo_paths import REPO_ROOT

MANIFEST = REPO_ROOT / "tests" / "data" / "task_graph_manifest.json"
PROJECT = REPO_ROOT / "tests" / "data" / "task_graph_project"
NAMESPACE = "duckdb:///warehouse/graphy.duckdb"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the fixture project with its graph file in the cache, as ``dlh-dbt graph`` leaves it."""
    copy = Path(shutil.copytree(PROJECT, tmp_path / "graphy"))
    location = locate(copy, Selection(), copy / "target" / ".dlh_cache")
    ids = list(json.loads(MANIFEST.read_text())["nodes"])
    graph = graph_from_manifest(
        MANIFEST, ids, project_hash=location.project_hash, selection=Selection(), dataset_namespace=NAMESPACE
    )
    write_graph(location.path, graph)
    return copy


def _dag(dag_id: str = "g") -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2025, 1, 1))


def test_one_process_group_has_a_build_task_and_node_tasks_mirroring_dbt(project: Path) -> None:
    with _dag():
        group = DbtTaskGroup("graphy", dbt_project_dir=str(project), conn_id="duck", operator_args={"threads": 2})
    tasks = group.dbt_tasks
    build = tasks["dbt_build"]
    assert isinstance(build, DbtGraphBuildOperator) and build.task_id == "graphy.dbt_build"
    assert build.deferrable and build.retry_from_failure and build.dbt_command == "build"
    report = tasks["item_report"]
    assert isinstance(report, DbtNodeOperator) and report.task_id == "graphy.item_report"
    assert report.build_task_id == "graphy.dbt_build" and report.dbt_node_id == "model.graphy.item_report"
    assert report.upstream_task_ids == {"graphy.stg_items", "graphy.stg_kinds"}
    assert report.conn_id == "duck" and report.threads == 2
    # its own selection, for a retry after the build ended: exactly the model and the tests placed with it
    assert report.dbt_models[0] == "fqn:graphy.marts.item_report" and len(report.dbt_models) == 1 + len(report.tests)
    assert report.dbt_args[-2:] == ["--indirect-selection", "empty"]
    assert "items_clean" not in tasks, "an ephemeral model is never a task"


def test_per_node_mode_has_no_build_and_folder_groups_nest_the_tasks(project: Path) -> None:
    with _dag():
        group = DbtTaskGroup("graphy", dbt_project_dir=str(project), execution_mode="per_node", group_by_folder=True)
    tasks = group.dbt_tasks
    assert "dbt_build" not in tasks
    report = tasks["marts.item_report"]
    assert report.task_id == "graphy.marts.item_report" and report.build_task_id is None


def test_after_all_tests_run_the_selection_tests_in_one_task(project: Path) -> None:
    with _dag():
        group = DbtTaskGroup(
            "graphy", dbt_project_dir=str(project), test_behavior="after_all", execution_mode="per_node"
        )
    suite = group.dbt_tasks["dbt_tests"]
    assert suite.dbt_command == "test" and suite.dbt_models is None and suite.dbt_node_id is None
    assert set(suite.upstream_task_ids) == {t.task_id for k, t in group.dbt_tasks.items() if k != "dbt_tests"}


def test_dbt_dag_puts_the_tasks_at_the_top_level(project: Path) -> None:
    dag = DbtDag("graphy_dag", dbt_project_dir=str(project), schedule=None, start_date=datetime(2025, 1, 1))
    assert "dbt_build" in dag.task_dict and "item_report" in dag.task_dict
    assert dag.task_dict["item_report"].build_task_id == "dbt_build"


def test_a_missing_graph_file_names_the_command_to_run(project: Path) -> None:
    expected = r"has not been built; build it with: dlh-dbt graph .* --select orders"
    with pytest.raises(DbtException, match=expected), _dag():
        DbtTaskGroup("graphy", dbt_project_dir=str(project), select="orders")


def test_operator_args_may_not_set_what_each_task_sets(project: Path) -> None:
    with pytest.raises(DbtException, match="dbt_models"), _dag():
        DbtTaskGroup("graphy", dbt_project_dir=str(project), operator_args={"dbt_models": "x"})
    with pytest.raises(DbtException, match="execution_mode"), _dag():
        DbtTaskGroup("graphy", dbt_project_dir=str(project), execution_mode="watcher")  # type: ignore[arg-type]


def test_a_dbt_dag_survives_airflow_serialization(project: Path) -> None:
    """What the DAG processor stores for the scheduler (``airflow_compat.dag_serialization``): every task with its
    type, dependencies, template fields and the dbt links."""
    codec = dag_serialization()
    dag = DbtDag("graphy_dag", dbt_project_dir=str(project), conn_id="duck", schedule=None,
                 start_date=datetime(2025, 1, 1), operator_args={"threads": 2})  # fmt: skip
    restored = codec.from_dict(json.loads(json.dumps(codec.to_dict(dag))))
    assert set(restored.task_dict) == set(dag.task_dict)
    for task_id, task in dag.task_dict.items():
        again = restored.task_dict[task_id]
        assert again.upstream_task_ids == task.upstream_task_ids, task_id
        assert again.task_type == type(task).__name__, task_id
        fields = {name: getattr(task, name) for name in task.template_fields}
        assert {name: getattr(again, name) for name in task.template_fields} == fields, task_id
        assert {link.name for link in again.operator_extra_links} == {"dbt Docs", "dbt Artifacts", "dbt Run Report"}
    report = restored.task_dict["item_report"]
    assert report.upstream_task_ids == {"stg_items", "stg_kinds"}
    assert report.dbt_models[0] == "fqn:graphy.marts.item_report"


def test_model_and_seed_tasks_declare_their_relation_as_an_asset(project: Path) -> None:
    with _dag():
        group = DbtTaskGroup("graphy", dbt_project_dir=str(project), test_behavior="after_all")
    tasks = group.dbt_tasks
    assert [a.uri for a in tasks["item_report"].outlets] == ["duckdb:/warehouse/graphy.duckdb/graphy/main/item_report"]
    assert [a.name for a in tasks["raw_kinds"].outlets] == [f"{NAMESPACE}/graphy/main/raw_kinds"]
    assert tasks["dbt_tests"].outlets == [] and tasks["dbt_build"].outlets == []
    with _dag("off"):
        quiet = DbtTaskGroup("graphy", dbt_project_dir=str(project), model_assets=False)
    assert all(not task.outlets for task in quiet.dbt_tasks.values())


def test_node_tasks_start_in_the_triggerer_and_end_there_only_without_outlets(project: Path) -> None:
    from dlh_airflow_common.task_graph.operators import STARTS_IN_TRIGGERER

    dag = DbtDag("graphy_start", dbt_project_dir=str(project), test_behavior="after_all", schedule=None,
                 start_date=datetime(2025, 1, 1))  # fmt: skip
    report, tests, build = dag.task_dict["item_report"], dag.task_dict["dbt_tests"], dag.task_dict["dbt_build"]
    assert report.start_from_trigger is STARTS_IN_TRIGGERER and not build.start_from_trigger
    if not STARTS_IN_TRIGGERER:  # Airflow before 3.3: node tasks start on a worker and defer from there
        assert report.start_trigger_args is None
        return
    kwargs = report.start_trigger_args.trigger_kwargs
    assert report.start_trigger_args.next_method == "follow_complete" and kwargs["channel"] is None
    assert kwargs["build_task_id"] == "dbt_build" and kwargs["node_id"] == "model.graphy.item_report"
    assert kwargs["end_in_triggerer"] is False, "a task with an asset outlet ends on a worker, which registers it"
    assert tests.start_trigger_args.trigger_kwargs["end_in_triggerer"] is True
    codec = dag_serialization()
    restored = codec.from_dict(codec.to_dict(dag)).task_dict["item_report"]
    assert restored.start_from_trigger and restored.start_trigger_args.next_method == "follow_complete"
    assert "model.graphy.item_report" in str(restored.start_trigger_args.trigger_kwargs)
    per_node = DbtDag("graphy_nodes", dbt_project_dir=str(project), execution_mode="per_node", schedule=None,
                      start_date=datetime(2025, 1, 1))  # fmt: skip
    assert not per_node.task_dict["item_report"].start_from_trigger
    off = DbtDag("graphy_off", dbt_project_dir=str(project), node_tasks_in_triggerer=False, schedule=None,
                 start_date=datetime(2025, 1, 1))  # fmt: skip
    assert not off.task_dict["item_report"].start_from_trigger
