"""A dbt project rendered as Airflow tasks from a cached graph file (docs/task-graph.md).

The modules here are plain Python: DAG-parse time reads the graph file only, never dbt or a manifest.
"""
