"""Unit tests for dlh_airflow_common.dbt.caches: the partial parse one attempt seeds and publishes (no dbt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.artifacts import RUN_RESULTS
from dlh_airflow_common.dbt.caches import RunCaches
from dlh_airflow_common.dbt.command import DbtCommand
from dlh_airflow_common.dbt.invocation import DbtInvocation
from dlh_airflow_common.dbt.partial_parse import PARTIAL_PARSE_FILE
from dlh_airflow_common.dbt.run_dir import RunDir, create_run_dir

MSGPACK = bytes([0x81, 0xA1, 0x61, 0x01])  # a one-entry msgpack map: what dbt writes starts like this


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.lines.append(str(msg) % args if args else str(msg))

    info = warning = _keep


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "proj"
    path.mkdir()
    (path / "dbt_project.yml").write_text("name: proj\nversion: '1.0'\nprofile: proj\n")
    (path / "profiles.yml").write_text("proj:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n")
    return path


def _attempt(project: Path, name: str, command: DbtCommand) -> tuple[RunDir, DbtInvocation]:
    run_dir = create_run_dir(name, project)
    run_dir.target_path.mkdir(parents=True, exist_ok=True)
    argv = command.argv(project_dir=str(project), profiles_dir=str(project), target_path=str(run_dir.target_path),
                        log_path=str(run_dir.log_path))  # fmt: skip
    return run_dir, DbtInvocation(argv)


def _dbt_parsed(run_dir: RunDir) -> None:
    """What a dbt that got past parsing leaves: a new msgpack and run_results.json."""
    (run_dir.target_path / PARTIAL_PARSE_FILE).write_bytes(MSGPACK)
    (run_dir.target_path / RUN_RESULTS).write_text('{"results": []}')


def test_a_published_parse_seeds_the_next_run(project: Path) -> None:
    caches, log = RunCaches(deps=False), _Log()
    first, invocation = _attempt(project, "run_first", DbtCommand("run"))
    seed = caches.seed(project, first, DbtCommand("run"), invocation, log)
    assert seed is not None and not seed.seeded
    _dbt_parsed(first)
    caches.publish(seed, first, True, log)
    assert seed.entry.read_bytes() == MSGPACK

    second, invocation = _attempt(project, "run_second", DbtCommand("run"))
    again = caches.seed(project, second, DbtCommand("run"), invocation, log)
    assert again is not None and again.seeded and again.entry == seed.entry
    assert (second.target_path / PARTIAL_PARSE_FILE).read_bytes() == MSGPACK
    assert any("seeded from cache" in line for line in log.lines)


def test_a_run_that_never_parsed_publishes_nothing(project: Path) -> None:
    caches, log = RunCaches(deps=False), _Log()
    run_dir, invocation = _attempt(project, "run_killed", DbtCommand("run"))
    seed = caches.seed(project, run_dir, DbtCommand("run"), invocation, log)
    (run_dir.target_path / PARTIAL_PARSE_FILE).write_bytes(MSGPACK[:1])  # killed mid-write: no run_results.json
    caches.publish(seed, run_dir, False, log)
    assert seed is not None and not seed.entry.exists()


def test_dbt_retry_is_seeded_but_never_publishes(project: Path) -> None:
    caches, log = RunCaches(deps=False), _Log()
    run_dir, invocation = _attempt(project, "run_first", DbtCommand("run"))
    seed = caches.seed(project, run_dir, DbtCommand("run"), invocation, log)
    _dbt_parsed(run_dir)
    caches.publish(seed, run_dir, True, log)

    retry_dir, invocation = _attempt(project, "run_retry", DbtCommand("retry"))
    assert caches.seed(project, retry_dir, DbtCommand("retry"), invocation, log) is None, "nothing to publish"
    assert (retry_dir.target_path / PARTIAL_PARSE_FILE).read_bytes() == MSGPACK, "but it starts from the cache"


def test_caches_off_leave_the_run_dir_alone(project: Path) -> None:
    run_dir, invocation = _attempt(project, "run_off", DbtCommand("run"))
    assert (
        RunCaches(partial_parse=False, deps=False).seed(project, run_dir, DbtCommand("run"), invocation, _Log()) is None
    )
    assert list(run_dir.target_path.iterdir()) == []
    assert not (project / "target" / ".dlh_cache").exists()
