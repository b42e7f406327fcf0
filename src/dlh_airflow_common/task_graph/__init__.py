"""A dbt project as an Airflow task graph: ``DbtTaskGroup`` and ``DbtDag``, rendered from a cached graph file.

The classes are imported on first use, so the ``dlh-dbt`` command and the graph-file modules load without
Airflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlh_airflow_common.task_graph.group import DbtDag, DbtTaskGroup

__all__ = ["DbtDag", "DbtTaskGroup"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dlh_airflow_common.task_graph import group

        return getattr(group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
