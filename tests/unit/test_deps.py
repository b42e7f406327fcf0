"""Unit tests for dlh_airflow_common.dbt.deps: package keys, the shadow project, one install under a lock."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from dlh_airflow_common.dbt.deps import (
    LOCK_FILE,
    MARKER_FILE,
    PACKAGES_PATH_ENV,
    PackagesSpec,
    ensure_packages,
    file_lock,
    prepare_packages,
    read_packages,
    reads_install_path_env,
)
from dlh_airflow_common.exceptions.dbt import DbtException

OPT_IN = "packages-install-path: \"{{ env_var('DBT_PACKAGES_INSTALL_PATH', 'dbt_packages') }}\"\n"


def make_project(root: Path, packages: str | None = "packages:\n  - local: ../pkg\n", *, opt_in: bool = True) -> Path:
    project = root / "proj"
    project.mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: proj\nprofile: proj\n" + (OPT_IN if opt_in else ""))
    if packages is not None:
        (project / "packages.yml").write_text(packages)
    package = root / "pkg"
    package.mkdir(exist_ok=True)
    (package / "dbt_project.yml").write_text("name: pkg\n")
    return project


def fake_install(shadow: Path, log_dir: Path) -> None:
    """Do what dbt deps does with local packages: link each one into the install path it resolved."""
    document = yaml.safe_load((shadow / "dbt_project.yml").read_text())
    install = Path(document["packages-install-path"])
    install.mkdir(parents=True)
    for entry in yaml.safe_load((shadow / "packages.yml").read_text())["packages"]:
        source = os.path.abspath(os.path.join(shadow, entry["local"]))  # dbt resolves lexically, like this
        name = yaml.safe_load((Path(source) / "dbt_project.yml").read_text())["name"]
        os.symlink(source, install / name)
    (install / "big_file").write_bytes(b"x" * 100_000)


def slow_counting_install(shadow: Path, log_dir: Path) -> None:
    counter = Path(os.environ["DEPS_COUNTER"])
    with counter.open("a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    fake_install(shadow, log_dir)


def spec_of(project: Path, env: dict[str, str] | None = None, version: str = "1.11.16") -> PackagesSpec:
    spec = read_packages(project, env or {}, version)
    assert spec is not None
    return spec


# -- the spec and its key --------------------------------------------------------------------------------
def test_no_packages_means_no_spec(tmp_path: Path) -> None:
    assert read_packages(make_project(tmp_path / "a", None), {}, "1") is None
    assert read_packages(make_project(tmp_path / "b", "packages: []\n"), {}, "1") is None


def test_dependencies_yml_counts_too(tmp_path: Path) -> None:
    project = make_project(tmp_path, None)
    (project / "dependencies.yml").write_text("packages:\n  - local: ../pkg\n")
    spec = spec_of(project)
    assert [name for name, _ in spec.files] == ["dependencies.yml"]


def test_key_follows_content_lock_version_and_env(tmp_path: Path) -> None:
    project = make_project(tmp_path, "packages:\n  - local: ../pkg\n    name: \"{{ env_var('PKG_NAME', 'pkg') }}\"\n")
    base = spec_of(project, {"PKG_NAME": "a"}).key
    assert base == spec_of(project, {"PKG_NAME": "a", "OTHER": "x"}).key
    assert base != spec_of(project, {"PKG_NAME": "b"}).key
    assert base != spec_of(project, {"PKG_NAME": "a"}, version="1.10.0").key
    (project / LOCK_FILE).write_text("packages:\n  - local: ../pkg\nsha1_hash: abc\n")
    locked = spec_of(project, {"PKG_NAME": "a"}).key
    assert locked != base
    (project / LOCK_FILE).write_text("packages:\n  - local: ../pkg\nsha1_hash: def\n")
    assert spec_of(project, {"PKG_NAME": "a"}).key != locked


def test_secret_env_values_stay_out_of_the_key(tmp_path: Path) -> None:
    project = make_project(
        tmp_path, "packages:\n  - git: \"https://{{ env_var('DBT_ENV_SECRET_TOKEN') }}@example.com/x.git\"\n"
    )
    assert spec_of(project, {"DBT_ENV_SECRET_TOKEN": "a"}).key == spec_of(project, {"DBT_ENV_SECRET_TOKEN": "b"}).key


def test_relative_local_packages_are_keyed_by_where_they_resolve(tmp_path: Path) -> None:
    one, two = make_project(tmp_path / "one"), make_project(tmp_path / "two")
    assert (one / "packages.yml").read_bytes() == (two / "packages.yml").read_bytes()
    assert spec_of(one).key != spec_of(two).key
    hub = "packages:\n  - package: dbt-labs/dbt_utils\n    version: 1.3.0\n"
    (one / "packages.yml").write_text(hub)
    (two / "packages.yml").write_text(hub)
    assert spec_of(one).key == spec_of(two).key, "remote packages are the same wherever the project lives"


def test_reads_install_path_env(tmp_path: Path) -> None:
    assert reads_install_path_env(make_project(tmp_path / "a"))
    assert not reads_install_path_env(make_project(tmp_path / "b", opt_in=False))
    assert not reads_install_path_env(tmp_path / "missing")


# -- building an entry -----------------------------------------------------------------------------------
def test_install_builds_once_then_reuses(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    calls: list[Path] = []

    def install(shadow: Path, log_dir: Path) -> None:
        calls.append(shadow)
        assert (shadow / "packages.yml").read_bytes() == (project / "packages.yml").read_bytes()
        fake_install(shadow, log_dir)

    root = tmp_path / "cache"
    path, built = ensure_packages(spec_of(project), root, install)
    assert built and len(calls) == 1
    assert path == root / spec_of(project).key
    assert (path / MARKER_FILE).is_file()
    link = path / "pkg"
    assert link.is_symlink()
    assert os.readlink(link) == str(tmp_path / "pkg"), "local packages link to the real path, not the build dir"
    again, built_again = ensure_packages(spec_of(project), root, install)
    assert again == path and not built_again and len(calls) == 1
    assert sorted(p.name for p in root.iterdir()) == sorted([path.name, f"{path.name}.lock"])
    assert sorted(p.name for p in project.iterdir()) == ["dbt_project.yml", "packages.yml"], "project untouched"


def test_shadow_resolves_locals_several_levels_up_and_inside(tmp_path: Path) -> None:
    project = make_project(tmp_path / "a" / "b", "packages:\n  - local: ../../far\n  - local: vendored/inner\n")
    far = tmp_path / "a" / "far"
    far.mkdir()
    (far / "dbt_project.yml").write_text("name: far\n")
    inner = project / "vendored" / "inner"
    inner.mkdir(parents=True)
    (inner / "dbt_project.yml").write_text("name: inner\n")
    path, _ = ensure_packages(spec_of(project), tmp_path / "cache", fake_install)
    assert os.readlink(path / "far") == str(far)
    assert os.readlink(path / "inner") == str(inner)


def test_failed_install_leaves_nothing_behind(tmp_path: Path) -> None:
    project = make_project(tmp_path)

    def broken(shadow: Path, log_dir: Path) -> None:
        fake_install(shadow, log_dir)
        raise DbtException("network down")

    root = tmp_path / "cache"
    with pytest.raises(DbtException, match="network down"):
        ensure_packages(spec_of(project), root, broken)
    assert [p.name for p in root.iterdir()] == [f"{spec_of(project).key}.lock"]
    path, built = ensure_packages(spec_of(project), root, fake_install)
    assert built and (path / "pkg").is_symlink()


def test_lock_wait_times_out_with_a_retryable_error(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    root = tmp_path / "cache"
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with file_lock(root / f"{spec_of(project).key}.lock"):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait(10)
    try:
        with pytest.raises(DbtException, match="Timed out") as caught:
            ensure_packages(spec_of(project), root, fake_install, timeout=0.3)
        assert caught.value.retryable
    finally:
        release.set()
        thread.join()


def _concurrent_ensure(project: str, root: str, counter: str, results: str) -> None:
    os.environ["DEPS_COUNTER"] = counter
    spec = read_packages(project, {}, "1.11.16")
    assert spec is not None
    path, _ = ensure_packages(spec, root, slow_counting_install)
    assert (path / MARKER_FILE).is_file() and (path / "big_file").stat().st_size == 100_000
    with open(results, "a") as handle:
        handle.write(f"{path}\n")


def test_eight_concurrent_runs_install_once(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    counter, results = tmp_path / "installs.txt", tmp_path / "results.txt"
    context = multiprocessing.get_context("spawn")
    args = (str(project), str(tmp_path / "cache"), str(counter), str(results))
    processes = [context.Process(target=_concurrent_ensure, args=args) for _ in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1, "dbt deps ran once for eight runs"
    assert len(set(results.read_text().splitlines())) == 1
    assert len(results.read_text().splitlines()) == 8


# -- wiring ----------------------------------------------------------------------------------------------
def test_prepare_points_runs_at_the_entry_and_deps_at_the_run_dir(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    log = logging.getLogger("test")
    common = {"dbt_version": "1.11.16", "cache_root": tmp_path / "cache", "log": log, "installer": fake_install}
    run = prepare_packages(project, {}, command="build", run_dir=tmp_path / "run1", **common)  # type: ignore[arg-type]
    assert run is not None and run.key == spec_of(project).key
    assert run.install_path == tmp_path / "cache" / "deps" / run.key
    deps = prepare_packages(project, {}, command="deps", run_dir=tmp_path / "run2", **common)  # type: ignore[arg-type]
    assert deps is not None and deps.install_path == tmp_path / "run2" / "dbt_packages" and deps.key is None


def test_prepare_leaves_projects_that_do_not_opt_in_alone(tmp_path: Path) -> None:
    common = {"dbt_version": "1", "command": "build", "installer": fake_install}
    plain = make_project(tmp_path / "plain", opt_in=False)
    assert prepare_packages(plain, {}, cache_root=tmp_path / "c", run_dir=tmp_path / "r", **common) is None  # type: ignore[arg-type]
    opted = make_project(tmp_path / "opted")
    env = {PACKAGES_PATH_ENV: "/opt/baked_packages"}
    assert prepare_packages(opted, env, cache_root=tmp_path / "c", run_dir=tmp_path / "r", **common) is None  # type: ignore[arg-type]
    no_packages = make_project(tmp_path / "none", None)
    assert prepare_packages(no_packages, {}, cache_root=tmp_path / "c", run_dir=tmp_path / "r", **common) is None  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()
