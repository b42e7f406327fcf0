"""Unit tests for the streaming side of dlh_airflow_common.dbt.artifacts and load_artifact's GC handling."""

from __future__ import annotations

import gc
import json
import random
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt import artifacts
from dlh_airflow_common.dbt.artifacts import (
    ManifestSummary,
    RunSummary,
    load_artifact,
    stream_artifact,
    summarize_manifest,
)
from dlh_airflow_common.exceptions.dbt import DbtArtifactException

DOCUMENT: dict[str, Any] = {
    "metadata": {"invocation_id": "abc", "nested": {"deep": [1, 2, {"x": None}]}},
    "results": [
        {"unique_id": "model.p.a", "status": "success", "execution_time": 1.5, "message": 'quote " and \\ slash'},
        {"unique_id": "model.p.b", "status": "error", "execution_time": 12345678901234567890, "message": "ünï ✓"},
        {"unique_id": "test.p.c", "status": "fail", "execution_time": 0.25, "failures": 3, "message": None},
    ],
    "elapsed_time": 123456.789,
    "empty_object": {},
    "empty_list": [],
    'a key with "escapes" \\ and ü': {"k\\n": [True, False, None, -1e-5]},
    "args": {"select": ["a", "b"], "vars": {}},
}


def expected_items(document: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    items: list[tuple[str, Any, Any]] = []
    for member, value in document.items():
        if member == "metadata" or not isinstance(value, dict | list):
            items.append((member, None, value))
        elif isinstance(value, dict):
            items += [(member, key, item) for key, item in value.items()]
        else:
            items += [(member, index, item) for index, item in enumerate(value)]
    return items


@pytest.fixture(params=[3, 7, 64, 1 << 20], ids=lambda n: f"chunk{n}")
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Tiny chunks put every token, number and escape across a chunk boundary somewhere."""
    monkeypatch.setattr(artifacts, "_CHUNK_CHARS", request.param)
    return int(request.param)


@pytest.mark.parametrize("indent", [None, 2], ids=["compact", "pretty"])
def test_stream_yields_what_json_load_sees(tmp_path: Path, chunk: int, indent: int | None) -> None:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(DOCUMENT, indent=indent, ensure_ascii=False), encoding="utf-8")
    assert list(stream_artifact(path)) == expected_items(DOCUMENT)


def test_stream_matches_json_on_random_documents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)

    def scalar() -> Any:
        return rng.choice(
            [None, True, False, rng.randint(-(10**12), 10**12), rng.random() * 1e6, 's"\\\n\u00e9' * rng.randint(0, 3)]
        )

    def value(depth: int) -> Any:
        if depth > 2 or rng.random() < 0.4:
            return scalar()
        if rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {f'k{i}"{rng.randint(0, 9)}': value(depth + 1) for i in range(rng.randint(0, 4))}

    for round_ in range(30):
        monkeypatch.setattr(artifacts, "_CHUNK_CHARS", rng.randint(1, 40))
        document = {f"m{i}": value(0) for i in range(rng.randint(0, 6))}
        path = tmp_path / f"r{round_}.json"
        path.write_text(json.dumps(document, indent=rng.choice([None, 1])), encoding="utf-8")
        assert list(stream_artifact(path, whole=())) == expected_items({"metadata": None} | document)[1:]


def test_missing_file_yields_nothing(tmp_path: Path) -> None:
    assert list(stream_artifact(tmp_path / "nope.json")) == []
    assert RunSummary.from_file(tmp_path / "nope.json") == RunSummary()
    assert summarize_manifest(tmp_path / "nope.json") == ManifestSummary()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("", id="empty"),
        pytest.param('{"results": [{"a": 1}, {"b": 2', id="truncated"),
        pytest.param('{"results": [1, 2,]}', id="trailing-comma"),
        pytest.param("[1, 2]", id="not-an-object"),
        pytest.param('{"a": 1} {"b": 2}', id="trailing-data"),
        pytest.param('{"a" 1}', id="missing-colon"),
        pytest.param('{"a": tru}', id="bad-literal"),
        pytest.param('{"a": "unterminated}', id="unterminated-string"),
    ],
)
def test_corrupt_files_raise_with_the_path(tmp_path: Path, chunk: int, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DbtArtifactException, match="corrupt") as caught:
        list(stream_artifact(path))
    assert caught.value.artifact_path == str(path)


def test_not_utf8_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(DbtArtifactException, match="corrupt"):
        RunSummary.from_file(path)


def test_from_file_equals_from_artifacts(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "run_results.json"
    path.write_text(json.dumps(DOCUMENT), encoding="utf-8")
    streamed = RunSummary.from_file(path)
    assert streamed == RunSummary.from_artifacts(load_artifact(path))
    assert streamed.invocation_id == "abc"
    assert streamed.status_counts == {"error": 1, "fail": 1, "success": 1}
    assert [n.unique_id for n in streamed.failed] == ["model.p.b", "test.p.c"]


def test_summarize_manifest(tmp_path: Path, chunk: int) -> None:
    def node(kind: str, name: str, package: str = "shop", materialized: str | None = None) -> dict[str, Any]:
        config = {"materialized": materialized} if materialized else {}
        return {"resource_type": kind, "package_name": package, "name": name, "config": config, "raw_code": "}]{["}

    manifest = {
        "metadata": {"project_name": "shop", "dbt_version": "1.11.16"},
        "nodes": {
            "model.shop.a": node("model", "a", materialized="table"),
            "model.shop.b": node("model", "b", materialized="view"),
            "model.utils.c": node("model", "c", package="utils", materialized="view"),
            "test.shop.t": node("test", "t"),
            "seed.shop.s": node("seed", "s"),
        },
        "sources": {"source.shop.raw.x": node("source", "x")},
        "macros": {"macro.shop.m": {"name": "m"}, "macro.dbt.n": {"name": "n"}},
        "exposures": {},
        "disabled": {"model.shop.off": [node("model", "off")]},
        "parent_map": {"model.shop.b": ["model.shop.a"]},
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    summary = summarize_manifest(path)
    assert summary.project_name == "shop" and summary.dbt_version == "1.11.16"
    assert summary.resource_counts == {"model": 3, "seed": 1, "source": 1, "test": 1}
    assert summary.package_counts == {"shop": 5, "utils": 1}
    assert summary.materializations == {"table": 1, "view": 2}
    assert summary.macro_count == 2 and summary.disabled_count == 1
    assert summary.node_count == 6


@pytest.mark.parametrize("enabled", [True, False])
def test_load_artifact_restores_the_collector(tmp_path: Path, enabled: bool) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(DOCUMENT), encoding="utf-8")
    (gc.enable if enabled else gc.disable)()
    try:
        assert load_artifact(path) == DOCUMENT
        assert gc.isenabled() is enabled
        (tmp_path / "bad.json").write_text("{", encoding="utf-8")
        with pytest.raises(DbtArtifactException):
            load_artifact(tmp_path / "bad.json")
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_load_artifact_still_reads_what_json_loads_reads(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": "ü"}).encode("utf-8"))
    assert load_artifact(path) == {"a": "ü"}
    path.write_bytes(json.dumps({"a": 1}).encode("utf-16"))
    assert load_artifact(path) == {"a": 1}


def test_a_long_value_is_read_in_growing_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value spanning many chunks is retried a logarithmic number of times, not once per chunk."""
    monkeypatch.setattr(artifacts, "_CHUNK_CHARS", 16)
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"metadata": {"blob": "x" * 100_000}, "results": [1, 2]}), encoding="utf-8")
    reads: list[int] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, *args, **kwargs)
        read = handle.read
        handle.read = lambda size=-1: reads.append(size) or read(size)  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr(Path, "open", counting_open)
    assert [m for m, _, _ in stream_artifact(path)] == ["metadata", "results", "results"]
    assert len(reads) < 20, f"{len(reads)} reads for 100 kB in 16-character chunks"
