"""Deferred runs through a remote run channel (a moto S3 server on 127.0.0.1): real dbt, real DuckDB, dag.test().

The trigger and execute_complete read only the channel here, and retry_from_failure keeps its state there (sync
and deferred); tests/deployment proves the same across "hosts" that cannot see each other's files or processes.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dag_runner import run_dag_file
from dlh_airflow_common.operators.dbt import XCOM_SUMMARY_KEY
from pg_faults import dbt_processes
from s3_server import MotoS3

pytestmark = pytest.mark.integration

CHANNEL_CONN = "remote_channel_s3"
DAG = textwrap.dedent(
    """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtOperator(task_id="dbt", dbt_project_dir={project!r}, dbt_command="build", conn_id="remote_duckdb",
                    deferrable=True, check_interval=0.5, run_channel={channel!r},
                    run_channel_conn_id={conn!r}, run_dir_root={runs!r}, {extra})
    """
)


@pytest.fixture
def s3(s3_server: MotoS3) -> MotoS3:
    return s3_server


@pytest.fixture
def remote_env(s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    database = tmp_path / "remote.duckdb"
    monkeypatch.setenv("AIRFLOW_CONN_REMOTE_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(database)}))
    monkeypatch.setenv(f"AIRFLOW_CONN_{CHANNEL_CONN.upper()}", s3.connection())
    return database


def _run(tmp_path: Path, airflow_db: Path, project: Path, s3: MotoS3, dag_id: str, extra: str = "") -> Any:
    runs = tmp_path / "runs"
    path = tmp_path / f"{dag_id}.py"
    channel = s3.url(f"channel/{dag_id}")
    path.write_text(DAG.format(dag_id=dag_id, project=str(project), channel=channel, conn=CHANNEL_CONN,
                               runs=str(runs), extra=extra))  # fmt: skip
    return run_dag_file(path, airflow_db / "dags", dag_id), runs


def test_deferred_build_through_s3_matches_the_local_summary_and_leaves_nothing(
    remote_env: Path, example_project: Path, airflow_db: Path, tmp_path: Path, s3: MotoS3
) -> None:
    run, runs = _run(tmp_path, airflow_db, example_project, s3, "remote_build")
    assert run.state == "success", run.task_states
    summary = run.xcom("dbt", XCOM_SUMMARY_KEY)
    assert summary["success"] is True and summary["node_count"] == 36
    assert summary["status_counts"] == {"pass": 26, "success": 10}
    assert s3.list_objects("channel/remote_build") == [], "execute_complete removes the channel"
    assert not list(runs.glob("run_*")), "the runner removed its run dir, execute_complete its collected copy"
    assert dbt_processes(str(example_project)) == []


def test_deferred_failure_through_s3_raises_the_typed_error_naming_the_node(
    remote_env: Path, example_project: Path, airflow_db: Path, tmp_path: Path, s3: MotoS3
) -> None:
    (example_project / "models" / "marts" / "broken.sql").write_text("select * from {{ ref('orders') }} where nope\n")
    run, _ = _run(tmp_path, airflow_db, example_project, s3, "remote_fail")
    assert run.state == "failed"
    summary = run.xcom("dbt", XCOM_SUMMARY_KEY)
    assert summary["error"]["type"] == "DbtRuntimeException"
    assert summary["error"]["node_id"] == "model.shop.broken"
    assert [n["unique_id"] for n in summary["failed_nodes"]] == ["model.shop.broken"]


def test_kept_channel_holds_the_artifacts_and_no_secret(
    remote_env: Path, example_project: Path, airflow_db: Path, tmp_path: Path, s3: MotoS3
) -> None:
    run, runs = _run(tmp_path, airflow_db, example_project, s3, "remote_keep", extra="keep_target_artifacts=True")
    assert run.state == "success", run.task_states
    names = s3.list_objects("channel/remote_keep")
    assert sorted(Path(name).name for name in names) == ["artifacts.tar.gz", "status.json"], names
    status = json.loads(s3.get_object(names[-1] if names[-1].endswith("status.json") else names[0]))
    assert status["state"] == "finished" and status["exit_code"] == 0 and status["node_count"] == 36
    for name in names:
        body = s3.get_object(name)
        for secret in (s3.SECRET_KEY.encode(), s3.ACCESS_KEY.encode()):
            assert secret not in body, f"{name} holds a channel credential"
    kept = [path for path in runs.glob("run_*") if path.name.endswith("_collected")]
    assert len(kept) == 1 and (kept[0] / "target" / "run_results.json").is_file()


# -- retry_from_failure across workers: the resume state lives under the channel -------------------------------
RESUME_DAG = textwrap.dedent(
    """
    import json, shutil
    from datetime import datetime, timedelta
    from pathlib import Path
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    RUNS = Path({runs!r})


    class OtherWorkerEachStep(DbtOperator):
        # Each try, and each execute_complete, runs under a run-dir root of its own, the earlier roots gone:
        # as on another worker. Records which nodes each step's dbt ran.
        def _on(self, context, step):
            if context["ti"].try_number > 1 and step == "execute":
                shutil.rmtree(RUNS, ignore_errors=True)
            self.run_dir_root = str(RUNS / f"try{{context['ti'].try_number}}_{{step}}")
            self.__dict__.pop("hook", None)

        def execute(self, context):
            self._on(context, "execute")
            return super().execute(context)

        def execute_complete(self, context, event):
            self._on(context, "complete")
            return super().execute_complete(context, event)

        def _after_run(self, context, result):
            ran = [node["unique_id"] for node in result.run_results.get("results", [])]
            step = {{"try": context["ti"].try_number, "command": result.command, "ran": ran}}
            with open({ran_file!r}, "a") as out:
                out.write(json.dumps(step) + "\\n")
            super()._after_run(context, result)


    with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        OtherWorkerEachStep(
            task_id="dbt", dbt_project_dir={project!r}, dbt_command="build", conn_id="remote_duckdb",
            env_vars={{"DLH_TRY": "{{{{ ti.try_number }}}}"}}, retries=1, retry_delay=timedelta(seconds=0),
            retry_from_failure=True, deferrable={deferrable}, check_interval=0.5, run_channel={channel!r},
            run_channel_conn_id={conn!r},
        )
    """
)
FLAKY_MODEL = """\
{{ config(materialized='table') }}
select order_id, {% if env_var('DLH_TRY', '1') == '1' %}cast('try one fails' as integer){% else %}1{% endif %} as ok
from {{ ref('orders') }}
"""


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "sync"])
def test_a_failed_try_resumes_with_dbt_retry_on_another_worker_from_the_channel(
    remote_env: Path, example_project: Path, airflow_db: Path, tmp_path: Path, s3: MotoS3, deferrable: bool
) -> None:
    """Try 1 fails on one model; try 2 under another run-dir root (another worker) finds the state in S3 and
    runs ``dbt retry``: only the failed model and the one it skipped. Then the bucket holds nothing."""
    import duckdb

    (example_project / "models" / "marts" / "flaky.sql").write_text(FLAKY_MODEL)
    (example_project / "models" / "marts" / "after_flaky.sql").write_text("select * from {{ ref('flaky') }}\n")
    dag_id = f"remote_resume_{'deferred' if deferrable else 'sync'}"
    runs, ran_file = tmp_path / "runs", tmp_path / "ran.jsonl"
    path = tmp_path / f"{dag_id}.py"
    path.write_text(RESUME_DAG.format(dag_id=dag_id, project=str(example_project), runs=str(runs),
                                      ran_file=str(ran_file), deferrable=deferrable, conn=CHANNEL_CONN,
                                      channel=s3.url(f"channel/{dag_id}")))  # fmt: skip

    run = run_dag_file(path, airflow_db / "dags", dag_id)

    assert run.state == "success", run.task_states
    first, second = [json.loads(line) for line in ran_file.read_text().splitlines()]
    assert first["try"] == 1 and len(first["ran"]) == 38 and "model.shop.flaky" in first["ran"]
    assert second == {"try": 2, "command": "retry", "ran": ["model.shop.flaky", "model.shop.after_flaky"]}, second
    summary = run.xcom("dbt", XCOM_SUMMARY_KEY)
    assert summary["node_count"] == 2 and summary["status_counts"] == {"success": 2}
    with duckdb.connect(str(remote_env), read_only=True) as db:
        built = db.execute("select count(*), min(ok) from after_flaky").fetchone()
        assert built == (db.execute("select count(*) from orders").fetchone()[0], 1), "built by try 2"
    assert s3.list_objects(f"channel/{dag_id}") == [], "the channel and the resume state are gone"
    assert not list(runs.rglob(".dlh_state")), "no resume state on a worker"
