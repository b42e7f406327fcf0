"""The connection form's Test button for dbt connection types: ``dbt debug --connection`` in a throwaway project."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlh_airflow_common.dbt.redact import Redactor
from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.hooks.dbt_profiles import render_target

if TYPE_CHECKING:
    from dlh_airflow_common.hooks.dbt import DbtHook as Hook


def run_connection_test(hook: Hook) -> tuple[bool, str]:
    """``(ok, message)`` for ``hook``'s connection: the same profile rendering and invocation as a task.

    dbt debug needs a dbt_project.yml, so it runs in a throwaway project; on failure the message is dbt's
    own, with every secret masked. It never raises.
    """
    from dlh_airflow_common.hooks.dbt import DbtHook  # the module that calls this one

    if not hook.conn_id:
        return False, "No conn_id: the connection test renders an Airflow connection into a dbt profile."
    output = _CollectedLines()
    secrets: list[str] = []
    try:
        secrets = _connection_secrets(hook._connection(hook.conn_id))
        with tempfile.TemporaryDirectory(prefix="dlh-dbt-conn-test-") as project_dir:
            (Path(project_dir) / "dbt_project.yml").write_text(_CONNECTION_TEST_PROJECT, encoding="utf-8")
            probe = DbtHook(
                project_dir,
                venv_path=hook.venv_path,
                conn_id=hook.conn_id,
                env_vars=hook.env_vars,
                retry_limit=1,
                invocation_mode=hook.invocation_mode,
                logger=output,
                partial_parse_cache=False,
                deps_cache=False,
            )
            result = probe.run_dbt_task("debug", extra_args=["--connection"], raise_on_failure=False)
    except Exception as err:  # the Test button shows the message; it must never raise or leak
        return False, _masked(f"{type(err).__name__}: {err}", secrets)
    if result.success:
        return True, f"dbt debug --connection succeeded for connection {hook.conn_id!r}."
    detail = output.failure_detail() or (str(result.error) if result.error else f"exit code {result.return_code}")
    return False, _masked(f"dbt debug --connection failed: {detail}", secrets)


_CONNECTION_TEST_PROJECT = "name: dlh_connection_test\nversion: '1.0'\nprofile: dlh_connection_test\n"
_MAX_TEST_MESSAGE = 2000


class _CollectedLines:
    """A logger stand-in that keeps what the progress reporter says (dbt debug prints its verdict as info)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, msg: Any, *args: Any) -> None:
        self.lines.append(str(msg) % args if args else str(msg))

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._keep(msg, *args)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._keep(msg, *args)

    warning = error = debug = exception = info

    def failure_detail(self) -> str:
        """dbt's explanation after "N check(s) failed:", as one line."""
        for index, line in enumerate(self.lines):
            if "check failed" in line or "checks failed" in line:
                return " ".join(" ".join(self.lines[index + 1 :]).split())
        return ""


def _connection_secrets(conn: Any) -> list[str]:
    """Every value that must not appear in a Test button message: the rendered secrets and the password."""
    secrets = [conn.password] if getattr(conn, "password", None) else []
    try:
        return secrets + list(render_target(conn).secret_env.values())
    except DbtException:  # the run reports the mapping error itself
        return secrets


def _masked(message: str, secrets: Sequence[str]) -> str:
    text = Redactor(secrets)(message)
    return text if len(text) <= _MAX_TEST_MESSAGE else text[: _MAX_TEST_MESSAGE - 3] + "..."
