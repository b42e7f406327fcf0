"""The graph cache: entries keyed by project content and selection, staleness, pruning, one builder at a time.

The lister is a stand-in that hands a committed real manifest to ``use``; real ``dbt ls`` runs are in
tests/integration/test_task_graph_build.py.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.task_graph.build import (
    ManifestUse,
    ensure_graph,
    find_graph,
    graph_cache_root,
    graph_command,
    locate,
    require_graph,
)
from dlh_airflow_common.task_graph.graph_file import GraphFile, Selection
from repo_paths import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data"


class CountingLister:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[Selection] = []
        self.delay = delay

    def __call__(self, selection: Selection, use: ManifestUse) -> GraphFile:
        self.calls.append(selection)
        time.sleep(self.delay)
        ids: Sequence[str] = ["model.graphy.stg_items", "seed.graphy.raw_items"]
        return use(ids, DATA / "task_graph_manifest.json", "duckdb://warehouse.duckdb")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA / "task_graph_project", tmp_path / "graphy"))


def test_built_once_then_fresh_and_keyed_by_selection(project: Path, tmp_path: Path) -> None:
    lister, cache = CountingLister(), tmp_path / "cache"
    assert find_graph(project, Selection(), cache) is None
    first = ensure_graph(project, Selection(), lister, cache)
    again = ensure_graph(project, Selection(), lister, cache)
    assert first.built and not again.built and again.graph == first.graph == find_graph(project, Selection(), cache)
    other = ensure_graph(project, Selection(select=("stg_items",)), lister, cache)
    assert other.built and other.path != first.path and len(lister.calls) == 2
    assert first.graph.project_hash in first.path.name


def test_a_changed_model_makes_the_entry_stale_and_the_old_one_is_pruned(project: Path, tmp_path: Path) -> None:
    lister, cache = CountingLister(), tmp_path / "cache"
    first = ensure_graph(project, Selection(), lister, cache)
    (project / "models" / "base" / "stg_items.sql").write_text("select 2 as id")
    assert find_graph(project, Selection(), cache) is None
    second = ensure_graph(project, Selection(), lister, cache)
    assert second.built and second.graph.project_hash != first.graph.project_hash
    assert not first.path.exists() and second.path.exists()


def test_concurrent_builders_build_once(project: Path, tmp_path: Path) -> None:
    lister, cache = CountingLister(delay=0.5), tmp_path / "cache"
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_graph(project, Selection(), lister, cache).built))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lister.calls) == 1 and sorted(results) == [False, False, True]


def test_a_failed_build_leaves_no_entry(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def failing(selection: Selection, use: ManifestUse) -> GraphFile:
        raise RuntimeError("dbt ls failed")

    with pytest.raises(RuntimeError):
        ensure_graph(project, Selection(), failing, cache)
    location = locate(project, Selection(), cache)
    assert not location.path.exists()
    assert not list(location.directory.glob("*.json")) and not list(location.directory.glob(".*.tmp"))


def test_a_missing_or_stale_graph_says_what_to_run(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    selection = Selection(select=("+item_report", "tag:a b"), selector=None, target="prod")
    command = f"dlh-dbt graph {project} --select +item_report 'tag:a b' --target prod"
    assert graph_command(project, selection) == command
    with pytest.raises(DbtException, match="has not been built") as info:
        require_graph(project, selection, cache)
    assert command in str(info.value)
    built = ensure_graph(project, selection, CountingLister(), cache)
    assert require_graph(project, selection, cache) == built.graph
    (project / "models" / "base" / "stg_kinds.sql").write_text("select 3 as kind")
    with pytest.raises(DbtException, match="is stale"):
        require_graph(project, selection, cache)


def test_a_stale_graph_may_serve_until_it_is_rebuilt(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    assert graph_cache_root(project, None, str(cache)) == cache
    assert graph_cache_root(project, str(tmp_path / "runs")) == tmp_path / "runs" / ".dlh_cache"
    with pytest.raises(DbtException, match="has not been built"):  # nothing to fall back on
        require_graph(project, Selection(), cache, allow_stale=True)
    built = ensure_graph(project, Selection(), CountingLister(), cache)
    (project / "models" / "base" / "stg_kinds.sql").write_text("select 3 as kind")
    assert require_graph(project, Selection(), cache, allow_stale=True) == built.graph
    assert "is stale" in caplog.text and "dlh-dbt graph" in caplog.text
    rebuilt = ensure_graph(project, Selection(), CountingLister(), cache)
    assert rebuilt.built and rebuilt.graph.project_hash != built.graph.project_hash
    assert require_graph(project, Selection(), cache) == rebuilt.graph


def test_a_remote_project_is_keyed_by_its_version_and_found_without_a_download(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_sources import GitRepo

    monkeypatch.setenv("AIRFLOW__DLH_DBT__PROJECT_CACHE_DIR", str(tmp_path / "projects"))
    repo = GitRepo(tmp_path / "git")
    first = repo.commit({str(p.relative_to(project)): p.read_bytes() for p in project.rglob("*") if p.is_file()})
    url, cache = f"git+{repo.url}@main", tmp_path / "cache"
    built = ensure_graph(url, Selection(), CountingLister(), cache)
    assert built.built and built.graph.project_hash == locate(url, Selection(), cache).project_hash
    assert require_graph(url, Selection(), cache) == built.graph
    assert not (tmp_path / "projects").exists(), "the lister downloads (it runs dbt); finding the file does not"
    repo.commit({"models/new.sql": "select 1 as id\n"})
    with pytest.raises(DbtException, match="is stale"):
        require_graph(url, Selection(), cache)
    assert locate(url, Selection(), cache).project_hash != built.graph.project_hash != first


def test_a_remote_project_keeps_its_graph_cache_outside_any_project_dir() -> None:
    from dlh_airflow_common.dbt.run_dir import private_temp_root

    assert graph_cache_root("s3://bucket/shop.tar.gz") == private_temp_root() / ".dlh_cache"
