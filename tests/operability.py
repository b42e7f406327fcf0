"""Helpers for the operability tests: write a DbtOperator DAG file, run it in-process or in a fresh interpreter.

A fresh interpreter is for settings Airflow reads once per process (the StatsD client, the OpenLineage
listener): the test sets them in the child's environment and nothing leaks into the rest of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dag_runner import DagTestRun

TESTS_DIR = Path(__file__).resolve().parent

_HEADER = """\
from datetime import datetime
from airflow.sdk import DAG
from dlh_airflow_common.operators.dbt import DbtOperator

with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    previous = None
"""
_TASK = """\
    task = DbtOperator(task_id={task_id!r}, dbt_project_dir={project!r}, dbt_command={command!r}, **{kwargs!r})
    if previous is not None:
        previous >> task
    previous = task
"""


def write_dag(folder: Path, dag_id: str, project: Path, tasks: Sequence[tuple[str, str, Mapping[str, Any]]]) -> Path:
    """A DAG file with DbtOperator tasks ``(task_id, command, kwargs)`` run one after the other."""
    body = _HEADER.format(dag_id=dag_id)
    for task_id, command, kwargs in tasks:
        body += _TASK.format(task_id=task_id, project=str(project), command=command, kwargs=dict(kwargs))
    path = folder / f"{dag_id}.py"
    path.write_text(body)
    return path


_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from dag_runner import run_dag_file
    run = run_dag_file(Path({dag_file!r}), Path({dags_folder!r}), {dag_id!r})
    xcoms = [[task, key, value] for (task, key), value in run.xcoms.items()]
    result = {{"state": run.state, "task_states": run.task_states, "xcoms": xcoms}}
    Path({result_file!r}).write_text(json.dumps(result, default=str))
    """
)


def run_dag_in_subprocess(
    dag_file: Path, dags_folder: Path, dag_id: str, env: Mapping[str, str], timeout: float = 600
) -> tuple[DagTestRun, str]:
    """Run the DAG under ``dag.test()`` in a new interpreter with ``env`` added; returns the run and its output.

    The run comes back in a file of its own: on stdout, a log line written by another thread or process of the
    child (the OpenLineage client's) could land inside it.
    """
    result_file = dag_file.with_suffix(".result.json")
    result_file.unlink(missing_ok=True)
    code = _CHILD.format(
        tests=str(TESTS_DIR),
        dag_file=str(dag_file),
        dags_folder=str(dags_folder),
        dag_id=dag_id,
        result_file=str(result_file),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or not result_file.exists():
        raise AssertionError(f"DAG run in a subprocess failed ({proc.returncode}):\n{output[-6000:]}")
    data = json.loads(result_file.read_text())
    xcoms = {(task, key): value for task, key, value in data["xcoms"]}
    return DagTestRun(state=data["state"], task_states=data["task_states"], xcoms=xcoms), output
