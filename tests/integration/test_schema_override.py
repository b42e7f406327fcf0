"""``schema_override`` with a user-supplied profiles.yml: exported as DBT_SCHEMA_OVERRIDE for the documented patterns.

Both patterns of docs/connections.md run for real on DuckDB: the profile's ``schema`` reading the variable,
and dbt_project.yml's ``+schema`` reading it with a ``generate_schema_name`` macro that uses it verbatim.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from dlh_airflow_common.hooks.dbt import DbtHook

pytestmark = pytest.mark.integration

PROFILE_PATTERN = """
override:
  target: dev
  outputs:
    dev:
      type: duckdb
      path: {path}
      schema: "{{{{ env_var('DBT_SCHEMA_OVERRIDE', 'main') }}}}"
"""

PROJECT_PATTERN = """
name: override
version: '1.0'
profile: override
models:
  override:
    +schema: "{{ env_var('DBT_SCHEMA_OVERRIDE', 'marts') }}"
"""

VERBATIM_MACRO = """
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ (custom_schema_name or target.schema) | trim }}
{%- endmacro %}
"""


def _project(root: Path, *, project_pattern: bool) -> tuple[Path, Path]:
    project, database = root / "override", root / "override.duckdb"
    (project / "models").mkdir(parents=True)
    (project / "macros").mkdir()
    if project_pattern:
        (project / "dbt_project.yml").write_text(PROJECT_PATTERN)
        (project / "macros" / "schema.sql").write_text(VERBATIM_MACRO)
        (project / "profiles.yml").write_text(
            f"override:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: {database}\n"
            "      schema: main\n"
        )
    else:
        (project / "dbt_project.yml").write_text("name: override\nversion: '1.0'\nprofile: override\n")
        (project / "profiles.yml").write_text(PROFILE_PATTERN.format(path=database))
    (project / "models" / "answer.sql").write_text("{{ config(materialized='table') }}\nselect 42 as answer\n")
    return project, database


def _schemas_with_answer(database: Path) -> list[str]:
    with duckdb.connect(str(database), read_only=True) as con:
        rows = con.execute("select table_schema from information_schema.tables where table_name = 'answer'").fetchall()
    return sorted(row[0] for row in rows)


@pytest.mark.parametrize("project_pattern", [False, True], ids=["profiles.yml", "dbt_project.yml"])
@pytest.mark.parametrize("mode", ["in-process", "subprocess"])
def test_schema_override_reaches_user_profiles(project_pattern: bool, mode: str, tmp_path: Path) -> None:
    project, database = _project(tmp_path, project_pattern=project_pattern)
    default = DbtHook(project, invocation_mode=mode).run_dbt_task("run")  # type: ignore[arg-type]
    assert default.success, default.error
    overridden = DbtHook(project, invocation_mode=mode, schema_override="pr_1234").run_dbt_task("run")  # type: ignore[arg-type]
    assert overridden.success, overridden.error
    assert _schemas_with_answer(database) == sorted(["marts" if project_pattern else "main", "pr_1234"])
