"""The dbt Docs / dbt Artifacts / dbt Run Report links: URL building, reading the task's summary, registration
with Airflow."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from dlh_airflow_common import get_provider_info
from dlh_airflow_common.links import dbt as links
from dlh_airflow_common.operators.dbt import XCOM_SUMMARY_KEY, DbtOperator


@pytest.mark.parametrize(
    ("base", "node", "url"),
    [
        ("https://docs.example.test/", "model.shop.orders", "https://docs.example.test/#!/model/model.shop.orders"),
        ("https://docs.example.test", "snapshot.shop.s", "https://docs.example.test/#!/snapshot/snapshot.shop.s"),
        ("file:///d/index.html", "model.shop.orders", "file:///d/index.html#!/model/model.shop.orders"),
        ("https://d.test/#!/overview", "model.a.b", "https://d.test/#!/model/model.a.b"),
        ("https://docs.example.test/", None, "https://docs.example.test/"),
    ],
)
def test_docs_url_deep_links_to_a_node(base: str, node: str | None, url: str) -> None:
    assert links.docs_url(base, node) == url


def test_first_model_prefers_models_over_seeds_and_tests() -> None:
    ids = ["seed.shop.raw", "test.shop.t", "snapshot.shop.s", "model.shop.stg", "model.shop.orders"]
    assert links.first_model(ids) == "model.shop.stg"
    assert links.first_model(["test.shop.t", "seed.shop.raw"]) == "seed.shop.raw"
    assert links.first_model(["test.shop.t"]) is None


def test_summary_key_is_the_operators() -> None:
    assert links.SUMMARY_XCOM_KEY == XCOM_SUMMARY_KEY


def test_links_are_registered_with_the_provider_and_the_operator() -> None:
    names = []
    for path in get_provider_info()["extra-links"]:
        module, _, cls = path.rpartition(".")
        names.append(getattr(importlib.import_module(module), cls)().name)
    assert names == ["dbt Docs", "dbt Artifacts", "dbt Run Report"]
    assert [link.name for link in DbtOperator.operator_extra_links] == names
    keys = {link.xcom_key for link in DbtOperator.operator_extra_links}
    expected = {"_link_DbtDocsLink", "_link_DbtArtifactsLink", "_link_DbtRunReportLink"}
    assert keys == expected, "Airflow stores each link's URL under its key"


class _Key:
    dag_id, task_id, run_id, map_index = "d", "t", "r", -1


def _patch_xcom(monkeypatch: pytest.MonkeyPatch, value: Any) -> list[dict[str, Any]]:
    from airflow.sdk.execution_time.xcom import XCom

    calls: list[dict[str, Any]] = []

    def get_value(*, ti_key: Any, key: str) -> Any:
        calls.append({"ti_key": ti_key, "key": key})
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(XCom, "get_value", get_value)
    return calls


def test_links_read_the_summary_the_task_pushed(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = {"docs_url": "https://docs/#!/model/m", "artifacts_url": "s3://b/p/try_1",
              "report_url": "s3://b/p/try_1/run_report.html"}  # fmt: skip
    calls = _patch_xcom(monkeypatch, stored)
    operator = DbtOperator(task_id="t", dbt_project_dir="/p", dbt_docs_url="https://docs/")
    operator.summary_pushed = True  # as after the task's _finish; the api-server's operator has no such attribute
    assert links.DbtDocsLink().get_link(operator, ti_key=_Key()) == "https://docs/#!/model/m"  # type: ignore[arg-type]
    assert links.DbtArtifactsLink().get_link(operator, ti_key=_Key()) == "s3://b/p/try_1"  # type: ignore[arg-type]
    report = links.DbtRunReportLink().get_link(operator, ti_key=_Key())  # type: ignore[arg-type]
    assert report == "s3://b/p/try_1/run_report.html"
    assert calls[0]["key"] == "dbt_summary"


@pytest.mark.parametrize("stored", [None, "not a dict", RuntimeError("no XCom API here")])
def test_links_fall_back_to_configuration_then_empty(monkeypatch: pytest.MonkeyPatch, stored: Any) -> None:
    _patch_xcom(monkeypatch, stored)
    configured = DbtOperator(
        task_id="t", dbt_project_dir="/p", dbt_docs_url="https://docs/", artifacts_url="https://browse/"
    )
    assert links.DbtDocsLink().get_link(configured, ti_key=_Key()) == "https://docs/"  # type: ignore[arg-type]
    assert links.DbtArtifactsLink().get_link(configured, ti_key=_Key()) == "https://browse/"  # type: ignore[arg-type]
    bare = DbtOperator(task_id="t2", dbt_project_dir="/p")
    assert links.DbtDocsLink().get_link(bare, ti_key=_Key()) == ""  # type: ignore[arg-type]
    assert links.DbtArtifactsLink().get_link(bare, ti_key=_Key()) == ""  # type: ignore[arg-type]
    assert links.DbtRunReportLink().get_link(configured, ti_key=_Key()) == "", "no upload, no report link"  # type: ignore[arg-type]


def test_a_task_that_pushed_no_summary_does_not_look_one_up(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _patch_xcom(monkeypatch, {"docs_url": "https://stale/"})
    operator = DbtOperator(task_id="t", dbt_project_dir="/p", dbt_docs_url="https://docs/")
    assert operator.summary_pushed is False
    assert links.DbtDocsLink().get_link(operator, ti_key=_Key()) == "https://docs/"  # type: ignore[arg-type]
    assert links.DbtRunReportLink().get_link(operator, ti_key=_Key()) == ""  # type: ignore[arg-type]
    assert calls == [], "no XCom request (the SDK client logs a missing XCom at error level)"
