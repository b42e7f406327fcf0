"""What every bench script prints at its end: optionally the docs/benchmarks.md rows and section, then its JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
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
