"""A remote project's source and version as OpenLineage's sourceCodeLocation job facet."""

from __future__ import annotations

from dlh_airflow_common.dbt.lineage import project_job_facets


def test_a_local_project_has_no_source_code_facet() -> None:
    assert project_job_facets({}) == {}


def test_git_and_object_storage_sources_name_url_and_version() -> None:
    git = project_job_facets({"url": "git+https://h/shop.git@main", "kind": "git", "version": "ab12"})
    facet = git["sourceCodeLocation"]
    assert (facet.type, facet.url, facet.version) == ("git", "git+https://h/shop.git@main", "ab12")
    bundle = project_job_facets({"url": "s3://b/shop.zip", "kind": "archive", "version": "etag:x"})
    assert bundle["sourceCodeLocation"].type == "object_storage"
