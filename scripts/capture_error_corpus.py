"""Provoke real dbt failures and record them as a corpus for the error classifier's tests.

Why: ``classify_dbt_error`` must recognise what dbt really emits (exception classes, JSON log events,
messages), not what we imagine it emits. This script builds throwaway dbt projects, starts a throwaway
PostgreSQL (tests/pg_server.py), provokes each failure through the dbt CLI (``--log-format json``) and
in-process (``dbtRunner`` with an event callback), and writes ``tests/data/error_corpus.json``.

Run: ``.venv/bin/python scripts/capture_error_corpus.py [--out PATH] [--keep-temp]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

# dbt reads this at import/invocation time: never phone home from a test-data generator.
os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from pg_server import PostgresServer  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "error_corpus.json"
VENV_BIN = Path(sys.executable).parent
DBT_EXECUTABLE = VENV_BIN / "dbt"
PROFILE_NAME = "dlh_corpus"
PG_SCHEMA = "dlh_corpus"
# Used only for the wrong_password case; must never show up in the corpus either.
WRONG_PASSWORD = "Wrong-Pw-5d1e08"
SIZE_BUDGET = 300_000

# Events kept regardless of level, and the result events kept when their status is not a success.
ALWAYS_KEEP = frozenset({"MainEncounteredError", "RunResultError", "RunResultFailure"})
RESULT_EVENTS = frozenset({"LogModelResult", "LogTestResult", "LogSeedResult"})
SUCCESS_STATUSES = frozenset({"success", "pass"})
KEPT_LEVELS = frozenset({"error", "warn"})
NODE_INFO_KEYS = ("unique_id", "resource_type", "node_status", "node_path")
TIMING_KEYS = frozenset({"execution_time", "elapsed", "elapsed_time"})
ELAPSED_RE = re.compile(r"(\S) in \d+(?:\.\d+)?s\]")

PROJECT_YML = "\n".join(
    [
        "name: dlh_corpus",
        "version: '1.0'",
        "config-version: 2",
        f"profile: {PROFILE_NAME}",
        "model-paths: ['models']",
        "",
    ]
)
# A view would not evaluate 1/0 at creation time: a table does.
DIVISION_BY_ZERO_TABLE = "{{ config(materialized='table') }}\nselect 1 / 0 as boom\n"
TWO_MODELS = {
    "models/first_model.sql": "select 1 as id\n",
    "models/second_model.sql": "select id from {{ ref('first_model') }}\n",
}


# --------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One failure to provoke: project files, profile target, dbt command and the expected label."""

    name: str
    variant: str
    adapter: str
    expected: str
    command: tuple[str, ...]
    files: dict[str, str]
    # Builds the profiles.yml mapping from (server, case_root).
    profile: Callable[[PostgresServer, Path], dict[str, Any]]
    password_ref: str | None = None


def _pg_target(server: PostgresServer, **overrides: Any) -> dict[str, Any]:
    """A postgres target for the owner role; overrides replace or (value None) remove fields."""
    target: dict[str, Any] = {
        "type": "postgres",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        "dbname": server.database,
        "schema": PG_SCHEMA,
        "threads": 1,
        "connect_timeout": 5,
    }
    for key, value in overrides.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return target


def _profiles(target: dict[str, Any], profile_name: str = PROFILE_NAME) -> dict[str, Any]:
    return {profile_name: {"target": "dev", "outputs": {"dev": target}}}


def pg_profile(**overrides: Any) -> Callable[[PostgresServer, Path], dict[str, Any]]:
    """profiles.yml factory for a postgres target with ``overrides``."""
    return lambda server, _root: _profiles(_pg_target(server, **overrides))


def duckdb_profile(server: PostgresServer, root: Path) -> dict[str, Any]:
    """profiles.yml for a duckdb file inside the case's temp dir."""
    return _profiles({"type": "duckdb", "path": str(root / "corpus.duckdb"), "threads": 1})


def readonly_profile(server: PostgresServer, root: Path) -> dict[str, Any]:
    """profiles.yml for dbt_readonly writing into public, where it has no CREATE privilege."""
    ro = _pg_target(server, user=server.readonly_user, password=server.readonly_password, schema="public")
    return _profiles(ro)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


OWNER_PW = "tests/pg_server.py:PostgresServer.DEFAULT_PASSWORD"
READONLY_PW = "tests/pg_server.py:PostgresServer.DEFAULT_READONLY_PASSWORD"
WRONG_PW = "scripts/capture_error_corpus.py:WRONG_PASSWORD"


def build_cases(closed: int) -> list[Case]:
    """Every failure we record; postgres cases name where their password comes from."""
    failing_test_files = {
        "models/dupes.sql": "select 1 as id union all select 1 as id union all select null as id\n",
        "models/schema.yml": (
            "version: 2\nmodels:\n  - name: dupes\n    columns:\n      - name: id\n"
            "        data_tests:\n          - not_null\n          - unique\n"
        ),
    }
    return [
        Case(
            "compile_error",
            "jinja_syntax",
            "duckdb",
            "DbtCompilationException",
            ("run",),
            {**TWO_MODELS, "models/broken.sql": "select * from {{ ref('first_model' }}\n"},
            duckdb_profile,
        ),
        Case(
            "missing_ref",
            "ref_to_unknown_model",
            "duckdb",
            "DbtCompilationException",
            ("run",),
            {**TWO_MODELS, "models/orphan.sql": "select * from {{ ref('does_not_exist') }}\n"},
            duckdb_profile,
        ),
        Case(
            "bad_profile",
            "missing_host_and_dbname",
            "postgres",
            "DbtProfileException",
            ("run",),
            TWO_MODELS,
            pg_profile(host=None, dbname=None),
            OWNER_PW,
        ),
        Case(
            "bad_profile",
            "profile_name_not_found",
            "postgres",
            "DbtProfileException",
            ("run",),
            TWO_MODELS,
            lambda server, _root: _profiles(_pg_target(server), profile_name="some_other_profile"),
            OWNER_PW,
        ),
        Case(
            "wrong_password",
            "scram_auth_failed",
            "postgres",
            "DbtProfileException",
            ("run",),
            TWO_MODELS,
            pg_profile(password=WRONG_PASSWORD),
            WRONG_PW,
        ),
        Case(
            "connection_refused",
            "closed_port",
            "postgres",
            "DbtConnectionException",
            ("run",),
            TWO_MODELS,
            pg_profile(port=closed),
            OWNER_PW,
        ),
        Case(
            "unknown_database",
            "dbname_does_not_exist",
            "postgres",
            "DbtProfileException",
            ("run",),
            TWO_MODELS,
            pg_profile(dbname="dlh_no_such_db"),
            OWNER_PW,
        ),
        Case(
            "sql_runtime_error",
            "division_by_zero",
            "postgres",
            "DbtRuntimeException",
            ("run",),
            {**TWO_MODELS, "models/bad_sql.sql": DIVISION_BY_ZERO_TABLE},
            pg_profile(),
            OWNER_PW,
        ),
        Case(
            "sql_runtime_error",
            "missing_table",
            "postgres",
            "DbtRuntimeException",
            ("run",),
            {**TWO_MODELS, "models/bad_sql.sql": "select * from public.table_that_does_not_exist\n"},
            pg_profile(),
            OWNER_PW,
        ),
        Case(
            "sql_runtime_error",
            "missing_table",
            "duckdb",
            "DbtRuntimeException",
            ("run",),
            {**TWO_MODELS, "models/bad_sql.sql": "select * from main.table_that_does_not_exist\n"},
            duckdb_profile,
        ),
        Case(
            "failing_data_test",
            "not_null_and_unique",
            "duckdb",
            "DbtRuntimeException",
            ("build",),
            failing_test_files,
            duckdb_profile,
        ),
        Case(
            "failing_data_test",
            "not_null_and_unique",
            "postgres",
            "DbtRuntimeException",
            ("build",),
            failing_test_files,
            pg_profile(),
            OWNER_PW,
        ),
        Case(
            "permission_denied",
            "readonly_role_create_in_public",
            "postgres",
            "DbtRuntimeException",
            ("run",),
            TWO_MODELS,
            readonly_profile,
            READONLY_PW,
        ),
    ]


# --------------------------------------------------------------------------------------------- layout
@dataclass
class Workspace:
    """Temp dirs of one (case, mode) invocation and the placeholders that hide them."""

    root: Path
    project: Path = field(init=False)
    profiles: Path = field(init=False)
    target: Path = field(init=False)
    logs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.project = self.root / "project"
        self.profiles = self.root / "profiles"
        self.target = self.root / "target"
        self.logs = self.root / "logs"
        for path in (self.project, self.profiles, self.target, self.logs):
            path.mkdir(parents=True, exist_ok=True)

    def placeholders(self) -> list[tuple[str, str]]:
        """(path, placeholder) pairs, longest path first, including symlink-resolved spellings."""
        pairs: dict[str, str] = {}
        for path, label in (
            (self.project, "<project>"),
            (self.profiles, "<profiles>"),
            (self.target, "<target>"),
            (self.logs, "<logs>"),
            (self.root, "<tmp>"),
            (VENV_BIN.parent, "<venv>"),
            (REPO_ROOT, "<repo>"),
        ):
            pairs[str(path)] = label
            pairs[str(path.resolve())] = label
        return sorted(pairs.items(), key=lambda item: len(item[0]), reverse=True)


def write_project(ws: Workspace, case: Case, server: PostgresServer) -> None:
    """Write dbt_project.yml, the case's model files and profiles.yml."""
    (ws.project / "dbt_project.yml").write_text(PROJECT_YML)
    for rel, text in case.files.items():
        path = ws.project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (ws.profiles / "profiles.yml").write_text(json.dumps(case.profile(server, ws.root), indent=2))


def dbt_args(case: Case, ws: Workspace) -> list[str]:
    """dbt arguments (without executable) with every path pointing into the workspace."""
    return [
        *case.command,
        "--project-dir",
        str(ws.project),
        "--profiles-dir",
        str(ws.profiles),
        "--target-path",
        str(ws.target),
        "--log-path",
        str(ws.logs),
    ]


# --------------------------------------------------------------------------------------------- events
def keep_event(event: dict[str, Any]) -> bool:
    """Error/warn events, the failure summary events, and node results that did not succeed."""
    info = event.get("info", {})
    name = info.get("name", "")
    if info.get("level") in KEPT_LEVELS or name in ALWAYS_KEEP:
        return True
    if name in RESULT_EVENTS:
        # data.status is the adapter response on success ("CREATE VIEW", "OK"): node_status says success.
        data = event.get("data", {})
        status = (data.get("node_info") or {}).get("node_status") or data.get("status", "")
        return str(status).lower() not in SUCCESS_STATUSES
    return False


def trim_event(event: dict[str, Any]) -> dict[str, Any]:
    """Keep info.name/level/msg/code and data (node_info reduced to identifying fields)."""
    info = event.get("info", {})
    data = dict(event.get("data", {}))
    node_info = data.pop("node_info", None)
    if isinstance(node_info, dict):
        data["node_info"] = {key: node_info[key] for key in NODE_INFO_KEYS if key in node_info}
    for key in TIMING_KEYS.intersection(data):
        data[key] = 0.0  # wall-clock noise: keep the field, drop the value so reruns diff cleanly
    kept = {key: info.get(key) for key in ("name", "level", "msg", "code")}
    if kept["name"] in RESULT_EVENTS and isinstance(kept["msg"], str):
        kept["msg"] = ELAPSED_RE.sub(r"\1 in 0.00s]", kept["msg"])  # same reason: "[ERROR in 0.07s]"
    return {"info": kept, "data": data}


def stabilise(value: Any, replacements: list[tuple[str, str]]) -> Any:
    """Replace temp paths and ports in every string of a JSON-like value."""
    if isinstance(value, str):
        for old, new in replacements:
            value = value.replace(old, new) if not old.startswith("re:") else re.sub(old[3:], new, value)
        return value
    if isinstance(value, list):
        return [stabilise(item, replacements) for item in value]
    if isinstance(value, dict):
        return {key: stabilise(item, replacements) for key, item in value.items()}
    return value


# --------------------------------------------------------------------------------------------- runners
def clean_env() -> dict[str, str]:
    """Subprocess env without the caller's DBT_* / PG* settings, with usage stats off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBT_", "PG"))}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    return env


def run_cli(case: Case, ws: Workspace) -> dict[str, Any]:
    """``dbt ... --log-format json`` as a subprocess; keep return code and filtered events."""
    argv = [str(DBT_EXECUTABLE), *dbt_args(case, ws), "--log-format", "json"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), cwd=ws.root, timeout=180)
    events: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if keep_event(event):
            events.append(trim_event(event))
    return {
        "command": ["dbt", *argv[1:]],
        "return_code": proc.returncode,
        "success": None,
        "exception": None,
        "events": events,
        "_raw": proc.stdout + proc.stderr,
    }


def describe_exception(exc: BaseException | None) -> dict[str, Any] | None:
    """Type, MRO names and message of an exception, plus its cause/context if chained."""
    if exc is None:
        return None
    described: dict[str, Any] = {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "mro": [cls.__name__ for cls in type(exc).__mro__],
        "message": str(exc),
    }
    chained = exc.__cause__ or exc.__context__
    if chained is not None:
        # No message: a jsonschema ValidationError cause dumps the whole profile target, password included.
        described["cause"] = {
            "type": type(chained).__name__,
            "module": type(chained).__module__,
            "mro": [cls.__name__ for cls in type(chained).__mro__],
        }
    return described


def chain_text(exc: BaseException | None) -> str:
    """str() of an exception and everything it chains to (for the raw-output secret notes)."""
    parts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def node_results(result: Any) -> list[dict[str, Any]] | None:
    """Per-node status/message from a RunExecutionResult (what callers see when no exception is raised)."""
    results = getattr(result, "results", None)
    if not isinstance(results, list):
        return None
    rows = []
    for item in results:
        node = getattr(item, "node", None)
        status = getattr(item, "status", None)
        rows.append(
            {
                "unique_id": getattr(node, "unique_id", None),
                "status": str(getattr(status, "value", status)),
                "message": getattr(item, "message", None),
                "failures": getattr(item, "failures", None),
            }
        )
    return rows


def run_inprocess(case: Case, ws: Workspace) -> dict[str, Any]:
    """``dbtRunner(callbacks=[cb]).invoke(args)``; keep success, exception and filtered events."""
    from dbt.cli.main import dbtRunner
    from dbt_common.events.base_types import EventMsg
    from dbt_common.events.functions import msg_to_dict

    collected: list[dict[str, Any]] = []

    def callback(msg: EventMsg) -> None:
        collected.append(msg_to_dict(msg))

    args = [*dbt_args(case, ws), "--log-level", "none"]
    res = dbtRunner(callbacks=[callback]).invoke(args)
    raw = json.dumps(collected, default=str) + chain_text(res.exception) + repr(res.result)
    return {
        "command": args,
        "return_code": None,
        "success": bool(res.success),
        "exception": describe_exception(res.exception),
        "node_results": node_results(res.result),
        "events": [trim_event(event) for event in collected if keep_event(event)],
        "_raw": raw,
    }


# --------------------------------------------------------------------------------------------- main
def versions() -> dict[str, str]:
    return {
        "dbt_core": version("dbt-core"),
        "dbt_postgres": version("dbt-postgres"),
        "dbt_duckdb": version("dbt-duckdb"),
        "python": platform.python_version(),
    }


def log_leaks(raw: str, secrets: dict[str, str]) -> list[str]:
    """Names of secrets present in raw (unfiltered) dbt output: informational, dbt's own behaviour."""
    return [name for name, secret in secrets.items() if secret in raw]


def capture(
    workdir: Path,
    server: PostgresServer,
    only: set[str] | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every case in both modes; return recorded cases and notes about secrets in raw output."""
    port_re = f"re:(?<![0-9]){server.port}(?![0-9])"
    closed = closed_port()
    closed_re = f"re:(?<![0-9]){closed}(?![0-9])"
    secrets = {
        "owner password": server.password,
        "readonly password": server.readonly_password,
        "wrong password": WRONG_PASSWORD,
    }
    recorded: list[dict[str, Any]] = []
    notes: list[str] = []
    for case in build_cases(closed):
        if only and case.name not in only:
            continue
        for mode in ("cli", "inprocess"):
            ws = Workspace(workdir / f"{case.name}-{case.variant}-{case.adapter}-{mode}")
            write_project(ws, case, server)
            started = time.monotonic()
            outcome = run_cli(case, ws) if mode == "cli" else run_inprocess(case, ws)
            elapsed = time.monotonic() - started
            raw = outcome.pop("_raw")
            for log in ws.logs.glob("*.log"):
                raw += log.read_text(errors="replace")
            leaked = log_leaks(raw, secrets)
            if leaked:
                where = f"{case.name}/{case.variant}/{case.adapter}/{mode}"
                notes.append(f"{where}: raw dbt output holds {leaked}")
            entry: dict[str, Any] = {
                "name": case.name,
                "variant": case.variant,
                "mode": mode,
                "adapter": case.adapter,
                "expected": case.expected,
                "password_ref": case.password_ref,
                **outcome,
            }
            replacements = [*ws.placeholders(), (closed_re, "<closed_port>")]
            if case.adapter == "postgres":
                replacements.append((port_re, "<port>"))
            recorded.append(stabilise(entry, replacements))
            print(
                f"  {case.name:<20} {case.variant:<32} {case.adapter:<8} {mode:<9} "
                f"rc={outcome['return_code']} success={outcome['success']} "
                f"events={len(outcome['events'])} ({elapsed:.1f}s)",
                flush=True,
            )
    return recorded, notes


def check_no_secrets(text: str, secrets: dict[str, str]) -> list[str]:
    """Names of secrets found in the corpus text (must be empty)."""
    return [name for name, secret in secrets.items() if secret and secret in text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})")
    parser.add_argument("--keep-temp", action="store_true", help="keep the generated projects for inspection")
    parser.add_argument("--only", action="append", help="record only these case names (repeatable)")
    opts = parser.parse_args(argv)

    ok, reason = PostgresServer.available()
    if not ok:
        print(f"error: PostgreSQL is needed for the corpus: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="dlh-corpus-"))
    started = time.monotonic()
    try:
        with PostgresServer() as server:
            print(f"PostgreSQL on {server.host}:{server.port}; projects in {workdir}", flush=True)
            cases, notes = capture(workdir, server, set(opts.only) if opts.only else None)
            secrets = {
                "owner password": server.password,
                "readonly password": server.readonly_password,
                "wrong password": WRONG_PASSWORD,
            }
    finally:
        if opts.keep_temp:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    corpus = {
        "generated_with": versions(),
        "password_refs": {
            OWNER_PW: hashlib.sha256(secrets["owner password"].encode()).hexdigest(),
            READONLY_PW: hashlib.sha256(secrets["readonly password"].encode()).hexdigest(),
            WRONG_PW: hashlib.sha256(secrets["wrong password"].encode()).hexdigest(),
        },
        "cases": cases,
    }
    text = json.dumps(corpus, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    leaked = check_no_secrets(text, secrets)
    if leaked:
        banner = "!" * 100
        print(
            f"{banner}\nPASSWORD TEXT FOUND IN THE CORPUS ({', '.join(leaked)}). Not writing {opts.out}.\n"
            f"dbt echoed a secret into an event or exception: the classifier must not persist it.\n{banner}",
            file=sys.stderr,
        )
        return 1
    for note in notes:
        print(f"note (not in corpus): {note}")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(text)
    size = len(text.encode())
    print(f"wrote {opts.out} ({size / 1000:.0f} KB, {len(cases)} cases) in {time.monotonic() - started:.0f}s")
    if size > SIZE_BUDGET:
        print(f"warning: corpus is larger than {SIZE_BUDGET / 1000:.0f} KB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
