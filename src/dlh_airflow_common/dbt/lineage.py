"""OpenLineage datasets of one dbt run, read from its artifacts by openlineage-integration-common.

The parsing, the dataset names and the namespaces (``postgres://host:port``, ``duckdb://<file>``,
``snowflake://<account>``, ...) are OpenLineage's own dbt processing (``DbtLocalArtifactProcessor``,
the code behind ``dbt-ol``); this module only folds its per-node events into the task's inputs and
outputs. Needs the ``openlineage`` extra; without it ``lineage_available()`` is false.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.artifacts import MANIFEST, RUN_RESULTS

logger = logging.getLogger(__name__)

# dbt commands (run_results.json ``args.which``) OpenLineage's dbt processing reads; others have no lineage.
LINEAGE_COMMANDS = frozenset({"run", "build", "seed", "snapshot", "test"})


@dataclass
class DbtLineage:
    """What one dbt task read and wrote, as OpenLineage datasets, plus the dbt run facets."""

    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    run_facets: dict[str, Any] = field(default_factory=dict)
    job_facets: dict[str, Any] = field(default_factory=dict)  # a remote project's source code location

    def names(self) -> tuple[list[str], list[str]]:
        """``namespace/name`` of inputs and outputs, for logs and tests."""
        return (
            [f"{d.namespace}/{d.name}" for d in self.inputs],
            [f"{d.namespace}/{d.name}" for d in self.outputs],
        )


def lineage_available() -> bool:
    try:
        import openlineage.common.provider.dbt.local  # noqa: F401
    except ImportError:
        return False
    return True


def _processor_class() -> type[Any]:
    from openlineage.common.provider.dbt.local import DbtLocalArtifactProcessor

    class _TaskArtifactProcessor(DbtLocalArtifactProcessor):  # type: ignore[misc]
        # `docs generate`, `compile`, ... simply have no lineage: no exception for them.
        should_raise_on_unsupported_command = False
        profile_target: dict[str, Any] | None = None

        def get_dbt_metadata(self) -> tuple[Any, Any, Any, Any]:
            """With a known target (built from an Airflow connection) no profiles.yml has to exist any more."""
            if self.profile_target is None:
                loaded: tuple[Any, Any, Any, Any] = super().get_dbt_metadata()
                return loaded
            manifest = self.load_metadata(self.manifest_path, list(range(2, 13)), self.logger)
            run_results = self.load_metadata(self.run_result_path, list(range(2, 7)), self.logger)
            return manifest, run_results, dict(self.profile_target), _catalog(self)

    return _TaskArtifactProcessor


def project_job_facets(project: Mapping[str, str]) -> dict[str, Any]:
    """A remote project's ``sourceCodeLocation`` job facet (URL and version); none for a local project.

    :param project: ``DbtTaskResult.project``: the URL, kind and version of a remote project.
    """
    if not project:
        return {}
    from openlineage.client.generated.source_code_location_job import SourceCodeLocationJobFacet

    kind = "git" if project.get("kind") == "git" else "object_storage"
    facet = SourceCodeLocationJobFacet(type=kind, url=project["url"], version=project.get("version"))
    return {"sourceCodeLocation": facet}


def build_lineage(
    *,
    project_dir: str | Path,
    target_path: str | Path,
    profile_name: str | None = None,
    target: str | None = None,
    job_namespace: str = "dbt",
    models: Iterable[str] | None = None,
    profile_target: Mapping[str, Any] | None = None,
) -> DbtLineage:
    """Task-level lineage of the run whose artifacts are in ``target_path``.

    Outputs: models and snapshots that were built, and seeds that were loaded. Inputs: sources, seeds not
    loaded by this run and upstream models not built by it (anything that is also an output is left out).
    ``profile_target`` is the dbt target (``type``, ``host``, ``port``, ``path``, ...) the namespace comes from;
    without it the profile is read the way ``dbt-ol`` reads it, from the ``profiles_dir`` recorded in
    run_results.json (a generated profile may be gone by then: deferred runs drop it). Column lineage comes with
    the outputs where OpenLineage can parse the compiled SQL; column types come from catalog.json if the
    run wrote one.
    """
    from openlineage.common.provider.dbt.processor import ModelNode
    from openlineage.common.provider.dbt.utils import PRODUCER
    from openlineage.common.utils import get_from_nullable_chain

    if not all((Path(target_path) / name).is_file() for name in (MANIFEST, RUN_RESULTS)):
        return DbtLineage()  # dbt stopped before running anything (bad project, profile, selector)
    processor = _processor_class()(
        project_dir=str(project_dir),
        profile_name=profile_name,
        target=target,
        target_path=str(target_path),
        producer=PRODUCER,
        job_namespace=job_namespace,
        skip_errors=True,
        logger=logger,
        models=list(models or []),
    )
    processor.profile_target = dict(profile_target) if profile_target is not None else None
    events = processor.parse()
    lineage = DbtLineage()
    if processor.command not in LINEAGE_COMMANDS:
        return lineage
    outputs: dict[tuple[str, str], Any] = {}
    for event in events.completes:
        for dataset in event.outputs or []:
            outputs.setdefault((dataset.namespace, dataset.name), dataset)

    # Seeds: OpenLineage's processing covers models, sources and snapshots; seed datasets are built with its
    # own dataset builder so they are named exactly like the models that read them.
    manifest = getattr(processor, "manifest", None) or processor.load_metadata(
        processor.manifest_path, list(range(2, 13)), logger
    )
    catalog = _catalog(processor)
    run_results = processor.load_metadata(processor.run_result_path, list(range(2, 7)), logger)
    executed: set[str] = set()
    for result in run_results.get("results") or []:
        unique_id = str(result.get("unique_id", ""))
        executed.add(unique_id)
        if unique_id.startswith("seed.") and result.get("status") == "success":
            node = ModelNode(
                type="seed",
                metadata_node=manifest["nodes"][unique_id],
                catalog_node=get_from_nullable_chain(catalog, ["nodes", unique_id]),
            )
            dataset = processor.node_to_output_dataset(node, has_facets=True)
            outputs.setdefault((dataset.namespace, dataset.name), dataset)

    inputs: dict[tuple[str, str], Any] = {}
    for event in events.starts:
        for dataset in event.inputs or []:
            inputs.setdefault((dataset.namespace, dataset.name), dataset)
    parent_map = manifest.get("parent_map") or {}
    for unique_id in sorted(executed):
        if not unique_id.startswith(("model.", "snapshot.")):
            continue
        for parent in parent_map.get(unique_id, []):
            if parent.startswith("seed.") and parent not in executed:
                node = ModelNode(
                    type="seed",
                    metadata_node=manifest["nodes"][parent],
                    catalog_node=get_from_nullable_chain(catalog, ["nodes", parent]),
                )
                dataset = processor.node_to_dataset(node, has_facets=True)
                inputs.setdefault((dataset.namespace, dataset.name), dataset)

    lineage.outputs = list(outputs.values())
    lineage.inputs = [_as_input(d) for key, d in inputs.items() if key not in outputs]
    lineage.run_facets = dict(processor.dbt_run_run_facet())
    return lineage


def _catalog(processor: Any) -> dict[str, Any] | None:
    try:
        catalog: dict[str, Any] = processor.load_metadata(processor.catalog_path, [1], logger)
    except FileNotFoundError:
        return None
    return catalog


def _as_input(dataset: Any) -> Any:
    """OpenLineage's processing builds plain ``Dataset``s for a node's parents; events carry ``InputDataset``."""
    from openlineage.client.event_v2 import InputDataset

    if isinstance(dataset, InputDataset):
        return dataset
    return InputDataset(namespace=dataset.namespace, name=dataset.name, facets=dataset.facets)
