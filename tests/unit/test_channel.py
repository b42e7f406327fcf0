"""Unit tests for dlh_airflow_common.dbt.channel: the status document, the two stores, writer and reader."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
import re
import tarfile
import threading
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.asyn import AsyncFileSystem

import dlh_airflow_common.dbt.channel as channel_module
from dlh_airflow_common.dbt.channel import (
    ARTIFACTS_FILE,
    CANCEL_FILE,
    NODE_RING,
    STATUS_FILE,
    STORE_ATTEMPTS,
    ChannelReader,
    ChannelSpec,
    ChannelWriter,
    LocalStore,
    ObjectStore,
    RunStatus,
    is_transient,
    open_store,
    pack,
    unpack,
)


def node_event(index: int, name: str, status: str = "success") -> dict[str, Any]:
    return {
        "info": {"name": "LogModelResult", "level": "info", "msg": f"{index} of 9 OK " + "x" * 2000},
        "data": {"index": index, "total": 9, "execution_time": 0.5, "status": "SELECT 1",
                 "node_info": {"unique_id": f"model.shop.{name}", "node_status": status, "compiled": "y" * 5000}},
    }  # fmt: skip


ERROR_EVENT = {"info": {"name": "RunResultError", "level": "error", "msg": "Database Error in model bad"}, "data": {}}


@pytest.fixture
def memory_store() -> ObjectStore:
    """fsspec's in-memory file system: a real object-store implementation, no server needed."""
    fs = fsspec.filesystem("memory")
    root = f"/channel-{id(fs)}-{threading.get_ident()}"
    yield ObjectStore(fs, root)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_spec_names_the_run_under_the_base_url_and_round_trips(tmp_path: Path) -> None:
    spec = ChannelSpec.for_run(tmp_path / "run_x", "s3://bucket/runs/", "aws_channel", heartbeat_interval=2)
    assert spec.url == "s3://bucket/runs/run_x" and spec.remote and spec.where == spec.url
    assert ChannelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    local = ChannelSpec.for_run(tmp_path / "run_x", None, "aws_channel")
    assert not local.remote and local.conn_id is None, "a local channel needs no connection"
    assert local.where == str(tmp_path / "run_x")
    assert ChannelSpec.from_dict(None) is None and ChannelSpec.from_dict({"url": "s3://x"}) is None


def test_status_round_trips_and_rejects_what_is_not_a_status() -> None:
    status = RunStatus(state="finished", command="build", beat=3, exit_code=1, error_events=[ERROR_EVENT])
    assert RunStatus.from_bytes(status.to_bytes()) == status
    for data in (
        None,
        b"",
        b"{",
        b"[]",
        b'{"exit_code": 0}',
        b'{"state": "weird"}',
        b'{"state": "running", "beat": []',
    ):
        assert RunStatus.from_bytes(data) is None, data


def test_writer_keeps_compact_nodes_and_error_events_and_readers_see_each_heartbeat(tmp_path: Path) -> None:
    spec = ChannelSpec(str(tmp_path))
    writer = ChannelWriter(spec, command="build")
    reader = ChannelReader(spec)
    assert reader.status() is None, "nothing before the first heartbeat"
    writer.event(node_event(1, "orders"))
    writer.event(ERROR_EVENT)
    writer.event({"info": {"name": "MainReportVersion", "level": "info", "msg": "Running with dbt"}})
    writer.heartbeat()
    first = reader.status()
    assert first is not None and not first.finished and first.beat == 1 and first.command == "build"
    assert first.error_events == [ERROR_EVENT] and first.node_count == 1
    (node,) = first.nodes
    assert node["seq"] == 1 and node["data"]["node_info"] == {
        "unique_id": "model.shop.orders",
        "node_status": "success",
    }
    assert len(json.dumps(node)) < 400, "the channel carries a compact node result, not dbt's whole event"
    writer.heartbeat()
    assert reader.status().beat == 2, "every heartbeat moves the beat, even with nothing new"


def test_the_ring_keeps_the_last_nodes_and_a_reader_learns_how_many_it_missed(tmp_path: Path) -> None:
    writer = ChannelWriter(ChannelSpec(str(tmp_path)), command="run")
    for index in range(1, NODE_RING + 11):
        writer.event(node_event(index, f"m{index}"))
    writer.heartbeat()
    status = ChannelReader(ChannelSpec(str(tmp_path))).status()
    assert status.node_count == NODE_RING + 10 and len(status.nodes) == NODE_RING
    new, missed = status.nodes_after(0)
    assert missed == 10 and new[0]["seq"] == 11
    new, missed = status.nodes_after(NODE_RING + 5)
    assert missed == 0 and [n["seq"] for n in new] == [NODE_RING + 6 + i for i in range(5)]
    assert status.nodes_after(NODE_RING + 10) == ([], 0)


def test_cancel_request_reaches_the_writer(tmp_path: Path) -> None:
    spec = ChannelSpec(str(tmp_path))
    writer = ChannelWriter(spec, command="run")
    assert writer.cancel_request() is None
    ChannelReader(spec).request_cancel("timeout")
    assert writer.cancel_request() == "timeout"
    assert json.loads((tmp_path / CANCEL_FILE).read_text())["reason"] == "timeout"


def test_local_finish_publishes_no_archive_and_collect_is_the_run_dir(tmp_path: Path) -> None:
    spec = ChannelSpec(str(tmp_path))
    (tmp_path / "target").mkdir()
    ChannelWriter(spec, command="run").finish(0, stopped=None, files=[(tmp_path / "target", "target")])
    reader = ChannelReader(spec)
    final = reader.status()
    assert final.finished and final.exit_code == 0 and final.artifacts is False and final.ended_at
    assert not (tmp_path / ARTIFACTS_FILE).exists()
    assert reader.collect(tmp_path / "elsewhere") == tmp_path
    reader.remove()
    assert (tmp_path / STATUS_FILE).is_file(), "a run dir is removed by the run's own clean-up, not the reader"


def test_remote_finish_publishes_artifacts_before_the_final_status(tmp_path: Path, memory_store: ObjectStore) -> None:
    run_dir = tmp_path / "run_a"
    (run_dir / "target" / "compiled").mkdir(parents=True)
    (run_dir / "logs").mkdir()
    (run_dir / "target" / "run_results.json").write_text('{"results": []}')
    (run_dir / "target" / "compiled" / "m.sql").write_text("select 1")
    (run_dir / "target" / "partial_parse.msgpack").write_bytes(b"\0" * 1000)
    (run_dir / "logs" / "events.jsonl").write_text("{}\n")
    spec = ChannelSpec(str(run_dir), url="memory://channel/run_a")
    writes: list[str] = []
    original = memory_store.write

    def recording(name: str, data: bytes) -> None:
        writes.append(name)
        original(name, data)

    memory_store.write = recording  # type: ignore[method-assign]
    writer = ChannelWriter(spec, command="build", store=memory_store)
    writer.heartbeat()
    writer.finish(1, stopped="killed", files=[(run_dir / "target", "target"), (run_dir / "logs", "logs")])
    assert writes == [STATUS_FILE, ARTIFACTS_FILE, STATUS_FILE], "a reader that sees finished finds the artifacts"

    reader = ChannelReader(spec, store=memory_store)
    final = reader.status()
    assert final.finished and final.exit_code == 1 and final.stopped == "killed" and final.artifacts
    into = tmp_path / "collected"
    assert reader.collect(into) == into
    assert (into / "target" / "run_results.json").read_text() == '{"results": []}'
    assert (into / "target" / "compiled" / "m.sql").read_text() == "select 1"
    assert (into / "logs" / "events.jsonl").is_file()
    assert not (into / "target" / "partial_parse.msgpack").exists(), "dbt's own parse cache stays behind"
    reader.remove()
    assert reader.status() is None and memory_store.read(ARTIFACTS_FILE) is None


def test_collect_without_published_artifacts_says_where_it_looked(tmp_path: Path, memory_store: ObjectStore) -> None:
    reader = ChannelReader(ChannelSpec(str(tmp_path), url="memory://channel/run_b"), store=memory_store)
    with pytest.raises(FileNotFoundError, match=re.escape("memory://channel/run_b/artifacts.tar.gz")):
        reader.collect(tmp_path / "into")


def test_unpack_refuses_members_that_leave_the_target_dir(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(tarfile.FilterError):
        unpack(buffer.getvalue(), tmp_path / "into")
    assert not (tmp_path / "escaped.txt").exists()


def test_pack_of_missing_paths_is_an_empty_archive(tmp_path: Path) -> None:
    data = pack([(tmp_path / "nope", "target"), (tmp_path / "nofile.json", "x.json")])
    unpack(data, tmp_path / "into")
    assert list((tmp_path / "into").iterdir()) == []


def test_open_store_of_a_file_url_writes_atomically_in_its_own_dir(tmp_path: Path) -> None:
    spec = ChannelSpec(str(tmp_path / "run_dir"), url=f"file://{tmp_path}/shared/run_c")
    store = open_store(spec)
    assert isinstance(store, LocalStore) and store.root == tmp_path / "shared" / "run_c"
    ChannelWriter(spec, command="run", store=store).heartbeat()
    assert ChannelReader(spec).status().beat == 1, "another reader opens the same store from the URL"
    assert [p.name for p in store.root.iterdir()] == [STATUS_FILE], "no temp file left by the atomic write"
    store.remove()
    assert not store.root.exists(), "a channel dir of its own goes with the channel"


class _RangedReadFs:
    """An fsspec-like file system whose ``cat_file`` splits reads unless told ``max_concurrency=1`` (as s3fs)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, max_concurrency: int | None = None,
                 ) -> bytes:  # fmt: skip
        self.calls.append({"path": path, "max_concurrency": max_concurrency})
        return b'{"state": "running"}'


def test_object_store_reads_a_document_in_one_request_where_the_fs_would_split_it() -> None:
    fs = _RangedReadFs()
    assert ObjectStore(fs, "bucket/run_a/").read(STATUS_FILE) == b'{"state": "running"}'
    assert fs.calls == [{"path": f"bucket/run_a/{STATUS_FILE}", "max_concurrency": 1}]


def test_object_store_passes_no_read_option_a_file_system_does_not_declare(memory_store: ObjectStore) -> None:
    memory_store.write(STATUS_FILE, b"{}")
    assert memory_store.read(STATUS_FILE) == b"{}", "memory fs: cat_file(path, start, end, **kwargs)"


def test_local_store_of_a_missing_dir_reads_nothing(tmp_path: Path) -> None:
    assert LocalStore(tmp_path / "missing").read(STATUS_FILE) is None


class _AsyncObjects(AsyncFileSystem):
    """An async fsspec file system (as s3fs): its ``_cat_file`` runs on fsspec's IO loop, recorded per call."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        super().__init__(asynchronous=False)
        self.objects = objects
        self.calls: list[tuple[str, int | None, bool]] = []

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None,
                        max_concurrency: int | None = None) -> bytes:  # fmt: skip
        self.calls.append((path, max_concurrency, asyncio.get_running_loop() is self.loop))
        try:
            return self.objects[path]
        except KeyError:
            raise FileNotFoundError(path) from None


async def test_async_read_of_an_async_file_system_is_awaited_on_its_own_loop_not_in_a_thread() -> None:
    fs = _AsyncObjects({f"bucket/run_a/{STATUS_FILE}": b'{"state": "running"}'})
    store = ObjectStore(fs, "bucket/run_a")
    assert await store.aread(STATUS_FILE) == b'{"state": "running"}'
    assert await store.aread(CANCEL_FILE) is None, "a missing object is no document, as for read()"
    assert fs.calls == [(f"bucket/run_a/{STATUS_FILE}", 1, True), (f"bucket/run_a/{CANCEL_FILE}", 1, True)]
    assert asyncio.get_running_loop() is not fs.loop, "the caller's loop only awaited the IO loop's future"


async def test_async_read_of_a_sync_store_takes_a_worker_thread(tmp_path: Path, memory_store: ObjectStore) -> None:
    memory_store.write(STATUS_FILE, b"{}")
    assert await memory_store.aread(STATUS_FILE) == b"{}"
    local = LocalStore(tmp_path)
    local.write(STATUS_FILE, b"[]")
    assert await local.aread(STATUS_FILE) == b"[]" and await local.aread(CANCEL_FILE) is None


async def test_reader_status_bytes_opens_the_store_once_and_returns_the_published_document(tmp_path: Path) -> None:
    spec = ChannelSpec.for_run(tmp_path / "run_b", f"file://{tmp_path}/channel")
    assert await ChannelReader(spec).status_bytes() is None, "nothing published yet"
    writer = ChannelWriter(spec, command="build")
    writer.heartbeat()
    reader = ChannelReader(spec)
    data = await reader.status_bytes()
    assert RunStatus.from_bytes(data) is not None and RunStatus.from_bytes(data).beat == 1  # type: ignore[union-attr]


# -- transient store errors: retried (bounded), anything else raised at once -----------------------------------


class _ClientError(Exception):
    """Shaped like botocore's ClientError: the HTTP status in ``response``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"An error occurred ({status})")
        self.response = {"Error": {"Code": str(status)}, "ResponseMetadata": {"HTTPStatusCode": status}}


def _translated(error: OSError, status: int) -> OSError:
    """As s3fs raises a ClientError: a Python error, with the ClientError as its cause."""
    error.__cause__ = _ClientError(status)
    return error


class HTTPClientError(Exception):
    """Named as botocore's transport error (a dropped or reset connection)."""


def _server_error() -> OSError:
    return _translated(OSError(errno.EIO, "We encountered an internal error"), 500)


def _bad_request() -> OSError:
    return _translated(OSError(errno.EINVAL, "Invalid argument"), 400)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError("reset"), True),
        (TimeoutError("read timed out"), True),
        (HTTPClientError("Connection was closed before we received a valid response"), True),
        (_server_error(), True),
        (_translated(OSError(errno.EBUSY, "SlowDown"), 503), True),
        (_ClientError(502), True),
        (_ClientError(429), True),
        (_bad_request(), False),
        (_translated(PermissionError("Access Denied"), 403), False),
        (FileNotFoundError("no such key"), False),
        (ValueError("not a store error"), False),
    ],
)
def test_transient_errors_are_connection_errors_timeouts_and_5xx(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


class _FailingFs:
    """An fsspec-like file system whose requests fail with ``errors`` (one per call) before they work."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[str] = []
        self.objects: dict[str, bytes] = {}

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.errors:
            raise self.errors.pop(0)

    def cat_file(self, path: str) -> bytes:
        self._call("cat_file")
        if path not in self.objects:
            raise FileNotFoundError(path)
        return self.objects[path]

    def pipe_file(self, path: str, data: bytes) -> None:
        self._call("pipe_file")
        self.objects[path] = data

    def rm(self, path: str, recursive: bool = False) -> None:
        self._call("rm")
        self.objects = {key: value for key, value in self.objects.items() if not key.startswith(f"{path}/")}


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_module, "_RETRY_WAIT", {"multiplier": 0, "max": 0, "jitter": 0})


@pytest.mark.usefixtures("no_backoff")
def test_store_requests_are_retried_through_transient_errors_with_a_warning_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fs = _FailingFs(ConnectionResetError("reset"), _server_error(), TimeoutError("timed out"))
    store = ObjectStore(fs, "bucket/channel/run_x")
    with caplog.at_level(logging.WARNING, logger=channel_module.__name__):
        store.write(STATUS_FILE, b"{}")
    assert fs.calls == ["pipe_file"] * 4 and fs.objects == {f"bucket/channel/run_x/{STATUS_FILE}": b"{}"}
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 3 and all(f"write bucket/channel/run_x/{STATUS_FILE} failed" in w for w in warnings)
    assert "(try 1 of 4)" in warnings[0] and "reset" in warnings[0]

    fs.errors = [_server_error()]
    assert store.read(STATUS_FILE) == b"{}"
    fs.errors = [HTTPClientError("closed")]
    store.remove()
    assert fs.objects == {}


@pytest.mark.usefixtures("no_backoff")
def test_store_retries_are_bounded_and_end_with_the_last_error() -> None:
    fs = _FailingFs(*[_server_error() for _ in range(STORE_ATTEMPTS + 2)])
    with pytest.raises(OSError, match="internal error"):
        ObjectStore(fs, "bucket/run_x").read(STATUS_FILE)
    assert len(fs.calls) == STORE_ATTEMPTS
    single = _FailingFs(_server_error())
    with pytest.raises(OSError):
        ObjectStore(single, "bucket/run_x", attempts=1).read(STATUS_FILE)
    assert len(single.calls) == 1


@pytest.mark.usefixtures("no_backoff")
def test_a_missing_object_or_a_refusal_is_not_retried() -> None:
    fs = _FailingFs()
    store = ObjectStore(fs, "bucket/run_x")
    assert store.read(STATUS_FILE) is None and fs.calls == ["cat_file"]
    for error in (_translated(PermissionError("Access Denied"), 403), _bad_request()):
        fs.calls, fs.errors = [], [error]
        with pytest.raises(OSError):
            store.write(STATUS_FILE, b"{}")
        assert fs.calls == ["pipe_file"]


@pytest.mark.usefixtures("no_backoff")
def test_writer_and_reader_go_through_a_flaky_store(tmp_path: Path) -> None:
    spec = ChannelSpec.for_run(tmp_path / "run_x", "s3://bucket/channel")
    fs = _FailingFs(ConnectionResetError("reset"))
    store = ObjectStore(fs, "bucket/channel/run_x")
    writer = ChannelWriter(spec, command="build", store=store)
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "run_results.json").write_text("{}")
    fs.errors = [_server_error(), ConnectionResetError("reset")]
    writer.finish(0, stopped=None, files=[(tmp_path / "target", "target")])
    reader = ChannelReader(spec, store=store)
    fs.errors = [TimeoutError("timed out")]
    status = reader.status()
    assert status is not None and status.finished and status.exit_code == 0
    fs.errors = [_server_error()]
    assert (reader.collect(tmp_path / "collected") / "target" / "run_results.json").read_text() == "{}"
    fs.errors = [ConnectionResetError("reset")]
    reader.remove()
    assert fs.objects == {}


def test_retry_backoff_is_short_and_jittered() -> None:
    assert channel_module._RETRY_WAIT["multiplier"] <= 0.5 and channel_module._RETRY_WAIT["max"] <= 2.0
    assert channel_module._RETRY_WAIT["jitter"] > 0 and 2 <= STORE_ATTEMPTS <= 5


def test_node_results_carry_every_node_and_a_failed_nodes_message(tmp_path: Path) -> None:
    spec = ChannelSpec.for_run(tmp_path, None, node_results=True)
    assert ChannelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    writer = ChannelWriter(spec, command="build", prior_results={"model.shop.raw": "success"})
    writer.event(node_event(1, "orders"))
    writer.event(node_event(2, "bad", "error"))
    finished = {"info": {"name": "NodeFinished", "level": "debug"},
                "data": {"node_info": {"unique_id": "model.shop.bad"},
                         "run_result": {"status": "error", "message": "Runtime Error: " + "z" * 5000}}}  # fmt: skip
    writer.event(finished)
    closing = {"info": {"name": "RunResultError", "level": "error"},
               "data": {"msg": "later text", "node_info": {"unique_id": "model.shop.bad"}}}  # fmt: skip
    writer.event(closing)
    writer.heartbeat()
    results = ChannelReader(spec).status().results
    assert results["model.shop.raw"] == {"status": "success"}, "a resumed try carries its previous try's results"
    assert results["model.shop.orders"] == {"status": "success"}
    bad = results["model.shop.bad"]
    assert bad["status"] == "error" and bad["message"].startswith("Runtime Error: ") and len(bad["message"]) <= 2000
    for index in range(3, NODE_RING + 20):  # every node stays, however far the ring has moved on
        writer.event(node_event(index, f"m{index}"))
    writer.heartbeat()
    assert len(ChannelReader(spec).status().results) == NODE_RING + 20


def test_a_closing_run_result_error_names_the_message_when_no_node_finished_came(tmp_path: Path) -> None:
    writer = ChannelWriter(ChannelSpec(str(tmp_path), node_results=True), command="build")
    writer.event(node_event(1, "bad", "error"))
    closing = {"msg": "Database Error in model bad", "node_info": {"unique_id": "model.shop.bad"}}
    writer.event({"info": {"name": "RunResultError", "level": "error"}, "data": closing})
    assert writer.status.results == {"model.shop.bad": {"status": "error", "message": "Database Error in model bad"}}


def test_a_plain_run_keeps_no_node_results(tmp_path: Path) -> None:
    writer = ChannelWriter(ChannelSpec(str(tmp_path)), command="build", prior_results={"model.shop.raw": "success"})
    writer.event(node_event(1, "orders"))
    writer.heartbeat()
    assert ChannelReader(ChannelSpec(str(tmp_path))).status().results is None
