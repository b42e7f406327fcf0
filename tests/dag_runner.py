"""Run a DAG file under ``dag.test()`` the way Airflow 3.3 needs it, and read back what its tasks pushed."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class DagTestRun:
    """State of the run and of each task instance, and every XCom the run produced."""

    state: str
    task_states: dict[str, str]
    xcoms: dict[tuple[str, str], Any]

    def xcom(self, task_id: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_id, key))


def run_dag_file(dag_file: Path, dags_folder: Path, dag_id: str) -> DagTestRun:
    """Copy ``dag_file`` into the dags folder (``dag.test()`` syncs that bundle first), run it, then remove the
    copy: every ``dag.test()`` parses the whole folder, so copies left by earlier tests would slow each later one.
    """
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    target = dags_folder / dag_file.name
    copied = dag_file.resolve() != target.resolve()
    if copied:
        shutil.copy(dag_file, target)
    try:
        bag = DagBag(str(target))
        assert not bag.import_errors, bag.import_errors
        dag = bag.get_dag(dag_id)
        assert dag is not None, f"{dag_id} not found in {target}"
        dag_run = dag.test()
    finally:
        if copied:
            target.unlink(missing_ok=True)
    task_states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id).all()
        xcoms = {(row.task_id, row.key): XComModel.deserialize_value(row) for row in rows}
    return DagTestRun(state=str(dag_run.state), task_states=task_states, xcoms=xcoms)
