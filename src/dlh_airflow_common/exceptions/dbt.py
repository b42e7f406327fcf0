"""Typed dbt failures and ``classify_dbt_error``, which maps what dbt reported to one of them.

Classification reads dbt's structured information first (exception classes, event names, the node an
event belongs to) and falls back to message patterns only for what dbt does not type (driver errors).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

try:  # Airflow >= 3.1 exposes the base class through the task SDK.
    from airflow.sdk.exceptions import AirflowException
except ImportError:  # pragma: no cover - Airflow 3.0
    from airflow.exceptions import AirflowException  # type: ignore[attr-defined,no-redef]

from dlh_airflow_common.dbt.events import is_error_event

if TYPE_CHECKING:
    from dlh_airflow_common.dbt.result import DbtTaskResult

__all__ = [
    "DbtArtifactException",
    "DbtCompilationException",
    "DbtConnectionException",
    "DbtException",
    "DbtExecutionTimeoutException",
    "DbtProfileException",
    "DbtProjectSourceException",
    "DbtRuntimeException",
    "classify_dbt_error",
]


class DbtException(AirflowException):
    """Base of every dbt failure raised by this package; ``retryable`` says whether trying again can help.

    A failure of a dbt run carries that run's ``DbtTaskResult`` as ``result`` (summary, node results, run
    dir), so code that catches the exception loses nothing; errors raised before dbt ran have ``None``.
    """

    retryable: bool = False
    result: DbtTaskResult | None = None

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        node_id: str | None = None,
        conn_id: str | None = None,
        artifact_path: str | None = None,
        log_path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        self.node_id = node_id
        self.conn_id = conn_id
        self.artifact_path = artifact_path
        self.log_path = log_path

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        node = f", node_id={self.node_id!r}" if self.node_id else ""
        return f"{type(self).__name__}({self.message!r}{node})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only metadata must survive pickling (Airflow and multiprocessing pickle exceptions).
        return (_rebuild, (type(self), self.message, self._metadata()))

    def _metadata(self) -> dict[str, Any]:
        return {
            "retryable": self.retryable,
            "node_id": self.node_id,
            "conn_id": self.conn_id,
            "artifact_path": self.artifact_path,
            "log_path": self.log_path,
        }


def _rebuild(cls: type[DbtException], message: str, metadata: dict[str, Any]) -> DbtException:
    return cls(message, **metadata)


class DbtCompilationException(DbtException):
    """The project does not compile: Jinja, a missing ref/source, invalid YAML or project config."""


class DbtRuntimeException(DbtException):
    """dbt ran but a node failed in the warehouse (SQL error, permission denied) or a data test failed."""


class DbtConnectionException(DbtException):
    """The warehouse could not be reached or dropped the connection: usually transient."""

    retryable = True


class DbtProfileException(DbtException):
    """The profile or connection is wrong: missing field, bad credentials, unknown database."""


class DbtArtifactException(DbtException):
    """An artifact (manifest.json, run_results.json, ...) is unreadable or corrupt."""


class DbtExecutionTimeoutException(DbtException):
    """dbt was stopped because the task's execution timeout passed."""


class DbtProjectSourceException(DbtException):
    """A remote ``dbt_project_dir`` (object storage or git) could not be resolved, fetched or unpacked.

    The message names the URL (never its credentials); ``url`` holds it too.
    """

    def __init__(self, message: str, *, url: str = "", **metadata: Any) -> None:
        super().__init__(message, **metadata)
        self.url = url

    def _metadata(self) -> dict[str, Any]:
        return {**super()._metadata(), "url": self.url}


# Ordered: the first matching rule wins. Driver messages come before dbt's generic "Database Error" prefix.
_PATTERNS: tuple[tuple[type[DbtException], bool | None, re.Pattern[str]], ...] = tuple(
    (cls, retryable, re.compile(pattern, re.IGNORECASE | re.DOTALL))
    for cls, retryable, pattern in (
        # Credentials and connection settings that retrying cannot fix.
        (DbtProfileException, None, r"password authentication failed|authentication failed for user"),
        (DbtProfileException, None, r"no password supplied|password is required"),
        (DbtProfileException, None, r"role \"[^\"]*\" does not exist"),
        (DbtProfileException, None, r"database \"[^\"]*\" does not exist"),
        (DbtProfileException, None, r"could not find profile named|does not have a target named"),
        (DbtProfileException, None, r"runtime error\s+credentials in profile|profile .* is invalid"),
        (DbtProfileException, None, r"could not translate host name|name or service not known"),
        # The warehouse was unreachable or went away.
        (DbtConnectionException, None, r"connection refused|could not connect to server"),
        (DbtConnectionException, None, r"connection to server at .* failed"),
        (
            DbtConnectionException,
            None,
            r"server closed the connection unexpectedly|connection already closed",
        ),
        (DbtConnectionException, None, r"terminating connection due to administrator command"),
        (
            DbtConnectionException,
            None,
            r"the database system is (starting up|shutting down|in recovery mode)",
        ),
        (DbtConnectionException, None, r"connection (timed out|reset by peer)|timeout expired|broken pipe"),
        (DbtConnectionException, None, r"ssl syscall error|connection is closed|lost connection"),
        (DbtConnectionException, None, r"too many connections|remaining connection slots are reserved"),
        (DbtConnectionException, None, r"could not set lock on file"),
        # Transient inside the warehouse: the same SQL usually succeeds on the next attempt.
        (DbtRuntimeException, True, r"deadlock detected|could not serialize access|lock timeout"),
        (DbtRuntimeException, True, r"canceling statement due to conflict with recovery"),
        (DbtRuntimeException, None, r"permission denied|insufficient privilege|must be owner of"),
    )
)

# dbt's own labels: only consulted when the exception type (if any) said nothing more specific.
_LABELS: tuple[tuple[type[DbtException], bool | None, re.Pattern[str]], ...] = tuple(
    (cls, None, re.compile(pattern, re.IGNORECASE | re.DOTALL))
    for cls, pattern in (
        (DbtCompilationException, r"compilation error|parsing error|jinja|depends on a node named"),
        (DbtProfileException, r"profiles\.yml|\bprofile\b[^\n]*\b(is invalid|not found|missing)"),
        (DbtRuntimeException, r"database error|runtime error|failure in test|catalog error"),
    )
)

# dbt exception classes by name, most specific first (names keep this module free of dbt imports).
_TYPE_NAMES: tuple[tuple[str, type[DbtException]], ...] = (
    ("DbtProfileError", DbtProfileException),
    ("FailedToConnectError", DbtConnectionException),
    ("CompilationError", DbtCompilationException),
    ("ParsingError", DbtCompilationException),
    ("DbtProjectError", DbtCompilationException),
    ("DbtConfigError", DbtProfileException),
    ("DbtValidationError", DbtCompilationException),
    ("DbtDatabaseError", DbtRuntimeException),
    ("DbtRuntimeError", DbtRuntimeException),
)

_CODE_ERRORS = frozenset({"CompilationError", "ParsingError"})
_MESSAGE_EVENTS = frozenset({"MainEncounteredError", "RunResultError", "RunResultErrorNoMessage"})
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _match_message(message: str, *, labels: bool = True) -> tuple[type[DbtException], bool | None] | None:
    for cls, retryable, pattern in _PATTERNS + _LABELS if labels else _PATTERNS:
        if pattern.search(message):
            return cls, retryable
    return None


def _from_message(message: str, default: type[DbtException], **metadata: Any) -> DbtException:
    message = _ANSI.sub("", message)
    found = _match_message(message)
    cls, retryable = found if found else (default, None)
    return cls(message.strip() or default.__name__, retryable=retryable, **metadata)


def _from_exception(error: BaseException, **metadata: Any) -> DbtException:
    message = _ANSI.sub("", str(error)).strip() or type(error).__name__
    mro = {klass.__name__ for klass in type(error).__mro__}
    by_type = next((cls for name, cls in _TYPE_NAMES if name in mro), None)
    found = _match_message(message, labels=by_type is None)
    # Jinja and parsing errors are code problems whatever their text says; for the broader dbt types
    # (config, database, runtime) the driver's message is more precise than the class.
    if by_type is DbtCompilationException and mro & _CODE_ERRORS:
        return DbtCompilationException(message, **metadata)
    if found:
        return found[0](message, retryable=found[1], **metadata)
    return (by_type or DbtException)(message, **metadata)


def _event_message(event: Mapping[str, Any]) -> str:
    data = event.get("data") or {}
    info = event.get("info") or {}
    for value in (data.get("exc"), data.get("msg"), info.get("msg")):
        if isinstance(value, str) and value.strip():
            return value
    return str(info.get("name") or "dbt reported an error")


def _event_node_id(event: Mapping[str, Any]) -> str | None:
    node_info = (event.get("data") or {}).get("node_info") or {}
    node_id = node_info.get("unique_id")
    return node_id if isinstance(node_id, str) and node_id else None


def _from_event(event: Mapping[str, Any], **metadata: Any) -> DbtException:
    info = event.get("info") or {}
    data = event.get("data") or {}
    metadata.setdefault("node_id", _event_node_id(event))
    message = _event_message(event)
    name = info.get("name")
    if name in ("LogTestResult", "LogFreshnessResult") and str(data.get("status", "")).lower() in (
        "fail",
        "error",
        "runtime error",
    ):
        return _from_message(message, DbtRuntimeException, **metadata)
    default = DbtRuntimeException if metadata["node_id"] else DbtException
    return _from_message(message, default, **metadata)


def _is_event(value: object) -> bool:
    return isinstance(value, Mapping) and ("info" in value or "data" in value)


def classify_dbt_error(
    error: BaseException | Mapping[str, Any] | str | Sequence[BaseException | Mapping[str, Any] | str],
    *,
    conn_id: str | None = None,
    log_path: str | None = None,
) -> DbtException:
    """Map a dbt failure (exception, JSON log event, message, or a sequence of them) to a ``DbtException``.

    For a sequence, each error is classified and the first one that cannot be retried wins, so a run is
    only called retryable when every failure in it is.
    """
    metadata: dict[str, Any] = {"conn_id": conn_id, "log_path": log_path}
    if isinstance(error, DbtException):
        error.conn_id = error.conn_id or conn_id
        error.log_path = error.log_path or log_path
        return error
    if isinstance(error, BaseException):
        return _from_exception(error, **metadata)
    if isinstance(error, str):
        return _from_message(error, DbtException, **metadata)
    if _is_event(error):
        return _from_event(error, **metadata)  # type: ignore[arg-type]
    if isinstance(error, Mapping):
        text = next((error[k] for k in ("msg", "message", "exc", "error") if isinstance(error.get(k), str)), None)
        return _from_message(text or str(dict(error)), DbtException, **metadata)
    if isinstance(error, Iterable):
        return _classify_many(list(error), metadata)
    return DbtException(f"dbt failed: {error!r}", **metadata)


def _classify_many(items: list[Any], metadata: dict[str, Any]) -> DbtException:
    candidates = [item for item in items if not _is_event(item) or is_error_event(item)]
    # Node-result lines and RunResultFailure only restate a failure whose message another event carries.
    names = {(item.get("info") or {}).get("name") for item in candidates if _is_event(item)}
    if names & _MESSAGE_EVENTS:
        candidates = [
            item
            for item in candidates
            if not _is_event(item) or (item.get("info") or {}).get("name") in _MESSAGE_EVENTS
        ]
    classified = [classify_dbt_error(item, **metadata) for item in candidates]
    if not classified:
        return DbtException("dbt failed without reporting an error", **metadata)
    specific = [err for err in classified if type(err) is not DbtException] or classified
    for err in specific:
        if not err.retryable:
            return err
    return specific[0]
