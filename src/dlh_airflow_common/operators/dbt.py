"""DbtOperator: one dbt command as one Airflow task, isolated per try, summarised in the log and in XCom."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from dlh_airflow_common.dbt.run_dir import run_dir_name
from dlh_airflow_common.hooks.dbt import DbtHook

if TYPE_CHECKING:
    from airflow.sdk import Context

XCOM_SUMMARY_KEY = "dbt_summary"


def as_timedelta(value: timedelta | int | float | None) -> timedelta | None:
    """Accept seconds as well as a timedelta for ``execution_timeout``."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"execution_timeout must be a positive number of seconds or a timedelta, got {value!r}")
    return timedelta(seconds=value)


class DbtOperator(BaseOperator):
    """Run a dbt command (``build``, ``run``, ``test``, ``seed``, ...) against a project.

    The profile comes from ``conn_id`` (an Airflow connection, secrets only in environment variables)
    or from ``profiles_dir``. Each try runs in its own directory, so concurrent tasks never share
    artifacts. The summary is pushed to XCom (key ``dbt_summary`` and, on success, the return value)
    and a failure raises the matching ``DbtException`` subclass.
    """

    template_fields: Sequence[str] = (
        "dbt_command",
        "dbt_project_dir",
        "dbt_models",
        "exclude",
        "selector",
        "dbt_vars",
        "env_vars",
        "target",
        "schema_override",
        "profiles_dir",
    )
    template_fields_renderers = {"dbt_vars": "json", "env_vars": "json"}
    ui_color = "#ff694a"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        dbt_project_dir: str,
        dbt_command: str = "build",
        venv_path: str | None = None,
        conn_id: str | None = None,
        target: str | None = None,
        profiles_dir: str | None = None,
        dbt_models: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        selector: str | None = None,
        dbt_vars: Mapping[str, Any] | str | None = None,
        full_refresh: bool = False,
        threads: int | None = None,
        fail_fast: bool = False,
        env_vars: Mapping[str, str] | None = None,
        schema_override: str | None = None,
        keep_target_artifacts: bool = False,
        dbt_args: Sequence[str] | None = None,
        run_dir_root: str | None = None,
        execution_timeout: timedelta | int | float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(execution_timeout=as_timedelta(execution_timeout), **kwargs)
        self.dbt_project_dir = dbt_project_dir
        self.dbt_command = dbt_command
        self.venv_path = venv_path
        self.conn_id = conn_id
        self.target = target
        self.profiles_dir = profiles_dir
        self.dbt_models = dbt_models
        self.exclude = exclude
        self.selector = selector
        self.dbt_vars = dbt_vars
        self.full_refresh = full_refresh
        self.threads = threads
        self.fail_fast = fail_fast
        self.env_vars = env_vars
        self.schema_override = schema_override
        self.keep_target_artifacts = keep_target_artifacts
        self.dbt_args = list(dbt_args or ())
        self.run_dir_root = run_dir_root

    @cached_property
    def hook(self) -> DbtHook:
        return DbtHook(
            dbt_project_dir=self.dbt_project_dir,
            venv_path=self.venv_path,
            conn_id=self.conn_id,
            target=self.target,
            profiles_dir=self.profiles_dir,
            env_vars=self.env_vars,
            target_path=self.run_dir_root,
            schema_override=self.schema_override,
            keep_target_artifacts=self.keep_target_artifacts,
            logger=self.log,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        run_name = run_dir_name(
            ti.dag_id,
            ti.task_id,
            ti.try_number,
            map_index=getattr(ti, "map_index", None),
        )
        result = self.hook.run_dbt_task(
            self.dbt_command,
            select=self.dbt_models,
            exclude=self.exclude,
            selector=self.selector,
            vars=self.dbt_vars,
            full_refresh=self.full_refresh,
            threads=self.threads,
            fail_fast=self.fail_fast,
            extra_args=self.dbt_args,
            run_name=run_name,
        )
        summary = result.to_xcom()
        ti.xcom_push(key=XCOM_SUMMARY_KEY, value=summary)
        if result.error is not None:
            raise result.error
        return summary
