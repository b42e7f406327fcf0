"""Unit tests for dlh_airflow_common.operators.dbt that need no dbt run (the runs are in tests/integration)."""

from __future__ import annotations

import pytest

from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.operators.dbt import DbtOperator, as_timedelta, refuse_local_channel_on_kubernetes


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


def test_execution_timeout_accepts_seconds() -> None:
    assert as_timedelta(90).total_seconds() == 90
    with pytest.raises(ValueError, match="positive number of seconds"):
        as_timedelta(0)
