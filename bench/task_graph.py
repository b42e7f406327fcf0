"""DbtTaskGroup against astronomer-cosmos: DAG parse time and memory, group wall time, worker memory per node task.

Usage:
  python bench/task_graph.py [--reps-parse 5] [--reps-run 3] [--work DIR] [--only parse,run] [--json OUT] [--markdown]

cosmos is never a dependency of this project: it is installed into its own virtualenv
(``bench/.work/cosmos-venv``, git-ignored, created on first use and kept) with
``pip install astronomer-cosmos==1.15.1 apache-airflow==3.3.2 "dbt-core>=1.11,<1.12" dbt-duckdb``, falling back to
``-c requirements/constraints.txt`` when that set does not resolve. Every measured process is a fresh
interpreter of one of the two virtualenvs, running this file in a child role (these use the standard library
and whatever the DAG file imports).

T1, parse: a DAG file holding one task group of the 1,000-model project is parsed with Airflow's ``DagBag``
(what the DAG processor does): ours (``DbtTaskGroup`` reading its warm graph file) and cosmos's
``DbtTaskGroup`` in ``dbt_manifest`` mode (given the project's manifest.json) and ``dbt_ls`` mode (its
cache, an Airflow Variable, warmed by one parse before measuring). Time is the ``DagBag`` call; peak RSS is
``ru_maxrss`` of that process, and also minus the peak of a baseline process of the same virtualenv that
imported Airflow and ``DagBag`` only.

T2, run: ``dag.test()`` of the group in a fresh process, on a fresh DuckDB file, against one plain
``dbt build`` of the same selection; ours / plain dbt / cosmos back to back, the order rotating. The whole
500-model project for ours and plain dbt; cosmos local mode on a slice of it (``tag:g7``, with ours and plain dbt
on the same slice beside it) because its per-node dbt processes make a whole-project run last about an hour here
(``--cosmos-full`` runs it anyway). ``dag.test()`` runs one task at a time.

T3, worker memory: during every ``dag.test()`` another thread samples the RSS of the test process and its
descendants every 50 ms; each task instance's start and end (from the metadata DB) give the peak of that tree
while the task ran, and its growth over the sample just before the task started.

Logs go to stderr; the last stdout line is the result as JSON. ``measure()`` gives bench/run_bench.py summary
rows and a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from bench_output import emit  # noqa: E402

COSMOS_VENV = BENCH / ".work" / "cosmos-venv"
COSMOS_SET = ("astronomer-cosmos==1.15.1", "apache-airflow==3.3.2", "dbt-core>=1.11,<1.12", "dbt-duckdb")
SLICE = "tag:g7"
PROFILE = "bench"
TIMEOUT = 7200
RUN_TIMEOUT = 1800  # one child process
SAMPLE_S = 0.05
GOAL_PARSE_S = 0.3
GOAL_PARSE_MB = 60.0
GOAL_PARSE_SPEEDUP = 10.0
GOAL_WALL = 1.15
GOAL_MEMORY = 0.5

OURS_DAG = """
from datetime import datetime
from airflow.sdk import DAG
from dlh_airflow_common.task_graph import DbtTaskGroup

with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    group = DbtTaskGroup(group_id="dbt", dbt_project_dir={project!r}, profiles_dir={profiles!r}, select={select!r},
                         operator_args={{"check_interval": 1.0, "deferrable": True, "retries": 0, "threads": 2}})
{warm}"""
COSMOS_DAG = """
from datetime import datetime
from airflow.sdk import DAG
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, LoadMode

with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    group = DbtTaskGroup(
        group_id="dbt",
        project_config=ProjectConfig(dbt_project_path={project!r}, manifest_path={manifest!r}),
        profile_config=ProfileConfig(profile_name={profile!r}, target_name="dev",
                                     profiles_yml_filepath={profiles_yml!r}),
        execution_config=ExecutionConfig(execution_mode=ExecutionMode.{execution}, dbt_executable_path={dbt!r}),
        render_config=RenderConfig(load_method=LoadMode.{load}, select={select!r}),
        operator_args={{"install_deps": False}},
        default_args={{"retries": 0}},
    )
{warm}"""
# Runs only: a first task that pays dag.test()'s one-time start of its in-process task machinery (about 5 s
# here), so that the group's span and the memory floor start after it, the same for both sides.
WARM = """
    from airflow.sdk import task

    @task
    def warm_up() -> None:
        return None

    warm_up() >> group
"""
WARM_TASK = "warm_up"


def log(message: str) -> None:
    print(f"[bench task_graph {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- child roles (fresh interpreters of either virtualenv) --------------------------------------------------
def child_baseline() -> dict[str, Any]:
    """What a DAG processor holds before it parses a file: Airflow and DagBag imported."""
    from airflow.dag_processing.dagbag import DagBag  # noqa: F401

    return {"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def child_parse(dag_file: str) -> dict[str, Any]:
    """Parse one DAG file with DagBag: seconds, CPU seconds and peak RSS of this process."""
    from airflow.dag_processing.dagbag import DagBag

    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, started = time.process_time(), time.perf_counter()
    bag = DagBag(dag_folder=dag_file, include_examples=False) if _has_include_examples() else DagBag(dag_file)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
    if bag.import_errors:
        raise RuntimeError(f"import errors: {bag.import_errors}")
    tasks = sum(len(dag.tasks) for dag in bag.dags.values())
    return {"seconds": seconds, "cpu_seconds": cpu, "tasks": tasks, "maxrss_kb_before": before.ru_maxrss,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}  # fmt: skip


def _has_include_examples() -> bool:
    import inspect

    from airflow.dag_processing.dagbag import DagBag

    return "include_examples" in inspect.signature(DagBag.__init__).parameters


def child_run(dag_file: str, dag_id: str) -> dict[str, Any]:
    """``dag.test()`` of a DAG file in the dags folder; every task instance's state, start and end."""
    from airflow.dag_processing.dagbag import DagBag

    started = time.time()
    bag = DagBag(dag_file)
    if bag.import_errors:
        raise RuntimeError(f"import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    parsed = time.time()
    run = dag.test()
    ended = time.time()
    tis = [
        {"task_id": ti.task_id, "state": str(ti.state),
         "start": ti.start_date.timestamp() if ti.start_date else None,
         "end": ti.end_date.timestamp() if ti.end_date else None}
        for ti in run.get_task_instances()
    ]  # fmt: skip
    return {"state": str(run.state), "started": started, "parsed": parsed, "ended": ended, "tis": tis}


def child(args: argparse.Namespace) -> None:
    if args.role == "baseline":
        result = child_baseline()
    elif args.role == "parse":
        result = child_parse(args.dag_file)
    else:
        result = child_run(args.dag_file, args.dag_id)
    Path(args.result).write_text(json.dumps(result))


# -- the orchestrator --------------------------------------------------------------------------------------
WAIT_LIMIT_S = [1200.0]  # --max-wait


def wait_for_quiet() -> float:
    """The 1-minute load average once it is at most 2.5, or after ``--max-wait`` seconds: measure anyway."""
    waited = 0.0
    while os.getloadavg()[0] > 2.5 and waited < WAIT_LIMIT_S[0]:
        log(f"load {os.getloadavg()[0]:.2f} > 2.5: waiting 60 s")
        time.sleep(60)
        waited += 60
    return os.getloadavg()[0]


def cosmos_python() -> tuple[Path, str]:
    """cosmos's own virtualenv (created once): its python, and how it was installed."""
    python = COSMOS_VENV / "bin" / "python"
    how = f"pip install {' '.join(COSMOS_SET)}"
    marker = COSMOS_VENV / ".installed"
    if marker.is_file():
        return python, marker.read_text().strip()
    log(f"creating {COSMOS_VENV}")
    subprocess.run(["python3.11", "-m", "venv", str(COSMOS_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if subprocess.run([*pip, *COSMOS_SET]).returncode != 0:
        how += f" -c {ROOT / 'requirements' / 'constraints.txt'}"
        subprocess.run([*pip, "-c", str(ROOT / "requirements" / "constraints.txt"), *COSMOS_SET], check=True)
    marker.write_text(how)
    return python, how


def versions(python: Path) -> dict[str, str]:
    """The measured packages' versions in a virtualenv."""
    code = (
        "import json\nfrom importlib import metadata\nout = {}\n"
        "for name in ('apache-airflow', 'dbt-core', 'dbt-duckdb', 'duckdb', 'astronomer-cosmos'):\n"
        "    try:\n        out[name] = metadata.version(name)\n"
        "    except metadata.PackageNotFoundError:\n        pass\nprint(json.dumps(out))"
    )
    try:
        return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout)
    except ValueError:
        return {}


class Bench:
    """Paths, environment and the child processes of one benchmark run."""

    def __init__(self, work: Path, cosmos: Path) -> None:
        self.work = work
        self.ours = Path(sys.executable)
        self.cosmos = cosmos
        self.home = work / "airflow"
        self.dags = self.home / "dags"
        self.dags.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__COSMOS__CACHE_DIR": str(work / "cosmos_cache"),
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            "DBT_VERSION_CHECK": "false",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.env.pop("DBT_PROFILES_DIR", None)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)

    def run(self, argv: Sequence[str], *, cwd: Path | None = None, python_env: Path | None = None) -> str:
        env = dict(self.env)
        if python_env is not None and python_env != self.ours:  # cosmos's interpreter never sees our src/
            env.pop("PYTHONPATH", None)
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv[:5]))} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")  # fmt: skip
        return proc.stdout

    def child(self, python: Path, role: str, *extra: str, sample: bool = False) -> tuple[dict[str, Any], Any]:
        """Run a child role; with ``sample`` also the RSS samples of its process tree. A ``run`` child's DAG file
        is copied into the dags folder for the run and removed after it."""
        if role == "run":
            source = Path(extra[extra.index("--dag-file") + 1])
            shutil.copy(source, self.dags / source.name)
            extra = tuple(str(self.dags / source.name) if e == str(source) else e for e in extra)
            try:
                return self._child(python, role, *extra, sample=sample)
            finally:
                (self.dags / source.name).unlink(missing_ok=True)
        return self._child(python, role, *extra, sample=sample)

    def _child(self, python: Path, role: str, *extra: str, sample: bool = False) -> tuple[dict[str, Any], Any]:
        result = self.work / f"child-{time.monotonic_ns()}.json"
        argv = [str(python), str(Path(__file__).resolve()), role, "--result", str(result), *extra]
        env = dict(self.env)
        if python != self.ours:
            env.pop("PYTHONPATH", None)
        out = open(self.work / "children.log", "a")  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.work, start_new_session=True
            )
            sampler = TreeSampler(proc.pid) if sample else None
            try:
                code = proc.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:  # a hung dag.test(): end its whole session, report the variant
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RuntimeError(f"child {role} {' '.join(extra)} ran over {RUN_TIMEOUT} s") from None
            finally:
                samples = sampler.stop() if sampler else None
        finally:
            out.close()
        if code != 0 or not result.is_file():
            tail = (self.work / "children.log").read_text()[-4000:]
            raise RuntimeError(f"child {role} {' '.join(extra)} failed ({code}):\n{tail}")
        return json.loads(result.read_text()), samples

    def profiles(self, name: str, database: Path) -> Path:
        directory = self.work / "profiles" / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "profiles.yml").write_text(
            f"{PROFILE}:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: {database}\n"
            "      threads: 2\n",
            encoding="utf-8",
        )
        return directory

    def dbt(self, project: Path, profiles: Path, *args: str) -> float:
        """Plain dbt in the project directory (as users run it: target/ and its partial parse reused)."""
        started = time.perf_counter()
        self.run([str(self.ours.parent / "dbt"), *args, "--profiles-dir", str(profiles)], cwd=project)
        return time.perf_counter() - started

    def graph(self, project: Path, profiles: Path, select: str | None) -> None:
        argv = [str(self.ours.parent / "dlh-dbt"), "graph", str(project), "--profiles-dir", str(profiles)]
        out = self.run([*argv, *(["--select", select] if select else [])])
        log(f"graph file: {out.strip()}")


class TreeSampler:
    """Every 50 ms, the summed RSS of a process and its descendants (shared pages count in each process)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []  # (epoch, bytes, processes)
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        return tree

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, count = 0, 0
            for pid in self._tree():
                try:
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * self._page
                    count += 1
                except (OSError, IndexError, ValueError):
                    pass
            self.samples.append((time.time(), total, count))
            self._stop.wait(SAMPLE_S)

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], digits: int = 2, unit: str = "") -> str:
    if not values:
        return "-"
    return f"{median(values):.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def write_dag(bench: Bench, kind: str, dag_id: str, project: Path, profiles: Path, select: str | None,
              run: bool = False, **cosmos: str) -> Path:  # fmt: skip
    """A DAG file outside the dags folder: dag.test() parses that whole bundle first, so a run copies its own file
    in for its duration only (``Bench.child``)."""
    if kind == "ours":
        text = OURS_DAG.format(
            dag_id=dag_id, project=str(project), profiles=str(profiles), select=select, warm=WARM if run else ""
        )
    else:
        manifest = str(project / "target" / "manifest.json") if cosmos["load"] == "DBT_MANIFEST" else None
        text = COSMOS_DAG.format(
            dag_id=dag_id, project=str(project), manifest=manifest, profile=PROFILE,
            profiles_yml=str(profiles / "profiles.yml"), execution=cosmos["execution"],
            dbt=str(bench.cosmos.parent / "dbt"), load=cosmos["load"], select=[select] if select else [],
            warm=WARM if run else "",
        )  # fmt: skip
    path = bench.work / "dag_files" / f"{dag_id}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- T1 ----------------------------------------------------------------------------------------------------
def parse_phase(bench: Bench, reps: int, models: int, result: dict[str, Any]) -> None:
    project = bench.work / f"bench_{models}"
    database = bench.work / f"parse_{models}.duckdb"
    profiles = bench.profiles("parse", database)
    from generate_project import generate

    result["parse_counts"] = generate(project, models)
    log("T1: dbt parse (cosmos's manifest) and dlh-dbt graph (our graph file)")
    bench.dbt(project, profiles, "parse")
    bench.graph(project, profiles, None)
    files = {
        "ours": (bench.ours, write_dag(bench, "ours", "parse_ours", project, profiles, None)),
        "cosmos dbt_manifest": (bench.cosmos, write_dag(bench, "cosmos", "parse_cosmos_manifest", project, profiles,
                                                        None, load="DBT_MANIFEST", execution="LOCAL")),
        "cosmos dbt_ls (cache warm)": (bench.cosmos, write_dag(bench, "cosmos", "parse_cosmos_ls", project,
                                                               profiles, None, load="DBT_LS", execution="LOCAL")),
    }  # fmt: skip
    log("T1: warming cosmos's dbt ls cache (one parse, not counted)")
    cold = bench.child(bench.cosmos, "parse", "--dag-file", str(files["cosmos dbt_ls (cache warm)"][1]))[0]
    result["cosmos_dbt_ls_cold_s"] = cold["seconds"]
    result["parse_load"] = wait_for_quiet()
    log(f"T1: {reps} repetitions, load {result['parse_load']:.2f}")
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in files}
    baselines: dict[str, list[int]] = {"ours": [], "cosmos": []}
    names = list(files)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            python, path = files[name]
            samples[name].append(bench.child(python, "parse", "--dag-file", str(path))[0])
        for side, python in (("ours", bench.ours), ("cosmos", bench.cosmos)):
            baselines[side].append(bench.child(python, "baseline")[0]["maxrss_kb"])
        log(f"  rep {rep + 1}: " + ", ".join(f"{n}={samples[n][-1]['seconds']:.2f}s" for n in names))
    result["parse"] = samples
    result["parse_baselines_kb"] = baselines
    result["parse_load_end"] = os.getloadavg()[0]


# -- T2/T3 -------------------------------------------------------------------------------------------------
def task_memory(run: dict[str, Any], samples: list[tuple[float, int, int]], keep: Callable[[str], bool]) -> list:
    """Per kept task instance: (peak tree RSS while it ran, growth over the sample before it started), bytes."""
    out = []
    for ti in run["tis"]:
        if not keep(ti["task_id"]) or ti["start"] is None or ti["end"] is None:
            continue
        inside = [rss for at, rss, _ in samples if ti["start"] - SAMPLE_S <= at <= ti["end"] + SAMPLE_S]
        before = [rss for at, rss, _ in samples if at < ti["start"]]
        if inside:
            out.append((max(inside), max(inside) - (before[-1] if before else inside[0])))
    return out


def group_span(run: dict[str, Any]) -> float:
    """First start to last end of the group's task instances (the warm-up task left out)."""
    tis = [ti for ti in run["tis"] if ti["task_id"] != WARM_TASK and ti["start"] and ti["end"]]
    return max(ti["end"] for ti in tis) - min(ti["start"] for ti in tis)


def floor_rss(run: dict[str, Any], samples: list[tuple[float, int, int]]) -> int:
    """The tree's RSS just before the group's first task started (Airflow, the DAG and dag.test() loaded)."""
    first = min(ti["start"] for ti in run["tis"] if ti["task_id"] != WARM_TASK and ti["start"])
    before = [rss for at, rss, _ in samples if at < first]
    return before[-1] if before else samples[0][1]


def run_phase(
    bench: Bench, reps: int, models: int, result: dict[str, Any], *, cosmos_full: bool, watcher: bool
) -> None:
    project = bench.work / f"bench_{models}"
    database = bench.work / f"run_{models}.duckdb"
    profiles = bench.profiles("run", database)
    from generate_project import generate

    result["run_counts"] = generate(project, models)
    log("T2: warm-up: plain dbt build of the whole project (partial parse warm; the slice's starting database)")
    bench.dbt(project, profiles, "build")
    built = bench.work / "built.duckdb"
    shutil.copy(database, built)
    for select in (None, SLICE):
        bench.graph(project, profiles, select)

    def fresh(copy_built: bool) -> None:
        for suffix in ("", ".wal"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        if copy_built:
            shutil.copy(built, database)

    def plain(select: str | None) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            fresh(select is not None)
            return {"wall": bench.dbt(project, profiles, "build", *(["--select", select] if select else []))}

        return go

    def dag(python: Path, path: Path, dag_id: str, select: str | None) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            fresh(select is not None)
            started = time.perf_counter()
            run, samples = bench.child(python, "run", "--dag-file", str(path), "--dag-id", dag_id, sample=True)
            run["wall"] = time.perf_counter() - started
            run["span"] = group_span(run)
            durations = {ti["task_id"]: ti["end"] - ti["start"] for ti in run["tis"] if ti["start"] and ti["end"]}
            run["build_s"] = sum(v for k, v in durations.items() if k.endswith("dbt_build"))
            run["tasks_sum_s"] = sum(v for k, v in durations.items() if not k.endswith(("dbt_build", WARM_TASK)))
            run["memory"] = task_memory(run, samples, lambda task: not task.endswith(("dbt_build", WARM_TASK)))
            run["floor"] = floor_rss(run, samples) if samples else 0
            run["peak_tree"] = max(rss for _, rss, _ in samples) if samples else 0
            if run["state"] != "success":
                raise RuntimeError(
                    f"{dag_id} ended {run['state']}: " + str([t for t in run["tis"] if t["state"] != "success"][:5])
                )
            return run

        return go

    def cosmos(execution: str, select: str | None, suffix: str) -> Callable[[], dict[str, Any]]:
        dag_id = f"run_cosmos_{execution.lower()}_{suffix}"
        path = write_dag(
            bench, "cosmos", dag_id, project, profiles, select, True, load="DBT_MANIFEST", execution=execution
        )
        return dag(bench.cosmos, path, dag_id, select)

    def ours(select: str | None, suffix: str) -> Callable[[], dict[str, Any]]:
        dag_id = f"run_ours_{suffix}"
        return dag(bench.ours, write_dag(bench, "ours", dag_id, project, profiles, select, True), dag_id, select)

    bench.dbt(project, profiles, "parse")  # cosmos's manifest (dbt_manifest mode: its fastest offline)
    plans: dict[str, dict[str, Callable[[], dict[str, Any]]]] = {
        "whole": {"ours": ours(None, "whole"), "plain dbt build": plain(None)},
        "slice": {"ours": ours(SLICE, "slice"), "plain dbt build": plain(SLICE),
                  "cosmos local": cosmos("LOCAL", SLICE, "slice")},
    }  # fmt: skip
    if watcher:
        plans["slice"]["cosmos watcher"] = cosmos("WATCHER", SLICE, "slice")
    if cosmos_full:
        plans["whole"]["cosmos local"] = cosmos("LOCAL", None, "whole")
    result["runs"] = {}
    for scope, variants in plans.items():
        load = wait_for_quiet()
        log(f"T2 {scope}: warm-up of each variant (not counted), then {reps} repetitions; load {load:.2f}")
        failed: dict[str, str] = {}
        for name, go in list(variants.items()):
            try:
                go()
            except Exception as err:  # a cosmos mode that does not run here is reported, not fatal
                if name.startswith("cosmos"):
                    failed[name] = str(err)[-1500:]
                    log(f"  {name} failed in warm-up, left out: {str(err)[-600:]}")
                    del variants[name]
                else:
                    raise
        names = list(variants)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                runs[name].append(variants[name]())
            log(f"  rep {rep + 1}: " + ", ".join(f"{n}={runs[n][-1]['wall']:.1f}s" for n in names))
        result["runs"][scope] = {"load": load, "load_end": os.getloadavg()[0], "runs": runs, "failed": failed}
        (bench.work / "result.partial.json").write_text(json.dumps(result))


# -- the report ----------------------------------------------------------------------------------------------
def report(result: dict[str, Any]) -> tuple[list[tuple[str, ...]], str]:
    """docs/benchmarks.md rows (figure, goal, result, absolute, met) and a section."""
    figures: list[tuple[str, ...]] = []
    lines = ["### Task graph (issue 13): DbtTaskGroup vs astronomer-cosmos (`bench/task_graph.py`)", ""]
    lines.append(f"cosmos: {result.get('cosmos_install')}; its virtualenv: {result.get('cosmos_versions')}; "
                 f"ours: {result.get('our_versions')}.")  # fmt: skip
    lines.append("")
    if "parse" in result:
        figures += _parse_report(result, lines)
    if "runs" in result:
        figures += _run_report(result, lines)
    return figures, "\n".join(lines) + "\n"


def _parse_report(result: dict[str, Any], lines: list[str]) -> list[tuple[str, ...]]:
    parse, base = result["parse"], result["parse_baselines_kb"]
    counts = result["parse_counts"]
    mb = {side: median(values) / 1024 for side, values in base.items()}
    lines += [
        f"**T1, DAG parse** of one task group of the {counts['models']}-model project ({counts['tests']} tests), "
        "`DagBag(file)` in a fresh interpreter per measurement, the variants rotating; "
        f"load average {result['parse_load']:.2f} at the start, {result['parse_load_end']:.2f} at the end. "
        f"Baseline peak RSS (Airflow and DagBag imported): ours {mb['ours']:.0f} MB, cosmos's virtualenv "
        f"{mb['cosmos']:.0f} MB. cosmos's dbt_ls cache was warmed by one parse of "
        f"{result['cosmos_dbt_ls_cold_s']:.1f} s.",
        "",
        "| Variant | Tasks | Parse, best / median (min-max) | CPU, median | Peak RSS, median | Peak RSS - baseline |",
        "|---|---|---|---|---|---|",
    ]
    stats: dict[str, tuple[float, float, float]] = {}
    for name, samples in parse.items():
        seconds = [s["seconds"] for s in samples]
        rss = [s["maxrss_kb"] / 1024 for s in samples]
        delta = [r - mb["cosmos" if name.startswith("cosmos") else "ours"] for r in rss]
        stats[name] = (min(seconds), median(seconds), median(delta))
        lines.append(f"| {name} | {samples[0]['tasks']} | {min(seconds):.2f} s / {spread(seconds, 2, ' s')} | "
                     f"{median([s['cpu_seconds'] for s in samples]):.2f} s | {median(rss):.0f} MB | "
                     f"{spread(delta, 0, ' MB')} |")  # fmt: skip
    lines.append("")
    ours = stats.pop("ours")
    fastest_name, fastest = min(stats.items(), key=lambda item: item[1][1])
    speedup = fastest[1] / ours[1]
    ours_rss = median([s["maxrss_kb"] / 1024 for s in parse["ours"]])
    return [
        (f"T1 parse, {counts['models']}-model project: ours (DbtTaskGroup, warm graph file)", f"<= {GOAL_PARSE_S} s",
         f"{ours[1]:.3f} s median, best {ours[0]:.3f} s", f"load {result['parse_load']:.2f}",
         "yes" if ours[1] <= GOAL_PARSE_S else "no"),
        (f"T1 parse, {counts['models']}-model project: ours, peak RSS over an Airflow-only interpreter",
         f"<= {GOAL_PARSE_MB:.0f} MB", f"{ours[2]:.0f} MB", f"{ours_rss:.0f} MB absolute",
         "yes" if ours[2] <= GOAL_PARSE_MB else "no"),
        (f"T1 parse: cosmos's fastest mode ({fastest_name}) / ours", f">= {GOAL_PARSE_SPEEDUP:.0f}x",
         f"{speedup:.1f}x", f"{fastest[1]:.2f} s vs {ours[1]:.3f} s (medians)",
         "yes" if speedup >= GOAL_PARSE_SPEEDUP else "no"),
    ]  # fmt: skip


def _run_report(result: dict[str, Any], lines: list[str]) -> list[tuple[str, ...]]:
    figures: list[tuple[str, ...]] = []
    counts = result["run_counts"]
    for scope, block in result["runs"].items():
        runs = block["runs"]
        what = f"the whole {counts['models']}-model project" if scope == "whole" else f"`{SLICE}` of it"
        lines += [
            f"**T2, group wall time, {what}** (`dag.test()` in a fresh process, fresh DuckDB file per run, "
            f"{len(runs['plain dbt build'])} repetitions, order rotating; load {block['load']:.2f} at the start, "
            f"{block['load_end']:.2f} at the end). *Group* is first task start to last task end; *process* adds "
            "interpreter start-up, the DagBag parse and dag.test()'s setup. dag.test() runs one task at a time, so "
            "a cosmos local group is the serialised sum of its tasks (each a dbt invocation).",
            "",
            "| Variant | Tasks | Group, median (min-max) | Process | / plain dbt build (same repetition) | "
            "Build task | Other tasks, sum |",
            "|---|---|---|---|---|---|---|",
        ]
        plain = [r["wall"] for r in runs["plain dbt build"]]
        lines.append(f"| plain `dbt build` | - | {spread(plain, 1, ' s')} | - | 1 | - | - |")
        ratios: dict[str, list[float]] = {}
        for name, values in runs.items():
            if name == "plain dbt build":
                continue
            span = [r["span"] for r in values]
            ratios[name] = [s / p for s, p in zip(span, plain, strict=True)]
            process = spread([r["wall"] for r in values], 1, " s")
            lines.append(
                f"| {name} | {len(values[0]['tis']) - 1} | {spread(span, 1, ' s')} | {process} | "
                f"{spread(ratios[name], 3, 'x')} | {spread([r.get('build_s', 0.0) for r in values], 1, ' s')} | "
                f"{spread([r.get('tasks_sum_s', 0.0) for r in values], 1, ' s')} |"
            )
        for name, failure in block["failed"].items():
            lines.append(f"| {name} | did not run: {failure.splitlines()[-1][:200] if failure else '?'} | | | | | |")
        lines.append("")
        if "ours" in ratios:
            figures.append((f"T2 group wall, {what}: ours one_process / plain `dbt build`", f"<= {GOAL_WALL}x",
                            spread(ratios["ours"], 3, "x"),
                            f"{median([r['span'] for r in runs['ours']]):.1f} s vs {median(plain):.1f} s",
                            "yes" if median(ratios["ours"]) <= GOAL_WALL else "no"))  # fmt: skip
        if "ours" in ratios:
            build = [r.get("build_s", 0.0) / p for r, p in zip(runs["ours"], plain, strict=True)]
            figures.append((f"T2 {what}: ours' `dbt_build` task alone / plain `dbt build`", "reported",
                            spread(build, 3, "x"), "the rest of the group is dag.test() running node tasks in turn",
                            "-"))  # fmt: skip
        for name in ratios:
            if name.startswith("cosmos"):
                figures.append((f"T2 group wall, {what}: {name} / plain `dbt build` (serialised by dag.test)",
                                "reported", spread(ratios[name], 2, "x"),
                                f"{median([r['span'] for r in runs[name]]):.1f} s", "-"))  # fmt: skip
        memory = _memory_rows(runs, lines)
        if "ours" in memory and "cosmos local" in memory:
            ours, theirs = memory["ours"], memory["cosmos local"]
            share = ours[0] / theirs[0]
            figures.append(
                (
                    f"T3 worker memory per node task ({what}): ours one_process / cosmos local, peak RSS of "
                    "the task process tree",
                    f"<= {GOAL_MEMORY}x",
                    f"{share:.2f}x",
                    f"{ours[0]:.0f} MB vs {theirs[0]:.0f} MB",
                    "yes" if share <= GOAL_MEMORY else "no",
                )
            )
            figures.append((f"T3 worker memory per node task ({what}): above the task process floor, ours vs "
                            "cosmos local", "reported", f"{ours[1]:.0f} MB vs {theirs[1]:.0f} MB",
                            "floor: Airflow + DAG + dag.test()", "-"))  # fmt: skip
    return figures


def _memory_rows(runs: dict[str, list[dict[str, Any]]], lines: list[str]) -> dict[str, tuple[float, float]]:
    """T3 rows: per-node-task peak of the process tree and its growth, medians over every task of every run."""
    out: dict[str, tuple[float, float]] = {}
    rows = []
    for name, values in runs.items():
        if name == "plain dbt build":
            continue
        peaks = [peak / 2**20 for r in values for peak, _ in r["memory"]]
        growth = [grow / 2**20 for r in values for _, grow in r["memory"]]
        above = [(peak - r.get("floor", 0)) / 2**20 for r in values for peak, _ in r["memory"]]
        if not peaks:
            continue
        out[name] = (median(peaks), median(above))
        floor = median([r.get("floor", 0) / 2**20 for r in values])
        rows.append(f"| {name} | {len(peaks)} | {median(peaks):.0f} MB (max {max(peaks):.0f}) | {floor:.0f} MB | "
                    f"{median(above):.0f} MB (max {max(above):.0f}) | {median(growth):.0f} MB (max {max(growth):.0f}) "
                    f"| {median([r['peak_tree'] / 2**20 for r in values]):.0f} MB |")  # fmt: skip
    if rows:
        lines += [
            "T3, worker memory per node task: RSS of the `dag.test()` process and its descendants sampled every "
            f"{SAMPLE_S * 1000:.0f} ms (a detached dbt is not a descendant); per task instance other than the build, "
            "the peak while it ran. *Floor* is the tree just before the group's first task (Airflow, the parsed DAG "
            "and dag.test()'s machinery, after the warm-up task): what any task process holds. *Above floor* is "
            "what the task itself added; *growth* is over the sample before that task started (cosmos keeps dbt "
            "loaded in the dag.test() process after its first task, which a fresh worker task process would not).",
            "",
            "| Variant | Task instances | Peak tree RSS per task, median | Floor | Above floor, median | "
            "Growth during the task, median | Peak of the whole run |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cosmos, how = cosmos_python()
    result: dict[str, Any] = {
        "cosmos_install": how,
        "cosmos_versions": versions(cosmos),
        "our_versions": versions(Path(sys.executable)),
        "load_start": os.getloadavg()[0],
    }
    runner = Bench(work, cosmos)
    # A DAG processor imports the installed library from bytecode; a fresh checkout has none, and the bench's
    # PYTHONDONTWRITEBYTECODE would make every parse compile src/ again (about 0.2 s of ours, none of cosmos's,
    # whose site-packages pip compiled at install).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    log(f"work dir {work}; airflow db migrate")
    runner.run([sys.executable, "-m", "airflow", "db", "migrate"])
    only = set(args.only.split(","))
    partial = work / "result.partial.json"  # what was measured so far, should a later phase fail
    if "parse" in only:
        parse_phase(runner, args.reps_parse, args.models_parse, result)
        partial.write_text(json.dumps(result))
    if "run" in only:
        run_phase(runner, args.reps_run, args.models_run, result, cosmos_full=args.cosmos_full, watcher=args.watcher)
    return result


def measure(env: dict[str, str], work: Path, *, quick: bool = False) -> tuple[list[tuple[str, ...]], str]:
    """For bench/run_bench.py: run this script in a fresh interpreter; return its rows and section."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--work", str(work / "task_graph")]
    if quick:
        argv += ["--reps-parse", "2", "--reps-run", "1", "--models-parse", "200", "--models-run", "100"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench/task_graph.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return report(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="bench", choices=("bench", "baseline", "parse", "run"))
    parser.add_argument("--reps-parse", type=int, default=5)
    parser.add_argument("--reps-run", type=int, default=3)
    parser.add_argument("--models-parse", type=int, default=1000)
    parser.add_argument("--models-run", type=int, default=500)
    parser.add_argument("--only", default="parse,run", help="comma-separated subset of parse,run")
    parser.add_argument("--cosmos-full", action="store_true", help="also run cosmos local on the whole project")
    parser.add_argument(
        "--watcher", action="store_true", help="add cosmos's watcher mode (under dag.test() its consumers wait forever)"
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "task_graph")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md rows and section")
    parser.add_argument("--max-wait", type=float, default=1200.0, help="seconds to wait for a load <= 2.5")
    parser.add_argument("--from-json", type=Path, help="report a saved result instead of measuring")
    # internal (the child roles' arguments)
    parser.add_argument("--result", default="")
    parser.add_argument("--dag-file", default="")
    parser.add_argument("--dag-id", default="")
    args = parser.parse_args()
    if args.role != "bench":
        child(args)
        return
    WAIT_LIMIT_S[0] = args.max_wait
    result = json.loads(args.from_json.read_text()) if args.from_json else bench(args)
    emit(result, args, report)


if __name__ == "__main__":
    main()
