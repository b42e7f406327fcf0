"""Unit tests for dlh_airflow_common.operators.dbt that need no dbt run (the runs are in tests/integration)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dlh_airflow_common.dbt import retry_state
from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.operators.dbt import DbtOperator, as_timedelta, refuse_local_channel_on_kubernetes
from tests.unit.conftest import MemoryState


@pytest.mark.parametrize("executor", ["KubernetesExecutor", "airflow.providers.cncf.kubernetes.KubernetesExecutor"])
def test_a_local_channel_on_kubernetes_is_refused_naming_the_setting(executor: str) -> None:
    with pytest.raises(DbtException) as caught:
        refuse_local_channel_on_kubernetes(executor)
    message = str(caught.value)
    assert "needs a remote run channel" in message and "run_channel" in message and "[dlh_dbt] run_channel" in message
    assert "deferrable=False" in message and "docs/deployment.md" in message


def test_the_default_executor_comes_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "KubernetesExecutor,CeleryExecutor")
    with pytest.raises(DbtException, match="KubernetesExecutor needs a remote run channel"):
        refuse_local_channel_on_kubernetes(None)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor,KubernetesExecutor")
    refuse_local_channel_on_kubernetes(None)  # the default executor is Celery: the worker outlives the deferral


@pytest.mark.parametrize("executor", ["LocalExecutor", "CeleryExecutor"])
def test_other_executors_pass(executor: str) -> None:
    refuse_local_channel_on_kubernetes(executor)


def test_run_channel_settings_reach_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__DLH_DBT__RUN_CHANNEL", "s3://from-config/runs")
    monkeypatch.setenv("AIRFLOW__DLH_DBT__RUN_CHANNEL_CONN_ID", "config_conn")
    configured = DbtOperator(task_id="t", dbt_project_dir="/nowhere", deferrable=True)
    assert (configured.hook.run_channel, configured.hook.run_channel_conn_id) == (
        "s3://from-config/runs",
        "config_conn",
    )
    explicit = DbtOperator(task_id="u", dbt_project_dir="/nowhere", run_channel="gs://b/p", run_channel_conn_id="g")
    assert (explicit.hook.run_channel, explicit.hook.run_channel_conn_id) == ("gs://b/p", "g")


def test_run_report_setting_reaches_the_try() -> None:
    default = DbtOperator(task_id="t", dbt_project_dir="/nowhere")
    assert default.run_report is True and default.hook._settings().run_report is True
    off = DbtOperator(task_id="u", dbt_project_dir="/nowhere", run_report=False)
    assert off.hook._settings().run_report is False


def test_settings_at_their_default_are_read_from_the_class_and_given_ones_from_the_instance() -> None:
    """Each setting the class holds has its ``__init__`` default there, so an operator reads the same either way."""
    import inspect

    defaults = {
        name: param.default
        for name, param in inspect.signature(DbtOperator.__init__).parameters.items()
        if name in vars(DbtOperator)
    }
    assert len(defaults) >= 27 and "threads" in defaults and "dbt_models" not in defaults
    for name, default in defaults.items():
        held = getattr(DbtOperator, name)
        assert held == default and type(held) is type(default), name
    plain = DbtOperator(task_id="t", dbt_project_dir="/nowhere")
    assert not set(defaults) & set(vars(plain)), "defaults are not copied onto the instance"
    assert (plain.threads, plain.check_interval, plain.run_report, plain.summary_pushed) == (None, 10.0, True, False)
    given = DbtOperator(task_id="u", dbt_project_dir="/nowhere", threads=4, check_interval=10, publish_docs=True,
                        artifacts_destination="/tmp/a", execution_timeout=60)  # fmt: skip
    assert (given.threads, given.publish_docs, given.upload_artifacts) == (4, True, True)
    assert type(given.check_interval) is int, "a value of another type is kept as given"
    assert given.dbt_timeout is not None and given.dbt_timeout.total_seconds() == 60
    assert (plain.threads, plain.upload_artifacts, plain.dbt_timeout) == (None, False, None)
    assert all(name in vars(plain) for name in DbtOperator.template_fields), "templated fields are per instance"


def test_execution_timeout_accepts_seconds() -> None:
    assert as_timedelta(90).total_seconds() == 90
    with pytest.raises(ValueError, match="positive number of seconds"):
        as_timedelta(0)


def _context(try_number: int) -> Any:
    ti = SimpleNamespace(dag_id="my/dag", task_id="dbt", map_index=-1, try_number=try_number)
    return {"ti": ti, "run_id": "manual__2025-01-01T00:00:00+00:00"}


def test_resume_state_lives_beside_the_run_dirs_without_a_channel(tmp_path: Path) -> None:
    operator = DbtOperator(task_id="t", dbt_project_dir="/nowhere", run_dir_root=str(tmp_path), retry_from_failure=True)
    state = operator._resume_state(_context(2))
    assert state == str(tmp_path / ".dlh_state" / "my_dag" / "dbt" / "manual__2025-01-01T00_00_00_00_00" / "map-1")
    (Path(state) / "run_results.json").parent.mkdir(parents=True)
    (Path(state) / "run_results.json").write_text("{}")
    assert operator._resume_state(_context(1)) == state and not Path(state).exists(), "a first try starts clean"


def test_a_remote_project_reaches_the_hook_and_keeps_its_state_outside_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = DbtOperator(task_id="t", dbt_project_dir="s3://bucket/shop.tar.gz", dbt_project_conn_id="aws",
                           project_cache_dir=str(tmp_path / "cache"), retry_from_failure=True)  # fmt: skip
    hook = operator.hook
    assert (hook.dbt_project_conn_id, hook.project_cache_root()) == ("aws", tmp_path / "cache")
    state = operator._resume_state(_context(2))
    assert state is not None and Path(state).is_relative_to(Path(str(hook.run_root())))
    assert not Path(state).is_relative_to(tmp_path / "cache")


def test_resume_state_lives_under_the_run_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_state: MemoryState
) -> None:
    monkeypatch.setenv("AIRFLOW__DLH_DBT__RUN_CHANNEL", "s3://bucket/runs/")
    monkeypatch.setenv("AIRFLOW__DLH_DBT__RUN_CHANNEL_CONN_ID", "aws")
    operator = DbtOperator(task_id="t", dbt_project_dir="/nowhere", run_dir_root=str(tmp_path), retry_from_failure=True)
    url = "s3://bucket/runs/.dlh_state/my_dag/dbt/manual__2025-01-01T00_00_00_00_00/map-1"
    assert operator._resume_state(_context(2)) == url and memory_state.opened == [], "a later try only names it"
    memory_state.fs.pipe_file(memory_state.path(url) + "/run_results.json", b"{}")
    assert operator._resume_state(_context(1)) == url
    assert memory_state.opened == [(url, "aws")], "a first try clears leftovers, through the channel's connection"
    assert not memory_state.fs.exists(memory_state.path(url))
    assert not (tmp_path / ".dlh_state").exists(), "nothing on the worker"


def test_a_first_try_keeps_no_state_when_leftovers_cannot_be_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(url: str, conn_id: str | None) -> Any:
        raise ConnectionError("endpoint unreachable")

    monkeypatch.setattr(retry_state, "open_url", unreachable)
    operator = DbtOperator(
        task_id="t", dbt_project_dir="/nowhere", run_channel="s3://bucket/runs", retry_from_failure=True
    )
    assert operator._resume_state(_context(1)) is None, "leftovers it could not remove are never resumed"
