"""The plugin's own pages escape every value and name what is missing."""

from __future__ import annotations

from dlh_airflow_common.plugins import pages


def test_values_are_escaped() -> None:
    what = pages.describe_try("<d>", "r&1", "t", 2, 3)
    assert "&lt;d&gt;" in what and "r&amp;1" in what and "map index 2, try 3" in what
    page = pages.report_missing(what, "<b>running</b>", "<script>x</script>", "hint")
    assert "<script>x" not in page and "&lt;b&gt;running" in page and 'id="message"' in page


def test_an_unmapped_try_has_no_map_index() -> None:
    assert "map index" not in pages.describe_try("d", "r", "t", -1, 1)


def test_docs_chooser_links_each_task() -> None:
    page = pages.docs_chooser([pages.PublishedDocs("a b", "docs", "2026-12-02 04:00 UTC")])
    assert '<a href="?dag_id=a+b&amp;task_id=docs">' in page and "2026-12-02 04:00 UTC" in page
