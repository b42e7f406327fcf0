"""``dlh-dbt graph <project>``: build or refresh a project's graph file and say where it is.

dbt runs through ``DbtHook`` (profile from ``--conn-id`` or ``--profiles-dir``, isolated run dir, caches,
typed errors); the hook, and with it Airflow, is imported only when a graph must be built.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlh_airflow_common.dbt.project_source import parse_source
from dlh_airflow_common.exceptions.dbt import DbtException
from dlh_airflow_common.task_graph.assets import target_namespace
from dlh_airflow_common.task_graph.build import Lister, ManifestUse, ensure_graph, graph_cache_root
from dlh_airflow_common.task_graph.graph_file import GraphFile, Selection

LS_ARGS = ("--output", "json", "--output-keys", "unique_id")


class _ListedIds(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The run's logger, keeping back the ``{"unique_id": ...}`` lines ``dbt ls --output json`` prints."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.unique_ids: list[str] = []

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg == "%s" and len(args) == 1 and isinstance(args[0], str) and args[0].startswith('{"unique_id"'):
            try:
                self.unique_ids.append(str(json.loads(args[0])["unique_id"]))
                return
            except (ValueError, KeyError, TypeError):
                pass
        super().log(level, msg, *args, **kwargs)


def hook_lister(logger: logging.Logger | None = None, **hook_kwargs: Any) -> Lister:
    """A ``Lister`` running ``dbt ls`` through ``DbtHook(**hook_kwargs)`` (keyword arguments of the hook).

    :param logger: Where dbt's other output goes (default this module's logger).
    :param hook_kwargs: ``DbtHook`` arguments: ``dbt_project_dir``, ``conn_id``, ``profiles_dir``...
    """

    def lister(selection: Selection, use: ManifestUse) -> GraphFile:
        from dlh_airflow_common.hooks.dbt import DbtHook, DbtTaskResult

        listed = _ListedIds(logger or logging.getLogger(__name__))
        kwargs = dict(hook_kwargs)
        if selection.target is not None:
            kwargs["target"] = selection.target
        kwargs.setdefault("run_report", False)
        kwargs["ascii_only"] = False  # the ids are read back from the logged lines: they must keep every character
        hook = DbtHook(logger=listed, **kwargs)
        made: list[GraphFile] = []

        def post_run(result: DbtTaskResult) -> None:
            if result.success:
                made.append(use(listed.unique_ids, Path(result.target_path) / "manifest.json", _namespace(hook)))

        hook.run_dbt_task(
            "ls", select=list(selection.select) or None, exclude=list(selection.exclude) or None,
            selector=selection.selector, extra_args=LS_ARGS, post_run=post_run,
        )  # fmt: skip
        if not made:
            raise DbtException(f"dbt ls for {hook.dbt_project_dir} wrote no manifest.json: no task graph built.")
        return made[0]

    return lister


def _namespace(hook: Any) -> str | None:
    """OpenLineage's namespace of the target the hook's run used (for the model Assets); None if unknown."""
    from dlh_airflow_common.hooks.dbt_profiles import render_target

    rendered = None
    if hook.conn_id:
        source = hook.profile_source
        rendered = render_target(source.connection(), schema_override=source.schema_override).target
    project = hook.last_checkout.path if hook.last_checkout is not None else hook.dbt_project_dir  # a URL's copy
    return target_namespace(project, rendered_target=rendered, profiles_dir=hook.profiles_dir,
                            target=hook.target)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlh-dbt", description="dlh-airflow-common's dbt tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    graph = commands.add_parser("graph", help="Build or refresh the task graph file of a dbt project.")
    graph.add_argument("project_dir", help="The dbt project (the directory holding dbt_project.yml, or its URL).")
    graph.add_argument("--select", "-s", nargs="+", action="extend", default=[], help="dbt --select.")
    graph.add_argument("--exclude", nargs="+", action="extend", default=[], help="dbt --exclude.")
    graph.add_argument("--selector", help="dbt --selector (selectors.yml).")
    graph.add_argument("--target", help="dbt target.")
    graph.add_argument("--profiles-dir", help="A directory with your own profiles.yml.")
    graph.add_argument("--conn-id", help="Airflow connection rendered into a generated profile.")
    graph.add_argument("--venv-path", help="A virtualenv whose dbt runs instead of this one.")
    graph.add_argument("--run-dir-root", help="Where dbt's run dir goes (default <project>/target).")
    graph.add_argument("--cache-dir", help="The cache root (default <run dir root>/.dlh_cache).")
    return parser


def _stderr_logger() -> logging.Logger:
    """dbt's output goes to stderr, whatever logging Airflow sets up on import: stdout is the result line."""
    logger = logging.getLogger("dlh_airflow_common.task_graph.cli.dbt")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dlh-dbt``; returns the exit code (0 built or fresh, 1 dbt or input error)."""
    args = _parser().parse_args(argv)
    remote = parse_source(args.project_dir).remote  # a URL: its connection is [dlh_dbt] project_conn_id
    project: str | Path = args.project_dir if remote else Path(args.project_dir).resolve()
    selection = Selection(
        select=tuple(args.select), exclude=tuple(args.exclude), selector=args.selector, target=args.target
    )
    root = graph_cache_root(project, args.run_dir_root, args.cache_dir)
    lister = hook_lister(
        _stderr_logger(),
        dbt_project_dir=project, conn_id=args.conn_id, profiles_dir=args.profiles_dir, venv_path=args.venv_path,
        run_dir_root=args.run_dir_root, cache_dir=args.cache_dir,
    )  # fmt: skip
    try:
        built = ensure_graph(project, selection, lister, root)
    except DbtException as err:
        print(f"dlh-dbt graph: {err}", file=sys.stderr)
        return 1
    state = "built" if built.built else "fresh"
    print(f"{built.path}\t{len(built.graph.nodes)} nodes\t{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
