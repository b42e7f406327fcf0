"""The per-worker project cache: publish once per version, leases, the pruning rule, nothing half-written."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dlh_airflow_common.dbt.project_cache import ProjectCache, version_name

SLOT = "shop-0123456789ab"


def _filler(content: str, *, calls: list[str] | None = None, returns: str | None = None):  # type: ignore[no-untyped-def]
    def fill(into: Path) -> str:
        if calls is not None:
            calls.append(content)
        into.mkdir(parents=True)
        (into / "dbt_project.yml").write_text(content)
        return returns or content

    return fill


def _age(cache: ProjectCache, version: str, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(cache.root / SLOT / f"{version_name(version)}.lease", (stamp, stamp))


def test_a_missing_version_is_published_and_then_leased(tmp_path: Path) -> None:
    cache = ProjectCache(tmp_path)
    assert cache.lease(SLOT, "v1") is None
    tree, lease, fetched = cache.publish(SLOT, "v1", _filler("v1"), meta={"url": "u"})
    lease.release()
    assert fetched and (tree / "dbt_project.yml").read_text() == "v1"
    found = cache.lease(SLOT, "v1")
    assert found is not None and found[0] == tree
    found[1].release()
    assert [p.name for p in (tmp_path / SLOT).iterdir() if p.name.startswith(".tmp-")] == []


def test_concurrent_publishers_fetch_once(tmp_path: Path) -> None:
    cache = ProjectCache(tmp_path)
    calls: list[str] = []

    def one(_: int) -> tuple[Path, bool]:
        tree, lease, fetched = cache.publish(SLOT, "v1", _filler("v1", calls=calls), meta={})
        lease.release()
        return tree, fetched

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert calls == ["v1"]
    assert len({tree for tree, _ in results}) == 1
    assert sum(fetched for _, fetched in results) == 1


def test_a_failed_fill_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = ProjectCache(tmp_path)

    def broken(into: Path) -> str:
        into.mkdir(parents=True)
        (into / "half.sql").write_text("sel")
        raise RuntimeError("connection reset")

    with pytest.raises(RuntimeError):
        cache.publish(SLOT, "v1", broken, meta={})
    assert [p.name for p in (tmp_path / SLOT).iterdir()] == [".lock"]
    assert cache.lease(SLOT, "v1") is None
    assert [p.name for p in (tmp_path / SLOT).iterdir()] == [".lock"], "asking leaves no lease file behind"


def test_prune_removes_leases_and_records_of_versions_that_are_gone(tmp_path: Path) -> None:
    cache = ProjectCache(tmp_path)
    cache.publish(SLOT, "v1", _filler("v1"), meta={})[1].release()
    for suffix in (".lease", ".json"):
        (tmp_path / SLOT / f"{version_name('gone')}{suffix}").write_text("")
    assert cache.prune(SLOT) == []
    names = sorted(p.name for p in (tmp_path / SLOT).iterdir())
    assert names == sorted([".lock", *(f"{version_name('v1')}{s}" for s in ("", ".json", ".lease"))])


def test_a_killed_fetch_is_cleaned_up_by_the_next_one(tmp_path: Path) -> None:
    (tmp_path / SLOT / ".tmp-4242-dead" / "tree").mkdir(parents=True)
    cache = ProjectCache(tmp_path)
    cache.publish(SLOT, "v1", _filler("v1"), meta={})[1].release()
    assert not (tmp_path / SLOT / ".tmp-4242-dead").exists()


def test_a_source_that_moved_is_published_under_what_was_fetched(tmp_path: Path) -> None:
    cache = ProjectCache(tmp_path)
    tree, lease, _ = cache.publish(SLOT, "v1", _filler("v2", returns="v2"), meta={})
    lease.release()
    assert tree.name == version_name("v2")
    assert cache.lease(SLOT, "v1") is None


def test_prune_keeps_the_newest_and_everything_recently_used(tmp_path: Path) -> None:
    for version in ("v1", "v2", "v3", "v4"):
        ProjectCache(tmp_path, keep=10).publish(SLOT, version, _filler(version), meta={})[1].release()
    cache = ProjectCache(tmp_path, keep=2, min_idle=600)
    for index, version in enumerate(("v1", "v2", "v3", "v4")):
        _age(cache, version, 10_000 - index * 1000)  # v1 oldest
    _age(cache, "v1", 20_000)
    _age(cache, "v2", 19_000)
    _age(cache, "v3", 60)  # used a minute ago: among the two newest with v4
    _age(cache, "v4", 30)
    removed = cache.prune(SLOT)
    assert removed == [version_name("v2"), version_name("v1")]
    _age(cache, "v3", 5_000)  # now v3 and v4 are the newest: kept whatever their age
    assert cache.prune(SLOT) == []


def test_prune_spares_an_old_version_used_recently(tmp_path: Path) -> None:
    for version in ("v1", "v2", "v3"):
        ProjectCache(tmp_path, keep=10).publish(SLOT, version, _filler(version), meta={})[1].release()
    cache = ProjectCache(tmp_path, keep=1, min_idle=600)
    _age(cache, "v1", 9_000)
    _age(cache, "v2", 300)  # not the newest, but used five minutes ago (a detached run may still read it)
    _age(cache, "v3", 10)
    removed = cache.prune(SLOT)
    assert removed == [version_name("v1")]
    remaining = {p.name for p in (tmp_path / SLOT).iterdir() if p.is_dir()}
    assert remaining == {version_name(v) for v in ("v2", "v3")}


def test_prune_never_removes_a_leased_version(tmp_path: Path) -> None:
    cache = ProjectCache(tmp_path, keep=1, min_idle=0)
    cache.publish(SLOT, "v1", _filler("v1"), meta={})[1].release()
    held = cache.lease(SLOT, "v1")
    assert held is not None
    _age(cache, "v1", 10_000)
    cache.publish(SLOT, "v2", _filler("v2"), meta={})[1].release()
    assert (held[0] / "dbt_project.yml").read_text() == "v1"  # still there for the run holding it
    held[1].release()
    _age(cache, "v1", 10_000)
    assert cache.prune(SLOT) == [version_name("v1")]
    assert not held[0].exists()
    assert not any(p.name.startswith(".trash-") for p in (tmp_path / SLOT).iterdir())
