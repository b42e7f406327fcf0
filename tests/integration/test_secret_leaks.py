"""Zero secret leaks on real runs: files (while dbt runs and after), log lines, output, XCom, exceptions.

A PostgreSQL role gets a distinctive password with URL-special characters. Real dbt runs through DbtHook in
every invocation mode, and through DbtOperator (under ``dag.test()`` and called directly) in both ways the hook
reads dbt and deferred, succeeding and failing (a failing model, a wrong password, a profile dbt rejects).
Every place a secret could end up is searched for the password, its URL-encoded forms and its base64 forms
(at every alignment); the generated profiles.yml must be 0600 in a 0700 directory while it exists and gone
afterwards.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import stat
import sys
import tarfile
import tempfile
import textwrap
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

import dlh_airflow_common.hooks.dbt_profile_source as profile_module
from dag_runner import run_dag_file
from dlh_airflow_common.dbt.profiles_file import PROFILES_FILE
from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.hooks.dbt import DbtHook
from modes import MODES, READING_MODES
from pg_server import PostgresServer
from s3_server import MotoS3

pytestmark = pytest.mark.integration

LEAK_USER = "dbt_leak"
LEAK_PASSWORD = "Lk7/Pw+q=9Z!x@Q2-leak"
WRONG_PASSWORD = "Wr0ng/Leak+Pw=5d1e!"
PROFILE_PREFIX = "dlh-dbt-profile-"


def needles(secret: str) -> dict[str, bytes]:
    """The secret as dbt, a URI or an encoder could write it: raw, URL-encoded, base64 at each alignment."""
    raw = secret.encode()
    found = {"raw": raw, "url": quote(secret, safe="").encode(), "url_path": quote(secret).encode()}
    found["url_plus"] = quote_plus(secret).encode()
    for offset in range(3):
        for name, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            encoded = encode(b"\0" * offset + raw)
            # keep only the characters fully determined by the secret's bytes
            start = -(-offset * 4 // 3)
            end = (offset + len(raw)) * 4 // 3
            found[f"{name}@{offset}"] = encoded[start:end]
    return found


SECRETS = {"password": needles(LEAK_PASSWORD), "wrong_password": needles(WRONG_PASSWORD)}


def hits_in(data: bytes | str) -> list[str]:
    blob = data.encode("utf-8", "replace") if isinstance(data, str) else data
    return [f"{secret}:{form}" for secret, forms in SECRETS.items() for form, needle in forms.items() if needle in blob]


@dataclass
class Evidence:
    files_scanned: int = 0
    snapshots: int = 0
    live_profiles_seen: int = 0
    log_lines: int = 0
    hits: list[str] = field(default_factory=list)
    profile_modes: set[tuple[int, int]] = field(default_factory=set)


class FileWatcher(threading.Thread):
    """Scans every file under the given roots again and again while dbt runs (and once more at stop).

    It also scans right after the hook writes profiles.yml (into the run dir), so the live profile is
    always seen, however fast dbt fails.
    """

    def __init__(self, roots: list[Path], evidence: Evidence, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.evidence = evidence
        self.done = threading.Event()
        self.lock = threading.Lock()
        real = profile_module.write_profiles_file

        def watched(*args: Any, **kwargs: Any) -> Path:
            directory = real(*args, **kwargs)
            self.scan()
            return directory

        monkeypatch.setattr(profile_module, "write_profiles_file", watched)

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.scan()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.scan()

    def scan(self) -> None:
        with self.lock:
            self._scan()

    def _scan(self) -> None:
        self.evidence.snapshots += 1
        for root in self.roots:
            for path in list(root.rglob("*")) if root.exists() else []:
                try:
                    if not path.is_file():
                        continue
                    data = path.read_bytes()
                    if path.name == PROFILES_FILE:  # temp profiles dir, or the run dir of a deferred run
                        self.evidence.live_profiles_seen += 1
                        modes = (stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode))
                        self.evidence.profile_modes.add(modes)
                except OSError:
                    continue  # removed between listing and reading
                self.evidence.files_scanned += 1
                self.evidence.hits += [f"{path}: {hit}" for hit in hits_in(data)]


@pytest.fixture(scope="module")
def leak_role(pg_server: PostgresServer) -> str:
    """A login role with the distinctive password, allowed to create its schema in the test database."""
    if not pg_server.is_running():
        pg_server.start_again()
    exists = pg_server.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{LEAK_USER}';")
    verb = "ALTER" if exists else "CREATE"
    pg_server.psql(
        f"{verb} ROLE {LEAK_USER} LOGIN PASSWORD '{LEAK_PASSWORD}';\n"
        f"GRANT CREATE, CONNECT ON DATABASE {pg_server.database} TO {LEAK_USER};\n"
    )
    return LEAK_USER


def _conn(server: PostgresServer, case: str) -> dict[str, Any]:
    conn = {"conn_type": "postgres", "host": server.host, "port": server.port, "login": LEAK_USER,
            "password": LEAK_PASSWORD, "schema": server.database, "extra": {"schema": "leak_check"}}  # fmt: skip
    if case == "wrong_password":
        conn["password"] = WRONG_PASSWORD
    if case == "invalid_profile":  # the generic type passes this through: dbt's own validation refuses it
        extra = {"type": "postgres", "host": server.host, "port": server.port, "user": LEAK_USER,
                 "dbname": server.database, "schema": "leak_check", "keepalives_idle": "not-a-number"}  # fmt: skip
        conn = {"conn_type": "dbt", "password": LEAK_PASSWORD, "extra": extra}
    return conn


def _project(root: Path, case: str) -> Path:
    project = root / "leakproj"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: leakproj\nversion: '1.0'\nprofile: leakproj\n")
    (project / "models" / "slow.sql").write_text(
        "{{ config(materialized='table') }}\nselect 1 as id from (select pg_sleep(1.5)) as s\n"
    )
    if case == "failing_model":
        (project / "models" / "boom.sql").write_text("{{ config(materialized='table') }}\nselect 1 / 0 as boom\n")
    return project


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Temp files of this test (the profiles dir included) land in a directory only this test watches."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    monkeypatch.setenv("TMPDIR", str(directory))
    yield directory


def _exception_texts(error: BaseException | None) -> list[str]:
    """The error's message, its whole formatted chain (causes and contexts) and its pickled form's args."""
    if error is None:
        return []
    texts = ["".join(traceback.format_exception(error)), repr(error.args)]
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    return texts


def _check(
    name: str, evidence: Evidence, texts: list[str], private_tmp: Path, runs: Path, *, deferred: bool = False
) -> None:
    for text in texts:
        evidence.hits += [f"text: {hit}" for hit in hits_in(text)]
    assert evidence.hits == []
    assert evidence.files_scanned > 0
    assert evidence.live_profiles_seen > 0, "the watcher never saw the profile while dbt ran"
    assert evidence.profile_modes == {(0o600, 0o700)}
    assert not list(private_tmp.glob(f"{PROFILE_PREFIX}*")), "profiles dir left behind"
    assert list(runs.glob("run_*")), "the run dir was kept for the after-run scan"
    _report(name, evidence)
    assert not list(runs.rglob(PROFILES_FILE)), "profiles.yml left in the kept run dir"


HOOK_CASES = ["success", "failing_model", "wrong_password", "invalid_profile"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", HOOK_CASES)
def test_hook_run_leaks_nothing(
    case: str,
    mode: str,
    leak_role: str,
    pg_server: PostgresServer,
    private_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    project = _project(tmp_path, case)
    runs = tmp_path / "runs"
    monkeypatch.setenv("AIRFLOW_CONN_LEAKCONN", json.dumps(_conn(pg_server, case)))
    evidence = Evidence()
    watcher = FileWatcher([runs, private_tmp], evidence, monkeypatch)
    caplog.set_level(logging.DEBUG)
    hook = DbtHook(project, conn_id="leakconn", run_dir_root=runs, keep_target_artifacts=True, retry_limit=1,
                   **MODES[mode])  # fmt: skip
    watcher.start()
    try:
        result = hook.run_dbt_task("build", raise_on_failure=False)
    finally:
        watcher.stop()
    assert result.success is (case == "success"), result.error
    out, err = capfd.readouterr()
    lines = [record.getMessage() for record in caplog.records]
    lines += [logging.Formatter().format(record) for record in caplog.records if record.exc_info]
    evidence.log_lines = len(lines) + len((out + err).splitlines())
    assert evidence.log_lines > 10
    texts = [*lines, out, err, json.dumps(result.to_xcom()), *_exception_texts(result.error)]
    _check(f"hook/{mode}/{case}", evidence, texts, private_tmp, runs)


OPERATOR_DAG = textwrap.dedent(
    """
    from datetime import datetime
    from airflow.sdk import DAG
    from dlh_airflow_common.operators.dbt import DbtOperator

    with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
        DbtOperator(
            task_id="dbt_build",
            dbt_project_dir={project!r},
            dbt_command="build",
            conn_id="leakconn",
            run_dir_root={runs!r},
            keep_target_artifacts=True,
            retry_limit=1,
            **{mode_kwargs!r},
        )
    """
)


# What the operator adds to the hook (XCom, Airflow's task log, the deferred path) is the same whichever program
# streams dbt's events: the venv's CLI runs every case in the hook test above. Deferred runs report through the
# run dir or through a remote channel (S3), whose objects are scanned too.
# The S3 mode also keeps retry_from_failure state in the bucket (a failed try's run_results), scanned likewise.
OPERATOR_MODES = {
    **READING_MODES,
    "deferrable": {"deferrable": True},
    "deferrable-s3": {"deferrable": True, "retry_from_failure": True},
}
CHANNEL_CONN = "leak_channel"


def _scan_channel(s3: MotoS3, prefix: str, evidence: Evidence) -> int:
    """Every object of a run channel, and every member of its archive, searched for the secrets."""
    keys = s3.list_objects(prefix)
    for key in keys:
        body = s3.get_object(key)
        evidence.hits += [f"channel {key}: {hit}" for hit in hits_in(body)]
        if key.endswith(".tar.gz"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
                for member in archive.getmembers():
                    handle = archive.extractfile(member)
                    if handle is not None:
                        evidence.hits += [f"channel {key}!{member.name}: {hit}" for hit in hits_in(handle.read())]
    return len(keys)


@pytest.mark.parametrize("mode", OPERATOR_MODES)
@pytest.mark.parametrize("case", ["success", "failing_model", "wrong_password"])
def test_operator_under_dag_test_leaks_nothing(
    case: str,
    mode: str,
    leak_role: str,
    pg_server: PostgresServer,
    airflow_db: Path,
    private_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    project = _project(tmp_path, case)
    runs = tmp_path / "runs"
    monkeypatch.setenv("AIRFLOW_CONN_LEAKCONN", json.dumps(_conn(pg_server, case)))
    dag_id = f"leak_{case}_{mode.replace('-', '_')}"
    dag_file = tmp_path / f"{dag_id}.py"
    mode_kwargs = dict(OPERATOR_MODES[mode])
    if mode == "deferrable-s3":
        s3 = request.getfixturevalue("s3_server")
        monkeypatch.setenv(f"AIRFLOW_CONN_{CHANNEL_CONN.upper()}", s3.connection())
        mode_kwargs |= {"run_channel": s3.url(f"leaks/{dag_id}"), "run_channel_conn_id": CHANNEL_CONN}
    dag_file.write_text(
        OPERATOR_DAG.format(dag_id=dag_id, project=str(project), runs=str(runs), mode_kwargs=mode_kwargs)
    )
    evidence = Evidence()
    watcher = FileWatcher([runs, private_tmp, airflow_db / "logs"], evidence, monkeypatch)
    caplog.set_level(logging.DEBUG)
    watcher.start()
    try:
        run = run_dag_file(dag_file, airflow_db / "dags", dag_id)
    finally:
        watcher.stop()
    assert run.task_states == {"dbt_build": "success" if case == "success" else "failed"}
    summary = run.xcom("dbt_build", "dbt_summary")
    assert summary is not None and summary["success"] is (case == "success")
    out, err = capfd.readouterr()
    lines = [record.getMessage() for record in caplog.records]
    lines += [logging.Formatter().format(record) for record in caplog.records if record.exc_info]
    evidence.log_lines = len(lines) + len((out + err).splitlines())
    assert evidence.log_lines > 10
    xcoms = {f"{task}/{key}": value for (task, key), value in run.xcoms.items()}
    assert xcoms, "the operator pushed its summary"
    texts = [*lines, out, err, json.dumps(xcoms, default=str)]
    if mode == "deferrable-s3":  # kept (keep_target_artifacts): status, cancel request, artifacts, resume state
        s3_server = request.getfixturevalue("s3_server")
        assert _scan_channel(s3_server, f"leaks/{dag_id}", evidence) >= 2
        kept_state = s3_server.list_objects(f"leaks/{dag_id}/.dlh_state/")
        if case != "wrong_password":  # a failed model's run_results are kept for the next try, and scanned
            assert bool(kept_state) is (case == "failing_model"), kept_state
    _check(f"operator/{mode}/{case}", evidence, texts, private_tmp, runs, deferred=mode.startswith("deferrable"))


class _TaskInstance:
    dag_id = "leak_direct"
    task_id = "dbt_build"
    try_number = 1
    map_index = -1

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


@pytest.mark.parametrize("mode", READING_MODES)  # the venv's CLI: every case in the hook test
@pytest.mark.parametrize("case", ["failing_model", "wrong_password", "invalid_profile"])
def test_exception_the_operator_raises_carries_no_secret(
    case: str,
    mode: str,
    leak_role: str,
    pg_server: PostgresServer,
    private_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dlh_airflow_common.operators.dbt import DbtOperator

    project = _project(tmp_path, case)
    monkeypatch.setenv("AIRFLOW_CONN_LEAKCONN", json.dumps(_conn(pg_server, case)))
    operator = DbtOperator(task_id="dbt_build", dbt_project_dir=str(project), conn_id="leakconn", retry_limit=1,
                           **MODES[mode])  # fmt: skip
    ti = _TaskInstance()
    with pytest.raises(DbtException) as info:
        operator.execute({"ti": ti, "run_id": "manual"})  # type: ignore[arg-type]
    texts = [*_exception_texts(info.value), "".join(traceback.format_exception(info.value)), json.dumps(ti.xcom)]
    assert [hit for text in texts for hit in hits_in(text)] == []
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert hits_in(pickle.dumps(info.value)) == []


def _report(name: str, evidence: Evidence) -> None:
    """One line per scenario in the test output (-rA / -s): what was searched."""
    print(
        f"leak-check {name}: {evidence.files_scanned} file reads in {evidence.snapshots} snapshots "
        f"({evidence.live_profiles_seen} of a live profiles.yml), {evidence.log_lines} log/output lines, "
        f"{sum(len(forms) for forms in SECRETS.values())} needle forms, 0 hits",
        file=sys.__stdout__,
    )


def test_needles_cover_encoded_forms() -> None:
    secret = "ab/c+d=e!"
    blob = f"x{base64.b64encode(b'yy' + secret.encode()).decode()}z {quote(secret, safe='')}"
    SECRETS["probe"] = needles(secret)
    try:
        assert {"probe:b64@2", "probe:url"} <= set(hits_in(blob))
    finally:
        del SECRETS["probe"]
