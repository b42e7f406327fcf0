"""The Airflow UI plugin: run reports and dbt docs served by the api-server (docs/ui.md)."""
