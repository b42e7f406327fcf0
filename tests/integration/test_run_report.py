"""The run report of a real failing ``dbt build`` on DuckDB: written into the try's target, naming the failed node
with its compiled SQL; and, where Chromium is installed, the page's DOM once its script has run."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from dlh_airflow_common.dbt.run_report import RUN_REPORT_FILE
from dlh_airflow_common.exceptions.dbt import DbtRuntimeException
from dlh_airflow_common.hooks.dbt import DbtHook

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
SCHEMA = """
version: 2
models:
  - name: good
    columns:
      - name: id
        data_tests:
          - not_null
          - unique:
              config: {severity: warn}
"""


@pytest.fixture
def failing_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four models on two threads: one fails at run time (a table, so DuckDB evaluates it), one is skipped after
    it; a failing and a warning test."""
    project = tmp_path / "proj"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: reported\nversion: '1.0'\nprofile: reported\n")
    models = {
        "good": "select 1 as id union all select 1 union all select null",
        "other": "{{ config(materialized='table') }} select 2 as id",
        "bad": "{{ config(materialized='table') }} select * from no_such_table where '</script>' <> ''",
        "after_bad": "select * from {{ ref('bad') }}",
    }
    for name, sql in models.items():
        (project / "models" / f"{name}.sql").write_text(sql + "\n")
    (project / "models" / "schema.yml").write_text(SCHEMA)
    conn = {"conn_type": "duckdb", "host": str(tmp_path / "reported.duckdb")}
    monkeypatch.setenv("AIRFLOW_CONN_REPORT_DUCKDB", json.dumps(conn))
    return project


def test_a_failed_build_leaves_a_report_naming_the_failed_node(failing_project: Path) -> None:
    hook = DbtHook(failing_project, conn_id="report_duckdb", keep_target_artifacts=True, retry_limit=1)
    with pytest.raises(DbtRuntimeException) as raised:
        hook.run_dbt_task("build", threads=2)
    result = raised.value.result
    assert result is not None
    page_file = Path(result.target_path) / RUN_REPORT_FILE
    page = page_file.read_text(encoding="utf-8")

    assert '<dd id="result" class="failed">failed</dd>' in page and '<dd id="command">dbt build</dd>' in page
    failure = re.search(r'<article class="failure" data-unique-id="model.reported.bad">(.*?)</article>', page, re.S)
    assert failure, "the failed model has its article"
    assert "no_such_table" in failure.group(1) and '<p class="file">models/bad.sql</p>' in failure.group(1)
    sql = re.search(r'<pre class="compiled-sql">(.*?)</pre>', failure.group(1), re.S)
    assert sql and "from no_such_table where &#x27;&lt;/script&gt;&#x27;" in sql.group(1), "compiled SQL, escaped"
    assert 'data-unique-id="test.reported.not_null_good_id.' in page, "the failing test has its article"
    assert '<p class="failures">1 failing row</p>' in page
    assert '<dd data-status="skipped">1</dd>' in page and '<dd data-status="warn">1</dd>' in page
    assert re.search(r'<dd id="adapter">duckdb \d', page), "the adapter's version from dbt.log"
    assert f'<dd id="invocation-id">{result.summary.invocation_id}</dd>' in page
    assert page.count("</script>") == 2

    if not CHROMIUM.is_file():
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing: the page's script is not checked")
    dom = _rendered(page_file, failing_project.parent / "chromium-profile")
    lanes = re.findall(r'<div class="lane" data-thread="([^"]+)">', dom)
    assert sorted(lanes) == ["Thread-1 (worker)", "Thread-2 (worker)"], "one lane per thread dbt used"
    bars = re.findall(r'<div class="bar[^"]*" data-unique-id="([^"]+)" data-status="([^"]+)"', dom)
    rows = re.findall(r'<tr data-unique-id="([^"]+)" data-status="([^"]+)"( class="failed")?', dom)
    assert len(rows) == result.summary.node_count == len(bars)
    assert ("model.reported.bad", "error", ' class="failed"') in rows
    assert ("model.reported.bad", "error") in bars


def _rendered(page_file: Path, profile: Path) -> str:
    """The DOM after the page's script ran, from headless Chromium (no network, throwaway profile)."""
    argv = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--dump-dom", page_file.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
