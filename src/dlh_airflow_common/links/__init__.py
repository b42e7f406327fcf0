"""Operator extra links: buttons on a dbt task's page in the Airflow UI."""

from __future__ import annotations

from dlh_airflow_common.links.dbt import DbtArtifactsLink, DbtDocsLink

__all__ = ["DbtArtifactsLink", "DbtDocsLink"]
