"""What every bench script prints at its end (optionally the docs/benchmarks.md rows and section, then its JSON),
and how bench/run_bench.py runs one in a fresh interpreter and reads that JSON back."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def emit(
    result: dict[str, Any], args: argparse.Namespace, report: Callable[[dict[str, Any]], tuple[list[Any], str]]
) -> None:
    """``--json`` writes the result to a file, ``--markdown`` prints the rows and section; the JSON is always
    the last stdout line (what ``measure()`` of each script reads)."""
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        figures, section = report(result)
        print("| Figure | Goal | Result | Absolute | Met |\n|---|---|---|---|---|")
        print("\n".join("| " + " | ".join(row) + " |" for row in figures))
        print()
        print(section)
    print(json.dumps(result))


def run_script(script: str, argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> dict[str, Any]:
    """Run a bench script in a fresh interpreter (for ``measure()``); the JSON of its last stdout line.

    :param script: The script's path (``__file__``).
    :param argv: Its arguments.
    :param env: Its environment.
    :param cwd: Its working directory.
    :param timeout: Seconds it may take.
    """
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), *argv], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(script).name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
