"""The run channel of a detached dbt run: exactly one writer (the runner) and one reader API.

The runner publishes the run's status (a heartbeat, the node results so far, then the exit code with dbt's
error events) and, for a remote channel, the final artifacts; readers (the trigger, ``execute_complete`` on
any worker) poll the status with one read and collect the artifacts once. A reader's only write is a cancel
request, which the runner obeys. Two stores hold the same documents: the run dir itself (local: worker and
triggerer share a host or a volume) and a prefix under any ``ObjectStoragePath`` URL (``s3://``, ``gs://``,
``abfs://``, ``file://`` on a shared volume), so that no reader needs the worker's files or processes.
Nothing secret is ever written here: the store's credentials reach the runner only through its environment.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import inspect
import io
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from dlh_airflow_common.dbt.events import NODE_FAILURE_STATUSES, compact_node_event, is_error_event

log = logging.getLogger(__name__)
_T = TypeVar("_T")

STATUS_FILE = "status.json"
CANCEL_FILE = "cancel.json"
ARTIFACTS_FILE = "artifacts.tar.gz"
NODE_RING = 200  # node results a status carries; a reader that falls further behind logs a count instead
MAX_ERROR_EVENTS = 200
MAX_RESULT_MESSAGE = 2000  # characters of a failed node's message kept in a status's ``results``
DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_HEARTBEAT_TIMEOUT = 60.0  # a remote run whose heartbeat has not moved for this long is lost
_PACKED_TARGET_SKIP = frozenset({"partial_parse.msgpack", "graph.gpickle"})  # large and only dbt's own cache
_LOCAL_PROTOCOLS = frozenset({"file", "local"})
STORE_ATTEMPTS = 4  # tries of one object-store request on a transient error (about 1.5 s of backoff in all)
_RETRY_WAIT = {"multiplier": 0.2, "max": 2.0, "jitter": 0.2}  # seconds: 0.2, 0.4, 0.8 ... plus up to 0.2 of jitter
_NOT_TRANSIENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
# What s3fs and others make of a 5xx or a throttle (EIO, EREMOTEIO, EBUSY) and of a dropped connection.
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EIO", "EREMOTEIO", "EBUSY", "EAGAIN", "ECONNRESET", "ECONNABORTED",
                                      "ECONNREFUSED", "EPIPE", "ETIMEDOUT", "ENETUNREACH", "EHOSTUNREACH")
    if hasattr(errno, name)
)  # fmt: skip
# Transport errors of the object-store clients that are not Python's own ConnectionError / TimeoutError.
_TRANSPORT_ERRORS = frozenset({"HTTPClientError", "ConnectionError", "ConnectionClosedError", "EndpointConnectionError",
                               "ReadTimeoutError", "ConnectTimeoutError", "ResponseStreamingError", "IncompleteRead",
                               "IncompleteReadError", "ResponseParserError", "ClientConnectionError",
                               "ClientPayloadError", "ServerDisconnectedError", "ServiceRequestError",
                               "ServiceResponseError", "TransportError"})  # fmt: skip


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write-then-rename, so a reader sees the old file, no file, or the whole new one: never half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ChannelSpec:
    """Where one run's channel is, as plain JSON without secrets: the run dir on the worker and the remote prefix.

    ``url`` is the run's own prefix (``<run_channel>/<run name>``); None means the run dir is the channel.
    ``node_results``: the status also carries every node's result (``RunStatus.results``), for readers that
    wait for one node each (a task graph's node tasks); off for a plain run, whose status stays small.
    """

    run_dir: str
    url: str | None = None
    conn_id: str | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    node_results: bool = False

    @classmethod
    def for_run(
        cls,
        run_dir: Path,
        base_url: str | None,
        conn_id: str | None = None,
        *,
        heartbeat_interval: float | None = None,
        node_results: bool = False,
    ) -> ChannelSpec:
        url = f"{base_url.rstrip('/')}/{run_dir.name}" if base_url else None
        interval = DEFAULT_HEARTBEAT_INTERVAL if heartbeat_interval is None else float(heartbeat_interval)
        return cls(str(run_dir), url, conn_id if url else None, interval, node_results)

    @property
    def remote(self) -> bool:
        return self.url is not None

    @property
    def where(self) -> str:
        return self.url or self.run_dir

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, content: Mapping[str, Any] | None) -> ChannelSpec | None:
        if not isinstance(content, Mapping) or not isinstance(content.get("run_dir"), str):
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in content.items() if key in known})


@dataclass
class RunStatus:
    """The status document: the only thing a poll reads. ``stopped`` says the runner itself stopped dbt
    (``killed`` on a cancel request, ``timeout`` at its deadline). ``results`` (only with
    ``ChannelSpec.node_results``) maps every node dbt reported to ``{"status": ..., "message": ...}``, the
    message for failed nodes only, and includes the results a resumed try carried over from the one before.
    """

    state: str = "running"
    command: str = "dbt"
    beat: int = 0
    host: str = ""
    runner_pid: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0
    ended_at: float | None = None
    exit_code: int | None = None
    stopped: str | None = None
    error_events: list[dict[str, Any]] = field(default_factory=list)
    node_count: int = 0
    nodes: list[dict[str, Any]] = field(default_factory=list)
    artifacts: bool = False
    results: dict[str, dict[str, Any]] | None = None

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | None) -> RunStatus | None:
        """The status in ``data``; None when there is none or it is not a status document."""
        content = _json_object(data)
        if content is None or content.get("state") not in ("running", "finished"):
            return None
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{key: value for key, value in content.items() if key in known})
        except TypeError:
            return None

    def nodes_after(self, seq: int) -> tuple[list[dict[str, Any]], int]:
        """Node results with a sequence number above ``seq``, and how many of those the ring no longer holds."""
        new = [node for node in self.nodes if int(node.get("seq", 0)) > seq]
        first = int(new[0]["seq"]) if new else self.node_count + 1
        return new, max(0, first - seq - 1)


def is_transient(error: BaseException) -> bool:
    """Whether another try of a store request may succeed: a dropped connection, a timeout, a 5xx or a throttle
    (429) from the server, here or as the cause s3fs and others chain; never a missing object or a refusal (4xx)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = _http_status(current)
        if status is not None:
            return status >= 500 or status in (408, 429)
        if isinstance(current, _NOT_TRANSIENT):
            return False
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in _TRANSPORT_ERRORS for cls in type(current).__mro__):
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        current = current.__cause__
    return False


def _http_status(error: BaseException) -> int | None:
    """The HTTP status an object-store client attached to ``error`` (botocore, aiohttp, azure, gcsfs), if any."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for name in ("status", "status_code", "code"):
        status = getattr(error, name, None)
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status < 600:
            return status
    return None


def call_with_retry(function: Callable[[], _T], *, attempts: int, what: str) -> _T:
    """``function()``, tried up to ``attempts`` times while it fails with a transient store error (short
    exponential backoff with jitter, a warning per failed try); any other error, or the last one, is raised."""

    def warn(state: Any) -> None:
        log.warning("%s failed (try %d of %d), trying again in %.1fs: %s", what, state.attempt_number, attempts,
                    state.next_action.sleep, state.outcome.exception())  # fmt: skip

    retrying = Retrying(
        stop=stop_after_attempt(max(1, attempts)), wait=_backoff(),
        retry=retry_if_exception(is_transient), before_sleep=warn, reraise=True,
    )  # fmt: skip
    return retrying(function)


def _backoff() -> Any:
    """Exponential (``multiplier``, doubling, capped at ``max``) plus a random ``jitter``, so that the runs of a
    store that stumbled do not all try again at the same instant."""
    return wait_exponential(multiplier=_RETRY_WAIT["multiplier"], max=_RETRY_WAIT["max"]) + wait_random(
        0, _RETRY_WAIT["jitter"]
    )


def _retried(method: Callable[..., _T]) -> Callable[..., _T]:
    """An ``ObjectStore`` request, retried up to its store's ``attempts`` (``call_with_retry``)."""

    @functools.wraps(method)
    def wrapper(self: ObjectStore, *args: Any) -> _T:
        where = f"{self.root}/{args[0]}" if args else self.root
        return call_with_retry(lambda: method(self, *args), attempts=self.attempts, what=f"{method.__name__} {where}")

    return wrapper


class ChannelStore(Protocol):
    """A flat namespace of small documents and one archive."""

    def read(self, name: str) -> bytes | None: ...

    async def aread(self, name: str) -> bytes | None:
        """``read`` for an event loop: never blocks it, and holds no executor thread while the store answers."""
        ...

    def write(self, name: str, data: bytes) -> None: ...

    def remove(self) -> None: ...


class LocalStore:
    """Documents as files of one directory, written atomically."""

    def __init__(self, root: Path, *, owned: bool = False) -> None:
        self.root = root
        self.owned = owned  # a channel dir of its own (file:// URL), removed with the channel; not a run dir

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def aread(self, name: str) -> bytes | None:
        return await asyncio.to_thread(self.read, name)

    def write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.root / name, data)

    def remove(self) -> None:
        """A run dir goes with the run's clean-up; a channel dir of its own goes here."""
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


class ObjectStore:
    """Documents as objects under one prefix of an fsspec file system: one request per read or write, tried
    up to ``attempts`` times in all on a transient error (``is_transient``). ``aread`` (the trigger's poll)
    tries once on an async file system: the next poll is its retry."""

    def __init__(self, fs: Any, root: str, *, attempts: int = STORE_ATTEMPTS) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.attempts = attempts
        # s3fs's cat_file first asks for the size (a HEAD) to split big objects into concurrent ranged GETs:
        # two requests per status read. The documents are small: one GET (bench/channel_poll.py counts them).
        self._read_options = {"max_concurrency": 1} if _accepts(fs.cat_file, "max_concurrency") else {}

    @_retried
    def read(self, name: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(f"{self.root}/{name}", **self._read_options))
        except FileNotFoundError:
            return None

    async def aread(self, name: str) -> bytes | None:
        """An async file system's own coroutine, awaited on its IO loop (s3fs, gcsfs, adlfs): the request then
        waits in that loop, not in an executor thread; any other file system reads in a worker thread."""
        loop = getattr(self.fs, "loop", None) if getattr(self.fs, "async_impl", False) else None
        if loop is None:
            return await asyncio.to_thread(self.read, name)
        coroutine = self.fs._cat_file(f"{self.root}/{name}", **self._read_options)
        try:
            return bytes(await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop)))
        except FileNotFoundError:
            return None

    @_retried
    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.root}/{name}", data)

    @_retried
    def remove(self) -> None:
        try:
            self.fs.rm(self.root, recursive=True)
        except FileNotFoundError:
            return


def open_store(spec: ChannelSpec) -> ChannelStore:
    """The store of ``spec``: its run dir, or its URL through ``ObjectStoragePath`` and the connection."""
    if spec.url is None:
        return LocalStore(Path(spec.run_dir))
    return open_url(spec.url, spec.conn_id)


def open_url(url: str, conn_id: str | None) -> ChannelStore:
    """The store under ``url`` (any ``ObjectStoragePath`` URL), reached through the connection ``conn_id``."""
    from airflow.sdk import ObjectStoragePath  # only remote channels pay for this import

    path = ObjectStoragePath(url, conn_id=conn_id)
    fs = path.fs
    if set(_protocols(fs)) & _LOCAL_PROTOCOLS:
        return LocalStore(Path(path.path), owned=True)  # a shared volume: keep the atomic rename
    return ObjectStore(fs, path.path)


def _accepts(function: Any, name: str) -> bool:
    """Whether ``function`` declares the parameter ``name`` (a catch-all ``**kwargs`` does not count)."""
    try:
        parameter = inspect.signature(function).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


class ChannelWriter:
    """The runner's side, the only writer of the status and the artifacts. Thread-safe: dbt's events come
    from the runner's main loop while heartbeats come from its own thread."""

    def __init__(
        self,
        spec: ChannelSpec,
        *,
        command: str,
        store: ChannelStore | None = None,
        prior_results: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self._store = store
        self._lock = threading.Lock()
        self.status = RunStatus(command=command, host=socket.gethostname(), runner_pid=os.getpid(),
                                started_at=time.time())  # fmt: skip
        if spec.node_results:
            self.status.results = {uid: {"status": status} for uid, status in (prior_results or {}).items()}

    @property
    def store(self) -> ChannelStore:
        if self._store is None:
            self._store = open_store(self.spec)
        return self._store

    def event(self, event: Mapping[str, Any]) -> None:
        """Take one of dbt's JSON events: keep error events and a compact copy of node results."""
        compact = compact_node_event(event)
        with self._lock:
            status = self.status
            if is_error_event(event) and len(status.error_events) < MAX_ERROR_EVENTS:
                status.error_events.append(dict(event))
            if compact is not None:
                status.node_count += 1
                status.nodes.append({**compact, "seq": status.node_count})
                del status.nodes[:-NODE_RING]
            if status.results is not None:
                _record_result(status.results, event, compact)

    def heartbeat(self) -> None:
        """Publish the status so far (one write): readers see the run alive and its progress."""
        with self._lock:
            self.status.beat += 1
            self.status.updated_at = time.time()
            data = self.status.to_bytes()
        self.store.write(STATUS_FILE, data)

    def cancel_request(self) -> str | None:
        """The reason of a reader's cancel request (``killed``, ``timeout``), if one was made."""
        content = _json_object(self.store.read(CANCEL_FILE))
        return str(content.get("reason") or "killed") if content is not None else None

    def finish(self, exit_code: int, *, stopped: str | None, files: Iterable[tuple[Path, str]] = ()) -> None:
        """Publish the final artifacts (remote), then the final status: a reader that sees ``finished`` finds them."""
        if self.spec.remote:
            self.store.write(ARTIFACTS_FILE, pack(files))
        with self._lock:
            status = self.status
            status.state, status.exit_code, status.stopped = "finished", exit_code, stopped
            status.ended_at = status.updated_at = time.time()
            status.artifacts = self.spec.remote
            status.beat += 1
            data = status.to_bytes()
        self.store.write(STATUS_FILE, data)


class ChannelReader:
    """The reader API (trigger, ``execute_complete``, the sweep): one read per status, artifacts once."""

    def __init__(self, spec: ChannelSpec, *, store: ChannelStore | None = None) -> None:
        self.spec = spec
        self._store = store

    @property
    def store(self) -> ChannelStore:
        if self._store is None:
            self._store = open_store(self.spec)
        return self._store

    def status(self) -> RunStatus | None:
        """The run's latest status (one read); None before the runner published one."""
        return RunStatus.from_bytes(self.store.read(STATUS_FILE))

    async def status_bytes(self) -> bytes | None:
        """The status document as published, read without blocking the loop (``RunStatus.from_bytes`` decodes
        it); the store's client is built in a worker thread on first use."""
        store = self._store if self._store is not None else await asyncio.to_thread(lambda: self.store)
        return await store.aread(STATUS_FILE)

    def request_cancel(self, reason: str) -> None:
        """Ask the runner to stop dbt (SIGINT, its grace period, then SIGKILL) and to record that it did."""
        self.store.write(CANCEL_FILE, json.dumps({"reason": reason, "requested_at": time.time()}).encode())

    def collect(self, into: Path) -> Path:
        """The run's files on this host: the run dir itself (local), or the published artifacts unpacked
        into ``into`` (remote); raises ``FileNotFoundError`` when a remote run published none."""
        if not self.spec.remote:
            return Path(self.spec.run_dir)
        data = self.store.read(ARTIFACTS_FILE)
        if data is None:
            raise FileNotFoundError(f"{self.spec.url}/{ARTIFACTS_FILE}")
        unpack(data, into)
        return into

    def remove(self) -> None:
        """Remove the channel's documents (a local run dir goes with the run's own clean-up)."""
        self.store.remove()


def _record_result(
    results: dict[str, dict[str, Any]], event: Mapping[str, Any], compact: Mapping[str, Any] | None
) -> None:
    """Fold one event into ``results``: a node's status from its result line, a failed node's message from dbt's
    ``NodeFinished`` (as the event runner forwards it) or its closing ``RunResultError``."""
    if compact is not None:
        node_info = compact["data"]["node_info"]
        results.setdefault(node_info["unique_id"], {})["status"] = node_info["node_status"]
        return
    info = event.get("info") or {}
    data = event.get("data") or {}
    unique_id = (data.get("node_info") or {}).get("unique_id")
    if not unique_id:
        return
    message: Any = None
    if info.get("name") == "NodeFinished":
        run_result = data.get("run_result") or {}
        if str(run_result.get("status", "")).lower() in NODE_FAILURE_STATUSES:
            message = run_result.get("message")
            results.setdefault(unique_id, {}).setdefault("status", str(run_result["status"]).lower())
    elif info.get("name") == "RunResultError":
        message = data.get("msg")
    if message and not results.get(unique_id, {}).get("message"):
        text = str(message)
        short = text if len(text) <= MAX_RESULT_MESSAGE else text[: MAX_RESULT_MESSAGE - 3] + "..."
        results.setdefault(unique_id, {})["message"] = short


def pack(files: Iterable[tuple[Path, str]]) -> bytes:
    """A gzipped tar of ``(path, name in archive)`` pairs; directories are added with what they hold."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for path, name in files:
            if path.is_dir():
                for child in sorted(path.rglob("*")):
                    if child.is_file() and child.name not in _PACKED_TARGET_SKIP:
                        archive.add(child, f"{name}/{child.relative_to(path).as_posix()}", recursive=False)
            elif path.is_file():
                archive.add(path, name, recursive=False)
    return buffer.getvalue()


def unpack(data: bytes, into: Path) -> None:
    """Extract an archive made by ``pack``; members that would leave ``into`` are refused (tar data filter)."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(into, filter="data")


def _json_object(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        content = json.loads(data)
    except ValueError:
        return None
    return content if isinstance(content, dict) else None
