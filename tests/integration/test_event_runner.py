"""The event runner against real dbt on DuckDB: the same events and exit codes as ``dbt --log-format json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.invocation import CLI_LOG_ARGS, subprocess_argv

pytestmark = pytest.mark.integration


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    """One target per program, each its own DuckDB file: the CLI and the runner build at the same time."""
    directory = tmp_path / "profiles"
    directory.mkdir()
    outputs = "".join(
        f"    {name}:\n      type: duckdb\n      path: {tmp_path / f'{name}.duckdb'}\n" for name in ("cli", "runner")
    )
    (directory / "profiles.yml").write_text(f"shop:\n  target: cli\n  outputs:\n{outputs}", encoding="utf-8")
    return directory


def _start(argv: list[str], project: Path, output: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr in files: a full pipe would hold one program up until the other ends."""
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_VERSION_CHECK": "false"}
    with open(f"{output}.out", "wb") as out, open(f"{output}.err", "wb") as err:
        return subprocess.Popen(argv, cwd=project, env=env, stdout=out, stderr=err)


def _finish(proc: subprocess.Popen[bytes], output: Path) -> tuple[int, list[dict[str, Any]], list[str]]:
    proc.wait(timeout=300)
    events, text = [], []
    for line in Path(f"{output}.out").read_text(encoding="utf-8").splitlines():
        (events if line.startswith("{") else text).append(json.loads(line) if line.startswith("{") else line)
    return proc.returncode, events, text + Path(f"{output}.err").read_text(encoding="utf-8").splitlines()


def _both(args: list[str], project: Path, profiles: Path) -> dict[str, tuple[int, list[dict[str, Any]], list[str]]]:
    """The same dbt command through the CLI and through the runner, side by side (one core each)."""

    def common(name: str) -> list[str]:  # own target path and database each: both parse from scratch
        return [*args, "--project-dir", str(project), "--profiles-dir", str(profiles), "--target-path", name,
                "--target", name]  # fmt: skip

    argvs = {
        "cli": [sys.executable, "-m", "dbt.cli.main", *common("cli"), *CLI_LOG_ARGS],
        "runner": subprocess_argv(None, common("runner")),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in argvs.items():
            procs[name] = _start(argv, project, profiles.parent / name)
        return {name: _finish(proc, profiles.parent / name) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _kinds(events: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((e["info"]["name"], e["info"]["level"]) for e in events)


def _node_results(events: list[dict[str, Any]]) -> dict[str, str]:
    return {
        e["data"]["node_info"]["unique_id"]: e["data"]["node_info"]["node_status"]
        for e in events
        if e["info"]["name"] in ("LogModelResult", "LogTestResult", "LogSeedResult", "LogSnapshotResult")
    }


@pytest.mark.timeout(300)
def test_build_events_match_the_dbt_cli(example_project: Path, profiles_dir: Path) -> None:
    runs = _both(["build"], example_project, profiles_dir)
    (cli_code, cli_events, _), (code, events, text) = runs["cli"], runs["runner"]

    assert cli_code == code == 0, text
    # The runner ends after the exit handlers, without the interpreter's teardown (where DuckDB's bindings would
    # report the objects dbt's frozen cycles keep alive): no 'nanobind: leaked' lines.
    assert [line for line in text if "nanobind" in line or "leaked" in line] == []
    assert all(e["info"]["level"] != "debug" for e in cli_events + events)
    assert _kinds(events) == _kinds(cli_events)
    results = _node_results(events)
    assert len(results) >= 30 and results == _node_results(cli_events)
    assert set(results.values()) <= {"success", "pass"}
    first = next(e for e in events if e["info"]["name"] == "LogModelResult")
    assert set(first) == {"info", "data"} and first["info"]["invocation_id"]


@pytest.mark.timeout(300)
def test_failed_model_gives_the_cli_exit_code_and_error_events(example_project: Path, profiles_dir: Path) -> None:
    (example_project / "models" / "broken.sql").write_text("select * from no_such_table_anywhere\n")
    runs = _both(["run", "--select", "broken"], example_project, profiles_dir)
    (cli_code, cli_events, _), (code, events, _) = runs["cli"], runs["runner"]

    assert cli_code == code == 1
    # The runner's one addition to what the CLI prints: the failed node's (debug) NodeFinished, with its message.
    finished = [e for e in events if e["info"]["name"] == "NodeFinished"]
    assert [e["data"]["node_info"]["unique_id"] for e in finished] == ["model.shop.broken"]
    assert "no_such_table_anywhere" in finished[0]["data"]["run_result"]["message"]
    assert _kinds([e for e in events if e not in finished]) == _kinds(cli_events)
    errors = [e for e in events if e["info"]["name"] == "RunResultError"]
    assert errors and "no_such_table_anywhere" in errors[0]["data"]["msg"]


@pytest.mark.timeout(300)
def test_bad_option_is_exit_code_2_with_a_message(example_project: Path, profiles_dir: Path) -> None:
    runs = _both(["run", "--no-such-option"], example_project, profiles_dir)
    (cli_code, _, cli_text), (code, events, text) = runs["cli"], runs["runner"]

    assert cli_code == code == 2
    assert events == []
    assert any("no-such-option" in line for line in cli_text)
    assert any("no-such-option" in line for line in text), text
