"""What the parts of the task-graph benchmark (bench/task_graph.py) share: paths, the DAG files, the load wait,
and ``Bench``, which runs the tools and the measured child processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ENTRY = BENCH / "task_graph.py"  # what every child process runs, in a role
SLICE = "tag:g7"
PROFILE = "bench"
TIMEOUT = 7200
RUN_TIMEOUT = 1800  # one child process

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


WAIT_LIMIT_S = [1200.0]  # --max-wait


def wait_for_quiet() -> float:
    """The 1-minute load average once it is at most 2.5, or after ``--max-wait`` seconds: measure anyway."""
    waited = 0.0
    while os.getloadavg()[0] > 2.5 and waited < WAIT_LIMIT_S[0]:
        log(f"load {os.getloadavg()[0]:.2f} > 2.5: waiting 60 s")
        time.sleep(60)
        waited += 60
    return os.getloadavg()[0]


class Sampler(Protocol):
    """Samples a child's process tree while it runs (``task_graph_memory.TreeSampler``)."""

    def stop(self) -> list[tuple[float, int, int]]: ...


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

    def child(
        self, python: Path, role: str, *extra: str, sample: Callable[[int], Sampler] | None = None
    ) -> tuple[dict[str, Any], Any]:
        """Run a child role; with ``sample`` (a sampler of a process id) also the samples of its process tree. A
        ``run`` child's DAG file is copied into the dags folder for the run and removed after it."""
        if role == "run":
            source = Path(extra[extra.index("--dag-file") + 1])
            shutil.copy(source, self.dags / source.name)
            extra = tuple(str(self.dags / source.name) if e == str(source) else e for e in extra)
            try:
                return self._child(python, role, *extra, sample=sample)
            finally:
                (self.dags / source.name).unlink(missing_ok=True)
        return self._child(python, role, *extra, sample=sample)

    def _child(
        self, python: Path, role: str, *extra: str, sample: Callable[[int], Sampler] | None = None
    ) -> tuple[dict[str, Any], Any]:
        result = self.work / f"child-{time.monotonic_ns()}.json"
        argv = [str(python), str(ENTRY), role, "--result", str(result), *extra]
        env = dict(self.env)
        if python != self.ours:
            env.pop("PYTHONPATH", None)
        out = open(self.work / "children.log", "a")  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.work, start_new_session=True
            )
            sampler = sample(proc.pid) if sample else None
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

    def generated(self, phase: str, models: int) -> tuple[Path, Path, Path, dict[str, int]]:
        """A phase's generated project of ``models`` models, its DuckDB file, a profile for it, and its counts."""
        from generate_project import generate

        project = self.work / f"bench_{models}"
        database = self.work / f"{phase}_{models}.duckdb"
        return project, database, self.profiles(phase, database), generate(project, models)

    def dbt(self, project: Path, profiles: Path, *args: str) -> float:
        """Plain dbt in the project directory (as users run it: target/ and its partial parse reused)."""
        started = time.perf_counter()
        self.run([str(self.ours.parent / "dbt"), *args, "--profiles-dir", str(profiles)], cwd=project)
        return time.perf_counter() - started

    def graph(self, project: Path, profiles: Path, select: str | None) -> None:
        argv = [str(self.ours.parent / "dlh-dbt"), "graph", str(project), "--profiles-dir", str(profiles)]
        out = self.run([*argv, *(["--select", select] if select else [])])
        log(f"graph file: {out.strip()}")


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
