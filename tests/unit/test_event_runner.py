"""Unit tests for dlh_airflow_common.dbt.event_runner: level filter, JSON lines, scrubbing, exit codes.

dbtRunner is replaced by a fake that sends real dbt event messages; the real runner against real dbt is
covered in tests/integration/test_event_runner.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dlh_airflow_common.dbt import event_runner
from dlh_airflow_common.dbt.event_runner import RUNNER_LOG_ARGS, event_dict
from dlh_airflow_common.dbt.processes import process_alive
from fake_dbt_runner import FakeDbtRunner, install_fake_runner

SECRET = "s3cr3t-Value-91"


def _messages() -> list[Any]:
    from dbt.adapters.events.types import SQLQuery
    from dbt.events.types import LogModelResult, RunResultError
    from dbt_common.events.base_types import EventLevel, msg_from_base_event

    node_info = {"unique_id": "model.shop.orders", "node_name": "orders"}
    success = LogModelResult(
        description="sql table model main.orders", status="success", index=1, total=2, execution_time=0.1,
        node_info=node_info,
    )  # fmt: skip
    failed = LogModelResult(
        description="sql view model main.x", status="error", index=2, total=2, execution_time=0.2,
        node_info={"unique_id": "model.shop.x"},
    )  # fmt: skip
    return [
        msg_from_base_event(SQLQuery(conn_name="orders", sql="select 1", node_info=node_info)),  # debug
        msg_from_base_event(success, level=EventLevel.INFO),  # dbt fires node results with an explicit level
        msg_from_base_event(RunResultError(msg=f"Database Error: password {SECRET} rejected", node_info=node_info)),
        msg_from_base_event(failed, level=EventLevel.ERROR),
    ]


FakeRunner = FakeDbtRunner


@pytest.fixture
def fake_runner(monkeypatch: pytest.MonkeyPatch) -> type[FakeRunner]:
    monkeypatch.setenv("DBT_ENV_SECRET_PASSWORD", SECRET)
    return install_fake_runner(monkeypatch, _messages())


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_event_dict_skips_debug_and_converts_the_rest() -> None:
    debug, result, _, failed = _messages()
    assert event_dict(debug) is None
    converted = event_dict(result)
    assert converted is not None
    assert converted["info"]["name"] == "LogModelResult" and converted["info"]["level"] == "info"
    assert converted["data"]["node_info"]["unique_id"] == "model.shop.orders"
    assert converted["data"]["index"] == 1 and converted["data"]["total"] == 2
    assert event_dict(failed)["info"]["level"] == "error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("success", "exception", "code"),
    [(True, None, 0), (False, None, 1), (False, RuntimeError("boom"), 2)],
)
def test_main_writes_json_lines_and_returns_the_cli_exit_code(
    fake_runner: type[FakeRunner],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    success: bool,
    exception: Any,
    code: int,
) -> None:
    monkeypatch.setattr(FakeRunner, "outcome", SimpleNamespace(success=success, exception=exception))
    assert event_runner.main(["build", "--select", "orders"]) == code

    assert fake_runner.calls[-1]["args"] == ["build", "--select", "orders", *RUNNER_LOG_ARGS]
    captured = capsys.readouterr()
    events = _lines(captured.out)
    assert [e["info"]["name"] for e in events] == ["LogModelResult", "RunResultError", "LogModelResult"]
    assert all(e["info"]["level"] != "debug" for e in events)
    assert SECRET not in captured.out and "*****" in events[1]["info"]["msg"]  # dbt's own env scrubber
    assert captured.err == "", "dbt's error events already told the story; nothing more on stderr"


def test_main_reports_an_error_dbt_never_logged(
    fake_runner: type[FakeRunner], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dbt_common.exceptions import DbtInternalError

    monkeypatch.setattr(FakeRunner, "messages", [])  # a bad option fails before dbt's event logging starts
    monkeypatch.setattr(
        FakeRunner, "outcome", SimpleNamespace(success=False, exception=DbtInternalError("No such option: --nope"))
    )
    assert event_runner.main(["run", "--nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "No such option: --nope" in captured.err


def test_runner_log_args_turn_dbt_console_off_and_keep_the_debug_file() -> None:
    args = dict(zip(RUNNER_LOG_ARGS[::2], RUNNER_LOG_ARGS[1::2], strict=True))
    assert args == {"--log-level": "none", "--log-level-file": "debug", "--log-format-file": "debug"}


def test_importing_the_runner_loads_neither_dbt_nor_airflow() -> None:
    import subprocess

    code = (
        "import sys, dlh_airflow_common.dbt.event_runner; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dbt', 'airflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _nodes_start() -> Any:
    from dbt.events.types import ConcurrencyLine
    from dbt_common.events.base_types import msg_from_base_event

    return msg_from_base_event(ConcurrencyLine(num_threads=2, target_name="dev", node_count=3))


@pytest.fixture
def unfrozen() -> Any:
    import gc

    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


def test_freeze_parsed_heap_only_when_nodes_start(unfrozen: None) -> None:
    import gc

    assert event_runner.freeze_parsed_heap(_messages()[1]) is False
    assert gc.get_freeze_count() == 0
    assert event_runner.freeze_parsed_heap(_nodes_start()) is True
    assert gc.get_freeze_count() > 0


def test_main_freezes_the_heap_when_nodes_start(
    fake_runner: type[FakeRunner], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], unfrozen: None
) -> None:
    import gc

    seen: list[int] = []

    class Probe:
        info = SimpleNamespace(name="Probe", level="debug")

    class Recording(FakeRunner):
        def invoke(self, args: list[str]) -> Any:
            for message in [Probe(), _nodes_start(), Probe()]:
                for callback in self.callbacks:
                    callback(message)
                    seen.append(gc.get_freeze_count())
            return SimpleNamespace(success=True, exception=None)

    import dbt.cli.main

    monkeypatch.setattr(dbt.cli.main, "dbtRunner", Recording)
    assert event_runner.main(["run"]) == 0
    assert seen[0] == 0 and seen[1] > 0 and seen[2] > 0
    assert gc.get_freeze_count() == 0, "unfrozen after the run, so the exit's collection frees dbt's cycles"
    assert [json.loads(line)["info"]["name"] for line in capsys.readouterr().out.splitlines()] == ["ConcurrencyLine"]


def test_main_unfreezes_when_dbt_raises(
    fake_runner: type[FakeRunner], monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    import gc

    import dbt.cli.main

    class Interrupted(FakeRunner):
        def invoke(self, args: list[str]) -> Any:
            for callback in self.callbacks:
                callback(_nodes_start())
            raise KeyboardInterrupt

    monkeypatch.setattr(dbt.cli.main, "dbtRunner", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        event_runner.main(["run"])
    assert gc.get_freeze_count() == 0


def test_an_orphaned_runner_that_ignores_sigint_ends_itself_after_the_grace_period(tmp_path: Path) -> None:
    """dbt can hang on the parent-death SIGINT: the runner's watchdog then ends it, with a real process tree."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    child = (
        "import os, signal, sys, time\n"
        "from dlh_airflow_common.dbt.event_runner import end_when_orphaned\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)  # a dbt that does not stop on SIGINT\n"
        "end_when_orphaned(0.3, poll=0.05)\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
         "time.sleep(120)"],
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        orphan = int(pid_file.read_text())
        assert process_alive(orphan, None)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while process_alive(orphan, None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(orphan, None), "the orphaned runner outlived its parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)


def _script_exit(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` as a script that uses skip_teardown_after the way the runner's ``__main__`` does."""
    script = tmp_path / "script.py"
    script.write_text(
        "import atexit, os, sys\n"
        "from dlh_airflow_common.dbt.event_runner import skip_teardown_after\n"
        "codes = []\n"
        "skip_teardown_after(codes)\n"
        "class Teardown:\n"
        "    def __del__(self, write=os.write):\n"
        "        write(1, b'torn down\\n')\n"
        "sys.keep = Teardown()  # freed only by the interpreter's teardown\n"
        "atexit.register(lambda: print('later handler ran'))  # like dbt's handlers, registered after it\n"
        f"{body}\n"
    )
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)


def test_skip_teardown_after_ends_with_the_code_after_the_other_exit_handlers(tmp_path: Path) -> None:
    proc = _script_exit(tmp_path, "sys.stdout.write('unflushed line\\n')\ncodes.append(1)\nsys.exit(1)")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == ["unflushed line", "later handler ran"], "flushed, handlers run, no teardown"


def test_skip_teardown_after_leaves_a_raising_main_to_the_normal_exit(tmp_path: Path) -> None:
    proc = _script_exit(tmp_path, "raise KeyboardInterrupt")
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in proc.stderr
    assert proc.stdout.splitlines() == ["later handler ran", "torn down"], "nothing recorded: the full exit ran"


def test_event_dict_forwards_the_debug_node_finished_of_a_failed_node_only() -> None:
    from dbt.events.types import NodeFinished
    from dbt_common.events.base_types import msg_from_base_event

    def finished(status: str) -> Any:
        run_result = {"status": status, "message": f"Runtime Error in model x ({status})", "thread": "Thread-1"}
        return msg_from_base_event(NodeFinished(node_info={"unique_id": "model.shop.x"}, run_result=run_result))

    failed = event_dict(finished("error"))
    assert failed is not None and failed["info"]["name"] == "NodeFinished" and failed["info"]["level"] == "debug"
    assert failed["data"]["run_result"]["message"] == "Runtime Error in model x (error)"
    assert event_dict(finished("fail")) is not None, "a failed test's message comes through too"
    assert event_dict(finished("success")) is None and event_dict(finished("pass")) is None
