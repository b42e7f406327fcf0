"""A DbtTaskGroup on the CeleryExecutor deployment, through the S3 run channel: the build runs on one worker host,
its node tasks on either worker and in the triggerer host, none of which sees the build's run dir or processes.

The graph file lives in a cache both the dag-processor and the workers read (``graph_cache_dir``), as a shared
volume or ``dlh-dbt graph`` in the image would give them. Models a, b and c of the fault project are built on
PostgreSQL, audited in ``<audit>.builds``; c sleeps as long as the control table says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_deployment import wait_until
from celery_deployment import CHANNEL_CONN_ID, WORKERS, CeleryDeployment

from dlh_airflow_common.task_graph.build import ensure_graph, graph_cache_root
from dlh_airflow_common.task_graph.cli import hook_lister
from dlh_airflow_common.task_graph.graph_file import Selection
from pg_faults import AUDIT, builds, fault_conn, sleeping_queries, sql
from pg_server import PostgresServer
from tests.deployment.conftest import Projects
from tests.deployment.test_celery_deferred import _nothing_left, _prefix
from tests.deployment.test_celery_sync import (  # noqa: F401 (fixtures)
    STOP_LIMIT,
    _dbt_on,
    _deployment_whole,
    sleep_model,
)

DAG = """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.task_graph import DbtTaskGroup

    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtTaskGroup(group_id="faults", dbt_project_dir={project!r}, conn_id={conn!r}, graph_cache_dir={cache!r},
                     operator_args={{"check_interval": 1, "retries": 0, "threads": 4, "run_channel": {channel!r},
                                    "run_channel_conn_id": {channel_conn!r}, "kill_grace_period": 10}},
                     model_assets={assets!r})
"""
NODES = ("faults.a", "faults.b", "faults.c")


@pytest.fixture
def graph_cache(projects: Projects, deploy_pg: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fault project's graph file, built as ``dlh-dbt graph --conn-id ... --cache-dir <shared>`` would."""
    cache = projects.root / "celery_graph_cache"
    monkeypatch.setenv(f"AIRFLOW_CONN_{projects.pg_conn.upper()}", fault_conn(deploy_pg))
    lister = hook_lister(dbt_project_dir=projects.faults, conn_id=projects.pg_conn, cache_dir=str(cache))
    ensure_graph(projects.faults, Selection(), lister, graph_cache_root(projects.faults, None, str(cache)))
    yield cache


def _deploy(deployment: CeleryDeployment, projects: Projects, cache: Path, dag_id: str, assets: bool = True) -> str:
    assert deployment.s3 is not None
    source = DAG.format(dag_id=dag_id, project=str(projects.faults), conn=projects.pg_conn, cache=str(cache),
                        channel=deployment.s3.url(_prefix(dag_id)), channel_conn=CHANNEL_CONN_ID,
                        assets=assets)  # fmt: skip
    deployment.write_dag(dag_id, source)
    deployment.wait_parsed(dag_id)
    return deployment.trigger(dag_id)


@pytest.mark.parametrize("assets", [True, False], ids=["model_assets", "no_assets"])
def test_task_graph_across_worker_hosts_through_the_s3_channel(
    assets: bool, celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer,
    graph_cache: Path,
) -> None:  # fmt: skip
    """With model assets, each node task runs once on a worker, which registers its asset event; without, the node
    tasks start and end in the triggerer host: no worker runs them at all."""
    dag_id = f"celery_graph_{'assets' if assets else 'bare'}"
    before = builds(deploy_pg)
    sql(deploy_pg, f"update {AUDIT}.control set seconds = 30")  # c's task waits for it in the triggerer
    try:
        run_id = _deploy(celery_deployment, projects, graph_cache, dag_id, assets)
        final, seen, _ = celery_deployment.follow_run(dag_id, run_id, 400)
    finally:
        sql(deploy_pg, f"update {AUDIT}.control set seconds = 0")
    assert final == {"faults.dbt_build": "success", **dict.fromkeys(NODES, "success")}, final
    after = builds(deploy_pg)
    assert {m: after.get(m, 0) - before.get(m, 0) for m in "abc"} == {"a": 1, "b": 1, "c": 1}, "one dbt build"
    build_hosts = celery_deployment.hosts_that_ran(dag_id, run_id, "faults.dbt_build")
    assert len(build_hosts) == 2 and set(build_hosts) <= set(WORKERS), f"execute, then execute_complete: {build_hosts}"
    assert "deferred" in seen["faults.c"], f"c's task follows the build from the triggerer host: {seen}"
    for task in NODES:
        # Started in the triggerer (Airflow 3.3): one worker run to end the task and register its asset, or none.
        ran = celery_deployment.hosts_that_ran(dag_id, run_id, task)
        assert (len(ran) == 1 and ran[0] in WORKERS) if assets else ran == [], f"{task} ran on {ran}"
        summary = celery_deployment.xcom(dag_id, run_id, task, "dbt_node")
        assert summary["verdict"] == "success" and summary["node_id"] == f"model.faults.{task[-1]}", summary
        log = celery_deployment.task_log_text(dag_id, run_id, task)
        source = "the running build" if task == "faults.c" else "(the running build|try 1 of the build)"
        assert re.search(rf"SUCCESS model\.faults\.{task[-1]} \({source}\)", log), log[-2000:]
    events = celery_deployment.api("GET", "/assets/events", params={"source_dag_id": dag_id, "source_run_id": run_id})
    emitted = {event["source_task_id"]: event["name"] for event in events["asset_events"]}
    namespace = f"postgres://{deploy_pg.host}:{deploy_pg.port}"
    declared = {task: f"{namespace}/{deploy_pg.database}/faults/{task[-1]}" for task in NODES} if assets else {}
    assert emitted == declared, emitted
    _nothing_left(celery_deployment, projects, deploy_pg, dag_id)


@pytest.mark.usefixtures("sleep_model")
def test_a_killed_build_fails_the_nodes_it_did_not_finish_and_leaves_nothing(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer, graph_cache: Path
) -> None:
    dag_id = "celery_graph_kill"
    run_id = _deploy(celery_deployment, projects, graph_cache, dag_id)
    celery_deployment.wait_task_state(dag_id, run_id, "faults.dbt_build", ["deferred"], limit=300)
    wait_until(lambda: sleeping_queries(deploy_pg) > 0, 180, "model c to start sleeping")
    (host,) = celery_deployment.hosts_that_ran(dag_id, run_id, "faults.dbt_build")
    assert _dbt_on(celery_deployment, host, projects), "dbt runs on the host that launched it"
    for done in ("faults.a", "faults.b"):  # what dbt finished before the kill stays green
        celery_deployment.wait_task_state(dag_id, run_id, done, ["success"], limit=120)

    celery_deployment.mark_failed(dag_id, run_id, "faults.dbt_build")

    wait_until(lambda: not _dbt_on(celery_deployment, host, projects), STOP_LIMIT, f"dbt on {host} to stop")
    wait_until(lambda: sleeping_queries(deploy_pg) == 0, STOP_LIMIT, "the pg_sleep query to be cancelled")
    final, _, _ = celery_deployment.follow_run(dag_id, run_id, 300)
    assert final == {"faults.dbt_build": "failed", "faults.a": "success", "faults.b": "success",
                     "faults.c": "failed"}, final  # fmt: skip
    # c ends as dbt ended it: the query cancelled by the kill (dbt reported it), or never reported at all.
    (error,) = celery_deployment.task_errors(dag_id, run_id, "faults.c")
    assert "ERROR model.faults.c in " in error or "without running model.faults.c" in error, error
    _nothing_left(celery_deployment, projects, deploy_pg, dag_id)
