"""Airflow Assets of a task graph's models, seeds and snapshots, named as OpenLineage names their relations.

The namespace (``postgres://host:port``, ``duckdb://<path>``, ``snowflake://<account>``...) is OpenLineage's own
for the dbt target (``openlineage-integration-common``). It is worked out when the graph file is built, since
the target needs the Airflow connection or the profiles file, which DAG parsing must not read, and kept in
the file. A node's asset URI is ``<namespace>/<database>/<schema>/<alias>``: the form Airflow's providers give
a table (``postgres://host:port/db/schema/table``), which Airflow's OpenLineage translation turns back into
OpenLineage's ``namespace`` and ``database.schema.alias``: the asset graph and the lineage name one table alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dlh_airflow_common.dbt.profiles_file import PROFILES_FILE
from dlh_airflow_common.task_graph.graph_file import GraphNode

logger = logging.getLogger(__name__)


def dataset_namespace(target: Mapping[str, Any]) -> str | None:
    """OpenLineage's dataset namespace for a dbt target (its ``type``, ``host``, ``port``, ``path``...); None
    when OpenLineage is not installed or does not know the adapter."""
    try:
        from openlineage.common.provider.dbt.processor import DbtArtifactProcessor
        from openlineage.common.provider.dbt.utils import PRODUCER
    except ImportError:
        return None
    processor = DbtArtifactProcessor(producer=PRODUCER, job_namespace="dbt", logger=logger)
    try:
        processor.extract_adapter_type(target)
        return str(processor.extract_namespace(target))
    except (NotImplementedError, KeyError, TypeError) as err:
        logger.info("No OpenLineage namespace for dbt adapter %r: %s", target.get("type"), err)
        return None


def profiles_file_target(
    project_dir: str | os.PathLike[str], profiles_dir: str | None, target: str | None
) -> Mapping[str, Any] | None:
    """The target of a user's own ``profiles.yml`` as dbt would pick it (``env_var()`` resolved), or None.

    :param project_dir: The dbt project (its ``profile`` names the profile).
    :param profiles_dir: The hook's ``profiles_dir``; default the project's own file, ``DBT_PROFILES_DIR``,
        then ``~/.dbt``, as dbt looks.
    :param target: The target to pick; default the profile's own ``target``.
    """
    try:
        from openlineage.common.provider.dbt.local import DbtLocalArtifactProcessor
        from openlineage.common.provider.dbt.utils import PRODUCER
    except ImportError:
        return None
    project = Path(project_dir)
    looked: list[str | None] = [str(project), os.environ.get("DBT_PROFILES_DIR"), "~/.dbt"]
    candidates = [profiles_dir] if profiles_dir else looked
    files = [Path(folder).expanduser() / PROFILES_FILE for folder in candidates if folder]
    found = next((file for file in files if file.is_file()), None)
    if found is None:
        return None
    try:
        reader = DbtLocalArtifactProcessor(project_dir=str(project), producer=PRODUCER, job_namespace="dbt")
        profile = reader.load_yaml_with_jinja(str(found))[reader.profile_name]
        chosen: Mapping[str, Any] = profile["outputs"][target or profile["target"]]
    except Exception as err:  # a profile dbt itself would refuse: the run says so, the assets just go
        logger.info("Could not read the dbt target from %s for asset names: %s", found, err)
        return None
    return chosen


def dataset_name(node: GraphNode) -> str | None:
    """OpenLineage's dataset name of the node's relation (``database.schema.alias``), None without a relation."""
    parts = _relation_parts(node)
    return ".".join(parts) if parts else None


def asset_uri(namespace: str, node: GraphNode) -> str | None:
    """The node's asset URI, ``<namespace>/<database>/<schema>/<alias>``; None for a node without a relation.

    :param namespace: OpenLineage's namespace; one without a scheme (BigQuery's ``bigquery``) becomes one.
    :param node: A model, seed or snapshot of the graph file.
    """
    parts = _relation_parts(node)
    if not parts:
        return None
    path = "/".join(quote(part, safe="") for part in parts)
    return f"{namespace.rstrip('/')}/{path}" if "://" in namespace else f"{namespace}://{path}"


def node_assets(namespace: str | None, node: GraphNode) -> list[Any]:
    """The outlets of a node's task: its relation as an ``Asset`` (none for tests, ephemeral models, or a
    graph built without a namespace)."""
    uri = asset_uri(namespace, node) if namespace else None
    if uri is None:
        return []
    from airflow.sdk import Asset

    return [Asset(name=uri, uri=uri)]


def _relation_parts(node: GraphNode) -> list[str]:
    relation = node.relation
    if relation is None or node.ephemeral:
        return []
    table = relation.alias or relation.identifier or node.name
    return [part for part in (relation.database, relation.schema, table) if part]


def target_namespace(
    project_dir: str | os.PathLike[str],
    *,
    rendered_target: Mapping[str, Any] | None,
    profiles_dir: str | None,
    target: str | None,
) -> str | None:
    """The namespace of the target a run uses: the one rendered from an Airflow connection, else the user's
    own profiles file's (``profiles_file_target``).

    :param project_dir: The dbt project.
    :param rendered_target: The target rendered from the hook's ``conn_id`` (None without one).
    :param profiles_dir: The hook's ``profiles_dir``.
    :param target: The hook's ``target``.
    """
    chosen = rendered_target if rendered_target is not None else profiles_file_target(project_dir, profiles_dir, target)
    return dataset_namespace(chosen) if chosen is not None else None
