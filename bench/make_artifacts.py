"""Scale real dbt artifacts up for the P6 benchmark: a 10,000-result run_results.json, a ~100 MB manifest.json.

Real node and result objects from a generated project's run are cloned under new unique ids, so sizes,
key shapes and string lengths stay what dbt writes. Output is compact JSON, as dbt writes it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any


def scale_run_results(source: Path, out: Path, results: int = 10_000) -> int:
    """Write ``results`` results cloned from ``source``; returns the file size in bytes."""
    data = json.loads(source.read_text(encoding="utf-8"))
    originals = data["results"]
    scaled = []
    for index in range(results):
        result = copy.deepcopy(originals[index % len(originals)])
        result["unique_id"] = f"{result['unique_id']}_{index}"
        scaled.append(result)
    data["results"] = scaled
    out.write_text(json.dumps(data), encoding="utf-8")
    return out.stat().st_size


def scale_manifest(source: Path, out: Path, target_bytes: int = 100 * 1000 * 1000) -> int:
    """Clone nodes (with their parent/child map entries) until the file is within 2% of ``target_bytes``."""
    original: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    base = len(json.dumps(original))
    per_node = max(1, base // max(1, len(original["nodes"])))
    copies = max(0, (target_bytes - base) // per_node)
    for _ in range(4):
        size = _write_scaled(original, out, copies)
        if abs(size - target_bytes) <= target_bytes * 0.02:
            break
        per_node = max(1, (size - base) // max(1, copies))
        copies = max(0, (target_bytes - base) // per_node)
    return out.stat().st_size


def _write_scaled(original: dict[str, Any], out: Path, copies: int) -> int:
    data = copy.deepcopy(original)
    nodes = data["nodes"]
    originals = list(original["nodes"].items())
    for index in range(copies):
        unique_id, node = originals[index % len(originals)]
        clone_id = f"{unique_id}_copy{index}"
        clone = copy.deepcopy(node)
        clone["unique_id"] = clone_id
        clone["name"] = f"{node.get('name', 'node')}_copy{index}"
        nodes[clone_id] = clone
        for mapping in ("parent_map", "child_map"):
            if isinstance(data.get(mapping), dict) and unique_id in data[mapping]:
                data[mapping][clone_id] = list(data[mapping][unique_id])
    out.write_text(json.dumps(data), encoding="utf-8")
    return out.stat().st_size
