"""DbtTaskGroup and DbtDag: a dbt project as Airflow tasks, rendered from the cached graph file without dbt.

``one_process`` (default): one ``dbt_build`` task runs ``dbt build`` for the whole selection, detached; each
node task follows its node's result through the build's run channel. ``per_node``: each node task runs
``dbt build`` of its node and the tests placed with it. Airflow dependencies between node tasks mirror dbt's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal, get_args

from airflow.sdk import DAG, TaskGroup

from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.task_graph.assets import node_assets
from dlh_airflow_common.task_graph.build import ensure_graph, graph_cache_root, require_graph
from dlh_airflow_common.task_graph.graph_file import GraphFile, GraphNode, Selection
from dlh_airflow_common.task_graph.operators import DbtGraphBuildOperator, DbtNodeOperator
from dlh_airflow_common.task_graph.render import RenderedGraph, TaskSpec, TestBehavior, render

ExecutionMode = Literal["one_process", "per_node"]
EXECUTION_MODES: tuple[str, ...] = get_args(ExecutionMode)
BUILD_TASK_ID = "dbt_build"
_TEST_RESOURCE_TYPES = ("resource_type:test", "resource_type:unit_test")
_OWN_ARGUMENTS = frozenset({"dbt_project_dir", "dbt_command", "dbt_models", "exclude", "selector", "task_id"})


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def load_graph(
    dbt_project_dir: str,
    selection: Selection,
    *,
    run_dir_root: str | None = None,
    graph_cache_dir: str | None = None,
    build_graph_at_parse: bool = False,
    allow_stale_graph: bool = False,
    hook_kwargs: Mapping[str, Any] | None = None,
) -> GraphFile:
    """The project's graph file for ``selection``: the cached one, or (``build_graph_at_parse``) built once
    under a lock with ``dbt ls``; a missing or stale one otherwise raises, naming the command to run, unless
    ``allow_stale_graph`` lets a stale one serve until it is refreshed."""
    root = graph_cache_root(dbt_project_dir, run_dir_root, graph_cache_dir)
    if not build_graph_at_parse:
        return require_graph(dbt_project_dir, selection, root, allow_stale=allow_stale_graph)
    from dlh_airflow_common.task_graph.cli import hook_lister

    lister = hook_lister(dbt_project_dir=dbt_project_dir, run_dir_root=run_dir_root, cache_dir=graph_cache_dir,
                         **dict(hook_kwargs or {}))  # fmt: skip
    return ensure_graph(dbt_project_dir, selection, lister, root).graph


def node_selector(node: GraphNode) -> str:
    """dbt's selector for exactly this node: its fully qualified name."""
    return "fqn:" + ".".join(node.fqn) if node.fqn else node.name


def add_graph_tasks(
    graph: GraphFile,
    *,
    dbt_project_dir: str,
    execution_mode: ExecutionMode = "one_process",
    test_behavior: TestBehavior = "after_each",
    group_by_folder: bool = False,
    operator_args: Mapping[str, Any] | None = None,
    build_args: Mapping[str, Any] | None = None,
    model_assets: bool = True,
    graph_cache_dir: str | None = None,
    node_tasks_in_triggerer: bool = True,
) -> dict[str, Any]:
    """Create the graph's tasks in the current DAG or task group; returns them by id (``dbt_build`` included).

    :param graph: The graph file (``load_graph``).
    :param dbt_project_dir: The dbt project.
    :param execution_mode: ``one_process`` or ``per_node``.
    :param test_behavior: ``after_each``, ``after_all`` or ``none`` (see ``render``).
    :param group_by_folder: Nest node tasks in task groups named after their folders.
    :param operator_args: ``DbtOperator`` arguments for every task (connection, target, vars, retries...).
    :param build_args: Arguments for the ``dbt_build`` task only, over ``operator_args`` (its ``retries``,
        ``execution_timeout``, ``pool``...).
    :param model_assets: Give each model, seed and snapshot task its relation as an Airflow Asset outlet
        (``assets.asset_uri``), when the graph file knows the target's OpenLineage namespace.
    :param graph_cache_dir: The graph file's cache root, for the build task to refresh the file after a
        successful run once the project changed.
    :param node_tasks_in_triggerer: In ``one_process`` mode on Airflow >= 3.3, deferrable node tasks start in
        the triggerer and, without outlets, end there (``DbtNodeOperator``'s ``start_in_triggerer``).
    """
    if execution_mode not in EXECUTION_MODES:
        raise DbtException(f"execution_mode must be one of {', '.join(EXECUTION_MODES)}, not {execution_mode!r}.")
    args = dict(operator_args or {})
    clash = sorted(_OWN_ARGUMENTS & (set(args) | set(build_args or {})))
    if clash:
        raise DbtException(f"operator_args may not set {', '.join(clash)}: the task graph sets them per task.")
    rendered = render(graph, test_behavior=test_behavior, group_by_folder=group_by_folder)
    selection = graph.selection
    tasks: dict[str, Any] = {}
    build = None
    if execution_mode == "one_process":
        exclude = [*selection.exclude, *(_TEST_RESOURCE_TYPES if test_behavior == "none" else ())]
        build_id = _free_id(BUILD_TASK_ID, rendered)
        build = DbtGraphBuildOperator(
            task_id=build_id, dbt_project_dir=dbt_project_dir, dbt_command="build",
            dbt_models=list(selection.select) or None, exclude=exclude or None, selector=selection.selector,
            graph_selection=selection, graph_cache_dir=graph_cache_dir, **{**args, **dict(build_args or {})},
        )  # fmt: skip
        tasks[build_id] = build
    nodes = graph.by_id()
    namespace = graph.dataset_namespace if model_assets else None
    groups: dict[tuple[str, ...], TaskGroup] = {}
    waiting: dict[str, list[Any]] = {}
    for spec in rendered.tasks:
        with _group_for(spec.group, groups):
            own = dict(args)
            if spec.node_id and namespace:
                own["outlets"] = [*node_assets(namespace, nodes[spec.node_id]), *(args.get("outlets") or ())]
            own["start_in_triggerer"] = node_tasks_in_triggerer
            tasks[spec.full_id] = _node_task(spec, nodes, selection, dbt_project_dir, build, own, test_behavior)
        _link(spec, tasks, waiting)
    return tasks


def _link(spec: TaskSpec, tasks: Mapping[str, Any], waiting: dict[str, list[Any]]) -> None:
    """Set a new task's dependencies on the tasks created before it, and of the tasks that waited for it.

    Airflow hashes the whole DAG once for every task in a ``set_upstream``/``>>`` call: one call per task and
    direction, made while the DAG is still growing, hashes fewer and smaller DAGs than one ``>>`` per edge at the end.
    """
    task = tasks[spec.full_id]
    created = [tasks[upstream] for upstream in spec.upstream if upstream in tasks]
    for upstream in spec.upstream:
        if upstream not in tasks:
            waiting.setdefault(upstream, []).append(task)
    if created:
        task.set_upstream(created)
    later = waiting.pop(spec.full_id, None)
    if later:
        task.set_downstream(later)


def _node_task(
    spec: TaskSpec,
    nodes: Mapping[str, GraphNode],
    selection: Selection,
    project: str,
    build: DbtGraphBuildOperator | None,
    args: Mapping[str, Any],
    test_behavior: TestBehavior,
) -> DbtNodeOperator:
    """A node task; its own selection (used in ``per_node`` mode and by a retry after the build ended)."""
    if spec.kind == "tests" and test_behavior == "after_all":  # the selection's tests, as dbt selects them
        command, select, exclude, extra = "test", list(selection.select) or None, list(selection.exclude) or None, []
        selector = selection.selector
    else:
        members = [spec.node_id, *spec.tests] if spec.node_id else list(spec.tests)
        command, select, exclude, selector = "build", [node_selector(nodes[uid]) for uid in members], None, None
        extra = ["--indirect-selection", "empty"]
    own_args = dict(args)
    if build is not None:  # following the build: wait in the triggerer unless told otherwise
        own_args.setdefault("deferrable", True)
    own_args["dbt_args"] = [*(own_args.get("dbt_args") or ()), *extra]
    return DbtNodeOperator(
        task_id=spec.task_id, dbt_node_id=spec.node_id, dbt_tests=spec.tests,
        build_task_id=build.task_id if build is not None else None,
        dbt_project_dir=project, dbt_command=command, dbt_models=select, exclude=exclude, selector=selector,
        **own_args,
    )  # fmt: skip


def _group_for(path: tuple[str, ...], groups: dict[tuple[str, ...], TaskGroup]) -> Any:
    """The nested task group for a folder path (created once, parents first); a no-op context for none."""
    if not path:
        return nullcontext()
    if path not in groups:
        parent = _group_for(path[:-1], groups) if len(path) > 1 else nullcontext()
        with parent:
            groups[path] = TaskGroup(group_id=path[-1])
    return groups[path]


def _free_id(wanted: str, rendered: RenderedGraph) -> str:
    taken = {task.full_id for task in rendered.tasks}
    candidate, number = wanted, 1
    while candidate in taken:
        number += 1
        candidate = f"{wanted}_{number}"
    return candidate


class DbtTaskGroup(TaskGroup):
    """A dbt project (or a selection of it) as a task group: a task per model, seed and snapshot.

    Reads the project's cached graph file at DAG-parse time: no dbt runs and no manifest is decoded. Build the
    file with ``dlh-dbt graph`` (or set ``build_graph_at_parse``); a missing or stale file is an import error
    naming the command.

    :param group_id: The task group's id.
    :param dbt_project_dir: The dbt project (the directory holding ``dbt_project.yml``).
    :param select: dbt ``--select`` of the nodes that become tasks (dbt resolves it, at graph build time).
    :param exclude: dbt ``--exclude``.
    :param selector: dbt ``--selector`` from ``selectors.yml``.
    :param target: The dbt target (part of the graph's cache key).
    :param conn_id: Airflow connection rendered into the dbt profile (as for ``DbtOperator``).
    :param profiles_dir: Your own ``profiles.yml`` directory instead of ``conn_id``.
    :param venv_path: A virtualenv whose dbt runs.
    :param run_dir_root: Where run dirs and the caches (graph file included) live; default ``<project>/target``.
    :param execution_mode: ``one_process`` (one ``dbt build``, node tasks follow it) or ``per_node``.
    :param test_behavior: ``after_each`` (tests with their node, as ``dbt build``), ``after_all`` or ``none``.
    :param group_by_folder: Nest node tasks in task groups named after their folders.
    :param graph_cache_dir: The cache root of the graph file (default ``<run_dir_root>/.dlh_cache``).
    :param build_graph_at_parse: Build a missing or stale graph file while parsing (runs ``dbt ls`` once, under
        a lock): convenient in development, slow for a DAG processor.
    :param allow_stale_graph: When the project changed since its graph file was built, keep the last file (a
        warning) rather than fail the import; the ``dbt_build`` task refreshes it after its next successful run.
    :param operator_args: More ``DbtOperator`` arguments for every task (``dbt_vars``, ``threads``,
        ``deferrable``, ``check_interval``, ``run_channel``, ``retries``...).
    :param build_args: Arguments for the ``dbt_build`` task only, over ``operator_args`` (e.g. its ``retries``).
    :param model_assets: Each model, seed and snapshot task declares its relation as an Airflow Asset outlet,
        named as OpenLineage names it (``<namespace>/<database>/<schema>/<alias>``, see docs/task-graph.md).
    :param node_tasks_in_triggerer: On Airflow >= 3.3, node tasks following the build start in the triggerer
        (no worker run to defer) and, when they have no outlets, end there on success or skip.
    :param kwargs: ``TaskGroup`` arguments (``tooltip``, ``default_args``, ``prefix_group_id``...).
    """

    def __init__(
        self,
        group_id: str,
        *,
        dbt_project_dir: str,
        select: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        selector: str | None = None,
        target: str | None = None,
        conn_id: str | None = None,
        profiles_dir: str | None = None,
        venv_path: str | None = None,
        run_dir_root: str | None = None,
        execution_mode: ExecutionMode = "one_process",
        test_behavior: TestBehavior = "after_each",
        group_by_folder: bool = False,
        graph_cache_dir: str | None = None,
        build_graph_at_parse: bool = False,
        allow_stale_graph: bool = False,
        operator_args: Mapping[str, Any] | None = None,
        build_args: Mapping[str, Any] | None = None,
        model_assets: bool = True,
        node_tasks_in_triggerer: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(group_id=group_id, **kwargs)
        project = ProjectTasks(
            dbt_project_dir, select=select, exclude=exclude, selector=selector, target=target, conn_id=conn_id,
            profiles_dir=profiles_dir, venv_path=venv_path, run_dir_root=run_dir_root, execution_mode=execution_mode,
            test_behavior=test_behavior, group_by_folder=group_by_folder, graph_cache_dir=graph_cache_dir,
            build_graph_at_parse=build_graph_at_parse, operator_args=operator_args, build_args=build_args,
            model_assets=model_assets, allow_stale_graph=allow_stale_graph,
            node_tasks_in_triggerer=node_tasks_in_triggerer,
        )  # fmt: skip
        graph = project.graph()
        with self:
            self.dbt_tasks = project.add(graph)


def DbtDag(
    dag_id: str,
    *,
    dbt_project_dir: str,
    select: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    selector: str | None = None,
    target: str | None = None,
    conn_id: str | None = None,
    profiles_dir: str | None = None,
    venv_path: str | None = None,
    run_dir_root: str | None = None,
    execution_mode: ExecutionMode = "one_process",
    test_behavior: TestBehavior = "after_each",
    group_by_folder: bool = False,
    graph_cache_dir: str | None = None,
    build_graph_at_parse: bool = False,
    allow_stale_graph: bool = False,
    operator_args: Mapping[str, Any] | None = None,
    build_args: Mapping[str, Any] | None = None,
    model_assets: bool = True,
    node_tasks_in_triggerer: bool = True,
    **dag_kwargs: Any,
) -> DAG:
    """A DAG holding a dbt project's tasks at its top level; arguments as ``DbtTaskGroup``'s, plus ``DAG``'s
    (``schedule``, ``start_date``, ``default_args``...) as ``dag_kwargs``.

    :param dag_id: The DAG's id.
    :param dbt_project_dir: See ``DbtTaskGroup``.
    :param select: See ``DbtTaskGroup``.
    :param exclude: See ``DbtTaskGroup``.
    :param selector: See ``DbtTaskGroup``.
    :param target: See ``DbtTaskGroup``.
    :param conn_id: See ``DbtTaskGroup``.
    :param profiles_dir: See ``DbtTaskGroup``.
    :param venv_path: See ``DbtTaskGroup``.
    :param run_dir_root: See ``DbtTaskGroup``.
    :param execution_mode: See ``DbtTaskGroup``.
    :param test_behavior: See ``DbtTaskGroup``.
    :param group_by_folder: See ``DbtTaskGroup``.
    :param graph_cache_dir: See ``DbtTaskGroup``.
    :param build_graph_at_parse: See ``DbtTaskGroup``.
    :param allow_stale_graph: See ``DbtTaskGroup``.
    :param operator_args: See ``DbtTaskGroup``.
    :param build_args: See ``DbtTaskGroup``.
    :param model_assets: See ``DbtTaskGroup``.
    :param node_tasks_in_triggerer: See ``DbtTaskGroup``.
    :param dag_kwargs: ``DAG`` arguments.
    """
    project = ProjectTasks(
        dbt_project_dir, select=select, exclude=exclude, selector=selector, target=target, conn_id=conn_id,
        profiles_dir=profiles_dir, venv_path=venv_path, run_dir_root=run_dir_root, execution_mode=execution_mode,
        test_behavior=test_behavior, group_by_folder=group_by_folder, graph_cache_dir=graph_cache_dir,
        build_graph_at_parse=build_graph_at_parse, operator_args=operator_args, build_args=build_args,
        model_assets=model_assets, allow_stale_graph=allow_stale_graph,
        node_tasks_in_triggerer=node_tasks_in_triggerer,
    )  # fmt: skip
    graph = project.graph()
    dag = DAG(dag_id=dag_id, **dag_kwargs)
    with dag:
        project.add(graph)
    return dag


@dataclass(frozen=True)
class ProjectTasks:
    """The arguments ``DbtTaskGroup`` and ``DbtDag`` share: where the graph file is, and the tasks made from it."""

    dbt_project_dir: str
    select: str | Sequence[str] | None = None
    exclude: str | Sequence[str] | None = None
    selector: str | None = None
    target: str | None = None
    conn_id: str | None = None
    profiles_dir: str | None = None
    venv_path: str | None = None
    run_dir_root: str | None = None
    execution_mode: ExecutionMode = "one_process"
    test_behavior: TestBehavior = "after_each"
    group_by_folder: bool = False
    graph_cache_dir: str | None = None
    build_graph_at_parse: bool = False
    allow_stale_graph: bool = False
    operator_args: Mapping[str, Any] | None = None
    build_args: Mapping[str, Any] | None = None
    model_assets: bool = True
    node_tasks_in_triggerer: bool = True

    def graph(self) -> GraphFile:
        """The project's graph file for this selection (``load_graph``)."""
        selection = Selection(_as_tuple(self.select), _as_tuple(self.exclude), self.selector, self.target)
        return load_graph(
            self.dbt_project_dir, selection,
            run_dir_root=self.run_dir_root, graph_cache_dir=self.graph_cache_dir,
            build_graph_at_parse=self.build_graph_at_parse, allow_stale_graph=self.allow_stale_graph,
            hook_kwargs=self._named(with_run_dir_root=False),
        )  # fmt: skip

    def add(self, graph: GraphFile) -> dict[str, Any]:
        """Create the tasks in the current DAG or task group (``add_graph_tasks``)."""
        return add_graph_tasks(
            graph, dbt_project_dir=self.dbt_project_dir, execution_mode=self.execution_mode,
            test_behavior=self.test_behavior, group_by_folder=self.group_by_folder,
            operator_args={**self._named(with_run_dir_root=True), **dict(self.operator_args or {})},
            build_args=self.build_args, model_assets=self.model_assets, graph_cache_dir=self.graph_cache_dir,
            node_tasks_in_triggerer=self.node_tasks_in_triggerer,
        )  # fmt: skip

    def _named(self, *, with_run_dir_root: bool) -> dict[str, Any]:
        """The run arguments given by name (connection, profile, environment), for the hook or every task."""
        named = {"conn_id": self.conn_id, "profiles_dir": self.profiles_dir, "venv_path": self.venv_path,
                 "target": self.target, "run_dir_root": self.run_dir_root if with_run_dir_root else None}  # fmt: skip
        return {key: value for key, value in named.items() if value is not None}
