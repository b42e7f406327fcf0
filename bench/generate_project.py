"""Generate a synthetic dbt project: N models in layers with realistic ref fan-in, sources, tests, docs.

Usage: python bench/generate_project.py OUT_DIR --models 500 [--seed 7]

Layout (all DuckDB-friendly and deterministic for a given seed):
- ``raw`` source tables, created by an ``on-run-start`` hook, with not_null/unique tests;
- ``staging`` views, one per source table and then round-robin over the sources (20% of the models);
- ``intermediate`` and ``marts`` tables (50% / 30%), each joining 1-4 (marts 2-6) earlier models picked
  with a bias towards recent ones, as real DAGs fan in;
- a not_null test on every model, unique on every third, a macro used everywhere, descriptions in yml;
- every model tagged ``g<k>`` (50 groups) so a benchmark can select a realistic slice with ``tag:g<k>``.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

import yaml

TAG_GROUPS = 50
SOURCE_ROWS = 100


def _fan_in(rng: random.Random, layer: str) -> int:
    if layer == "marts":
        return rng.choice([2, 2, 3, 3, 4, 5, 6])
    return rng.choices([1, 2, 3, 4], weights=[30, 35, 25, 10])[0]


def _pick_parents(rng: random.Random, earlier: list[str], count: int) -> list[str]:
    """Prefer recent models (a triangular distribution), as layered projects do; no duplicates."""
    count = min(count, len(earlier))
    chosen: list[str] = []
    while len(chosen) < count:
        index = int(rng.triangular(0, len(earlier), len(earlier)))
        candidate = earlier[min(index, len(earlier) - 1)]
        if candidate not in chosen:
            chosen.append(candidate)
    return chosen


def _model_sql(name: str, parents: list[str], tag: str, materialized: str) -> str:
    ctes = ",\n".join(f"p{i} as (select id, value from {{{{ ref('{p}') }}}})" for i, p in enumerate(parents))
    joins = "\n".join(f"left join p{i} using (id)" for i in range(1, len(parents)))
    total = " + ".join(f"coalesce(p{i}.value, 0)" for i in range(len(parents)))
    return (
        f"{{{{ config(materialized='{materialized}', tags=['{tag}']) }}}}\n"
        f"-- {name}: {len(parents)} parent(s)\n"
        f"with {ctes}\n"
        f"select p0.id, {total} as value, {{{{ bench_scaled('p0.value') }}}} as scaled,\n"
        f'       \'{{{{ var("bench_label", "default") }}}}\' as label\n'
        f"from p0\n{joins}\n"
    )


def _staging_sql(source_table: str, tag: str) -> str:
    return (
        f"{{{{ config(materialized='view', tags=['{tag}']) }}}}\n"
        f"select id, value, category, {{{{ bench_scaled('value') }}}} as scaled\n"
        f"from {{{{ source('raw', '{source_table}') }}}}\n"
    )


def generate(out: Path, models: int, *, seed: int = 7) -> dict[str, int]:
    """Write the project into ``out`` (replaced if present); returns counts for the report."""
    if models < 10:
        raise ValueError("use at least 10 models")
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out)
    name = f"bench_{models}"
    sources = max(5, models // 20)
    staging = max(sources, models // 5)
    intermediate = models // 2
    source_tables = [f"src_{i}" for i in range(sources)]

    (out / "macros").mkdir(parents=True)
    (out / "macros" / "bench.sql").write_text(
        "{% macro bench_scaled(column) %}round({{ column }} * 1.5, 2){% endmacro %}\n"
        "{% macro bench_create_sources() %}\n"
        "  create schema if not exists raw;\n"
        "  {% for table in var('bench_source_tables') %}\n"
        f"  create table if not exists raw.{{{{ table }}}} as select range as id, range * 3 % 17 as value,\n"
        f"    'c' || (range % 5) as category from range({SOURCE_ROWS});\n"
        "  {% endfor %}\n"
        "{% endmacro %}\n",
        encoding="utf-8",
    )
    project = {
        "name": name,
        "version": "1.0.0",
        "config-version": 2,
        "profile": "bench",
        "model-paths": ["models"],
        "macro-paths": ["macros"],
        "on-run-start": ["{{ bench_create_sources() }}"],
        "vars": {"bench_source_tables": source_tables},
        "models": {name: {"staging": {"+materialized": "view"}, "+materialized": "table"}},
    }
    (out / "dbt_project.yml").write_text(yaml.safe_dump(project, sort_keys=False), encoding="utf-8")

    layers: dict[str, list[tuple[str, str]]] = {"staging": [], "intermediate": [], "marts": []}
    earlier: list[str] = []
    edges = 0
    for index in range(models):
        if index < staging:
            layer, model = "staging", f"stg_{index}"
            sql = _staging_sql(source_tables[index % sources], f"g{index % TAG_GROUPS}")
        else:
            layer = "intermediate" if index < staging + intermediate else "marts"
            model = f"{'int' if layer == 'intermediate' else 'mart'}_{index}"
            parents = _pick_parents(rng, earlier, _fan_in(rng, layer))
            edges += len(parents)
            sql = _model_sql(model, parents, f"g{index % TAG_GROUPS}", "table")
        layers[layer].append((model, sql))
        earlier.append(model)

    tests = 0
    for layer, entries in layers.items():
        folder = out / "models" / layer
        folder.mkdir(parents=True)
        documented = []
        for position, (model, sql) in enumerate(entries):
            (folder / f"{model}.sql").write_text(sql, encoding="utf-8")
            column_tests: list[str] = ["not_null"] + (["unique"] if position % 3 == 0 else [])
            tests += len(column_tests)
            documented.append({
                "name": model,
                "description": f"Synthetic {layer} model {model}.",
                "columns": [{"name": "id", "description": "Row id.", "data_tests": column_tests}],
            })  # fmt: skip
        (folder / "schema.yml").write_text(yaml.safe_dump({"version": 2, "models": documented}), encoding="utf-8")
    source_doc = {
        "version": 2,
        "sources": [{
            "name": "raw",
            "schema": "raw",
            "tables": [{"name": t, "columns": [{"name": "id", "data_tests": ["not_null", "unique"]}]}
                       for t in source_tables],
        }],
    }  # fmt: skip
    tests += 2 * sources
    (out / "models" / "staging" / "sources.yml").write_text(yaml.safe_dump(source_doc), encoding="utf-8")
    return {"models": models, "sources": sources, "tests": tests, "edges": edges, "groups": TAG_GROUPS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    counts = generate(args.out, args.models, seed=args.seed)
    print(", ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
