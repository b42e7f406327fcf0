"""Unit tests for dlh_airflow_common.exceptions.dbt: exception classes and classify_dbt_error (hand-written)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException

from dlh_airflow_common.exceptions.dbt import (
    DbtArtifactException,
    DbtCompilationException,
    DbtConnectionException,
    DbtException,
    DbtExecutionTimeoutException,
    DbtProfileException,
    DbtProjectSourceException,
    DbtRuntimeException,
    classify_dbt_error,
    is_error_event,
)

ALL_CLASSES = [
    DbtException,
    DbtCompilationException,
    DbtRuntimeException,
    DbtConnectionException,
    DbtProfileException,
    DbtArtifactException,
    DbtExecutionTimeoutException,
]


# Stand-ins for dbt's exception classes: classification goes by class name in the MRO, not by import.
class CompilationError(Exception):
    pass


class DbtProfileError(Exception):
    pass


class FailedToConnectError(Exception):
    pass


class DbtDatabaseError(Exception):
    pass


class DbtRuntimeError(Exception):
    pass


class ParsingError(CompilationError):
    pass


class UndefinedMacroError(CompilationError):
    """Like dbt's: a subclass of CompilationError with its own name."""


def event(name: str, level: str, msg: str = "", /, **data: Any) -> dict[str, Any]:
    return {"info": {"name": name, "level": level, "msg": msg, "invocation_id": "inv", "ts": "t"}, "data": data}


def node(unique_id: str) -> dict[str, Any]:
    return {"unique_id": unique_id, "node_name": unique_id.rsplit(".", 1)[-1]}


# ---------------------------------------------------------------------------------------------------------
# Classes
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "retryable"),
    [
        (DbtException, False),
        (DbtCompilationException, False),
        (DbtRuntimeException, False),
        (DbtConnectionException, True),
        (DbtProfileException, False),
        (DbtArtifactException, False),
        (DbtExecutionTimeoutException, False),
    ],
)
def test_retryable_defaults(cls: type[DbtException], retryable: bool) -> None:
    assert cls.retryable is retryable
    assert cls("message").retryable is retryable


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_subclasses_airflow_exception(cls: type[DbtException]) -> None:
    assert issubclass(cls, DbtException)
    assert issubclass(cls, AirflowException)
    with pytest.raises(AirflowException):
        raise cls("boom")


def test_retryable_override_is_per_instance() -> None:
    err = DbtConnectionException("x", retryable=False)
    assert err.retryable is False
    assert DbtConnectionException.retryable is True
    assert DbtRuntimeException("deadlock", retryable=True).retryable is True
    assert DbtRuntimeException("other").retryable is False


def test_metadata_attributes() -> None:
    err = DbtRuntimeException(
        "Database Error in model orders",
        node_id="model.shop.orders",
        conn_id="pg_main",
        artifact_path="/tmp/run/target/run_results.json",
        log_path="/tmp/run/logs",
    )
    assert str(err) == "Database Error in model orders"
    assert err.message == "Database Error in model orders"
    assert err.args == ("Database Error in model orders",)
    assert err.node_id == "model.shop.orders"
    assert err.conn_id == "pg_main"
    assert err.artifact_path == "/tmp/run/target/run_results.json"
    assert err.log_path == "/tmp/run/logs"


def test_metadata_defaults_to_none() -> None:
    err = DbtException("x")
    assert (err.node_id, err.conn_id, err.artifact_path, err.log_path) == (None, None, None, None)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_pickle_round_trip(cls: type[DbtException]) -> None:
    err = cls(
        "failure: with 'quotes' and\nnewline",
        retryable=not cls.retryable,
        node_id="model.p.a",
        conn_id="conn",
        artifact_path="/a/run_results.json",
        log_path="/a/logs",
    )
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls
    assert str(copy) == str(err)
    assert copy.message == err.message
    assert copy.retryable is (not cls.retryable)
    assert (copy.node_id, copy.conn_id, copy.artifact_path, copy.log_path) == (
        "model.p.a",
        "conn",
        "/a/run_results.json",
        "/a/logs",
    )


def test_repr_names_the_node_when_set() -> None:
    err = DbtRuntimeException("boom", node_id="model.shop.x", conn_id="c")
    assert repr(err) == "DbtRuntimeException('boom', node_id='model.shop.x')"
    err.message = "dbt run failed in model.shop.x: boom."  # failure_message rewrites it after classification
    assert repr(err) == "DbtRuntimeException('dbt run failed in model.shop.x: boom.', node_id='model.shop.x')"
    assert repr(pickle.loads(pickle.dumps(err))) == repr(err)


def test_a_project_source_error_keeps_its_url_through_pickling() -> None:
    err = DbtProjectSourceException("s3://b/shop.zip: no such key.", url="s3://b/shop.zip")
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.url, str(copy)) == (DbtProjectSourceException, "s3://b/shop.zip", str(err))
    assert isinstance(copy, DbtException) and not copy.retryable


def test_repr_without_node_is_the_message_alone() -> None:
    assert repr(DbtConnectionException("refused")) == "DbtConnectionException('refused')"


def test_pickle_round_trip_keeps_default_retryable() -> None:
    copy = pickle.loads(pickle.dumps(DbtConnectionException("refused")))
    assert copy.retryable is True
    assert copy.node_id is None


def test_pickle_round_trip_of_subclass_defined_elsewhere() -> None:
    from dlh_airflow_common.dbt.command import DbtCommandError

    copy = pickle.loads(pickle.dumps(DbtCommandError("bad option", conn_id="c")))
    assert type(copy) is DbtCommandError
    assert str(copy) == "bad option"
    assert copy.conn_id == "c"


# ---------------------------------------------------------------------------------------------------------
# classify_dbt_error: DbtException passthrough and exceptions
# ---------------------------------------------------------------------------------------------------------


def test_dbt_exception_passthrough_fills_conn_id() -> None:
    original = DbtProfileException("bad profile", log_path="/orig/logs")
    result = classify_dbt_error(original, conn_id="pg_main", log_path="/new/logs")
    assert result is original
    assert result.conn_id == "pg_main"
    assert result.log_path == "/orig/logs"


def test_dbt_exception_passthrough_keeps_existing_conn_id() -> None:
    original = DbtConnectionException("refused", conn_id="first")
    assert classify_dbt_error(original, conn_id="second").conn_id == "first"


@pytest.mark.parametrize(
    ("error", "cls", "retryable"),
    [
        (CompilationError("Compilation Error in model x\n  'foo' is undefined"), DbtCompilationException, False),
        (ParsingError("Parsing Error\n  Invalid YAML"), DbtCompilationException, False),
        (UndefinedMacroError("macro 'dbt_utils.star' not found"), DbtCompilationException, False),
        (DbtProfileError("Runtime Error\n  Could not find profile named 'shop'"), DbtProfileException, False),
        (FailedToConnectError("Database Error\n  connection refused"), DbtConnectionException, True),
        (FailedToConnectError(""), DbtConnectionException, True),
        (DbtDatabaseError("Database Error\n  permission denied for schema raw"), DbtRuntimeException, False),
        (DbtDatabaseError("Database Error\n  deadlock detected"), DbtRuntimeException, True),
        (DbtDatabaseError("Database Error\n  server closed the connection unexpectedly"), DbtConnectionException, True),
        (DbtRuntimeError("Runtime Error\n  something odd"), DbtRuntimeException, False),
        (ValueError("could not connect to server: Connection refused"), DbtConnectionException, True),
        (KeyError("unexpected"), DbtException, False),
    ],
)
def test_classify_exceptions(error: BaseException, cls: type[DbtException], retryable: bool) -> None:
    result = classify_dbt_error(error, conn_id="pg_main", log_path="/run/logs")
    assert type(result) is cls
    assert result.retryable is retryable
    assert result.conn_id == "pg_main"
    assert result.log_path == "/run/logs"


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "db" (10.0.0.1), port 5432 failed: FATAL:  password authentication failed for user',
        'FATAL:  role "ghost" does not exist',
        'FATAL:  database "nope" does not exist',
    ],
)
def test_failed_to_connect_with_bad_credentials_is_profile_error(message: str) -> None:
    result = classify_dbt_error(FailedToConnectError(message), conn_id="pg_main")
    assert type(result) is DbtProfileException
    assert result.retryable is False
    assert result.conn_id == "pg_main"
    assert "does not exist" in str(result) or "password authentication failed" in str(result)


class DbtConfigError(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "cls", "retryable"),
    [
        # Jinja/parsing errors are code problems whatever their text mentions.
        (CompilationError("Compilation Error\n  macro mentions connection refused"), DbtCompilationException, False),
        (ParsingError("Parsing Error\n  permission denied in yaml comment"), DbtCompilationException, False),
        # dbt's text labels do not override a known dbt type...
        (DbtDatabaseError("Database Error\n  Compilation Error in a comment"), DbtRuntimeException, False),
        (DbtConfigError("Runtime Error\n  invalid target"), DbtProfileException, False),
        # ...but are used when the type says nothing.
        (RuntimeError("Compilation Error in model x"), DbtCompilationException, False),
    ],
)
def test_type_and_message_precedence(error: BaseException, cls: type[DbtException], retryable: bool) -> None:
    result = classify_dbt_error(error)
    assert type(result) is cls
    assert result.retryable is retryable


def test_exception_message_kept_and_ansi_stripped() -> None:
    result = classify_dbt_error(CompilationError("\x1b[31mCompilation Error\x1b[0m in model orders  "))
    assert str(result) == "Compilation Error in model orders"
    assert "\x1b" not in result.message


def test_exception_without_message_uses_type_name() -> None:
    assert str(classify_dbt_error(DbtDatabaseError())) == "DbtDatabaseError"


# ---------------------------------------------------------------------------------------------------------
# classify_dbt_error: message strings
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "cls", "retryable"),
    [
        ("could not connect to server: Connection refused", DbtConnectionException, True),
        (
            'connection to server at "localhost" (127.0.0.1), port 5432 failed: Connection refused',
            DbtConnectionException,
            True,
        ),
        ("SSL SYSCALL error: EOF detected", DbtConnectionException, True),
        ("FATAL: sorry, too many connections for role", DbtConnectionException, True),
        ('IO Error: Could not set lock on file "shop.duckdb"', DbtConnectionException, True),
        ("Database Error in model orders (models/orders.sql)\n  deadlock detected", DbtRuntimeException, True),
        ("could not serialize access due to concurrent update", DbtRuntimeException, True),
        ("Compilation Error in model orders (models/orders.sql)\n  'ref' is undefined", DbtCompilationException, False),
        ("Parsing Error\n  Invalid schema.yml", DbtCompilationException, False),
        (
            "Database Error in model orders (models/orders.sql)\n  permission denied for schema analytics",
            DbtRuntimeException,
            False,
        ),
        ('Database Error in model x\n  syntax error at or near "selec"', DbtRuntimeException, False),
        ('FATAL:  password authentication failed for user "dbt"', DbtProfileException, False),
        ('could not translate host name "db.nowhere" to address', DbtProfileException, False),
        ("Could not find profile named 'shop'", DbtProfileException, False),
        ("something nobody has seen before", DbtException, False),
    ],
)
def test_classify_messages(message: str, cls: type[DbtException], retryable: bool) -> None:
    result = classify_dbt_error(message, conn_id="c")
    assert type(result) is cls
    assert result.retryable is retryable
    assert str(result) == message.strip()
    assert result.conn_id == "c"


def test_message_ansi_stripped() -> None:
    result = classify_dbt_error("\x1b[31mDatabase Error\x1b[0m in model x\n  \x1b[1mdeadlock detected\x1b[0m")
    assert type(result) is DbtRuntimeException
    assert result.retryable is True
    assert "\x1b" not in str(result)
    assert str(result) == "Database Error in model x\n  deadlock detected"


def test_empty_message() -> None:
    result = classify_dbt_error("   ")
    assert type(result) is DbtException
    assert str(result) == "DbtException"


# ---------------------------------------------------------------------------------------------------------
# classify_dbt_error: events
# ---------------------------------------------------------------------------------------------------------


def test_main_encountered_error_event() -> None:
    ev = event(
        "MainEncounteredError",
        "error",
        "Encountered an error:\nDatabase Error\n  connection refused",
        exc='Database Error\n  connection to server at "db" (10.0.0.5), port 5432 failed: Connection refused',
    )
    result = classify_dbt_error(ev, conn_id="pg_main")
    assert type(result) is DbtConnectionException
    assert result.retryable is True
    assert result.node_id is None
    assert result.conn_id == "pg_main"
    assert str(result).startswith("Database Error\n  connection to server at")


def test_run_result_error_event_sets_node_id() -> None:
    ev = event(
        "RunResultError",
        "error",
        "  Database Error in model orders (models/orders.sql)",
        msg="Database Error in model orders (models/orders.sql)\n  permission denied for table raw_orders",
        node_info=node("model.shop.orders"),
    )
    result = classify_dbt_error(ev)
    assert type(result) is DbtRuntimeException
    assert result.retryable is False
    assert result.node_id == "model.shop.orders"
    assert "permission denied for table raw_orders" in str(result)


def test_event_with_node_and_unknown_message_is_runtime() -> None:
    ev = event("RunResultError", "error", msg="something odd happened", node_info=node("model.p.a"))
    result = classify_dbt_error(ev)
    assert type(result) is DbtRuntimeException
    assert result.node_id == "model.p.a"


def test_event_without_node_and_unknown_message_is_generic() -> None:
    result = classify_dbt_error(event("MainEncounteredError", "error", "Encountered an error", exc="strange thing"))
    assert type(result) is DbtException
    assert str(result) == "strange thing"


def test_event_message_falls_back_to_info_msg_then_name() -> None:
    assert str(classify_dbt_error(event("Whatever", "error", "from info msg"))) == "from info msg"
    assert str(classify_dbt_error(event("RunResultErrorNoMessage", "error", ""))) == "RunResultErrorNoMessage"


@pytest.mark.parametrize("status", ["fail", "error", "FAIL"])
def test_log_test_result_failure(status: str) -> None:
    ev = event(
        "LogTestResult",
        "error",
        "1 of 3 FAIL 2 not_null_orders_id ............ [\x1b[31mFAIL 2\x1b[0m in 0.03s]",
        name="not_null_orders_id",
        status=status,
        index=1,
        num_models=3,
        num_failures=2,
        node_info=node("test.shop.not_null_orders_id"),
    )
    result = classify_dbt_error(ev)
    assert type(result) is DbtRuntimeException
    assert result.retryable is False
    assert result.node_id == "test.shop.not_null_orders_id"
    assert "\x1b" not in str(result)
    assert "FAIL 2 not_null_orders_id" in str(result)


def test_freshness_error_event() -> None:
    ev = event("LogFreshnessResult", "error", "1 of 1 ERROR STALE freshness of raw.orders", status="error")
    result = classify_dbt_error(ev)
    assert type(result) is DbtRuntimeException
    assert result.node_id is None


@pytest.mark.parametrize(
    ("ev", "expected"),
    [
        (event("X", "error"), True),
        (event("MainEncounteredError", "info"), True),
        (event("RunResultError", "info"), True),
        (event("LogModelResult", "info", status="error"), True),
        (event("LogTestResult", "error", status="fail"), True),
        (event("LogFreshnessResult", "info", status="runtime error"), True),
        (event("LogModelResult", "info", status="success"), False),
        (event("LogTestResult", "warn", status="warn"), False),
        (event("MainReportVersion", "info"), False),
        ({}, False),
    ],
)
def test_is_error_event(ev: dict[str, Any], expected: bool) -> None:
    assert is_error_event(ev) is expected


# ---------------------------------------------------------------------------------------------------------
# classify_dbt_error: sequences
# ---------------------------------------------------------------------------------------------------------


def test_first_non_retryable_wins() -> None:
    result = classify_dbt_error(
        [
            "could not connect to server: Connection refused",
            "Database Error\n  deadlock detected",
            "Compilation Error in model a",
            "Database Error\n  permission denied for schema x",
        ],
        conn_id="c",
    )
    assert type(result) is DbtCompilationException
    assert str(result) == "Compilation Error in model a"
    assert result.conn_id == "c"


def test_all_connection_failures_are_retryable() -> None:
    result = classify_dbt_error(
        [
            event("RunResultError", "error", msg="connection to server at \"db\" failed: Connection refused",
                  node_info=node("model.p.a")),
            event("RunResultError", "error", msg="server closed the connection unexpectedly",
                  node_info=node("model.p.b")),
        ]
    )  # fmt: skip
    assert type(result) is DbtConnectionException
    assert result.retryable is True
    assert result.node_id == "model.p.a"


def test_all_transient_failures_are_retryable() -> None:
    result = classify_dbt_error(["connection refused", "deadlock detected", "ssl syscall error"])
    assert result.retryable is True
    assert type(result) is DbtConnectionException


def test_one_permanent_failure_makes_the_run_non_retryable() -> None:
    result = classify_dbt_error(["connection refused", "permission denied for schema x", "connection refused"])
    assert type(result) is DbtRuntimeException
    assert result.retryable is False


def test_node_result_events_ignored_when_run_result_error_present() -> None:
    events = [
        event("MainReportVersion", "info", "Running with dbt=1.11.0"),
        event(
            "LogModelResult",
            "error",
            "1 of 2 ERROR creating sql table model main.orders ...... [\x1b[31mERROR\x1b[0m in 0.05s]",
            status="error",
            index=1,
            total=2,
            node_info=node("model.shop.orders"),
        ),
        event("LogModelResult", "info", "2 of 2 OK created sql view model main.stg", status="success",
              index=2, total=2, node_info=node("model.shop.stg")),
        event("RunResultFailure", "error", "Failure in model orders", status="error"),
        event(
            "RunResultError",
            "error",
            "  Database Error in model orders",
            msg="Database Error in model orders (models/orders.sql)\n  relation \"raw.orders\" does not exist",
            node_info=node("model.shop.orders"),
        ),
    ]  # fmt: skip
    result = classify_dbt_error(events, conn_id="pg")
    assert type(result) is DbtRuntimeException
    assert str(result) == 'Database Error in model orders (models/orders.sql)\n  relation "raw.orders" does not exist'
    assert result.node_id == "model.shop.orders"
    assert result.conn_id == "pg"


def test_node_result_events_used_when_no_message_event() -> None:
    events = [
        event("LogModelResult", "info", "1 of 1 OK", status="success", index=1, total=1, node_info=node("model.p.ok")),
        event("LogTestResult", "error", "1 of 1 FAIL 3 unique_id", status="fail", index=1, num_models=1,
              node_info=node("test.p.unique_id")),
    ]  # fmt: skip
    result = classify_dbt_error(events)
    assert type(result) is DbtRuntimeException
    assert result.node_id == "test.p.unique_id"


def test_generic_errors_give_way_to_specific_ones() -> None:
    result = classify_dbt_error(["something nobody has seen", "could not connect to server"])
    assert type(result) is DbtConnectionException
    assert result.retryable is True


def test_only_generic_errors() -> None:
    result = classify_dbt_error(["first odd thing", "second odd thing"])
    assert type(result) is DbtException
    assert str(result) == "first odd thing"


def test_mixed_sequence_of_exceptions_events_and_strings() -> None:
    result = classify_dbt_error(
        [
            FailedToConnectError("connection refused"),
            event("MainEncounteredError", "error", exc="Compilation Error\n  bad jinja"),
        ]
    )
    assert type(result) is DbtCompilationException


def test_ansi_stripped_in_sequences() -> None:
    result = classify_dbt_error(
        [event("RunResultError", "error", msg="\x1b[31mDatabase Error\x1b[0m\n  permission denied", node_info={})]
    )
    assert "\x1b" not in str(result)
    assert str(result) == "Database Error\n  permission denied"
    assert result.node_id is None


@pytest.mark.parametrize(
    "items",
    [
        [],
        [event("MainReportVersion", "info", "Running with dbt=1.11.0")],
        (event("LogModelResult", "info", "ok", status="success"),),
    ],
)
def test_sequence_without_errors(items: Any) -> None:
    result = classify_dbt_error(items, conn_id="c", log_path="/l")
    assert type(result) is DbtException
    assert str(result) == "dbt failed without reporting an error"
    assert result.conn_id == "c"
    assert result.log_path == "/l"


def test_unsupported_input() -> None:
    result = classify_dbt_error(42)  # type: ignore[arg-type]
    assert type(result) is DbtException
    assert str(result) == "dbt failed: 42"


def test_non_event_mapping_keeps_its_content() -> None:
    result = classify_dbt_error({"msg": "connection refused"})
    assert "connection refused" in str(result)
