"""DbtOperator's after-run step: argument checks, link URLs, lenient vs strict upload, docs flag, lineage hand-off."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from dlh_airflow_common.dbt.artifacts import RunSummary
from dlh_airflow_common.dbt.lineage import DbtLineage
from dlh_airflow_common.dbt.storage import UploadReport
from dlh_airflow_common.exceptions.dbt import DbtArtifactException, DbtRuntimeException
from dlh_airflow_common.hooks.dbt import DbtTaskResult
from dlh_airflow_common.operators import after_run
from dlh_airflow_common.operators.dbt import DbtOperator

WHO = after_run.RunIdentity("shop", "dbt_build", "manual__2025-01-01T00:00:00+00:00", 1)
LOG = logging.getLogger("test_after_run")


def _result(tmp_path: Path, command: str = "build", **overrides: Any) -> DbtTaskResult:
    run_dir = tmp_path / "run"
    (run_dir / "target").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / "target" / "run_results.json").write_text('{"results": []}')
    run_results = {"results": [{"unique_id": "seed.shop.raw"}, {"unique_id": "model.shop.stg"}]}
    fields: dict[str, Any] = {
        "success": True,
        "command": command,
        "return_code": 0,
        "summary": RunSummary.from_artifacts(run_results),
        "target_path": str(run_dir / "target"),
        "run_dir": str(run_dir),
        "elapsed_seconds": 1.0,
        **overrides,
    }
    return DbtTaskResult(**fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"upload_artifacts": True}, "need artifacts_destination or artifacts_bucket"),
        ({"publish_docs": True}, "need artifacts_destination or artifacts_bucket"),
        ({"artifacts_destination": "s3://a", "artifacts_bucket": "b"}, "not both"),
    ],
)
def test_operator_refuses_incomplete_upload_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DbtOperator(task_id="t", dbt_project_dir="/p", **kwargs)


def test_new_arguments_keep_their_defaults() -> None:
    op = DbtOperator(task_id="t", dbt_project_dir="/p")
    assert not any((op.upload_artifacts, op.artifacts_gzip, op.artifacts_strict, op.publish_docs))
    assert op.dbt_docs_url is None and op.artifacts_url is None
    assert DbtOperator(task_id="u", dbt_project_dir="/p", publish_docs=True, artifacts_bucket="b").upload_artifacts


def test_record_links_with_configured_docs_and_browse_urls(tmp_path: Path) -> None:
    settings = after_run.ArtifactSettings(
        upload=True, destination="s3://b/p", base_url="https://h/b", docs_url="https://d/"
    )
    report = UploadReport(location="s3://b/p/shop/dbt_build/r/try_1", relative_path="shop/dbt_build/r/try_1")
    result = _result(tmp_path)
    after_run.record_links(settings, result, report)
    assert result.extra == {
        "docs_url": "https://d/#!/model/model.shop.stg",
        "artifacts_url": "https://h/b/shop/dbt_build/r/try_1/",
    }


def test_record_links_points_at_the_uploaded_run_report(tmp_path: Path) -> None:
    report = UploadReport(location="s3://b/p/try_1", relative_path="d/t/r/try_1",
                          report_location="s3://b/p/try_1/run_report.html")  # fmt: skip
    plain = _result(tmp_path)
    after_run.record_links(after_run.ArtifactSettings(upload=True, destination="s3://b/p"), plain, report)
    assert plain.extra["report_url"] == "s3://b/p/try_1/run_report.html"
    browsed = _result(tmp_path)
    settings = after_run.ArtifactSettings(upload=True, destination="s3://b/p", base_url="https://h/b")
    after_run.record_links(settings, browsed, report)
    assert browsed.extra["report_url"] == "https://h/b/d/t/r/try_1/run_report.html"


def test_record_links_prefers_the_ui_plugins_page_for_a_report_under_its_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__DLH_DBT__ARTIFACTS_ROOTS", "s3://aws_artifacts@b/p")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example")
    who = after_run.RunIdentity("d", "t", "manual__1", 2)
    served = UploadReport(location="s3://b/p/d/t/r/try_2", relative_path="d/t/r/try_2",
                          report_location="s3://b/p/d/t/r/try_2/run_report.html")  # fmt: skip
    result = _result(tmp_path)
    after_run.record_links(after_run.ArtifactSettings(upload=True, destination="s3://b/p"), result, served, who)
    assert result.extra["report_url"] == (
        "https://airflow.example/dbt/report?dag_id=d&run_id=manual__1&task_id=t&map_index=-1&try_number=2"
    )
    elsewhere = UploadReport(location="s3://other/x/try_2", relative_path="d/t/r/try_2",
                             report_location="s3://other/x/try_2/run_report.html")  # fmt: skip
    outside = _result(tmp_path)
    after_run.record_links(after_run.ArtifactSettings(upload=True, destination="s3://other/x"), outside, elsewhere, who)
    assert outside.extra["report_url"] == "s3://other/x/try_2/run_report.html", "the plugin would not serve it"


def test_record_links_without_configuration(tmp_path: Path) -> None:
    result = _result(tmp_path)
    after_run.record_links(after_run.ArtifactSettings(), result, None)
    assert result.extra == {}
    report = UploadReport(location="file:///x/try_1", relative_path="try_1", docs_location="file:///x/try_1/index.html")
    docs = _result(tmp_path, command="docs generate")
    after_run.record_links(after_run.ArtifactSettings(upload=True, destination="/x"), docs, report)
    assert docs.extra == {"docs_url": "file:///x/try_1/index.html", "artifacts_url": "file:///x/try_1"}


def test_lenient_upload_failure_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    result = _result(tmp_path)
    settings = after_run.ArtifactSettings(upload=True, destination=str(blocked))
    assert after_run.upload(settings, WHO, result, LOG) is None
    assert result.success is True and result.error is None
    assert "failed" in result.extra["artifacts"]["error"]
    assert "the task result is not affected" in caplog.text


def test_strict_upload_failure_fails_a_successful_run(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    result = _result(tmp_path)
    after_run.upload(after_run.ArtifactSettings(upload=True, destination=str(blocked), strict=True), WHO, result, LOG)
    assert result.success is False
    assert isinstance(result.error, DbtArtifactException) and result.error.retryable


def test_strict_upload_failure_keeps_dbts_own_error(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    dbt_error = DbtRuntimeException("model failed")
    result = _result(tmp_path, success=False, error=dbt_error)
    after_run.upload(after_run.ArtifactSettings(upload=True, destination=str(blocked), strict=True), WHO, result, LOG)
    assert result.error is dbt_error


def test_successful_upload_records_the_report(tmp_path: Path) -> None:
    result = _result(tmp_path)
    settings = after_run.ArtifactSettings(upload=True, destination=str(tmp_path / "dest"))
    report = after_run.upload(settings, WHO, result, LOG)
    assert report is not None
    expected = tmp_path / "dest" / "shop" / "dbt_build" / "manual__2025-01-01T00_00_00_00_00" / "try_1"
    assert (expected / "run_results.json").is_file()
    assert result.extra["artifacts"]["location"] == expected.as_uri()


@pytest.mark.parametrize(
    ("command", "publish", "static"),
    [
        ("docs generate", True, True),
        ("docs  generate", True, True),
        ("docs generate", False, False),
        ("build", True, False),
    ],
)
def test_pre_execute_asks_dbt_for_static_docs(command: str, publish: bool, static: bool) -> None:
    op = DbtOperator(task_id="t", dbt_project_dir="/p", dbt_command=command, publish_docs=publish,
                     artifacts_destination="/tmp/x")  # fmt: skip
    op.pre_execute({})
    op.pre_execute({})
    assert op.dbt_args.count("--static") == (1 if static else 0)


def test_openlineage_facets_come_from_the_after_run_step() -> None:
    from openlineage.client.event_v2 import InputDataset, OutputDataset

    op = DbtOperator(task_id="t", dbt_project_dir="/p")
    empty = op.get_openlineage_facets_on_complete(None)
    assert (empty.inputs, empty.outputs) == ([], [])
    op._lineage = DbtLineage(
        inputs=[InputDataset(namespace="postgres://h:5432", name="db.raw.orders")],
        outputs=[OutputDataset(namespace="postgres://h:5432", name="db.mart.orders")],
    )
    failed = op.get_openlineage_facets_on_failure(None)
    assert [d.name for d in failed.inputs] == ["db.raw.orders"]
    assert [d.name for d in failed.outputs] == ["db.mart.orders"]


def test_disabled_openlineage_never_imports_its_dbt_integration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dbt integration's import costs about a second of worker slot: a disabled provider must not pay it."""
    from airflow.providers.openlineage.conf import is_disabled

    from dlh_airflow_common.dbt import lineage as lineage_module

    forget = getattr(is_disabled, "cache_clear", lambda: None)  # cached per process outside test mode

    def imported() -> bool:
        raise AssertionError("lineage_available() was called although OpenLineage is disabled")

    monkeypatch.setattr(lineage_module, "lineage_available", imported)
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__DISABLED", "True")
    forget()
    assert after_run.openlineage_enabled() is False
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__DISABLED", "False")
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", '{"type": "console"}')
    monkeypatch.setattr(lineage_module, "lineage_available", lambda: True)
    forget()
    try:
        assert after_run.openlineage_enabled() is True
    finally:
        forget()


def test_lineage_is_skipped_when_openlineage_is_not_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__DISABLED", "True")
    assert after_run.openlineage_enabled() is False
    assert after_run.lineage(_result(tmp_path), project_dir="/p", profile_name=None, target=None, log=LOG) is None
