"""Task start with a remote dbt project (issue 16, item 5): first and warm start against a local project.

Usage:
  python bench/remote_project.py [--models 1000] [--warm-reps 30] [--first-reps 3] [--dbt-reps 3]
                                 [--json OUT] [--markdown]

The project is bench/generate_project.py's, served four ways on 127.0.0.1 besides the local directory: a
``.tar.gz`` bundle and a folder on moto's S3 server (its own process, ``python -m moto.server``), and a bare git
repository over ``git daemon`` (ref ``main``, resolved with ``git ls-remote`` at each start; and the commit id,
which needs no request). In this process (Airflow imported, as on a worker that runs tasks), per source:

* first start: ``DbtHook.checkout()`` with an empty project cache (resolve the version, download, unpack, check,
  publish) plus ``load_project``, ``--first-reps`` times;
* warm start: the same with the version cached (resolve the version, lease, ``load_project``), ``--warm-reps``
  times, sources interleaved;
* with ``--dbt-reps``: a whole task, ``run_dbt_task("parse")`` with real dbt on DuckDB, local against the warm
  S3 bundle (same partial-parse state: each source's cache entry is seeded by a first run).

The goal: a warm start costs at most 0.1 s more than a local project's. Logs go to stderr; the last stdout line
is the result as JSON. ``measure()`` gives bench/run_bench.py summary rows and a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (ROOT / "src", ROOT / "tests", BENCH):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_output import emit  # noqa: E402
from generate_project import generate  # noqa: E402

from loopback import free_port  # noqa: E402
from remote_sources import GitDaemon, GitRepo, git  # noqa: E402

GOAL_EXTRA_S = 0.1
S3_CONN = "bench_project_s3"
DUCKDB_CONN = "bench_duckdb"
BUCKET = "bench-projects"
TIMEOUT = 3600


def log(message: str) -> None:
    print(f"[bench remote_project {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class MotoProcess:
    """moto's S3 server in a process of its own, so its request handling never competes with the measured code."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = self._client()

    def _client(self) -> Any:
        import boto3

        deadline = time.monotonic() + 60
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                return client
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.2)

    def connection(self) -> str:
        extra = {"endpoint_url": f"http://127.0.0.1:{self.port}", "region_name": "us-east-1"}
        return json.dumps({"conn_type": "aws", "login": "bench", "password": "bench", "extra": extra})

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _upload(moto: MotoProcess, project: Path, work: Path) -> dict[str, str]:
    """The project as a folder and as a bundle on S3; returns their URLs."""
    bundle = work / "bench.tar.gz"
    subprocess.run(["tar", "czf", str(bundle), "-C", str(project.parent), project.name], check=True)
    moto.client.upload_file(str(bundle), BUCKET, "bundles/bench.tar.gz")
    for path in sorted(project.rglob("*")):
        if path.is_file():
            moto.client.upload_file(str(path), BUCKET, f"folder/{path.relative_to(project).as_posix()}")
    files = sum(1 for p in project.rglob("*") if p.is_file())
    log(f"uploaded {files} files and a {bundle.stat().st_size:,}-byte bundle")
    return {"s3 bundle": f"s3://{BUCKET}/bundles/bench.tar.gz", "s3 folder": f"s3://{BUCKET}/folder/"}


def _git_repo(project: Path, served: Path) -> tuple[GitRepo, str]:
    """The project committed into a bare repository under ``served``; returns it and the commit id."""
    repo = GitRepo(served, name="bench")
    shutil.rmtree(repo.work)
    shutil.copytree(project, repo.work)
    git("init", "-q", "-b", "main", cwd=repo.work)
    return repo, repo.commit({}, message="bench project")


def _start(hook_factory: Callable[[], Any]) -> tuple[float, bool]:
    """One task start: the project checked out (fetched if needed) and loaded, as ``run_dbt_task`` begins."""
    from dlh_airflow_common.dbt.project import load_project

    hook = hook_factory()
    started = time.perf_counter()
    with hook.checkout() as checkout:
        load_project(checkout.path)
        elapsed = time.perf_counter() - started
    return elapsed, checkout.fetched


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "n": len(ordered)}  # fmt: skip


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from dlh_airflow_common.hooks.dbt import DbtHook

    work = Path(tempfile.mkdtemp(prefix="dlh-bench-remote-"))
    moto = MotoProcess()
    os.environ[f"AIRFLOW_CONN_{S3_CONN.upper()}"] = moto.connection()
    os.environ[f"AIRFLOW_CONN_{DUCKDB_CONN.upper()}"] = json.dumps(
        {"conn_type": "duckdb", "host": str(work / "bench.duckdb")}
    )
    served = work / "served"
    served.mkdir()
    try:
        project = work / "bench"
        counts = generate(project, args.models)
        log(f"generated {counts['models']} models in {project}")
        urls = {"local": str(project), **_upload(moto, project, work)}
        repo, commit = _git_repo(project, served)
        with GitDaemon(served) as daemon:
            urls["git daemon, ref"] = f"git+{daemon.url(repo)}@main"
            urls["git daemon, commit"] = f"git+{daemon.url(repo)}@{commit}"

            def factory(url: str, cache: Path, logger: Any = None) -> Callable[[], Any]:
                conn = S3_CONN if url.startswith("s3://") else None
                return lambda: DbtHook(url, dbt_project_conn_id=conn, conn_id=DUCKDB_CONN, logger=logger,
                                       project_cache_dir=str(cache), run_dir_root=str(work / "runs"))  # fmt: skip

            first: dict[str, list[float]] = {name: [] for name in urls}
            for rep in range(args.first_reps):
                for name, url in urls.items():
                    cache = work / f"first-{rep}-{len(first[name])}"
                    elapsed, fetched = _start(factory(url, cache))
                    assert fetched or name == "local", f"{name}: a first start must fetch"
                    first[name].append(elapsed)
                    shutil.rmtree(cache, ignore_errors=True)
                log(f"first starts, rep {rep + 1}: " + ", ".join(f"{n} {v[-1]:.3f}s" for n, v in first.items()))
            cache = work / "warm"
            for url in urls.values():
                _start(factory(url, cache))  # fills the cache
            warm: dict[str, list[float]] = {name: [] for name in urls}
            for _ in range(args.warm_reps):
                for name, url in urls.items():
                    elapsed, fetched = _start(factory(url, cache))
                    assert not fetched, f"{name}: a warm start must not fetch"
                    warm[name].append(elapsed)
            log("warm starts (median): " + ", ".join(f"{n} {statistics.median(v):.4f}s" for n, v in warm.items()))
            tasks, seeded = _whole_tasks(factory, urls, cache, args.dbt_reps) if args.dbt_reps else ({}, {})
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "models": counts["models"],
        "files": counts["models"] + 6,
        "first": {name: _stats(values) for name, values in first.items()},
        "warm": {name: _stats(values) for name, values in warm.items()},
        "tasks": {name: _stats(values) for name, values in tasks.items()},
        "tasks_seeded": seeded,
    }


class _TaskLog(logging.Handler):
    """What the hook logs that the bench needs: when dbt was started, and whether the run was seeded from the
    partial-parse cache (both variants must be, or the comparison is not like for like)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seeded = 0
        self.dbt_started: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.seeded += message.startswith("Partial parse seeded")
        if message.startswith("Running dbt "):
            self.dbt_started.append(record.created)


def _whole_tasks(
    factory: Callable[..., Callable[[], Any]], urls: dict[str, str], cache: Path, reps: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """``run_dbt_task("parse")`` with real dbt, local against the warm S3 bundle, alternating; also how many of
    each variant's runs were seeded from the partial-parse cache."""
    chosen = {name: urls[name] for name in ("local", "s3 bundle")}
    for url in chosen.values():
        factory(url, cache)().run_dbt_task("parse")  # seeds each version's partial-parse cache entry
    times: dict[str, list[float]] = {name: [] for name in chosen}
    until_dbt: dict[str, list[float]] = {name: [] for name in chosen}
    seeds = {name: _TaskLog() for name in chosen}
    loggers = {name: logging.getLogger(f"bench.remote_project.{index}") for index, name in enumerate(chosen)}
    for name, logger in loggers.items():
        logger.setLevel(logging.INFO)
        logger.addHandler(seeds[name])
        logger.propagate = False
    for rep in range(reps):
        for name, url in chosen.items() if rep % 2 == 0 else reversed(chosen.items()):
            started, wall = time.perf_counter(), time.time()
            factory(url, cache, loggers[name])().run_dbt_task("parse")
            times[name].append(time.perf_counter() - started)
            until_dbt[name].append(seeds[name].dbt_started[-1] - wall)
    log("whole tasks (median): " + ", ".join(f"{n} {statistics.median(v):.2f}s" for n, v in times.items()))
    times.update({f"{name}, until dbt starts": values for name, values in until_dbt.items()})
    return times, {name: handler.seeded for name, handler in seeds.items()}


def report(result: dict[str, Any]) -> tuple[list[tuple[str, ...]], str]:
    """Summary rows (Figure, Goal, Result, Absolute, Met) and the docs/benchmarks.md section."""
    warm, first, tasks = result["warm"], result["first"], result["tasks"]
    local = warm["local"]["median"]
    figures: list[tuple[str, ...]] = [
        (f"RP1 warm task start, {result['models']:,}-model project from {name}: extra over a local project",
         f"<= {GOAL_EXTRA_S} s", f"+{(warm[name]['median'] - local) * 1000:.1f} ms",
         f"{warm[name]['median'] * 1000:.1f} ms vs {local * 1000:.1f} ms (p90 {warm[name]['p90'] * 1000:.1f} ms); "
         f"first start {first[name]['median']:.2f} s",
         "yes" if warm[name]["median"] - local <= GOAL_EXTRA_S else "no")
        for name in warm if name != "local"
    ]  # fmt: skip
    lines = [
        "### Remote dbt projects (issue 16, item 5; `bench/remote_project.py`)",
        "",
        f"**RP1.** Task start with the {result['models']:,}-model bench project ({result['files']:,} files) from each "
        "source on 127.0.0.1: the `DbtHook.checkout()` a task begins with (resolve the version, fetch it if the "
        "worker's cache lacks it, lease it) plus `load_project`, in a process that has imported Airflow, as a "
        "worker has. S3 is moto's server in its own process; git is `git daemon`. First start = empty cache "
        f"({first['local']['n']} reps); warm start = version cached ({warm['local']['n']} reps, sources "
        "interleaved).",
        "",
        "| Source | First start, median (min-max) | Warm start, median (p90) | Warm extra over local |",
        "|---|---|---|---|",
    ]
    for name in warm:
        f, w = first[name], warm[name]
        extra = "-" if name == "local" else f"+{(w['median'] - local) * 1000:.1f} ms"
        lines.append(f"| {name} | {f['median']:.3f} s ({f['min']:.3f}-{f['max']:.3f}) | {w['median'] * 1000:.1f} ms "
                     f"({w['p90'] * 1000:.1f}) | {extra} |")  # fmt: skip
    if tasks:
        lines += [
            "",
            f'Whole task, `run_dbt_task("parse")` with real dbt on DuckDB (partial parse seeded, '
            f"{tasks['local']['n']} reps alternating): local {tasks['local']['median']:.2f} s "
            f"({tasks['local']['min']:.2f}-{tasks['local']['max']:.2f}), S3 bundle warm "
            f"{tasks['s3 bundle']['median']:.2f} s ({tasks['s3 bundle']['min']:.2f}-{tasks['s3 bundle']['max']:.2f}); "
            f"runs seeded from the partial-parse cache: local {result['tasks_seeded']['local']}, S3 bundle "
            f"{result['tasks_seeded']['s3 bundle']} of {tasks['local']['n']} each. Of that, from the call to the "
            f'hook\'s "Running dbt" line (project checkout, profile, run dir, cache seeding): local '
            f"{tasks['local, until dbt starts']['median'] * 1000:.0f} ms, S3 bundle "
            f"{tasks['s3 bundle, until dbt starts']['median'] * 1000:.0f} ms; the rest is dbt itself.",
        ]
    lines += [
        "",
        "A warm start asks the source for its version and nothing more: one `HEAD` for a bundle, one listing for "
        "a folder (a listing page per 1,000 objects), one `git ls-remote` for a branch or tag, no request for a "
        "commit id. The first start of a new version also pays the download, the unpacking and a full dbt parse "
        "(the partial-parse cache is keyed per version).",
    ]
    return figures, "\n".join(lines)


def _last_json(stdout: str) -> dict[str, Any]:
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def measure(env: dict[str, str], work: Path, *, quick: bool = False) -> tuple[list[tuple[str, ...]], str]:
    """For bench/run_bench.py: run this script in a fresh interpreter; return its rows and section."""
    argv = [sys.executable, str(Path(__file__).resolve())]
    if quick:
        argv += ["--models", "200", "--warm-reps", "10", "--first-reps", "1", "--dbt-reps", "0"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"bench/remote_project.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return report(_last_json(proc.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--warm-reps", type=int, default=30)
    parser.add_argument("--first-reps", type=int, default=3)
    parser.add_argument("--dbt-reps", type=int, default=3, help="whole tasks with real dbt (0: none)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md rows and section")
    args = parser.parse_args()
    emit(bench(args), args, report)


if __name__ == "__main__":
    main()
