"""Unit tests for dlh_airflow_common.dbt.partial_parse: keying, seeding, atomic publishing, pruning, races."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt import partial_parse
from dlh_airflow_common.dbt.partial_parse import (
    CACHE_DIR_NAME,
    PARTIAL_PARSE_FILE,
    ParseKey,
    PartialParseCache,
    cache_root,
    canonical_vars,
    dbt_version,
    looks_like_msgpack,
    option_values,
    parse_key,
    partial_parse_disabled,
    referenced_env_vars,
)

# A msgpack map header (fixmap of 1 entry) followed by arbitrary bytes: all our cache checks look at.
VALID = b"\x81\xa1a" + b"x" * 64


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "proj"
    path.mkdir()
    (path / "dbt_project.yml").write_text(
        "name: proj\nprofile: proj\nvars:\n  region: \"{{ env_var('REGION', 'eu') }}\"\n", encoding="utf-8"
    )
    return path


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    path = tmp_path / "profiles"
    path.mkdir()
    (path / "profiles.yml").write_text(
        "proj:\n  target: a\n  outputs:\n    a: {type: duckdb, path: \"{{ env_var('DB_PATH') }}\",\n"
        "        password: \"{{ env_var('DBT_ENV_SECRET_PASSWORD') }}\"}\n",
        encoding="utf-8",
    )
    return path


def key(project: Path, profiles: Path, *extra: str, env: dict[str, str] | None = None, **kwargs: Any) -> ParseKey:
    argv = ["build", "--project-dir", str(project), "--profiles-dir", str(profiles), *extra]
    return parse_key(argv, env or {}, project_dir=project, version="1.11.16", **kwargs)


# -- the key ---------------------------------------------------------------------------------------------
def test_same_inputs_give_the_same_key_and_run_paths_do_not_matter(project: Path, profiles: Path) -> None:
    first = key(project, profiles, "--target-path", "/runs/a/target", "--select", "x", "--log-path", "/runs/a")
    second = key(project, profiles, "--target-path", "/runs/b/target", "--select", "y", "--threads", "4")
    assert first == second
    assert first.digest == second.digest
    assert len(first.digest) == 32


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (["--target", "dev"], ["--target", "prod"]),
        (["--profile", "one"], ["--profile", "two"]),
        (["--vars", '{"day": "2024-01-01"}'], ["--vars", '{"day": "2024-01-02"}']),
        ([], ["--vars", '{"day": "2024-01-01"}']),
    ],
)
def test_what_dbt_puts_in_its_vars_hash_splits_the_key(
    project: Path, profiles: Path, left: list[str], right: list[str]
) -> None:
    assert key(project, profiles, *left).digest != key(project, profiles, *right).digest


def test_vars_are_canonical(project: Path, profiles: Path) -> None:
    as_json = key(project, profiles, "--vars", '{"b": 2, "a": 1}')
    as_yaml = key(project, profiles, "--vars", "{a: 1, b: 2}")
    equals_form = key(project, profiles, "--vars={a: 1, b: 2}")
    assert as_json == as_yaml == equals_form
    assert canonical_vars("{}") is None
    assert canonical_vars("  ") is None
    assert canonical_vars("a: [unclosed") == "a: [unclosed"


def test_env_vars_read_by_project_and_profile_are_keyed_by_value(project: Path, profiles: Path) -> None:
    base = key(project, profiles, env={"REGION": "eu", "DB_PATH": "/a.duckdb", "UNRELATED": "1"})
    assert base == key(project, profiles, env={"REGION": "eu", "DB_PATH": "/a.duckdb", "UNRELATED": "2"})
    assert base != key(project, profiles, env={"REGION": "us", "DB_PATH": "/a.duckdb"})
    assert base != key(project, profiles, env={"REGION": "eu", "DB_PATH": "/b.duckdb"})
    names = [name for name, _ in base.env]
    assert names == ["DBT_ENV_SECRET_PASSWORD", "DBT_PROFILE", "DBT_TARGET", "DB_PATH", "REGION"]


def test_secret_values_never_enter_the_key(project: Path, profiles: Path) -> None:
    one = key(project, profiles, env={"DBT_ENV_SECRET_PASSWORD": "hunter2"})
    two = key(project, profiles, env={"DBT_ENV_SECRET_PASSWORD": "correct horse"})
    assert one == two
    assert "hunter2" not in json.dumps(one.__dict__)


def test_dbt_target_env_only_counts_when_argv_has_no_target(project: Path, profiles: Path) -> None:
    assert key(project, profiles, env={"DBT_TARGET": "a"}) != key(project, profiles, env={"DBT_TARGET": "b"})
    pinned = ("--target", "dev")
    assert key(project, profiles, *pinned, env={"DBT_TARGET": "a"}) == key(
        project, profiles, *pinned, env={"DBT_TARGET": "b"}
    )


def test_profiles_contents_count_not_their_temp_dir(project: Path, tmp_path: Path) -> None:
    one, two, three = (tmp_path / name for name in ("p1", "p2", "p3"))
    for directory, db in ((one, "a"), (two, "a"), (three, "b")):
        directory.mkdir()
        (directory / "profiles.yml").write_text(f"proj: {{target: t, outputs: {{t: {{path: {db}}}}}}}\n")
    assert key(project, one) == key(project, two)
    assert key(project, one) != key(project, three)


def test_dbt_version_and_packages_split_the_key(project: Path, profiles: Path) -> None:
    argv = ["build", "--profiles-dir", str(profiles)]
    old = parse_key(argv, {}, project_dir=project, version="1.10.0")
    new = parse_key(argv, {}, project_dir=project, version="1.11.16")
    assert old.digest != new.digest
    assert key(project, profiles, packages="aaa").digest != key(project, profiles, packages="bbb").digest


def test_project_copies_get_their_own_slot(tmp_path: Path, profiles: Path) -> None:
    copies = []
    for parent in ("one", "two"):
        path = tmp_path / parent / "proj"
        path.mkdir(parents=True)
        (path / "dbt_project.yml").write_text("name: proj\n")
        copies.append(key(path, profiles))
    assert copies[0].project_slot != copies[1].project_slot
    assert copies[0].project_slot.startswith("proj-")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "one" / "proj")
    assert key(link, profiles).project_slot == copies[0].project_slot  # the resolved path is what counts


def test_option_values_takes_the_last_of_each() -> None:
    argv = ["run", "--target", "a", "--vars", "{x: 1}", "--target=b", "--profiles-dir", "/p", "--select", "m"]
    assert option_values(argv) == {"--target": "b", "--vars": "{x: 1}", "--profiles-dir": "/p"}
    assert option_values(["run", "--target"]) == {}


def test_referenced_env_vars() -> None:
    text = "a: \"{{ env_var('ONE') }}\"\nb: {{ env_var( \"TWO\", 'x') }}\nc: {{ var('NOT_ENV') }}"
    assert referenced_env_vars(text, "{{ env_var('ONE') }}") == ["ONE", "TWO"]


@pytest.mark.parametrize(
    ("argv", "env", "disabled"),
    [
        (["run"], {}, False),
        (["run", "--no-partial-parse"], {}, True),
        (["run", "--no-partial-parse", "--partial-parse"], {}, False),
        (["run"], {"DBT_PARTIAL_PARSE": "false"}, True),
        (["run", "--partial-parse"], {"DBT_PARTIAL_PARSE": "false"}, False),
    ],
)
def test_partial_parse_disabled(argv: list[str], env: dict[str, str], disabled: bool) -> None:
    assert partial_parse_disabled(argv, env) is disabled


def test_dbt_version_in_this_interpreter_and_in_a_venv(tmp_path: Path) -> None:
    assert dbt_version().startswith("1.")
    venv = tmp_path / "venv"
    (venv / "lib" / "python3.11" / "site-packages" / "dbt_core-1.9.4.dist-info").mkdir(parents=True)
    assert dbt_version(venv) == "1.9.4"
    assert dbt_version(venv / "bin" / "dbt") == "1.9.4"
    assert dbt_version(tmp_path / "empty").startswith("venv:")


# -- location --------------------------------------------------------------------------------------------
def test_cache_root_defaults_under_the_run_root(tmp_path: Path) -> None:
    root = cache_root(tmp_path / "target")
    assert root == tmp_path / "target" / CACHE_DIR_NAME
    assert root.is_dir()


def test_cache_root_can_be_configured(tmp_path: Path) -> None:
    assert cache_root(tmp_path / "target", tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert not (tmp_path / "target").exists()


def test_cache_root_falls_back_to_the_private_temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read_only = tmp_path / "ro"
    private = tmp_path / "private"
    private.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.is_relative_to(read_only):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(partial_parse, "private_temp_root", lambda: private)
    assert cache_root(read_only) == private / CACHE_DIR_NAME


# -- seeding and publishing ------------------------------------------------------------------------------
@pytest.fixture
def cache(tmp_path: Path) -> PartialParseCache:
    return PartialParseCache(tmp_path / "cache")


def run_target(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name / "target"
    target.mkdir(parents=True)
    return target


def dbt_writes(target: Path, content: bytes) -> None:
    """What dbt does after a parse: rewrite partial_parse.msgpack in place."""
    time.sleep(0.01)  # a later mtime, as a real parse takes far longer than this
    with (target / PARTIAL_PARSE_FILE).open("wb") as handle:
        handle.write(content)


def test_first_run_seeds_nothing_then_publishes(cache: PartialParseCache, tmp_path: Path) -> None:
    parse = ParseKey(dbt_version="1", project_dir="/p")
    target = run_target(tmp_path, "run1")
    seed = cache.seed(parse, target)
    assert not seed.seeded
    assert not (target / PARTIAL_PARSE_FILE).exists()
    dbt_writes(target, VALID)
    assert cache.publish(seed)
    entry = cache.entry(parse)
    assert entry.read_bytes() == VALID
    assert entry.parent.name == parse.project_slot
    assert [p.name for p in entry.parent.iterdir()] == [entry.name], "no temp file is left behind"


def test_seed_copies_never_links(cache: PartialParseCache, tmp_path: Path) -> None:
    parse = ParseKey(dbt_version="1", project_dir="/p")
    entry = cache.entry(parse)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(VALID)
    target = run_target(tmp_path, "run")
    seed = cache.seed(parse, target)
    assert seed.seeded
    local = target / PARTIAL_PARSE_FILE
    assert local.read_bytes() == VALID
    assert local.stat().st_ino != entry.stat().st_ino
    dbt_writes(target, b"\x81garbage-in-place")
    assert entry.read_bytes() == VALID, "dbt rewriting its copy must not reach the cache"


def test_unchanged_file_is_not_republished(cache: PartialParseCache, tmp_path: Path) -> None:
    parse = ParseKey(dbt_version="1", project_dir="/p")
    entry = cache.entry(parse)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(VALID)
    before = entry.stat().st_mtime_ns
    seed = cache.seed(parse, run_target(tmp_path, "run"))
    assert not cache.publish(seed), "dbt skipped parsing: nothing new to publish"
    assert entry.stat().st_mtime_ns == before


@pytest.mark.parametrize("content", [b"", b"garbage, not msgpack", b"\x00\x01\x02"])
def test_implausible_entry_is_not_seeded_and_gets_replaced(
    cache: PartialParseCache, tmp_path: Path, content: bytes
) -> None:
    parse = ParseKey(dbt_version="1", project_dir="/p")
    entry = cache.entry(parse)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(content)
    os.utime(entry, ns=(1, 1))
    target = run_target(tmp_path, "run")
    seed = cache.seed(parse, target)
    assert not seed.seeded
    dbt_writes(target, VALID)
    assert cache.publish(seed)
    assert entry.read_bytes() == VALID


def test_garbage_written_by_dbt_is_not_published(cache: PartialParseCache, tmp_path: Path) -> None:
    parse = ParseKey(dbt_version="1", project_dir="/p")
    target = run_target(tmp_path, "run")
    seed = cache.seed(parse, target)
    dbt_writes(target, b"")
    assert not cache.publish(seed)
    assert not cache.entry(parse).exists()


def test_a_newer_run_wins_over_an_older_one_that_finishes_later(cache: PartialParseCache, tmp_path: Path) -> None:
    parse = ParseKey(dbt_version="1", project_dir="/p")
    old_target, new_target = run_target(tmp_path, "old"), run_target(tmp_path, "new")
    old_seed = cache.seed(parse, old_target)
    time.sleep(0.01)
    new_seed = cache.seed(parse, new_target)
    dbt_writes(new_target, VALID + b"new")
    assert cache.publish(new_seed)
    dbt_writes(old_target, VALID + b"old")
    assert not cache.publish(old_seed), "the entry came from a parse that started later"
    assert cache.entry(parse).read_bytes() == VALID + b"new"
    assert cache.entry(parse).stat().st_mtime_ns == new_seed.started_ns


def test_different_keys_keep_separate_entries(cache: PartialParseCache, tmp_path: Path) -> None:
    dev = ParseKey(dbt_version="1", project_dir="/p", target="dev")
    prod = ParseKey(dbt_version="1", project_dir="/p", target="prod")
    for parse, name in ((dev, "dev"), (prod, "prod")):
        target = run_target(tmp_path, name)
        seed = cache.seed(parse, target)
        dbt_writes(target, VALID + name.encode())
        assert cache.publish(seed)
    assert cache.entry(dev).read_bytes() == VALID + b"dev"
    assert cache.entry(prod).read_bytes() == VALID + b"prod"
    assert cache.entry(dev).parent == cache.entry(prod).parent


def test_prune_keeps_the_most_recently_used(tmp_path: Path) -> None:
    cache = PartialParseCache(tmp_path / "cache", max_entries=2)
    slot = tmp_path / "cache" / "proj-x"
    slot.mkdir(parents=True)
    for age, name in enumerate(["newest", "middle", "oldest"]):
        path = slot / f"{name}.msgpack"
        path.write_bytes(VALID)
        stamp = time.time_ns() - (age + 1) * 10**10
        os.utime(path, ns=(stamp, stamp))
    stale_tmp = slot / ".tmp-crashed-writer"
    stale_tmp.write_bytes(b"half")
    os.utime(stale_tmp, ns=(1, 1))
    fresh_tmp = slot / ".tmp-writer-in-progress"
    fresh_tmp.write_bytes(b"half")
    removed = cache.prune(slot)
    assert {p.name for p in removed} == {"oldest.msgpack", ".tmp-crashed-writer"}
    assert {p.name for p in slot.iterdir()} == {"newest.msgpack", "middle.msgpack", ".tmp-writer-in-progress"}


def test_seeding_counts_as_use_for_pruning(tmp_path: Path) -> None:
    cache = PartialParseCache(tmp_path / "cache", max_entries=1)
    used = ParseKey(dbt_version="1", project_dir="/p", target="used")
    other = ParseKey(dbt_version="1", project_dir="/p", target="other")
    for parse, stamp in ((used, 10**9), (other, 2 * 10**9)):
        entry = cache.entry(parse)
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_bytes(VALID)
        os.utime(entry, ns=(stamp, stamp))
    assert cache.seed(used, run_target(tmp_path, "a")).seeded
    cache.prune(cache.entry(used).parent)
    assert cache.entry(used).exists(), "published long ago but just used"
    assert not cache.entry(other).exists()


def test_looks_like_msgpack(tmp_path: Path) -> None:
    path = tmp_path / "f"
    for content, expected in ((VALID, True), (b"\xde\x00\x01", True), (b"{}", False), (b"", False)):
        path.write_bytes(content)
        assert looks_like_msgpack(path) is expected
    assert not looks_like_msgpack(tmp_path / "missing")


# -- eight concurrent writers ----------------------------------------------------------------------------
def _payload(writer: int, round_: int) -> bytes:
    body = f"writer={writer} round={round_} ".encode() * 20_000  # ~0.5 MB: a write takes a while
    return b"\x81" + hashlib.sha256(body).digest() + body


def _intact(content: bytes) -> bool:
    return content[:1] == b"\x81" and hashlib.sha256(content[33:]).digest() == content[1:33]


def _writer(root: str, workdir: str, writer: int, rounds: int) -> None:
    cache = PartialParseCache(root)
    parse = ParseKey(dbt_version="1", project_dir="/shared/project")
    for round_ in range(rounds):
        target = Path(workdir) / f"w{writer}-r{round_}" / "target"
        target.mkdir(parents=True)
        seed = cache.seed(parse, target)
        if seed.seeded:
            assert _intact(seed.local.read_bytes()), "a seeded copy must be a whole file"
        (target / PARTIAL_PARSE_FILE).write_bytes(_payload(writer, round_))
        cache.publish(seed)


def test_eight_concurrent_writers_never_expose_a_partial_file(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    parse = ParseKey(dbt_version="1", project_dir="/shared/project")
    entry = PartialParseCache(root).entry(parse)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(root), str(tmp_path / "work"), i, 15)) for i in range(8)]
    for process in writers:
        process.start()
    reads = torn = 0
    while any(p.is_alive() for p in writers):
        try:
            content = entry.read_bytes()
        except FileNotFoundError:
            continue
        reads += 1
        torn += not _intact(content)
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert torn == 0, f"{torn} of {reads} reads saw a partial file"
    assert reads > 0
    assert _intact(entry.read_bytes())
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name], "no temp files left behind"
