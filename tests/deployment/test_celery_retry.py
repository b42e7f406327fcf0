"""retry_from_failure across hosts on the CeleryExecutor deployment: the resume state lives under the run channel.

A deferred task fails on try 1; its ``execute_complete`` keeps the state in ``s3://<bucket>/channel/<dag>/.dlh_state/``
(not on the host, whose run-dir root is private). The host that kept it is then taken down, so try 2 runs on the
other worker, which has never seen try 1's files, and resumes with ``dbt retry``: only the failed model is built.
"""

from __future__ import annotations

from airflow_deployment import wait_until
from celery_deployment import CHANNEL_CONN_ID, WORKERS, CeleryDeployment

from pg_faults import AUDIT, builds, dbt_processes, sql
from pg_server import PostgresServer
from tests.deployment.conftest import Projects
from tests.deployment.test_celery_sync import (  # noqa: F401 (fixtures: the same as the sync scenarios')
    STOP_LIMIT,
    _dbt_sessions,
    _deployment_whole,
    _run_dirs,
)

DAG_ID = "remote_retry"
RETRY_DELAY = 30  # seconds in up_for_retry: time to look at the bucket and the hosts between the tries
DAG = """
    from datetime import datetime, timedelta
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtOperator(task_id="dbt", dbt_project_dir={project!r}, dbt_command="run", conn_id={conn!r},
                    deferrable=True, check_interval=1, retries=1, retry_delay=timedelta(seconds={delay}),
                    retry_from_failure=True, run_dir_root={runs!r}, run_channel={channel!r},
                    run_channel_conn_id={channel_conn!r}, kill_grace_period=10)
"""


def test_a_deferred_try_resumes_with_dbt_retry_on_the_other_worker_from_the_channel(
    celery_deployment: CeleryDeployment, projects: Projects, deploy_pg: PostgresServer
) -> None:
    deployment = celery_deployment
    assert deployment.s3 is not None
    prefix = f"channel/{DAG_ID}"
    deployment.write_dag(DAG_ID, DAG.format(
        dag_id=DAG_ID, project=str(projects.faults), conn=projects.pg_conn, delay=RETRY_DELAY,
        runs=str(deployment.run_dir_root), channel=deployment.s3.url(prefix), channel_conn=CHANNEL_CONN_ID,
    ))  # fmt: skip
    deployment.wait_parsed(DAG_ID)
    before = builds(deploy_pg)

    sql(deploy_pg, f"alter table {AUDIT}.control rename to control_gone")  # model c fails in try 1
    try:
        run_id = deployment.trigger(DAG_ID)
        deployment.wait_task_state(DAG_ID, run_id, "dbt", ["up_for_retry"], limit=300)
    finally:
        sql(deploy_pg, f"alter table {AUDIT}.control_gone rename to control")
    first = deployment.hosts_that_ran(DAG_ID, run_id, "dbt", 1)
    kept = deployment.s3.list_objects(f"{prefix}/.dlh_state/")
    assert [key.rsplit("/", 1)[1] for key in kept] == ["resume.json", "run_results.json"], kept
    assert f"/.dlh_state/{DAG_ID}/dbt/" in kept[0] and kept[0].endswith("/map-1/resume.json"), kept
    for host in WORKERS:
        assert ".dlh_state" not in deployment.host(host).listdir(deployment.run_dir_root), f"state on {host}"

    keeper = first[-1]  # where execute_complete of try 1 kept the state: taken down, try 2 goes elsewhere
    (other,) = [host for host in WORKERS if host != keeper]
    deployment.host(keeper).kill()
    deployment.wait_task_state(DAG_ID, run_id, "dbt", ["success"], limit=300 + RETRY_DELAY)

    second = deployment.hosts_that_ran(DAG_ID, run_id, "dbt", 2)
    print(f"\ntry 1 ran on {first} (execute, execute_complete); try 2 on {second}")
    assert second and set(second) == {other}, second
    log = deployment.task_log_text(DAG_ID, run_id, "dbt", 2)
    assert "Resuming the previous try's failed and skipped nodes with dbt retry" in log, log[-4000:]
    assert "Started dbt retry detached" in log, log[-4000:]
    summary = deployment.xcom(DAG_ID, run_id, "dbt", "dbt_summary")
    assert summary["success"] is True and summary["command"] == "retry", summary
    assert summary["node_count"] == 1 and summary["status_counts"] == {"success": 1}, summary
    after = builds(deploy_pg)
    assert {model: after.get(model, 0) - before.get(model, 0) for model in "abc"} == {"a": 1, "b": 1, "c": 1}, (
        "a and b were built by try 1 only, c by try 2 only"
    )
    wait_until(lambda: not deployment.s3.list_objects(prefix), STOP_LIMIT, "the channel and the state to go")
    assert not any(DAG_ID in name for name in _run_dirs(deployment, other)), f"a run dir left on {other}"
    assert dbt_processes(str(projects.root)) == []
    wait_until(lambda: not _dbt_sessions(deploy_pg), STOP_LIMIT, "dbt's sessions to end in PostgreSQL")
