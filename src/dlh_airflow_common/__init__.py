"""dbt Core on Apache Airflow 3: hook, operator and trigger for production dbt runs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Describe this package to Airflow's providers manager (entry point ``apache_airflow_provider``).

    ``connection-types`` registers the connection types no common provider owns, with their form fields
    (plain data: this runs while Airflow discovers providers, so it must not import hooks).
    """
    from dlh_airflow_common.hooks.connection_forms import CONNECTION_TYPES

    return {
        "package-name": "dlh-airflow-common",
        "name": "DLH dbt",
        "description": "Run dbt Core from Airflow 3 with isolated runs, typed errors and live progress.",
        "versions": [__version__],
        "hooks": [
            {
                "integration-name": "dbt Core",
                "python-modules": ["dlh_airflow_common.hooks.dbt", "dlh_airflow_common.hooks.dbt_connection_types"],
            }
        ],
        "connection-types": CONNECTION_TYPES,
        "operators": [
            {
                "integration-name": "dbt Core",
                "python-modules": ["dlh_airflow_common.operators.dbt"],
            }
        ],
        "extra-links": [
            "dlh_airflow_common.links.dbt.DbtDocsLink",
            "dlh_airflow_common.links.dbt.DbtArtifactsLink",
            "dlh_airflow_common.links.dbt.DbtRunReportLink",
        ],
        "integrations": [
            {
                "integration-name": "dbt Core",
                "external-doc-url": "https://docs.getdbt.com/",
                "tags": ["software"],
            }
        ],
    }
