"""Unit tests for dlh_airflow_common.settings: the [dlh_dbt] config options."""

from __future__ import annotations

import pytest

from dlh_airflow_common.settings import configured, configured_count, configured_seconds


def test_unset_options_are_none_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__DLH_DBT__RUN_CHANNEL", raising=False)
    monkeypatch.delenv("AIRFLOW__DLH_DBT__RUN_CHANNEL_HEARTBEAT_TIMEOUT", raising=False)
    assert configured("run_channel") is None
    assert configured_seconds("run_channel_heartbeat_timeout", 60.0) == 60.0


def test_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__DLH_DBT__RUN_CHANNEL", "s3://bucket/runs")
    monkeypatch.setenv("AIRFLOW__DLH_DBT__RUN_CHANNEL_HEARTBEAT_TIMEOUT", "12.5")
    assert configured("run_channel") == "s3://bucket/runs"
    assert configured_seconds("run_channel_heartbeat_timeout", 60.0) == 12.5


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_a_bad_number_of_seconds_names_the_option(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AIRFLOW__DLH_DBT__RUN_CHANNEL_HEARTBEAT_TIMEOUT", value)
    with pytest.raises(ValueError, match=r"\[dlh_dbt\] run_channel_heartbeat_timeout must be a positive number"):
        configured_seconds("run_channel_heartbeat_timeout", 60.0)


def test_a_count_comes_from_the_environment_or_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__DLH_DBT__PROJECT_CACHE_KEEP", raising=False)
    assert configured_count("project_cache_keep", 3) == 3
    monkeypatch.setenv("AIRFLOW__DLH_DBT__PROJECT_CACHE_KEEP", "5")
    assert configured_count("project_cache_keep", 3) == 5


@pytest.mark.parametrize("value", ["many", "0", "-1", "2.5"])
def test_a_bad_count_names_the_option(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AIRFLOW__DLH_DBT__PROJECT_CACHE_KEEP", value)
    with pytest.raises(ValueError, match=r"\[dlh_dbt\] project_cache_keep must be a whole number of at least 1"):
        configured_count("project_cache_keep", 3)
