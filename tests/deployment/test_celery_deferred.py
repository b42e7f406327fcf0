"""Deferred DbtOperator runs through the remote run channel (moto S3) on the CeleryExecutor deployment.

Workers and triggerer are separate hosts (celery_deployment.py): the triggerer cannot see a worker's run dirs or
processes, and ``execute_complete`` may resume on the other worker. Everything the trigger and
``execute_complete`` know comes through ``s3://<bucket>/channel/<dag>/<run dir>/``. Each scenario is driven
through the REST API and checked in the hosts' process tables, their private run-dir roots, the bucket and
PostgreSQL's ``pg_stat_activity``. The deployment runs the channel with a 2 s heartbeat and a 20 s heartbeat
timeout (``[dlh_dbt]`` options), so ``lost`` comes within 20 s plus one poll.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Mapping

import pytest
from airflow_deployment import DeploymentError, wait_until
from celery_deployment import CHANNEL_CONN_ID, TRIGGERER_HOST, WORKERS, CeleryDeployment

from pg_faults import AUDIT, builds, dbt_processes, sleeping_queries, sql
from pg_server import PostgresServer
from tests.deployment.conftest import Projects
from tests.deployment.test_celery_sync import (  # noqa: F401 (fixtures: the same as the sync scenarios')
    STOP_LIMIT,
    _dbt_on,
    _dbt_sessions,
    _deployment_whole,
    _run_dirs,
    sleep_model,
)

HEARTBEAT_TIMEOUT = 20.0  # the deployment's [dlh_dbt] run_channel_heartbeat_timeout (conftest)
LOST_LIMIT = HEARTBEAT_TIMEOUT + 30  # the documented bound, plus a poll and the task's own turn-around
TASK = """
        DbtOperator(task_id={task_id!r}, dbt_project_dir={project!r}, dbt_command={command!r}, conn_id={conn!r},
                    deferrable=True, check_interval=1, retries=0, run_channel={channel!r},
                    run_channel_conn_id={channel_conn!r}, kill_grace_period=10{extra})
"""
DAG = """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False{dag_args}):
"""


def _prefix(dag_id: str) -> str:
    return f"channel/{dag_id}"


def _deploy(
    deployment: CeleryDeployment,
    projects: Projects,
    dag_id: str,
    command: str = "build",
    *,
    tasks: Mapping[str, str] | None = None,
    dag_args: str = "",
) -> None:
    """One DAG of deferrable tasks through the S3 channel: ``tasks`` maps task ids to extra operator arguments
    (``", dbt_models=['a']"``); one task ``dbt`` by default."""
    assert deployment.s3 is not None
    source = DAG.format(dag_id=dag_id, dag_args=dag_args)
    for task_id, extra in (tasks or {"dbt": ""}).items():
        source += TASK.format(
            task_id=task_id, project=str(projects.faults), command=command, conn=projects.pg_conn,
            channel=deployment.s3.url(_prefix(dag_id)), channel_conn=CHANNEL_CONN_ID, extra=extra,
        )  # fmt: skip
    deployment.write_dag(dag_id, source)
    deployment.wait_parsed(dag_id)


def _nothing_left(deployment: CeleryDeployment, projects: Projects, pg: PostgresServer, dag_id: str) -> None:
    assert deployment.s3 is not None
    wait_until(lambda: not deployment.s3.list_objects(_prefix(dag_id)), STOP_LIMIT, "the channel to be removed")
    for host in WORKERS:
        assert not any(dag_id in name for name in _run_dirs(deployment, host)), f"a run dir left on {host}"
    assert dbt_processes(str(projects.root)) == []
    wait_until(lambda: not _dbt_sessions(pg), STOP_LIMIT, "dbt's sessions to end in PostgreSQL")


def test_deferred_build_through_s3_completes_from_the_channel(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    before = builds(deploy_pg)
    _deploy(celery_deployment, projects, "remote_build")
    run_id = celery_deployment.trigger("remote_build")
    celery_deployment.wait_task_state("remote_build", run_id, "dbt", ["success"], limit=300)

    ran = celery_deployment.hosts_that_ran("remote_build", run_id, "dbt")
    assert len(ran) == 2 and set(ran) <= set(WORKERS), f"execute, then execute_complete: {ran}"
    summary = celery_deployment.xcom("remote_build", run_id, "dbt", "dbt_summary")
    assert summary["success"] is True and summary["node_count"] == 3 and summary["failed_nodes"] == []
    after = builds(deploy_pg)
    assert {model: after.get(model, 0) - before.get(model, 0) for model in "abc"} == {"a": 1, "b": 1, "c": 1}
    log = celery_deployment.task_log_text("remote_build", run_id, "dbt")
    assert f"reporting to {celery_deployment.s3.url(_prefix('remote_build'))}/run_" in log
    assert "OK model.faults.a" in log, "the trigger logged node results read from the channel"
    assert "Collected the dbt run's artifacts from s3://" in log
    _nothing_left(celery_deployment, projects, deploy_pg, "remote_build")


def test_failing_model_fails_the_task_with_the_typed_error_naming_it(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    sql(deploy_pg, f"alter table {AUDIT}.control rename to control_gone")  # model c now fails in PostgreSQL
    try:
        _deploy(celery_deployment, projects, "remote_fail", "run")
        run_id = celery_deployment.trigger("remote_fail")
        ti = celery_deployment.wait_task_state("remote_fail", run_id, "dbt", ["failed", "success"], limit=300)
    finally:
        sql(deploy_pg, f"alter table {AUDIT}.control_gone rename to control")
    assert ti["state"] == "failed"
    summary = celery_deployment.xcom("remote_fail", run_id, "dbt", "dbt_summary")
    assert summary["error"]["type"] == "DbtRuntimeException" and summary["error"]["node_id"] == "model.faults.c"
    errors = celery_deployment.task_errors("remote_fail", run_id, "dbt")
    assert len(errors) == 1 and errors[0].startswith("DbtRuntimeException: dbt run failed in model.faults.c"), errors
    _nothing_left(celery_deployment, projects, deploy_pg, "remote_fail")


@pytest.mark.usefixtures("sleep_model")
def test_killed_deferred_task_stops_dbt_on_its_host_through_a_cancel_request(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    _deploy(celery_deployment, projects, "remote_kill", "run")
    run_id = celery_deployment.trigger("remote_kill")
    celery_deployment.wait_task_state("remote_kill", run_id, "dbt", ["deferred"], limit=300)
    wait_until(lambda: sleeping_queries(deploy_pg) > 0, 180, "model c to start sleeping")
    (host,) = celery_deployment.hosts_that_ran("remote_kill", run_id, "dbt")
    assert _dbt_on(celery_deployment, host, projects), "dbt runs on the host that launched it"
    assert _dbt_on(celery_deployment, TRIGGERER_HOST, projects) == []

    celery_deployment.mark_failed("remote_kill", run_id, "dbt")

    wait_until(lambda: not _dbt_on(celery_deployment, host, projects), STOP_LIMIT, f"dbt on {host} to stop")
    wait_until(lambda: sleeping_queries(deploy_pg) == 0, STOP_LIMIT, "the pg_sleep query to be cancelled")
    _nothing_left(celery_deployment, projects, deploy_pg, "remote_kill")


@pytest.mark.usefixtures("sleep_model")
@pytest.mark.parametrize("what", ["runner", "host"])
def test_runner_or_host_killed_is_lost_within_the_heartbeat_timeout(
    what: str, celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    dag_id = f"remote_lost_{what}"
    sql(deploy_pg, f"alter role {deploy_pg.user} set client_connection_check_interval = '1s'")
    try:
        _deploy(celery_deployment, projects, dag_id, "run")
        run_id = celery_deployment.trigger(dag_id)
        celery_deployment.wait_task_state(dag_id, run_id, "dbt", ["deferred"], limit=300)
        wait_until(lambda: sleeping_queries(deploy_pg) > 0, 180, "model c to start sleeping")
        (host,) = celery_deployment.hosts_that_ran(dag_id, run_id, "dbt")
        if what == "runner":
            (runner,) = celery_deployment.host(host).find_processes("dlh_airflow_common.dbt.detached")
            celery_deployment.host(host).kill_process(runner.pid, signal.SIGKILL)
        else:
            celery_deployment.host(host).kill()
        ti = celery_deployment.wait_task_state(dag_id, run_id, "dbt", ["failed", "success"], limit=LOST_LIMIT + 120)
        assert ti["state"] == "failed"
        errors = celery_deployment.task_errors(dag_id, run_id, "dbt")
        assert len(errors) == 1 and "sent no heartbeat" in errors[0] and host in errors[0], errors
        wait_until(lambda: sleeping_queries(deploy_pg) == 0, STOP_LIMIT, "no query left in PostgreSQL")
        wait_until(lambda: not dbt_processes(str(projects.root)), STOP_LIMIT, "no dbt left anywhere")
        wait_until(lambda: not celery_deployment.s3.list_objects(_prefix(dag_id)), STOP_LIMIT, "channel removed")
    finally:
        sql(deploy_pg, f"alter role {deploy_pg.user} reset client_connection_check_interval")


def test_triggerer_restart_mid_run_still_completes(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    sql(deploy_pg, f"update {AUDIT}.control set seconds = 20")
    try:
        _deploy(celery_deployment, projects, "remote_restart", "run")
        run_id = celery_deployment.trigger("remote_restart")
        celery_deployment.wait_task_state("remote_restart", run_id, "dbt", ["deferred"], limit=300)
        wait_until(lambda: sleeping_queries(deploy_pg) > 0, 180, "model c to start sleeping")
        celery_deployment.restart_triggerer()
        ti = celery_deployment.wait_task_state("remote_restart", run_id, "dbt", ["success", "failed"], limit=300)
    finally:
        sql(deploy_pg, f"update {AUDIT}.control set seconds = 0")
    assert ti["state"] == "success"
    assert celery_deployment.xcom("remote_restart", run_id, "dbt", "dbt_summary")["node_count"] == 3
    _nothing_left(celery_deployment, projects, deploy_pg, "remote_restart")


TWENTY = 20
# Two tasks are handed from one worker to the other between execute and execute_complete: each has a Celery queue
# of its own that only its first worker consumes until execute has started there, then only the other one.
HANDOFFS = {"t00": ("worker-a", "worker-b"), "t01": ("worker-b", "worker-a")}
_LAUNCHED = re.compile(r"reporting to s3://\S+/(run_\w+)")


def _twenty_tasks() -> dict[str, str]:
    tasks = {}
    for index in range(TWENTY):
        task_id = f"t{index:02d}"
        models = ["a"] if index % 2 else ["a", "b"]
        queue = f", queue='handoff_{task_id}'" if task_id in HANDOFFS else ""
        tasks[task_id] = f", dbt_models={models!r}, schema_override='twenty_{index}'{queue}"
    return tasks


def test_twenty_concurrent_deferred_tasks_across_both_workers_each_get_their_own_run(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    """20 deferred runs at once on two workers and one triggerer, through one S3 channel prefix: every task
    succeeds with the summary of its own run, and a resume on the other worker completes from the channel."""
    dag_id = "remote_twenty"
    tasks = _twenty_tasks()
    drop_schemas = "; ".join(f"drop schema if exists twenty_{i} cascade" for i in range(TWENTY))
    sql(deploy_pg, drop_schemas)
    before = builds(deploy_pg)
    _deploy(celery_deployment, projects, dag_id, "run", tasks=tasks, dag_args=f", max_active_tasks={TWENTY}")
    runners_seen = 0
    try:
        for task_id, (first, _) in HANDOFFS.items():
            celery_deployment.consume(first, f"handoff_{task_id}")
        started = time.monotonic()
        run_id = celery_deployment.trigger(dag_id)
        pending = dict(HANDOFFS)

        def hand_over() -> bool:  # as soon as execute reached its first worker: long before dbt can have ended
            for task_id, (first, then) in list(pending.items()):
                if celery_deployment.hosts_that_ran(dag_id, run_id, task_id):
                    celery_deployment.consume(first, f"handoff_{task_id}", stop=True)
                    celery_deployment.consume(then, f"handoff_{task_id}")
                    del pending[task_id]
            return not pending

        wait_until(hand_over, 300, "the handed-over tasks' executes to reach their first worker")

        def all_ended() -> bool:
            nonlocal runners_seen
            runners = sum(len(celery_deployment.host(h).find_processes("dlh_airflow_common.dbt.detached"))
                          for h in WORKERS)  # fmt: skip
            runners_seen = max(runners_seen, runners)
            states = [celery_deployment.task_instance(dag_id, run_id, t)["state"] for t in tasks]
            return all(state in ("success", "failed", "upstream_failed") for state in states)

        wait_until(all_ended, 900, "all 20 tasks to end", interval=2)
        took = time.monotonic() - started
    finally:
        for task_id, hosts in HANDOFFS.items():  # harmless if left (no other task uses them): never mask a failure
            for worker in hosts:
                with contextlib.suppress(DeploymentError):
                    celery_deployment.consume(worker, f"handoff_{task_id}", stop=True)
    print(f"\n20 deferred tasks: {took:.0f}s from trigger to the last end; at most {runners_seen} runners at once")

    ran = {task_id: celery_deployment.hosts_that_ran(dag_id, run_id, task_id) for task_id in tasks}
    failed = [t for t in tasks if celery_deployment.task_instance(dag_id, run_id, t)["state"] != "success"]
    assert failed == [], f"failed: {failed}; ran: {ran}"
    for task_id, (first, then) in HANDOFFS.items():
        assert ran[task_id] == [first, then], f"{task_id}: execute on {first}, execute_complete on {then}: {ran}"
    assert all(len(hosts) == 2 for hosts in ran.values()), f"execute, then execute_complete: {ran}"
    assert {hosts[0] for hosts in ran.values()} == set(WORKERS), f"both workers ran executes: {ran}"
    crossed = [t for t, hosts in ran.items() if hosts[0] != hosts[1]]
    print(f"resumed on the other worker: {crossed}")

    invocations, store_retries = set(), 0
    for index, task_id in enumerate(tasks):
        summary = celery_deployment.xcom(dag_id, run_id, task_id, "dbt_summary")
        log = celery_deployment.task_log_text(dag_id, run_id, task_id)
        store_retries += log.count("failed (try ") + log.count("Could not read the run channel")
        (launched,) = set(_LAUNCHED.findall(log))
        assert f"_{dag_id}_{task_id}_try1_" in launched, f"{task_id} launched {launched}"
        assert summary["run_dir"] == f"{launched}_collected", f"{task_id}'s summary is of its own run: {summary}"
        assert summary["success"] is True and summary["node_count"] == (1 if index % 2 else 2), summary
        invocations.add(summary["invocation_id"])
    assert len(invocations) == TWENTY and None not in invocations, "one dbt invocation per task"
    print(f"object-store errors tried again or polled through, in the task logs: {store_retries}")
    tables = sql(deploy_pg, "select table_schema || '.' || table_name from information_schema.tables "
                            "where table_schema like 'twenty_%' order by 1").split()  # fmt: skip
    expected = [f"twenty_{i}.{m}" for i in range(TWENTY) for m in (["a"] if i % 2 else ["a", "b"])]
    assert sorted(tables) == sorted(expected), "each run built its selection in its own schema"
    after = builds(deploy_pg)
    assert {m: after.get(m, 0) - before.get(m, 0) for m in "abc"} == {"a": TWENTY, "b": TWENTY // 2, "c": 0}
    _nothing_left(celery_deployment, projects, deploy_pg, dag_id)
    sql(deploy_pg, drop_schemas)
