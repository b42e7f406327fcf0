"""The project content hash: what counts, what does not, and the stat memo that spares re-reading files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dlh_airflow_common.task_graph import project_hash as ph
from repo_paths import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "data" / "task_graph_project"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "graphy"))


def test_counts_project_files_not_target_or_logs(project: Path) -> None:
    before = ph.project_hash(project)
    (project / "target").mkdir()
    (project / "target" / "manifest.json").write_text("{}")
    (project / "logs").mkdir()
    (project / "logs" / "dbt.log").write_text("x")
    assert ph.project_hash(project) == before
    rels = [rel for rel, _, _ in ph.project_files(project).files]
    assert "dbt_project.yml" in rels and "models/marts/item_report.sql" in rels and "seeds/raw_items.csv" in rels


@pytest.mark.parametrize("rel", ["models/marts/item_report.sql", "dbt_project.yml", "seeds/raw_kinds.csv"])
def test_content_changes_change_the_hash(project: Path, rel: str) -> None:
    before = ph.project_hash(project)
    with (project / rel).open("a") as handle:
        handle.write("\n")
    assert ph.project_hash(project) != before


def test_new_files_and_selectors_count(project: Path) -> None:
    before = ph.project_hash(project)
    (project / "selectors.yml").write_text("selectors: []\n")
    with_selectors = ph.project_hash(project)
    (project / "models" / "base" / "new.sql").write_text("select 1")
    assert len({before, with_selectors, ph.project_hash(project)}) == 3


def test_vars_file_counts(project: Path) -> None:
    """dbt-core 1.12 reads project vars from vars.yml beside dbt_project.yml."""
    before = ph.project_hash(project)
    (project / "vars.yml").write_text("vars:\n  kind: a\n")
    with_vars = ph.project_hash(project)
    (project / "vars.yml").write_text("vars:\n  kind: b\n")
    assert len({before, with_vars, ph.project_hash(project)}) == 3


def test_mtime_alone_keeps_the_hash_and_the_memo_skips_reading(project: Path, tmp_path: Path) -> None:
    memo = tmp_path / "memo"
    first = ph.project_hash(project, memo_dir=memo)
    model = project / "models" / "marts" / "item_report.sql"
    os.utime(model, ns=(1, 1))
    assert ph.project_hash(project, memo_dir=memo) == first  # stats changed: re-hashed, same content

    def no_reading(self: ph.ProjectFiles) -> str:
        raise AssertionError("files read although no stat changed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ph.ProjectFiles, "content_hash", no_reading)
        assert ph.project_hash(project, memo_dir=memo) == first


def test_custom_model_paths_are_followed(project: Path) -> None:
    (project / "models").rename(project / "sql")
    text = (project / "dbt_project.yml").read_text().replace('["models"]', '["sql"]')
    (project / "dbt_project.yml").write_text(text)
    rels = [rel for rel, _, _ in ph.project_files(project).files]
    assert "sql/marts/item_report.sql" in rels
