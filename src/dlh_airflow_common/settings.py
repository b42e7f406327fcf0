"""The library's Airflow config options, section ``[dlh_dbt]`` (env ``AIRFLOW__DLH_DBT__<OPTION>``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

_N = TypeVar("_N", int, float)

SECTION = "dlh_dbt"


def configured(option: str) -> str | None:
    """``[dlh_dbt] <option>`` from the Airflow config; None when unset or empty."""
    from airflow.configuration import conf

    value = conf.get(SECTION, option, fallback=None)
    return str(value) if value else None


def _configured_number(option: str, default: _N, parse: Callable[[str], _N], minimum: _N, what: str) -> _N:
    """``[dlh_dbt] <option>`` parsed by ``parse`` and at least ``minimum``; ``default`` when unset."""
    value = configured(option)
    if value is None:
        return default
    try:
        number = parse(value)
    except ValueError:
        raise ValueError(f"[{SECTION}] {option} must be {what}, not {value!r}") from None
    if number < minimum:
        raise ValueError(f"[{SECTION}] {option} must be {what}, not {value!r}")
    return number


def configured_seconds(option: str, default: float) -> float:
    """A positive number of seconds from ``[dlh_dbt] <option>``; ``default`` when unset. A bad value is an error."""
    return _configured_number(option, default, float, math.nextafter(0.0, 1.0), "a positive number of seconds")


def configured_count(option: str, default: int) -> int:
    """A whole number >= 1 from ``[dlh_dbt] <option>``; ``default`` when unset. A bad value is an error."""
    return _configured_number(option, default, int, 1, "a whole number of at least 1")
