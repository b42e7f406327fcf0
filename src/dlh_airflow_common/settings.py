"""The library's Airflow config options, section ``[dlh_dbt]`` (env ``AIRFLOW__DLH_DBT__<OPTION>``)."""

from __future__ import annotations

SECTION = "dlh_dbt"


def configured(option: str) -> str | None:
    """``[dlh_dbt] <option>`` from the Airflow config; None when unset or empty."""
    from airflow.configuration import conf

    value = conf.get(SECTION, option, fallback=None)
    return str(value) if value else None


def configured_seconds(option: str, default: float) -> float:
    """A positive number of seconds from ``[dlh_dbt] <option>``; ``default`` when unset. A bad value is an error."""
    value = configured(option)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"[{SECTION}] {option} must be a positive number of seconds, not {value!r}")
    return seconds
