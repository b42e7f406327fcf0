"""DbtOperator on a CeleryExecutor deployment whose workers and triggerer are separate hosts (celery_deployment.py).

What works without a remote run channel: sync runs on a worker host (built, marked failed, host lost) and a
deferred run with the default local channel, which the triggerer host cannot see and so reports ``lost``.
Each scenario is driven through the REST API and checked in the hosts' process tables, their private run-dir
roots and PostgreSQL's ``pg_stat_activity``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from airflow_deployment import wait_until
from celery_deployment import TRIGGERER_HOST, WORKERS, CeleryDeployment

from pg_faults import AUDIT, builds, dbt_processes, sleeping_queries, sql
from pg_server import PostgresServer
from tests.deployment.conftest import Projects

DAG = """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtOperator(task_id="dbt", dbt_project_dir={project!r}, dbt_command={command!r}, conn_id={conn!r},
                    run_dir_root={runs!r}, deferrable={deferrable!r}, check_interval=0.5, retries=0)
"""
STOP_LIMIT = 30  # seconds for dbt and its query to be gone after a kill (issue 12)
_HEARTBEAT_TIMEOUT = "Detected a task instance without a heartbeat"  # the scheduler's log line


def _deploy_dag(
    deployment: CeleryDeployment, projects: Projects, dag_id: str, command: str, *, deferrable: bool = False
) -> None:
    source = DAG.format(
        dag_id=dag_id, project=str(projects.faults), command=command, conn=projects.pg_conn,
        runs=str(deployment.run_dir_root), deferrable=deferrable,
    )  # fmt: skip
    deployment.write_dag(dag_id, source)
    deployment.wait_parsed(dag_id)


def _dbt_sessions(pg: PostgresServer) -> list[str]:
    """Sessions of the role dbt connects as (the fault project's connection), with what each is doing."""
    rows = sql(
        pg,
        "select pid || ' ' || coalesce(application_name, '') || ' ' || state || ' ' || left(query, 60) "
        f"from pg_stat_activity where usename = '{pg.user}' and pid <> pg_backend_pid()",
    )
    return [row for row in rows.splitlines() if row]


def _run_dirs(deployment: CeleryDeployment, host: str) -> list[str]:
    return [name for name in deployment.host(host).listdir(deployment.run_dir_root) if name.startswith("run_")]


def _dbt_on(deployment: CeleryDeployment, host: str, projects: Projects) -> list[str]:
    return [p.cmdline for p in deployment.host(host).find_processes(str(projects.faults)) if "dbt" in p.cmdline]


@pytest.fixture
def sleep_model(deploy_pg: PostgresServer) -> Iterator[None]:
    """Model c sleeps 600 s in PostgreSQL while the test runs."""
    sql(deploy_pg, f"update {AUDIT}.control set seconds = 600")
    try:
        yield
    finally:
        sql(deploy_pg, f"update {AUDIT}.control set seconds = 0")


@pytest.fixture(autouse=True)
def _deployment_whole(celery_deployment: CeleryDeployment) -> Iterator[None]:
    """Every service up before a test; a host a test took down comes back after it."""
    celery_deployment.check_alive()
    yield
    for name, host in celery_deployment.hosts.items():
        if not host.alive():
            celery_deployment.restart_host(name)


def test_sync_build_on_postgres_runs_on_one_worker_host(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    before = builds(deploy_pg)
    _deploy_dag(celery_deployment, projects, "celery_sync_build", "build")
    run_id = celery_deployment.trigger("celery_sync_build")
    ti = celery_deployment.wait_task_state("celery_sync_build", run_id, "dbt", ["success"], limit=300)

    host = celery_deployment.ran_on("celery_sync_build", run_id, "dbt")
    assert host in WORKERS and ti["hostname"] == host
    assert celery_deployment.hosts_that_ran("celery_sync_build", run_id, "dbt") == [host]
    summary = celery_deployment.xcom("celery_sync_build", run_id, "dbt", "dbt_summary")
    assert summary["success"] is True and summary["command"] == "build"
    assert summary["node_count"] == 3 and summary["failed_nodes"] == []
    after = builds(deploy_pg)
    assert {model: after.get(model, 0) - before.get(model, 0) for model in "abc"} == {"a": 1, "b": 1, "c": 1}
    assert _run_dirs(celery_deployment, host) == [], f"the sync run removes its run dir on {host}"
    assert dbt_processes(str(projects.root)) == []
    assert _dbt_sessions(deploy_pg) == []


def test_sync_task_marked_failed_stops_dbt_and_its_query_on_its_host(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer, sleep_model: None
) -> None:
    _deploy_dag(celery_deployment, projects, "celery_sync_kill", "run")
    run_id = celery_deployment.trigger("celery_sync_kill")
    celery_deployment.wait_task_state("celery_sync_kill", run_id, "dbt", ["running"], limit=300)
    wait_until(lambda: sleeping_queries(deploy_pg) > 0, 180, "model c to start sleeping")
    host = celery_deployment.ran_on("celery_sync_kill", run_id, "dbt")
    assert host in WORKERS
    assert _dbt_on(celery_deployment, host, projects), celery_deployment.describe()
    for other in {*WORKERS, TRIGGERER_HOST} - {host}:
        assert _dbt_on(celery_deployment, other, projects) == [], f"dbt runs on {host} only"
    assert _run_dirs(celery_deployment, host), f"the run dir is on {host}"

    celery_deployment.mark_failed("celery_sync_kill", run_id, "dbt")

    wait_until(lambda: not _dbt_on(celery_deployment, host, projects), STOP_LIMIT, f"dbt on {host} to stop")
    wait_until(lambda: not _dbt_sessions(deploy_pg), STOP_LIMIT, "dbt's sessions to end in PostgreSQL")
    # The files go last (after dbt and its sessions); on a loaded machine that can take past STOP_LIMIT.
    wait_until(lambda: not _run_dirs(celery_deployment, host), 4 * STOP_LIMIT, f"the run dir on {host} to go")
    assert celery_deployment.task_instance("celery_sync_kill", run_id, "dbt")["state"] == "failed"
    assert dbt_processes(str(projects.root)) == []


def test_worker_host_lost_mid_sync_run_leaves_no_dbt_and_no_query(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer, sleep_model: None
) -> None:
    """The worker host running dbt goes down (SIGKILL of its PID 1: every process of the host ends at once).

    Nothing of the run survives: dbt went with its host. Its idle connections close with their sockets; the
    one running ``pg_sleep`` is ended by PostgreSQL only because the role has ``client_connection_check_interval``
    set (without it PostgreSQL notices a vanished client only when it next writes to it, so the query would
    run its 600 s out: a deployment setting worth recommending). Airflow: the task's heartbeats stop, and the
    scheduler fails the task instance once ``task_instance_heartbeat_timeout`` passes (30 s here, 300 s by
    default); with ``retries=0`` it ends ``failed`` and the DAG run fails. The Celery message stays unacked in
    Redis (``acks_late``) until the visibility timeout, longer than this test.
    """
    sql(deploy_pg, f"alter role {deploy_pg.user} set client_connection_check_interval = '1s'")
    try:
        _deploy_dag(celery_deployment, projects, "celery_sync_host_lost", "run")
        run_id = celery_deployment.trigger("celery_sync_host_lost")
        celery_deployment.wait_task_state("celery_sync_host_lost", run_id, "dbt", ["running"], limit=300)
        wait_until(lambda: sleeping_queries(deploy_pg) > 0, 180, "model c to start sleeping")
        host = celery_deployment.ran_on("celery_sync_host_lost", run_id, "dbt")
        assert host in WORKERS and _dbt_on(celery_deployment, host, projects)

        celery_deployment.host(host).kill()

        assert dbt_processes(str(projects.root)) == [], "no dbt on any host or on the machine"
        wait_until(lambda: sleeping_queries(deploy_pg) == 0, STOP_LIMIT, "PostgreSQL to end the pg_sleep query")
        wait_until(lambda: not _dbt_sessions(deploy_pg), STOP_LIMIT, "dbt's sessions to end in PostgreSQL")
        limit = celery_deployment.heartbeat_timeout + 120
        ti = celery_deployment.wait_task_state(
            "celery_sync_host_lost", run_id, "dbt", ["failed", "up_for_retry"], limit=limit
        )
        assert ti["state"] == "failed"
        scheduler_log = celery_deployment.services["scheduler"].log_tail(lines=100_000)
        assert _HEARTBEAT_TIMEOUT in scheduler_log, "the scheduler failed it for its missing heartbeats"
        assert "celery_sync_host_lost" in scheduler_log[scheduler_log.index(_HEARTBEAT_TIMEOUT) :]
        run = celery_deployment.wait_run_state("celery_sync_host_lost", run_id, ["success", "failed"])
        assert run["state"] == "failed"
        assert dbt_processes(str(projects.root)) == []
    finally:
        sql(deploy_pg, f"alter role {deploy_pg.user} reset client_connection_check_interval")


def test_deferred_run_with_the_local_channel_is_lost_on_another_host(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    """Default (local) channel: the run dir is on the worker host that launched dbt; the triggerer host cannot
    see it, so the trigger reports ``lost`` and the task fails with that message. dbt itself runs on to its end
    (model c does not sleep here). The run dir stays on the launching host: ``execute_complete`` either resumes
    there while dbt still runs (and keeps it) or on the other worker (which cannot see it); a later run's sweep
    (``orphan_run_dir_age``) removes it. A remote run channel is what makes this deployment work (issue 12).
    """
    _deploy_dag(celery_deployment, projects, "celery_deferred_local", "run", deferrable=True)
    run_id = celery_deployment.trigger("celery_deferred_local")
    ti = celery_deployment.wait_task_state("celery_deferred_local", run_id, "dbt", ["failed", "success"], limit=300)

    assert ti["state"] == "failed"
    errors = celery_deployment.task_errors("celery_deferred_local", run_id, "dbt")
    log = celery_deployment.task_log_text("celery_deferred_local", run_id, "dbt")
    ran = celery_deployment.hosts_that_ran("celery_deferred_local", run_id, "dbt")
    assert len(ran) == 2 and set(ran) <= set(WORKERS), f"execute, then execute_complete: {ran}"
    launched_on = ran[0]
    assert f" on {launched_on}) in {celery_deployment.run_dir_root}/run_" in log, log[-4000:]
    lost = f"not visible from the triggerer (dbt runs on {launched_on}, this triggerer is {TRIGGERER_HOST})"
    assert len(errors) == 1 and errors[0].startswith("DbtException: Run dir ") and lost in errors[0], errors
    wait_until(lambda: not dbt_processes(str(projects.root)), 120, f"dbt on {launched_on} to finish")
    wait_until(lambda: not _dbt_sessions(deploy_pg), STOP_LIMIT, "dbt's sessions to end in PostgreSQL")
    left = _run_dirs(celery_deployment, launched_on)
    assert len(left) == 1 and "celery_deferred_local_dbt_try1" in left[0], left
    other = next(iter(set(WORKERS) - {launched_on}))
    assert not any("celery_deferred_local" in name for name in _run_dirs(celery_deployment, other))
