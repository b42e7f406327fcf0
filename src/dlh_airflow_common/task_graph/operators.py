"""The operators of a task graph: the group's one ``dbt build`` and the node tasks that follow it.

The build runs detached and announces its run channel (XCom ``dbt_graph_channel``, pushed before it defers);
the channel carries every node's result as dbt reports it. When its try ends the build pushes the final
results (XCom ``dbt_graph_results``). A node task reads those, or waits for its node in the channel (in the
triggerer when deferrable, else rescheduling itself), and ends as dbt ended its node. A node task in a later
try whose build has ended runs its own node (``dbt build`` of the node and its tests) in an isolated try.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import StartTriggerArgs
from packaging.version import Version

try:  # Airflow >= 3.2 (the task SDK's own)
    from airflow.sdk.exceptions import AirflowRescheduleException, AirflowSkipException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowRescheduleException, AirflowSkipException  # type: ignore[attr-defined,no-redef]

from dlh_airflow_common.dbt.channel import DEFAULT_HEARTBEAT_TIMEOUT, ChannelReader, ChannelSpec
from dlh_airflow_common.dbt.detached import DetachedProcess
from dlh_airflow_common.dbt.events import NODE_FAILURE_STATUSES
from dlh_airflow_common.exceptions.dbt import DbtException, DbtRuntimeException, classify_dbt_error
from dlh_airflow_common.hooks.dbt import DbtTaskResult
from dlh_airflow_common.operators.dbt import DbtOperator
from dlh_airflow_common.settings import configured_seconds
from dlh_airflow_common.task_graph.build import ensure_graph, graph_cache_root
from dlh_airflow_common.task_graph.build_watch import ENDED, GRAPH_CHANNEL_XCOM, GRAPH_RESULTS_XCOM
from dlh_airflow_common.task_graph.graph_file import Selection
from dlh_airflow_common.task_graph.node_verdict import NODE_XCOM, NodeResult, NodeVerdict, judge
from dlh_airflow_common.task_graph.trigger import DbtNodeTrigger
from dlh_airflow_common.triggers.dbt import resume_delay

if TYPE_CHECKING:
    from airflow.sdk import Context

# Airflow 3.3 starts a task in the triggerer with its task instance at hand and answers the trigger's XCom and
# task-state requests (apache/airflow#55068); before, a node task starts on a worker and defers from there.
STARTS_IN_TRIGGERER = Version(version("apache-airflow-core")) >= Version("3.3")

MAX_COMPILED_SQL = 20_000  # characters of a failed node's compiled SQL kept in the final results
MAX_COMPILED_NODES = 50
# The least seconds between two looks of a rescheduled node task. As for a deferral (``triggers.dbt.RESUME_SECONDS``), a
# quicker reschedule races the scheduler, which fails the task as "changed externally" when it learns of the
# previous run's end after the next run began (seen with 1 s: the event came 7 s late on a loaded machine).
RESCHEDULE_FLOOR = 10.0


class DbtGraphBuildOperator(DbtOperator):
    """The one ``dbt build`` of a task graph: always detached, with every node's result in its run channel.

    Takes every ``DbtOperator`` argument; ``deferrable`` is always on (the node tasks read the running build).
    After a successful run it refreshes the group's graph file if the project changed since it was built (as
    ``dlh-dbt graph`` would), so the next DAG parse renders the project as it is now.

    :param graph_selection: The selection the group's graph file was built for; None refreshes nothing.
    :param graph_cache_dir: The graph file's cache root (default ``<run_dir_root>/.dlh_cache``).
    :param kwargs: Every ``DbtOperator`` argument.
    """

    def __init__(
        self, *, graph_selection: Selection | None = None, graph_cache_dir: str | None = None, **kwargs: Any
    ) -> None:
        kwargs["deferrable"] = True
        kwargs.setdefault("retry_from_failure", True)
        super().__init__(**kwargs)
        self.graph_selection = graph_selection
        self.graph_cache_dir = graph_cache_dir

    def _detached_options(self) -> dict[str, Any]:
        return {"node_results": True}

    def _launched(self, context: Context, process: DetachedProcess) -> None:
        ti = context["ti"]
        announce = {"try_number": ti.try_number, "started_at": process.started_at, "channel": process.channel}
        ti.xcom_push(key=GRAPH_CHANNEL_XCOM, value=announce)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Read the final node results from the channel before collecting (which removes it), then publish them."""
        spec = ChannelSpec.from_dict(event.get("channel")) or ChannelSpec(str(event.get("run_dir", "")))
        try:
            status = ChannelReader(spec).status()
        except Exception as err:  # the results then come from run_results.json alone
            self.log.warning("Could not read the build's final node results from %s: %s", spec.where, err)
            status = None
        streamed = status.results if status is not None and status.results else {}
        result = self._collect(context, event)
        self._publish_results(context, result, streamed, started_at=float(event.get("started_at") or 0))
        if result.success:
            self._refresh_graph()
        return self._finish(context, result)

    def _refresh_graph(self) -> None:
        """Rebuild the group's graph file if the project changed (``dbt ls``, once, under the file's lock); a
        refresh that fails is a warning: the run itself succeeded."""
        if self.graph_selection is None:
            return
        from dlh_airflow_common.task_graph.cli import hook_lister

        lister = hook_lister(
            dbt_project_dir=self.dbt_project_dir, conn_id=self.conn_id, profiles_dir=self.profiles_dir,
            venv_path=self.venv_path, env_vars=self.env_vars, schema_override=self.schema_override,
            run_dir_root=self.run_dir_root, cache_dir=self.graph_cache_dir,
            dbt_project_conn_id=self.dbt_project_conn_id, project_cache_dir=self.project_cache_dir,
        )  # fmt: skip
        try:
            root = graph_cache_root(self.dbt_project_dir, self.run_dir_root, self.graph_cache_dir)
            built = ensure_graph(self.dbt_project_dir, self.graph_selection, lister, root)
        except Exception as err:
            self.log.warning("Could not refresh the task graph file of %s: %s", self.dbt_project_dir, err)
            return
        if built.built:
            self.log.info("The project changed: refreshed its task graph file %s (%d nodes); the next DAG parse "
                          "renders it", built.path, len(built.graph.nodes))  # fmt: skip

    def _publish_results(
        self, context: Context, result: DbtTaskResult, streamed: Mapping[str, Any], *, started_at: float
    ) -> None:
        """Every node's final result for the node tasks: what the channel carried (including what a resumed try
        carried over) updated with run_results.json, and the compiled SQL of failed nodes, secrets masked."""
        redact = self.hook.profile_source.redactor()
        results: dict[str, dict[str, Any]] = {uid: dict(entry) for uid, entry in streamed.items()}
        for node in result.summary.nodes:
            entry = results.setdefault(node.unique_id, {})
            entry["status"] = node.status
            if node.message and node.status in NODE_FAILURE_STATUSES:
                entry["message"] = redact(node.message)
        compiled: dict[str, str] = {}
        for raw in (result.run_results.get("results") or []) if isinstance(result.run_results, Mapping) else []:
            uid, code = raw.get("unique_id"), raw.get("compiled_code")
            failed = str(raw.get("status", "")).lower() in NODE_FAILURE_STATUSES
            if failed and isinstance(uid, str) and isinstance(code, str) and len(compiled) < MAX_COMPILED_NODES:
                compiled[uid] = redact(code[:MAX_COMPILED_SQL])
        ti = context["ti"]
        ti.xcom_push(
            key=GRAPH_RESULTS_XCOM,
            value={"try_number": ti.try_number, "started_at": started_at, "success": result.success,
                   "results": results, "compiled_sql": compiled},
        )  # fmt: skip


class DbtNodeOperator(DbtOperator):
    """One node of a task graph (a model, seed or snapshot with its tests, or a task of tests).

    With ``build_task_id`` it follows that build; without it (``per_node`` mode), or in a later try once the
    build has ended, it runs ``dbt build`` of its own selection (``dbt_models``) like any ``DbtOperator``.

    :param dbt_node_id: The node's ``unique_id``; None for a task of tests only.
    :param dbt_tests: The ``unique_id`` of each test placed in this task.
    :param build_task_id: The group's build task to follow (``one_process`` mode); None runs the node itself.
    :param start_in_triggerer: Following a build, deferrable, on Airflow >= 3.3: start in the triggerer
        (``start_from_trigger``), with no worker run to defer, and end there when the node succeeded or was
        skipped and the task has no outlets (whose asset events only a worker registers).
    :param kwargs: Every ``DbtOperator`` argument; ``dbt_models`` is the node's own selection.
    """

    ui_color = "#ffa38f"

    def __init__(
        self,
        *,
        dbt_node_id: str | None,
        dbt_tests: Sequence[str] = (),
        build_task_id: str | None = None,
        start_in_triggerer: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dbt_node_id = dbt_node_id
        self.tests = list(dbt_tests)
        self.build_task_id = build_task_id
        if start_in_triggerer and build_task_id is not None and self.deferrable and STARTS_IN_TRIGGERER:
            self.start_trigger_args = self._start_args(build_task_id)
            self.start_from_trigger = True

    def _start_args(self, build_task_id: str) -> StartTriggerArgs:
        """How the scheduler starts this task in the triggerer: a ``DbtNodeTrigger`` that finds the build."""
        trigger = DbtNodeTrigger(
            channel=None, node_id=self.dbt_node_id, tests=self.tests, poll_interval=self.check_interval,
            heartbeat_timeout=configured_seconds("run_channel_heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT),
            min_wait=0.0, build_task_id=build_task_id, end_in_triggerer=not self.outlets,
        )  # fmt: skip
        classpath, trigger_kwargs = trigger.serialize()
        return StartTriggerArgs(trigger_cls=classpath, next_method="follow_complete", trigger_kwargs=trigger_kwargs,
                                next_kwargs=None, timeout=None)  # fmt: skip

    def execute(self, context: Context) -> dict[str, Any]:
        if self.build_task_id is None:
            return super().execute(context)
        return self._follow(context, None)

    def follow_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Back from ``DbtNodeTrigger``: end with its verdict, or look again (build ended, channel gone)."""
        return self._follow(context, event if event.get("kind") == "verdict" else None)

    # -- following the build ----------------------------------------------------------------------------
    def _follow(self, context: Context, event: Mapping[str, Any] | None) -> dict[str, Any]:
        ti = context["ti"]
        if event is not None:
            return self._end(context, NodeVerdict.from_event(event), compiled={}, source="the running build")
        build_state = self._build_state(context) if ti.try_number > 1 else None
        if build_state in ENDED:
            return self._run_own(context)
        final = ti.xcom_pull(task_ids=self.build_task_id, key=GRAPH_RESULTS_XCOM)
        if isinstance(final, Mapping):
            verdict = judge(final.get("results") or {}, self.dbt_node_id, self.tests, build_finished=True)
            if self._accepts(verdict, final, context):
                return self._end(context, verdict, compiled=final.get("compiled_sql") or {},
                                 source=f"try {final.get('try_number')} of the build")  # fmt: skip
            return self._after_build(context, verdict, build_state)
        announced = ti.xcom_pull(task_ids=self.build_task_id, key=GRAPH_CHANNEL_XCOM)
        spec = ChannelSpec.from_dict(announced.get("channel")) if isinstance(announced, Mapping) else None
        if announced is None or spec is None:
            build_state = build_state or self._build_state(context)
            if build_state in ENDED:
                return self._after_build(context, None, build_state)
            return self._wait(context, "the build has not started dbt yet")
        status = None
        try:
            status = ChannelReader(spec).status()
        except Exception as err:
            self.log.warning("Could not read the build's status at %s: %s", spec.where, err)
        if status is None:  # its channel may have gone with the build's clean-up
            build_state = build_state or self._build_state(context)
            if build_state in ENDED:
                return self._after_build(context, None, build_state)
        if status is not None:
            verdict = judge(status.results or {}, self.dbt_node_id, self.tests, build_finished=status.finished)
            if verdict.verdict != "not_run" and self._accepts(verdict, announced, context):
                return self._end(
                    context, verdict, compiled={}, source=f"try {announced.get('try_number')} of the build"
                )
            if status.finished:
                return self._wait(context, "the build is ending")
        if not self.deferrable:
            return self._wait(context, "dbt has not reported this node yet")
        accept = self._accepts(NodeVerdict("failed"), announced, context)
        self.defer(
            trigger=DbtNodeTrigger(
                channel=dict(announced["channel"]), node_id=self.dbt_node_id, tests=self.tests,
                poll_interval=self.check_interval, accept_failure=accept,
                heartbeat_timeout=configured_seconds("run_channel_heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT),
                min_wait=resume_delay(),
            ),
            method_name="follow_complete",
        )  # fmt: skip
        raise AssertionError("defer() returned")  # pragma: no cover - defer raises TaskDeferred

    def _accepts(self, verdict: NodeVerdict, build_try: Mapping[str, Any], context: Context) -> bool:
        """Every verdict but a failure; a failure unless this is a retry of the node task and the build try that
        reported it began before this try did (the node task's earlier try already saw it: wait for the next)."""
        if not verdict.done or verdict.verdict == "not_run":
            return False
        if verdict.verdict != "failed" or context["ti"].try_number <= 1:
            return True
        began = _epoch(getattr(context["ti"], "start_date", None))
        return began is None or float(build_try.get("started_at") or 0) >= began

    def _after_build(self, context: Context, verdict: NodeVerdict | None, state: str | None) -> dict[str, Any]:
        """The build's try ended without a usable verdict for this node: follow its next try, run the node in a
        retry of this task once the build is over, or fail saying what happened. ``state`` is the build task's
        state if this look already asked for it."""
        state = state or self._build_state(context)
        if state not in ENDED:
            return self._wait(context, f"the build is {state or 'not finished'}; following its next try")
        if context["ti"].try_number > 1:
            return self._run_own(context)
        missing = ", ".join(verdict.missing) if verdict is not None and verdict.missing else self._what()
        raise DbtException(
            f"The dbt build {self.build_task_id} ended ({state}) without running {missing}: see its log. "
            "Clearing this task after the build ended runs it on its own."
        )

    def _run_own(self, context: Context) -> dict[str, Any]:
        """A retry once the build has ended: ``dbt build`` of this task's node and tests, isolated as any try."""
        self.log.info("The build %s has ended: running %s in a try of its own", self.build_task_id, self._what())
        return super().execute(context)

    def _end(
        self, context: Context, verdict: NodeVerdict, *, compiled: Mapping[str, str], source: str
    ) -> dict[str, Any]:
        for result in verdict.results:
            level = self.log.error if result.failed else self.log.info
            level("%s (%s)", result.line(), source)
        summary = verdict.summary(self.dbt_node_id, self.tests)
        context["ti"].xcom_push(key=NODE_XCOM, value=summary)
        if verdict.verdict == "skipped":
            raise AirflowSkipException(f"dbt skipped {self._what()} in {source}.")
        if verdict.verdict == "failed":
            first = verdict.failures[0]
            for failure in verdict.failures:
                sql = compiled.get(failure.unique_id)
                if sql:
                    self.log.error("Compiled SQL of %s:\n%s", failure.unique_id, sql)
            raise _node_error(first, source, len(verdict.failures))
        return summary

    def _wait(self, context: Context, why: str) -> dict[str, Any]:
        """Look again later, rescheduled (no worker slot held meanwhile): what this waits for is another task's
        progress (the build starting, ending its try, retrying), which a deferral would hold up under
        ``dag.test()``, where a deferred task resumes at once, over and over, and nothing else runs."""
        delay = max(self.check_interval, RESCHEDULE_FLOOR)
        self.log.info("Waiting for %s: %s; looking again in %gs", self._what(), why, delay)
        raise AirflowRescheduleException(datetime.now(UTC) + timedelta(seconds=delay))  # type: ignore[no-untyped-call]

    def _build_state(self, context: Context) -> str | None:
        """The build task instance's state in this DAG run (None when Airflow cannot say)."""
        ti, build = context["ti"], str(self.build_task_id)
        try:
            states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[build], run_ids=[ti.run_id])
        except Exception as err:
            self.log.warning("Could not read the state of %s: %s", self.build_task_id, err)
            return None
        state = (states.get(ti.run_id) or {}).get(build)
        return str(getattr(state, "value", state)) if state is not None else None

    def _what(self) -> str:
        return self.dbt_node_id or ", ".join(self.tests) or self.task_id


def _node_error(result: NodeResult, source: str, count: int) -> DbtException:
    """The typed error of a failed node: its message classified, naming the node."""
    detail = result.message or f"dbt reported {result.status}"
    more = f" ({count - 1} more failed in this task)" if count > 1 else ""
    error = classify_dbt_error(detail)
    kind = type(error) if type(error) is not DbtException else DbtRuntimeException
    return kind(f"{result.status.upper()} {result.unique_id} in {source}: {detail}{more}", node_id=result.unique_id)


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return None
