"""Remote dbt projects with real components: moto's S3 server and git (file:// and ``git daemon``) on 127.0.0.1,
real dbt on DuckDB. Fetched once per version and worker, never half-seen, refused with a typed error."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dag_runner import run_dag_file
from dlh_airflow_common.exceptions.dbt import DbtProjectSourceException
from dlh_airflow_common.hooks.dbt import DbtHook
from operability import write_dag
from remote_sources import GitDaemon, GitHttpServer, GitRepo, project_files, tar_bytes, zip_bytes
from s3_server import MotoS3

pytestmark = pytest.mark.integration

S3_CONN = "project_s3"
CONCURRENT_TASKS = 16


def _unavailable(message: str) -> None:
    """Under CI a missing server is a failure, elsewhere a skip."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def s3(s3_server: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """The session's moto server, reached through the Airflow connection ``project_s3``."""
    available, reason = MotoS3.available()
    if not available:
        _unavailable(f"moto S3 server unavailable: {reason}")
    monkeypatch.setenv(f"AIRFLOW_CONN_{S3_CONN.upper()}", s3_server.connection())
    return s3_server


@pytest.fixture
def prefix() -> str:
    return f"projects/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def duckdb_conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_DBT_DUCKDB", json.dumps({"conn_type": "duckdb", "host": str(tmp_path / "w.db")}))
    return "dbt_duckdb"


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    available, reason = GitDaemon.available()
    if not available:
        _unavailable(f"git daemon unavailable: {reason}")
    base = tmp_path / "served"
    base.mkdir()
    with GitDaemon(base) as daemon:
        yield daemon


def _hook(url: str, tmp_path: Path, conn: str, **kwargs: Any) -> DbtHook:
    return DbtHook(url, conn_id=conn, project_cache_dir=str(tmp_path / "cache"), run_dir_root=str(tmp_path / "runs"),
                   retry_limit=1, **kwargs)  # fmt: skip


def _put(s3: MotoS3, key: str, data: bytes) -> str:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)
    return s3.url(key)


def _cache_entries(cache: Path) -> tuple[list[str], list[str]]:
    """Published versions, and anything half-written (temporary or trash directories), across all slots."""
    dirs = [p for slot in cache.iterdir() for p in slot.iterdir() if p.is_dir()] if cache.is_dir() else []
    return sorted(p.name for p in dirs if p.name.startswith("v-")), sorted(p.name for p in dirs if p.name[0] == ".")


def _built(result: Any) -> set[str]:
    return {node.unique_id for node in result.summary.nodes if node.status in ("success", "pass")}


# -- object storage -------------------------------------------------------------------------------------------------
def test_a_folder_on_s3_builds_with_real_dbt_and_is_fetched_once(
    s3: MotoS3, prefix: str, example_project: Path, duckdb_conn: str, tmp_path: Path
) -> None:
    for path in sorted(example_project.rglob("*")):
        if path.is_file():
            _put(s3, f"{prefix}/{path.relative_to(example_project).as_posix()}", path.read_bytes())
    for marker in ("", "models/"):  # the empty "folder" objects consoles and some tools create
        _put(s3, f"{prefix}/{marker}", b"")
    hook = _hook(s3.url(prefix) + "/", tmp_path, duckdb_conn, dbt_project_conn_id=S3_CONN)
    first = hook.run_dbt_task("build")
    assert first.success and "model.shop.orders" in _built(first)
    assert first.project["version"].startswith("listing:") and first.project["kind"] == "objects"
    assert hook.last_checkout is not None and hook.last_checkout.fetched
    second = hook.run_dbt_task("run", select="orders")
    assert second.success and second.project == first.project
    assert not hook.last_checkout.fetched, "the same version: no second download"
    assert _cache_entries(tmp_path / "cache") == ([hook.last_checkout.path.name], [])


def test_a_bundle_on_s3_changing_between_two_runs_gives_a_new_version(
    s3: MotoS3, prefix: str, duckdb_conn: str, tmp_path: Path
) -> None:
    url = _put(s3, f"{prefix}/shop.tar.gz", tar_bytes(project_files(), prefix="shop-main/"))
    hook = _hook(url, tmp_path, duckdb_conn, dbt_project_conn_id=S3_CONN)
    first = hook.run_dbt_task("run")
    _put(s3, f"{prefix}/shop.tar.gz", tar_bytes(project_files(models={"orders": "select 1 as id\n",
                                                                      "customers": "select 2 as id\n"})))  # fmt: skip
    second = hook.run_dbt_task("run")
    assert _built(first) == {"model.shop.orders"}
    assert _built(second) == {"model.shop.orders", "model.shop.customers"}
    etag = s3.client().head_object(Bucket=s3.bucket, Key=f"{prefix}/shop.tar.gz")["ETag"].strip('"')
    assert second.project["version"] == f"etag:{etag}" != first.project["version"]
    published, half = _cache_entries(tmp_path / "cache")
    assert len(published) == 2 and half == []


_TASK_SCRIPT = """
import json, sys, time
from pathlib import Path
from dlh_airflow_common.dbt.remote_project import checkout_project
url, cache, go = sys.argv[1:4]
while not Path(go).exists():  # every task starts at once
    time.sleep(0.01)
with checkout_project(url, conn_id="project_s3", cache_dir=cache) as checkout:
    models = [p.name for p in (checkout.path / "models").iterdir()]
    print(json.dumps({"fetched": checkout.fetched, "path": str(checkout.path), "models": len(models)}))
"""


def test_sixteen_concurrent_tasks_download_once_and_see_a_whole_tree(s3: MotoS3, prefix: str, tmp_path: Path) -> None:
    models = {f"m{index:03d}": f"select {index} as id\n" for index in range(200)}
    url = _put(s3, f"{prefix}/shop.zip", zip_bytes(project_files(models=models)))
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    argv = [sys.executable, "-c", _TASK_SCRIPT, url, str(tmp_path / "cache"), str(go)]
    tasks = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) for _ in range(CONCURRENT_TASKS)]
    go.touch()
    outcomes = [json.loads(task.communicate(timeout=600)[0].strip().splitlines()[-1]) for task in tasks]
    assert [task.returncode for task in tasks] == [0] * CONCURRENT_TASKS
    assert sum(o["fetched"] for o in outcomes) == 1, "one task downloads, the others wait for it and use its tree"
    assert len({o["path"] for o in outcomes}) == 1
    assert {o["models"] for o in outcomes} == {200}, "no task saw a half-written tree"
    assert _cache_entries(tmp_path / "cache") == ([Path(outcomes[0]["path"]).name], [])


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (tar_bytes(project_files(models={"big": "-- " + secrets.token_hex(40_000)}))[:30_000], "corrupt or truncated"),
        (tar_bytes({**project_files(), "../../outside.sql": "select 1"}), "not a relative path inside its root"),
        (tar_bytes(project_files(), links={"models/etc": "/etc"}), "outside the bundle"),
        (zip_bytes({"README.md": "no project here"}), "not a dbt project"),
    ],
    ids=["corrupt", "escaping-path", "escaping-link", "not-a-project"],
)
def test_bad_bundles_are_refused_naming_the_url_and_leave_nothing(
    s3: MotoS3, prefix: str, tmp_path: Path, data: bytes, says: str
) -> None:
    url = _put(s3, f"{prefix}/shop.tar.gz", data)
    with pytest.raises(DbtProjectSourceException, match=says) as caught:
        _hook(url, tmp_path, "unused", dbt_project_conn_id=S3_CONN).run_dbt_task("run")
    assert str(caught.value).startswith(url)
    assert _cache_entries(tmp_path / "cache") == ([], [])
    assert not (tmp_path / "outside.sql").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where", ["missing-key", "missing-bucket"])
def test_a_missing_key_or_bucket_is_a_typed_error(s3: MotoS3, prefix: str, tmp_path: Path, where: str) -> None:
    url = s3.url(f"{prefix}/nope.zip") if where == "missing-key" else f"s3://no-such-bucket-{prefix[-8:]}/shop.zip"
    with pytest.raises(DbtProjectSourceException, match="no such bucket, key or prefix") as caught:
        _hook(url, tmp_path, "unused", dbt_project_conn_id=S3_CONN).run_dbt_task("run")
    assert caught.value.url == url


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_the_operator_pushes_the_version_to_xcom(
    s3: MotoS3, prefix: str, duckdb_conn: str, airflow_db: Path, tmp_path: Path, deferrable: bool
) -> None:
    url = _put(s3, f"{prefix}/shop.tar.gz", tar_bytes(project_files()))
    kwargs = {"conn_id": duckdb_conn, "dbt_project_conn_id": S3_CONN, "project_cache_dir": str(tmp_path / "cache"),
              "deferrable": deferrable, "check_interval": 0.5}  # fmt: skip
    dag_id = f"dbt_remote_project_{'deferrable' if deferrable else 'sync'}"
    dag_file = write_dag(tmp_path, dag_id, url, [("dbt_run", "run", kwargs)])  # type: ignore[arg-type]
    run = run_dag_file(dag_file, airflow_db / "dags", dag_id)
    assert run.task_states == {"dbt_run": "success"}
    summary = run.xcom("dbt_run", "dbt_summary")
    etag = s3.client().head_object(Bucket=s3.bucket, Key=f"{prefix}/shop.tar.gz")["ETag"].strip('"')
    assert summary["project"] == {"url": url, "kind": "archive", "version": f"etag:{etag}"}


# -- git ------------------------------------------------------------------------------------------------------------
def test_a_git_tag_over_file_url_runs_and_a_missing_ref_is_refused(duckdb_conn: str, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "git")
    tagged = repo.commit(project_files())
    repo.tag("v1")
    repo.commit({"models/later.sql": "select 3 as id\n"})
    result = _hook(f"git+{repo.url}@v1", tmp_path, duckdb_conn).run_dbt_task("run")
    assert result.success and _built(result) == {"model.shop.orders"}
    assert result.project == {"url": f"git+{repo.url}@v1", "kind": "git", "version": tagged}
    with pytest.raises(DbtProjectSourceException, match="git ref 'v9' does not exist") as caught:
        _hook(f"git+{repo.url}@v9", tmp_path, duckdb_conn).run_dbt_task("run")
    assert caught.value.url == f"git+{repo.url}@v9"
    assert len(_cache_entries(tmp_path / "cache")[0]) == 1


def test_git_daemon_a_new_commit_between_two_runs(git_daemon: GitDaemon, duckdb_conn: str, tmp_path: Path) -> None:
    repo = GitRepo(git_daemon.base)
    first_commit = repo.commit(project_files())
    url = f"git+{git_daemon.url(repo)}@main"
    hook = _hook(url, tmp_path, duckdb_conn)
    first = hook.run_dbt_task("run")
    second_commit = repo.commit({"models/customers.sql": "select 2 as id\n"})
    second = hook.run_dbt_task("run")
    assert (first.project["version"], second.project["version"]) == (first_commit, second_commit)
    assert _built(second) == {"model.shop.orders", "model.shop.customers"}
    assert hook.last_checkout is not None and not (hook.last_checkout.path / ".git").exists()
    shutil.rmtree(repo.work)
    again = hook.run_dbt_task("run")
    assert again.project["version"] == second_commit and not hook.last_checkout.fetched


GIT_PASSWORD = "gh-token-" + "7" * 24


@pytest.fixture
def git_http(tmp_path: Path) -> Iterator[GitHttpServer]:
    available, reason = GitDaemon.available()  # git http-backend ships with the same git
    if not available:
        _unavailable(f"git unavailable: {reason}")
    base = tmp_path / "http"
    base.mkdir()
    with GitHttpServer(base, "deploy", GIT_PASSWORD) as server:
        yield server


def test_git_over_https_auth_takes_credentials_from_the_connection_and_never_leaks_them(
    git_http: GitHttpServer,
    duckdb_conn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = GitRepo(git_http.base)
    commit = repo.commit(project_files())
    url = f"git+{git_http.url(repo)}@main"
    for conn_id, password in (("git_shop", GIT_PASSWORD), ("git_wrong", "wrong-" + GIT_PASSWORD)):
        conn = {"conn_type": "generic", "login": "deploy", "password": password}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    caplog.set_level("DEBUG")
    result = _hook(url, tmp_path, duckdb_conn, dbt_project_conn_id="git_shop").run_dbt_task("run")
    assert result.success and result.project["version"] == commit and _built(result) == {"model.shop.orders"}
    with pytest.raises(DbtProjectSourceException, match="ls-remote failed") as wrong:
        _hook(url, tmp_path, duckdb_conn, dbt_project_conn_id="git_wrong").run_dbt_task("run")
    with pytest.raises(DbtProjectSourceException, match="ls-remote failed"):
        _hook(url, tmp_path, duckdb_conn).run_dbt_task("run")  # no connection: 401, and git never prompts
    assert git_http.refused >= 2
    seen = [caplog.text, json.dumps(result.to_xcom()), str(wrong.value), wrong.value.url]
    seen += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()
             and not p.is_relative_to(git_http.base)]  # fmt: skip
    assert not [text for text in seen if GIT_PASSWORD in text], "the password reached a log, XCom or a file"


# -- the task graph -------------------------------------------------------------------------------------------------
def test_a_task_graph_of_a_git_project_is_found_at_parse_time_without_a_download(
    duckdb_conn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlh_airflow_common.task_graph.cli import main
    from dlh_airflow_common.task_graph.group import DbtDag

    monkeypatch.setenv("AIRFLOW__DLH_DBT__PROJECT_CACHE_DIR", str(tmp_path / "cache"))
    repo = GitRepo(tmp_path / "git")
    repo.commit(project_files(models={"orders": "select 1 as id\n", "customers": "select * from {{ ref('orders') }}"}))
    url = f"git+{repo.url}@main"
    graph_cache = str(tmp_path / "graphs")
    assert main(["graph", url, "--conn-id", duckdb_conn, "--cache-dir", graph_cache]) == 0
    shutil.rmtree(tmp_path / "cache")  # what a DAG processor without the project has
    dag = DbtDag("remote_graph", dbt_project_dir=url, conn_id=duckdb_conn, graph_cache_dir=graph_cache,
                 execution_mode="per_node", schedule=None)  # fmt: skip
    tasks = {task.task_id: task for task in dag.tasks}
    assert set(tasks) >= {"orders", "customers"} and tasks["customers"].upstream_task_ids == {"orders"}
    assert tasks["orders"].dbt_project_dir == url, "each task resolves the project's version when it runs"
    assert not (tmp_path / "cache").exists(), "parsing asked git for the version and downloaded nothing"
