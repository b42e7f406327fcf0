"""From a graph file to a plain description of tasks: ids, what each runs, dependencies, groups.

Pure data, no Airflow: ``DbtTaskGroup``/``DbtDag`` will turn it into operators. Models, seeds and snapshots
become tasks; ephemeral models never do, and dependencies pass through them as dbt's do. Tests go with
their node (``after_each``, as ``dbt build`` runs them), into one task after all the others
(``after_all``), or nowhere (``none``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.task_graph.graph_file import GraphFile, GraphNode

TestBehavior = Literal["after_each", "after_all", "none"]
TEST_BEHAVIORS: tuple[str, ...] = get_args(TestBehavior)
TASK_RESOURCE_TYPES = frozenset({"model", "seed", "snapshot"})
ALL_TESTS_TASK_ID = "dbt_tests"
MAX_TASK_ID_LENGTH = 250  # Airflow's limit on a task id
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class TaskSpec:
    """One task to create.

    ``node_id`` is the node a node task builds (None for a test task); ``tests`` are the tests it runs
    (with its node for a node task); ``upstream`` are the ids (``full_id``, sorted) of the tasks it waits for;
    ``group`` is the folder path of its task group, empty when not grouped.
    """

    task_id: str
    kind: Literal["node", "tests"]
    node_id: str | None
    resource_type: str | None
    tests: tuple[str, ...]
    upstream: tuple[str, ...]
    group: tuple[str, ...] = ()

    @property
    def full_id(self) -> str:
        """The id Airflow gives the task inside its groups (``group.sub.task``)."""
        return ".".join((*self.group, self.task_id))


@dataclass(frozen=True)
class RenderedGraph:
    """The tasks in a stable order (dbt's node order, test tasks last)."""

    tasks: tuple[TaskSpec, ...]

    def by_id(self) -> dict[str, TaskSpec]:
        return {task.full_id: task for task in self.tasks}

    def for_node(self, unique_id: str) -> TaskSpec | None:
        return next((task for task in self.tasks if task.node_id == unique_id), None)


def sanitize_task_id(text: str) -> str:
    """An Airflow-safe id (``[A-Za-z0-9_.-]``, at most 250 characters; a long one ends in a digest)."""
    safe = _UNSAFE.sub("_", text).strip("_") or "node"
    if len(safe) <= MAX_TASK_ID_LENGTH:
        return safe
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return f"{safe[: MAX_TASK_ID_LENGTH - 11]}_{digest}"


def _node_task_id(node: GraphNode, project_name: str) -> str:
    """``orders``; a versioned model ``orders_v2``; another package's node ``package__name``."""
    version = node.unique_id.split(".")[3:] if node.resource_type == "model" else []
    name = "_".join([node.name, *version])
    return sanitize_task_id(name if node.package_name == project_name else f"{node.package_name}__{name}")


def _folder(node: GraphNode) -> tuple[str, ...]:
    """The folders between the package and the node in its fqn (``("marts", "finance")``)."""
    inner = node.fqn[1:-1]
    if node.resource_type == "model" and node.unique_id.count(".") > 2:
        inner = node.fqn[1:-2]  # a versioned model's fqn ends in its version
    return tuple(sanitize_task_id(part) for part in inner)


def render(
    graph: GraphFile, *, test_behavior: TestBehavior = "after_each", group_by_folder: bool = False
) -> RenderedGraph:
    """Describe the tasks for a graph file.

    :param graph: What ``read_graph`` returned.
    :param test_behavior: ``after_each`` (tests in their node's task; a test of several nodes in the task of the
        one that depends on the others, else in a task of its own after them), ``after_all`` (one
        ``dbt_tests`` task after every node task) or ``none``.
    :param group_by_folder: Put each node's task in task groups named after its folders.
    """
    if test_behavior not in TEST_BEHAVIORS:
        raise DbtException(f"test_behavior must be one of {', '.join(TEST_BEHAVIORS)}, not {test_behavior!r}.")
    nodes = graph.by_id()
    task_nodes = [n for n in graph.nodes if n.resource_type in TASK_RESOURCE_TYPES and not n.ephemeral]
    local_ids = _unique_ids({n.unique_id: _node_task_id(n, graph.project_name) for n in task_nodes})
    groups = {n.unique_id: _folder(n) if group_by_folder else () for n in task_nodes}
    full = {uid: ".".join((*groups[uid], local)) for uid, local in local_ids.items()}
    upstream_nodes = {n.unique_id: _task_parents(n.unique_id, nodes, full) for n in task_nodes}
    ancestors = _ancestors(upstream_nodes)

    placed: dict[str, list[str]] = {n.unique_id: [] for n in task_nodes}
    own_tasks: list[TaskSpec] = []
    tests = [n for n in graph.nodes if n.resource_type == "test"]
    if test_behavior == "after_each":
        for test in tests:
            home = _home(test, full, ancestors)
            if home is not None:
                placed[home].append(test.unique_id)
            else:
                waits = sorted({full[uid] for uid in _task_parents(test.unique_id, nodes, full)})
                own_tasks.append(
                    TaskSpec(
                        sanitize_task_id(f"test_{test.name}"), "tests", None, "test", (test.unique_id,), tuple(waits)
                    )
                )
    node_tasks = [
        TaskSpec(
            task_id=local_ids[n.unique_id],
            kind="node",
            node_id=n.unique_id,
            resource_type=n.resource_type,
            tests=tuple(placed[n.unique_id]),
            upstream=tuple(sorted(full[uid] for uid in upstream_nodes[n.unique_id])),
            group=groups[n.unique_id],
        )
        for n in task_nodes
    ]
    if test_behavior == "after_all" and tests:
        everything = tuple(task.full_id for task in node_tasks)
        own_tasks.append(
            TaskSpec(ALL_TESTS_TASK_ID, "tests", None, "test", tuple(t.unique_id for t in tests), everything)
        )
    return RenderedGraph(tuple(node_tasks) + tuple(_unique_test_tasks(own_tasks, {t.full_id for t in node_tasks})))


def _task_parents(uid: str, nodes: Mapping[str, GraphNode], tasks: Mapping[str, str]) -> tuple[str, ...]:
    """The task nodes ``uid`` waits for: its selected parents, through ephemeral (task-less) ones."""
    found: dict[str, None] = {}
    pending = list(nodes[uid].upstream)
    seen: set[str] = set()
    while pending:
        parent = pending.pop(0)
        if parent in seen:
            continue
        seen.add(parent)
        if parent in tasks:
            found[parent] = None
        elif parent in nodes:
            pending.extend(nodes[parent].upstream)
    return tuple(found)


def _ancestors(parents: Mapping[str, tuple[str, ...]]) -> dict[str, set[str]]:
    memo: dict[str, set[str]] = {}

    def walk(uid: str) -> set[str]:
        if uid not in memo:
            memo[uid] = set()
            result: set[str] = set()
            for parent in parents.get(uid, ()):
                result |= {parent} | walk(parent)
            memo[uid] = result
        return memo[uid]

    for uid in parents:
        walk(uid)
    return memo


def _home(test: GraphNode, tasks: Mapping[str, str], ancestors: Mapping[str, set[str]]) -> str | None:
    """The node task a test runs with: its one node, or the one of its nodes downstream of all the others.

    None when the test is of a node without a task (ephemeral) or of independent nodes: it gets its own task.
    """
    tested = list(dict.fromkeys(test.tested_nodes))
    if not tested or any(uid not in tasks for uid in tested):
        return None
    for candidate in tested:
        if all(other == candidate or other in ancestors[candidate] for other in tested):
            return candidate
    return None


def _unique_ids(wanted: Mapping[str, str]) -> dict[str, str]:
    """Keep each wanted id; ids that collide after sanitizing get a digest of their unique_id."""
    counts: dict[str, int] = {}
    for local in wanted.values():
        counts[local.lower()] = counts.get(local.lower(), 0) + 1
    return {uid: local if counts[local.lower()] == 1 else _with_digest(local, uid) for uid, local in wanted.items()}


def _with_digest(local: str, key: str) -> str:
    return sanitize_task_id(f"{local[:200]}_{hashlib.sha256(key.encode('utf-8')).hexdigest()[:8]}")


def _unique_test_tasks(tasks: Iterable[TaskSpec], taken: set[str]) -> list[TaskSpec]:
    result: list[TaskSpec] = []
    used = {name.lower() for name in taken}
    for task in tasks:
        task_id = task.task_id
        if task_id.lower() in used:
            task_id = _with_digest(task_id, task.tests[0] if task.tests else task_id)
        used.add(task_id.lower())
        result.append(TaskSpec(task_id, task.kind, task.node_id, task.resource_type, task.tests, task.upstream))
    return result
