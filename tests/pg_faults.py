"""A small PostgreSQL fault lab shared by the resilience and deferrable tests.

Project ``faults``: models a and b are fast, c sleeps as long as ``fault_audit.control`` says, and every
build is recorded in ``fault_audit.builds`` so tests can tell from the database what was (re)built.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pg_server import PostgresServer

AUDIT = "fault_audit"
SLEEP_MODEL = (
    "select id from {{ ref('a') }} union all select id from {{ ref('b') }} "
    f"union all select 0 from (select pg_sleep((select seconds from {AUDIT}.control))) s\n"
)


def make_fault_project(tmp_path: Path, pg_server: PostgresServer) -> Path:
    """Models a, b (fast) and c (sleeps as long as the control table says); every build is audited."""
    if not pg_server.is_running():
        pg_server.start_again()
    db = pg_server.database
    # A pg_sleep a failed test left running holds locks the drop below would wait for (psql's 60 s timeout):
    # end it, so that failure stays the failed test's own instead of erroring the setup of the tests after it.
    pg_server.psql(
        "select pg_terminate_backend(pid) from pg_stat_activity where query like '%pg_sleep%' "
        "and pid <> pg_backend_pid();"
        f"drop schema if exists {AUDIT} cascade; create schema {AUDIT} authorization {pg_server.user};"
        f"create table {AUDIT}.builds (model text, built_at timestamptz default clock_timestamp());"
        f"create table {AUDIT}.control (seconds float); insert into {AUDIT}.control values (0);"
        f"alter table {AUDIT}.builds owner to {pg_server.user}; alter table {AUDIT}.control owner to {pg_server.user};",
        dbname=db,
    )
    project = tmp_path / "faults"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        textwrap.dedent(
            f"""
            name: faults
            version: "1.0"
            profile: faults
            models:
              faults:
                +materialized: table
                +post-hook: "insert into {AUDIT}.builds (model) values ('{{{{ this.name }}}}')"
            """
        )
    )
    (project / "models" / "a.sql").write_text("select 1 as id\n")
    (project / "models" / "b.sql").write_text("select 2 as id\n")
    (project / "models" / "c.sql").write_text(SLEEP_MODEL)
    return project


def fault_conn(server: PostgresServer, **changes: Any) -> str:
    conn = {"conn_type": "postgres", "host": server.host, "port": server.port, "login": server.user,
            "password": server.password, "schema": server.database, "extra": {"schema": "faults"}}  # fmt: skip
    conn.update(changes)
    return json.dumps(conn)


def sql(server: PostgresServer, query: str) -> str:
    return server.psql(query, dbname=server.database).strip()


def builds(server: PostgresServer) -> dict[str, int]:
    rows = sql(server, f"select model, count(*) from {AUDIT}.builds group by model order by model")
    return {model: int(count) for model, count in (line.split("|") for line in rows.splitlines() if line)}


def sleeping_queries(server: PostgresServer) -> int:
    query = (
        "select count(*) from pg_stat_activity where state = 'active' and query like '%pg_sleep%' "
        "and pid <> pg_backend_pid()"
    )
    return int(sql(server, query))


def wait_for(condition: Callable[[], bool], limit: float, what: str) -> float:
    """Poll until ``condition`` holds; fail (not time out silently) after ``limit`` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit:
            pytest.fail(f"gave up after {limit:.0f}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def dbt_processes(marker: str) -> list[str]:
    """Command lines of live processes that run dbt on the given project, and dbt zombies of this test process.

    A zombie has no command line left, so it is counted only when it descends from this process: tests running
    in parallel (pytest-xdist) must not see each other's short-lived zombies.
    """
    found, parents, zombies = [], {}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            comm = (entry / "comm").read_text()
        except OSError:
            continue
        state, parents[int(entry.name)] = fields[0], int(fields[1])
        if marker in args and "dbt" in args:
            found.append(f"{entry.name} {state} {args}")
        elif state == "Z" and "dbt" in comm:
            zombies.append(int(entry.name))
    ours = _descendants(os.getpid(), parents)
    return found + [f"{pid} Z (zombie dbt)" for pid in zombies if pid in ours]


def _descendants(root: int, parents: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
