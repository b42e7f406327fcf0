"""Imports whose module moved between the Airflow versions the suite runs on (3.1 to 3.3)."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from packaging.version import Version

AIRFLOW_VERSION = Version(version("apache-airflow-core"))
# Connection-form fields read from provider info (conn-fields, ui-field-behaviour), not from hook classes.
FORMS_FROM_PROVIDER_INFO = Version("3.2") <= AIRFLOW_VERSION


def import_string(dotted_path: str) -> Any:
    """Airflow's ``import_string`` (``airflow._shared`` from 3.2, ``airflow.utils`` before)."""
    try:
        from airflow._shared.module_loading import import_string as found
    except ImportError:
        from airflow.utils.module_loading import import_string as found
    return found(dotted_path)


def sdk_stats() -> Any:
    """Airflow's ``Stats`` object (``airflow.sdk.observability`` from 3.2, ``airflow.stats`` before)."""
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:
        from airflow.stats import Stats
    return Stats


def forget_discovered_providers() -> None:
    """Before 3.2 the API server's form reader must discover hooks itself (under its wtforms stand-ins); a
    ProvidersManager another test already initialized would hand it hooks without form fields."""
    if FORMS_FROM_PROVIDER_INFO:
        return
    from airflow.providers_manager import ProvidersManager

    ProvidersManager()._cleanup()


def is_valid_plugin(plugin: Any) -> bool:
    """Airflow's own plugin check; before 3.2 it needs the plugins loaded first, so only its checks run."""
    from airflow import plugins_manager

    if getattr(plugins_manager, "plugins", ()) is None:
        return (
            isinstance(plugin, type)
            and issubclass(plugin, plugins_manager.AirflowPlugin)
            and plugin is not plugins_manager.AirflowPlugin
            and plugin.validate() is None
        )
    return bool(plugins_manager.is_valid_plugin(plugin))


def task_exceptions() -> tuple[type[BaseException], type[BaseException], type[BaseException]]:
    """``TaskDeferred``, ``AirflowRescheduleException``, ``AirflowSkipException`` (task SDK's own from 3.2)."""
    try:
        from airflow.sdk.exceptions import AirflowRescheduleException, AirflowSkipException, TaskDeferred
    except ImportError:
        from airflow.exceptions import AirflowRescheduleException, AirflowSkipException, TaskDeferred
    return TaskDeferred, AirflowRescheduleException, AirflowSkipException


def dag_serialization() -> Any:
    """What the DAG processor stores a DAG with for the scheduler: ``DagSerialization`` (Airflow >= 3.3), else
    ``SerializedDAG``; both have ``to_dict`` and ``from_dict``."""
    from airflow.serialization import serialized_objects

    return getattr(serialized_objects, "DagSerialization", None) or serialized_objects.SerializedDAG
