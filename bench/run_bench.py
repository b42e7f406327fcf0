"""`make bench`: measure DbtHook against the plain dbt CLI side by side and rewrite docs/benchmarks.md.

Every figure is a ratio taken within one repetition (our run / plain dbt, same project, same database,
same warm state, back to back, the order rotating between repetitions), reported as the median of the
repetitions with min and max. The hook runs in a fresh interpreter (bench/hook_driver.py) as an Airflow
task would; its "task" time is the ``run_dbt_task`` call, its "process" time includes starting Python
and importing Airflow, which a worker has already done before a task starts.

Usage: python bench/run_bench.py [--reps 5] [--quick] [--out docs/benchmarks.md] [--work .bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from channel_poll import measure as measure_channel_poll  # noqa: E402
from deferrable import measure as measure_deferrable  # noqa: E402
from generate_project import generate  # noqa: E402
from make_artifacts import scale_manifest, scale_run_results  # noqa: E402
from node_triggers import measure as measure_node_triggers  # noqa: E402
from remote_project import measure as measure_remote_project  # noqa: E402
from run_report import measure as measure_run_report  # noqa: E402
from task_graph import measure as measure_task_graph  # noqa: E402
from task_graph_deployment import measure as measure_task_graph_deployment  # noqa: E402
from worker_slot import measure as measure_worker_slot  # noqa: E402

PYTHON = sys.executable
DBT = str(Path(sys.executable).parent / "dbt")
DRIVER = BENCH / "hook_driver.py"
PROBE = BENCH / "artifact_probe.py"
EXAMPLE = ROOT / "examples" / "shop"
TIMEOUT = 1800


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Stat:
    """Median, min and max of a series."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def fmt(self, digits: int = 2, unit: str = "") -> str:
        return f"{self.median:.{digits}f}{unit} ({min(self.values):.{digits}f}-{max(self.values):.{digits}f})"


@dataclass
class Figure:
    """One row of the summary table."""

    name: str
    goal: str
    result: str
    absolute: str
    met: str


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, work: Path, reps: int) -> None:
        self.work = work
        self.reps = reps
        self.env = {
            **os.environ,
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            "DBT_VERSION_CHECK": "false",
            "AIRFLOW_HOME": str(work / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.env.pop("DBT_PROFILES_DIR", None)

    # -- processes ---------------------------------------------------------------------------------
    def _run(self, argv: Sequence[str], cwd: Path | None = None) -> tuple[float, str]:
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=TIMEOUT)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:4])}... failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return wall, proc.stdout

    def connection(self, name: str, database: Path) -> str:
        self.env[f"AIRFLOW_CONN_{name.upper()}"] = json.dumps({"conn_type": "duckdb", "host": str(database)})
        return name

    def profiles(self, name: str, profile: str, database: Path) -> Path:
        directory = self.work / "profiles" / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "profiles.yml").write_text(
            f"{profile}:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: {database}\n"
            "      threads: 2\n",
            encoding="utf-8",
        )
        return directory

    def plain(
        self, project: Path, profiles: Path, command: str, select: str | None = None, extra: Sequence[str] = ()
    ) -> Sample:
        """Plain dbt as a user runs it in the project: default target/ (warm partial_parse.msgpack)."""
        argv = [DBT, *command.split(), "--profiles-dir", str(profiles), "--threads", "2", *extra]
        if select:
            argv += ["--select", select]
        cpu = _children_cpu()
        wall = self._run(argv, cwd=project)[0]
        return Sample(wall=wall, cpu=_children_cpu() - cpu, process=wall)

    def hook(self, spec: dict[str, Any]) -> tuple[Sample, dict[str, Any]]:
        wall, out = self._run([PYTHON, str(DRIVER), json.dumps({"threads": 2, **spec})])
        payload = json.loads(out.strip().splitlines()[-1])
        if not payload["success"]:
            raise RuntimeError(f"hook run failed: {payload['error']}")
        return Sample(wall=payload["run_s"], cpu=payload["run_cpu_s"], process=wall, dbt=payload["dbt_s"]), payload

    def rotate(self, variants: dict[str, Callable[[], Sample]]) -> dict[str, list[Sample]]:
        """Run every variant once per repetition, rotating the order; returns the samples per variant."""
        names = list(variants)
        samples: dict[str, list[Sample]] = {name: [] for name in names}
        for rep in range(self.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                samples[name].append(variants[name]())
            log(f"  rep {rep + 1}/{self.reps}: " + ", ".join(f"{n}={samples[n][-1].wall:.2f}s" for n in names))
        return samples


@dataclass
class Sample:
    """One measured run: wall and CPU seconds of the task (dbt included), wall of the whole process."""

    wall: float
    cpu: float
    process: float
    dbt: float | None = None  # hook runs: dbt itself, so wall - dbt is the hook's own work around it


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare(samples: list[Sample], baseline: list[Sample], metric: str) -> Stat:
    """Per-repetition ratios of ``metric`` against the plain run of the same repetition."""
    return Stat(
        [
            getattr(s, metric) / getattr(b, "wall" if metric == "process" else metric)
            for s, b in zip(samples, baseline, strict=True)
        ]
    )


def series(samples: list[Sample], metric: str) -> Stat:
    return Stat([getattr(s, metric) for s in samples])


def comparison_rows(samples: dict[str, list[Sample]], baseline: str, process: bool) -> list[str]:
    plain = samples[baseline]
    rows = [
        f"| {baseline} | {series(plain, 'wall').fmt(1, ' s')} | {series(plain, 'cpu').fmt(1, ' s')} | 1 | 1 |"
        + (" |" if process else "")
    ]
    for name, values in samples.items():
        if name == baseline:
            continue
        row = (
            f"| {name} | {series(values, 'wall').fmt(1, ' s')} | {series(values, 'cpu').fmt(1, ' s')} | "
            f"{compare(values, plain, 'wall').fmt(3, 'x')} | {compare(values, plain, 'cpu').fmt(3, 'x')} |"
        )
        if process:
            row += f" {compare(values, plain, 'process').fmt(3, 'x')} |"
        rows.append(row)
    return rows


def ratios(values: list[float], baseline: list[float]) -> Stat:
    return Stat([v / b for v, b in zip(values, baseline, strict=True)])


def verdict(stat: Stat, goal: float) -> str:
    if stat.median <= goal:
        return "yes"
    return "no"


# -- P1 ------------------------------------------------------------------------------------------------
def p1(bench: Bench, report: Report, label: str, project: Path, profile: str) -> None:
    database = bench.work / f"{project.name}.duckdb"
    profiles = bench.profiles(project.name, profile, database)
    conn = bench.connection(f"bench_{project.name}", database)

    def hook(mode: str) -> Callable[[], Sample]:
        return lambda: bench.hook({"project": str(project), "conn_id": conn, "command": "build", "mode": mode})[0]

    json_log = "plain `dbt build --log-format json` (reference)"
    variants = {
        "plain `dbt build`": lambda: bench.plain(project, profiles, "build"),
        json_log: lambda: bench.plain(project, profiles, "build", extra=("--log-format", "json")),
        "hook, in-process": hook("in-process"),
        "hook, subprocess": hook("subprocess"),
    }
    log(f"P1 {label}: warm-up (plain dbt, then the hook: both modes share one cache entry)")
    variants["plain `dbt build`"]()
    variants["hook, subprocess"]()
    samples = bench.rotate(variants)
    plain = samples["plain `dbt build`"]
    for name in ("hook, in-process", "hook, subprocess"):
        wall, cpu = compare(samples[name], plain, "wall"), compare(samples[name], plain, "cpu")
        absolute = f"{series(samples[name], 'wall').median:.1f} s vs {series(plain, 'wall').median:.1f} s"
        report.figures.append(
            Figure(
                f"P1 {label}: {name} / plain `dbt build`",
                "<= 1.05x",
                f"{wall.fmt(3, 'x')}; CPU {cpu.fmt(3, 'x')}",
                absolute,
                verdict(wall, 1.05),
            )
        )
    around = []
    for name in ("hook, in-process", "hook, subprocess"):
        own = Stat([s.wall - (s.dbt or 0.0) for s in samples[name]])
        share = Stat([(s.wall - (s.dbt or 0.0)) / s.wall * 100 for s in samples[name]])
        around.append(f"| {name} | {own.fmt(2, ' s')} | {share.fmt(1, ' %')} |")
        report.figures.append(
            Figure(
                f"P1 {label}: {name}, the hook's own time around dbt (same run)",
                "reported",
                f"{own.median:.2f} s, {share.median:.1f} % of the run",
                f"of {series(samples[name], 'wall').median:.1f} s",
                "-",
            )
        )
    report.sections.append(
        f"### P1 {label}: hook vs plain `dbt build`\n\n"
        "Hook times are the `run_dbt_task` call; the last column adds interpreter start-up and the Airflow "
        "import, which an Airflow worker has paid before the task starts. The reference row is plain dbt "
        "writing its events with `--log-format json` (what a `venv_path` dbt does; the default subprocess "
        "mode's event runner converts only the non-debug events).\n\n"
        "| Variant | Wall, median (min-max) | CPU | Wall ratio | CPU ratio | Whole-process wall ratio |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(comparison_rows(samples, "plain `dbt build`", True)) + "\n\n"
        "The hook's own work around dbt, measured inside each hook run (run dir, profile, caches before dbt "
        "starts; summary, result, clean-up after it exits), so it carries none of the run-to-run noise of "
        "the ratios above:\n\n"
        "| Variant | Time outside dbt, median (min-max) | Share of the run |\n|---|---|---|\n"
        + "\n".join(around)
        + "\n"
    )


# -- P2 ------------------------------------------------------------------------------------------------
def p2(bench: Bench, report: Report, project: Path, selection: str) -> None:
    database = bench.work / f"{project.name}.duckdb"
    profiles = bench.profiles(project.name, "bench", database)
    conn = bench.connection(f"bench_{project.name}", database)
    log(f"P2: building all of {project.name} once (tables the selection reads), then warm-up")
    bench.plain(project, profiles, "run")

    def hook(mode: str, cache: bool) -> Callable[[], Sample]:
        spec = {
            "project": str(project),
            "conn_id": conn,
            "command": "run",
            "select": selection,
            "mode": mode,
            "cache": cache,
        }
        return lambda: bench.hook(spec)[0]

    baseline = "plain warm `dbt run`"
    variants = {
        baseline: lambda: bench.plain(project, profiles, "run", selection),
        "isolated + cache, subprocess": hook("subprocess", True),
        "isolated + cache, in-process": hook("in-process", True),
        "isolated, no cache, subprocess": hook("subprocess", False),
    }
    for variant in variants.values():
        variant()
    samples = bench.rotate(variants)
    plain = samples[baseline]
    for name in list(variants)[1:]:
        wall, cpu = compare(samples[name], plain, "wall"), compare(samples[name], plain, "cpu")
        cached = "no cache" not in name
        absolute = f"{series(samples[name], 'wall').median:.1f} s vs {series(plain, 'wall').median:.1f} s"
        title = f"P2 {project.name}, `run --select {selection}`: {name} / plain warm"
        report.figures.append(
            Figure(
                title,
                "<= 1.10x" if cached else "reported",
                f"{wall.fmt(3, 'x')}; CPU {cpu.fmt(3, 'x')}",
                absolute,
                verdict(wall, 1.10) if cached else "-",
            )
        )
    report.sections.append(
        f"### P2 {project.name}: isolated runs vs a warm plain run (`dbt run --select {selection}`)\n\n"
        "The plain run reuses `target/partial_parse.msgpack` from the run before; every hook run has a new "
        "run dir. Hook times are the `run_dbt_task` call.\n\n"
        "| Variant | Wall, median (min-max) | CPU | Wall ratio | CPU ratio |\n|---|---|---|---|---|\n"
        + "\n".join(comparison_rows(samples, baseline, False))
        + "\n"
    )


# -- P3 ------------------------------------------------------------------------------------------------
def p3(bench: Bench, report: Report, project: Path, concurrency: int) -> None:
    cores = os.cpu_count() or 1
    conns = [bench.connection(f"bench_par{i}", bench.work / f"par{i}.duckdb") for i in range(concurrency)]

    def spec(i: int, name: str) -> dict[str, Any]:
        return {
            "project": str(project),
            "conn_id": conns[i],
            "command": "build",
            "mode": "subprocess",
            "keep": True,
            "run_name": name,
        }

    def wave(tag: str) -> tuple[float, list[dict[str, Any]]]:
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [PYTHON, str(DRIVER), json.dumps({"threads": 2, **spec(i, f"run_{tag}_{i}")})],
                env=bench.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(concurrency)
        ]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"P3 run failed:\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return time.perf_counter() - started, results

    log(f"P3: warm-up wave of {concurrency} concurrent runs (each its own DuckDB file)")
    _, first = wave("warmup")
    expected = first[0]["node_ids"]
    walls, ideals, singles, checks, overheads, others = [], [], [], [], [], []
    for rep in range(bench.reps):
        cpu_before = _children_cpu()
        single_sample, single = bench.hook(spec(0, f"run_single_{rep}"))
        single_wall = single_sample.process
        single_cpu = _children_cpu() - cpu_before
        cpu_before, busy_before = _children_cpu(), _machine_busy()
        wall, results = wave(f"rep{rep}")
        wave_cpu, busy = _children_cpu() - cpu_before, _machine_busy() - busy_before
        ideal = max(single_wall, concurrency * single_cpu / cores)
        walls.append(wall)
        ideals.append(ideal)
        overheads.append(wave_cpu / (concurrency * single_cpu))
        others.append(max(0.0, busy - wave_cpu) / (wall * cores))
        singles.append(single_wall)
        checks.append(_artifacts_ok([single, *results], expected))
        log(
            f"  rep {rep + 1}/{bench.reps}: {concurrency} concurrent {wall:.1f}s, ideal {ideal:.1f}s, single "
            f"{single_wall:.1f}s ({single_cpu:.1f} CPU s), artifacts ok: {checks[-1]}"
        )
        for path in (project / "target").glob("run_*"):
            shutil.rmtree(path, ignore_errors=True)
    stat = ratios(walls, ideals)
    ok = all(checks)
    title = f"P3 {concurrency} concurrent hook runs of {project.name}: wall / ideal for {cores} cores"
    absolute = f"{Stat(walls).median:.1f} s vs ideal {Stat(ideals).median:.1f} s"
    met = "artifacts " + ("correct" if ok else "WRONG")
    result = f"{stat.fmt(2, 'x')}; other processes took {Stat(others).median * 100:.0f} % of the CPU"
    report.figures.append(Figure(title, "all artifacts correct; near 1x", result, absolute, met))
    report.sections.append(
        f"### P3: {concurrency} concurrent `build`s of {project.name} (hook, subprocess mode, one DuckDB file each)\n\n"
        f"Ideal wall time = max(one run's wall time, {concurrency} x one run's CPU seconds / {cores} cores), "
        "measured in the same repetition.\n\n| Measure | Median (min-max) |\n|---|---|\n"
        f"| one run alone, wall | {Stat(singles).fmt(1, ' s')} |\n"
        f"| {concurrency} concurrent, wall | {Stat(walls).fmt(1, ' s')} |\n"
        f"| ideal | {Stat(ideals).fmt(1, ' s')} |\n| wall / ideal | {stat.fmt(2, 'x')} |\n"
        f"| CPU of the {concurrency} concurrent runs / {concurrency} x one run alone "
        f"| {Stat(overheads).fmt(2, 'x')} |\n"
        f"| machine CPU used by other processes during the wave | {Stat([o * 100 for o in others]).fmt(0, ' %')} |\n"
        f"| artifacts correct in every run | {'yes' if ok else 'NO'} "
        f"({len(checks) * (concurrency + 1)} runs checked) |\n"
    )


def _machine_busy() -> float:
    """CPU seconds all processes on the machine have used since boot (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _artifacts_ok(results: list[dict[str, Any]], expected: list[str]) -> bool:
    """Each run has the full node set, all passing, and its own run_results/manifest (same invocation id)."""
    seen = set()
    for result in results:
        target = Path(result["run_dir"]) / "target"
        run_results = json.loads((target / "run_results.json").read_text())
        manifest = json.loads((target / "manifest.json").read_text())
        invocation = run_results["metadata"]["invocation_id"]
        statuses = {r["status"] for r in run_results["results"]}
        if (
            result["node_ids"] != expected
            or not statuses <= {"success", "pass"}
            or manifest["metadata"]["invocation_id"] != invocation
            or invocation in seen
        ):
            return False
        seen.add(invocation)
    return True


# -- P6 ------------------------------------------------------------------------------------------------
def p6(bench: Bench, report: Report, run_results_source: Path, manifest_source: Path) -> None:
    folder = bench.work / "p6"
    folder.mkdir(exist_ok=True)
    files = {
        "run_results": (
            folder / "run_results.json",
            scale_run_results(run_results_source, folder / "run_results.json"),
        ),
        "manifest": (folder / "manifest.json", scale_manifest(manifest_source, folder / "manifest.json")),
    }
    rows = []
    for kind, (path, size) in files.items():
        for variant in ("summary", "whole", "stdlib"):
            wall, cpu, growth = [], [], []
            for _ in range(bench.reps):
                out = bench._run([PYTHON, str(PROBE), str(path), kind, variant])[1]
                payload = json.loads(out.strip().splitlines()[-1])
                wall.append(payload["seconds"])
                cpu.append(payload["cpu_seconds"])
                growth.append(payload["peak_growth"] / size)
            what = {
                ("run_results", "summary"): (
                    "after a run: `RunSummary` from a partial view + compressed copy (the hook's path)"
                ),
                ("manifest", "summary"): "`summarize_manifest` (partial view)",
                ("run_results", "whole"): "whole document, `load_artifact` (`result.run_results` on first use)",
                ("manifest", "whole"): "whole document, `load_artifact` (`get_manifest()`)",
            }.get((kind, variant), "stdlib `json.load` + count (baseline)")
            rows.append(
                f"| {kind}.json ({size / 1e6:.1f} MB) | {what} | {Stat(wall).fmt(2, ' s')} | "
                f"{Stat(cpu).fmt(2, ' s')} | {Stat(growth).fmt(2, 'x')} |"
            )
            if variant != "stdlib":
                met = "yes" if Stat(cpu).median <= 1.0 and Stat(growth).median <= 2.0 else "no"
                summary = variant == "summary"
                report.figures.append(
                    Figure(
                        f"P6 {kind}.json {size / 1e6:.0f} MB: {what}",
                        "<= 1 s, RSS <= 2x file" if summary else "reported",
                        f"{Stat(cpu).median:.2f} s CPU, {Stat(growth).median:.2f}x RSS",
                        f"{Stat(wall).median:.2f} s wall",
                        met if summary else "-",
                    )
                )
    report.sections.append(
        "### P6: loading and summarising big artifacts (fresh interpreter per measurement)\n\n"
        "RSS is the growth of peak RSS over the RSS before loading, as a multiple of the file size. CPU seconds "
        "are given beside wall seconds because other work on the machine inflates wall time; on an idle "
        "machine the two are equal for this single-threaded work.\n\n"
        "| File | Variant | Wall, median (min-max) | CPU | Peak RSS growth / file size |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


# -- the document --------------------------------------------------------------------------------------
def _machine() -> list[tuple[str, str]]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("Memory", f"{memory:.1f} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("dbt-core / dbt-duckdb / duckdb", f"{version('dbt-core')} / {version('dbt-duckdb')} / {version('duckdb')}"),
        ("Apache Airflow", version("apache-airflow")),
        ("dlh-airflow-common", f"{version('dlh-airflow-common')} (commit {commit.strip() or 'unknown'})"),
    ]


def write_report(report: Report, out: Path, args: argparse.Namespace, facts: dict[str, Any], started: float) -> None:
    load = facts["load"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`bench/run_bench.py`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
        f"{(time.perf_counter() - started) / 60:.1f} minutes. Do not edit by hand: the analysis at the end comes "
        "from `bench/NOTES.md`.",
        "",
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in _machine()],
        f"| Load average (1 min) at start / end | {load[0]:.2f} / {os.getloadavg()[0]:.2f} |",
        "",
        "## Method",
        "",
        f"- {args.reps} repetitions per figure{' (quick mode: not for publishing)' if args.quick else ''}; each "
        "figure is the median of the per-repetition ratios, with min and max. Variants run back to back in "
        "one repetition, the order rotating between repetitions, against the same project and database.",
        "- Plain dbt is the `dbt` CLI run in the project directory, as users run it: `target/` is reused, so its "
        "`partial_parse.msgpack` is warm. The hook runs in a fresh interpreter (`bench/hook_driver.py`); "
        "*task* time is the `run_dbt_task` call (what a task pays inside an Airflow worker, which has imported "
        "Airflow already), *whole process* adds interpreter start-up and the Airflow import.",
        "- Both use `--threads 2` and the same DuckDB file. After one warm-up run per variant, every hook run "
        "uses a new isolated run dir and, with the cache, starts from the cached parse.",
        f"- Projects: `examples/shop` ({facts['example_nodes']} nodes), and synthetic projects from "
        f"`bench/generate_project.py`: {facts['p1_counts']} (P1) and {facts['p2_counts']} (P2); every model has a "
        "not_null test, every third a unique test, sources are tested too.",
        "- The machine is shared: the load average above shows other work, which widens min-max. Ratios taken "
        "back to back are robust to slow drifts, not to bursts.",
        "",
        "## Summary",
        "",
        "| Figure | Goal | Result: median (min-max) | Absolute (median) | Met |",
        "|---|---|---|---|---|",
        *[f"| {f.name} | {f.goal} | {f.result} | {f.absolute} | {f.met} |" for f in report.figures],
        "",
        "## Details",
        "",
        *report.sections,
    ]
    notes = BENCH / "NOTES.md"
    if notes.is_file():
        lines += ["## Analysis", "", notes.read_text(encoding="utf-8").strip(), ""]
    out.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small projects, 2 repetitions: a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench")
    parser.add_argument(
        "--only",
        default="p1,p2,p3,p6,deferrable,worker_slot,channel_poll,run_report,task_graph,task_graph_deployment,"
        "node_triggers,remote_project",
        help="comma-separated subset of p1,p2,p3,p6,deferrable,worker_slot,channel_poll,run_report,task_graph,"
        "task_graph_deployment,node_triggers,remote_project",
    )
    args = parser.parse_args()
    if args.quick:
        args.reps = 2
    started = time.perf_counter()
    facts: dict[str, Any] = {"load": os.getloadavg()}
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bench = Bench(work, args.reps)
    only = set(args.only.split(","))
    p1_models, p2_models = (100, 200) if args.quick else (500, 1000)

    example = work / "shop"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    big1, big2 = work / f"bench_{p1_models}", work / f"bench_{p2_models}"
    counts1, counts2 = generate(big1, p1_models), generate(big2, p2_models)
    facts["p1_counts"] = f"{counts1['models']} models / {counts1['tests']} tests / {counts1['sources']} sources"
    facts["p2_counts"] = f"{counts2['models']} models / {counts2['tests']} tests / {counts2['sources']} sources"
    report = Report()
    log(f"work dir {work}; {args.reps} repetitions")
    if "p1" in only:
        p1(bench, report, "examples/shop", example, "shop")
        p1(bench, report, f"{p1_models}-model project", big1, "bench")
    if "p2" in only:
        p2(bench, report, big2, "tag:g7")
    if "p3" in only:
        p3(bench, report, example, 8)
    manifest = example / "target" / "manifest.json"
    facts["example_nodes"] = len(json.loads(manifest.read_text())["nodes"]) if manifest.is_file() else "?"
    if "p6" in only:
        rr_source = big1 / "target" / "run_results.json"
        mf_source = big2 / "target" / "manifest.json"
        if not rr_source.is_file():
            bench.plain(big1, bench.profiles(big1.name, "bench", work / f"{big1.name}.duckdb"), "build")  # --only
        if not mf_source.is_file():
            bench.plain(big2, bench.profiles(big2.name, "bench", work / f"{big2.name}.duckdb"), "parse")
        p6(bench, report, rr_source, mf_source)
    if "deferrable" in only:  # issue 4: bench/deferrable.py
        figures, section = measure_deferrable(bench.env, work, quick=args.quick)
        report.figures += [Figure(*row) for row in figures]
        report.sections.append(section)
    if "worker_slot" in only:  # issue 11: bench/worker_slot.py, a real Airflow deployment
        figures, section = measure_worker_slot(bench.env, work, quick=args.quick)
        report.figures += [Figure(*row) for row in figures]
        report.sections.append(section)
    if "channel_poll" in only:  # issue 12: bench/channel_poll.py, 500 triggers on the remote and local channel
        figures, section = measure_channel_poll(bench.env, work, quick=args.quick)
        report.figures += [Figure(*row) for row in figures]
        report.sections.append(section)
    if "run_report" in only:  # issue 14: bench/run_report.py, a 10,000-node report built and opened in Chromium
        figures, section = measure_run_report(bench.env, work, quick=args.quick)
        report.figures += [Figure(*row) for row in figures]
        report.sections.append(section)
    if "task_graph" in only:  # issue 13: bench/task_graph.py, DbtTaskGroup vs astronomer-cosmos (own virtualenv)
        figures, section = measure_task_graph(bench.env, work, quick=args.quick)
        report.figures += [Figure(*row) for row in figures]
        report.sections.append(section)
    if "task_graph_deployment" in only:  # issue 13: bench/task_graph_deployment.py, T2 on a real deployment
        figures, section = measure_task_graph_deployment(bench.env, work, quick=args.quick)
        report.figures += [Figure(*row) for row in figures]
        report.sections.append(section)
    if "node_triggers" in only:  # issue 13: bench/node_triggers.py, triggerer CPU per node task
        figures, section = measure_node_triggers(bench.env, work, quick=args.quick)
        report.figures += [Figure(*row) for row in figures]
        report.sections.append(section)
    if "remote_project" in only:  # issue 16: bench/remote_project.py, first and warm start from S3 and git
        figures, section = measure_remote_project(bench.env, work, quick=args.quick)
        report.figures += [Figure(*row) for row in figures]
        report.sections.append(section)
    write_report(report, args.out, args, facts, started)
    log(f"wrote {args.out} in {(time.perf_counter() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
