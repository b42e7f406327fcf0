"""Unit tests for dlh_airflow_common.dbt.command: dbt argv building and option validation."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from dlh_airflow_common.dbt.command import (
    SUPPORTED_COMMANDS,
    DbtCommand,
    DbtCommandError,
    normalize_command,
    serialize_vars,
)
from dlh_airflow_common.exceptions.dbt import DbtException

PROJECT = "/srv/dbt/shop"
PROFILES = "/tmp/profiles"
TARGET_PATH = "/srv/dbt/shop/target/run_x/target"
LOG_PATH = "/srv/dbt/shop/target/run_x/logs"


def build(command: str, **options: Any) -> list[str]:
    return DbtCommand(command, **options).argv(
        project_dir=PROJECT, profiles_dir=PROFILES, target_path=TARGET_PATH, log_path=LOG_PATH
    )


def option_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def values_after(argv: list[str], flag: str) -> list[str]:
    """Tokens following ``flag`` up to the next ``--option``."""
    start = argv.index(flag) + 1
    end = start
    while end < len(argv) and not argv[end].startswith("--"):
        end += 1
    return argv[start:end]


# ---------------------------------------------------------------------------------------------------------
# Command names
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("run", "run"),
        ("  RUN ", "run"),
        ("docs  generate", "docs generate"),
        ("docs\tgenerate", "docs generate"),
        ("Source   Freshness", "source freshness"),
        ("run-operation", "run-operation"),
    ],
)
def test_normalize_command_folds_whitespace_and_case(given: str, expected: str) -> None:
    assert normalize_command(given) == expected


@pytest.mark.parametrize("bad", ["runn", "docs", "docs serve", "init", "", "run; rm -rf /"])
def test_unknown_command_lists_supported_ones(bad: str) -> None:
    with pytest.raises(DbtCommandError) as excinfo:
        normalize_command(bad)
    message = str(excinfo.value)
    assert repr(bad) in message
    assert "Supported commands:" in message
    for supported in ("build", "run", "test", "docs generate", "source freshness", "run-operation"):
        assert supported in message


def test_supported_commands_sorted_and_complete() -> None:
    assert list(SUPPORTED_COMMANDS) == sorted(SUPPORTED_COMMANDS)
    assert {"run", "build", "test", "seed", "snapshot", "deps", "debug", "docs generate"} <= set(SUPPORTED_COMMANDS)


def test_command_error_is_a_dbt_exception() -> None:
    assert issubclass(DbtCommandError, DbtException)
    assert DbtCommandError("x").retryable is False


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("docs  generate", ["docs", "generate"]),
        ("source freshness", ["source", "freshness"]),
        ("BUILD", ["build"]),
    ],
)
def test_argv_starts_with_normalised_command_words(command: str, words: list[str]) -> None:
    argv = build(command)
    assert argv[: len(words)] == words
    assert DbtCommand(command).command == " ".join(words)


# ---------------------------------------------------------------------------------------------------------
# Paths and target
# ---------------------------------------------------------------------------------------------------------


def test_run_argv_has_all_paths() -> None:
    argv = build("run", target="prod")
    assert argv[0] == "run"
    assert option_value(argv, "--project-dir") == PROJECT
    assert option_value(argv, "--profiles-dir") == PROFILES
    assert option_value(argv, "--target-path") == TARGET_PATH
    assert option_value(argv, "--log-path") == LOG_PATH
    assert option_value(argv, "--target") == "prod"


@pytest.mark.parametrize("command", ["deps", "debug"])
def test_target_path_absent_where_dbt_does_not_take_it(command: str) -> None:
    argv = build(command)
    assert "--target-path" not in argv
    assert TARGET_PATH not in argv
    assert option_value(argv, "--project-dir") == PROJECT
    assert option_value(argv, "--log-path") == LOG_PATH


@pytest.mark.parametrize(
    "command",
    [
        "run",
        "build",
        "test",
        "seed",
        "snapshot",
        "compile",
        "docs generate",
        "source freshness",
        "ls",
        "parse",
        "clean",
    ],
)
def test_target_path_present_where_accepted(command: str) -> None:
    assert option_value(build(command), "--target-path") == TARGET_PATH


def test_optional_paths_and_target_omitted_when_not_given() -> None:
    argv = DbtCommand("run").argv(project_dir=PROJECT, profiles_dir=None, target_path=None, log_path=None)
    assert argv == ["run", "--project-dir", PROJECT]


# ---------------------------------------------------------------------------------------------------------
# Flags accepted per command
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "build", "seed", "compile", "retry"])
def test_full_refresh_where_accepted(command: str) -> None:
    assert "--full-refresh" in build(command, full_refresh=True)
    assert "--full-refresh" not in build(command)


@pytest.mark.parametrize("command", ["test", "snapshot", "docs generate", "source freshness", "deps", "debug"])
def test_full_refresh_refused_with_clear_error(command: str) -> None:
    with pytest.raises(DbtCommandError, match=rf"dbt {command} does not take the 'full_refresh' option"):
        build(command, full_refresh=True)


@pytest.mark.parametrize("command", ["run", "build", "test", "ls"])
def test_fail_fast_where_accepted(command: str) -> None:
    assert "--fail-fast" in build(command, fail_fast=True)


@pytest.mark.parametrize("command", ["deps", "debug", "parse", "clean"])
def test_fail_fast_refused_where_not_accepted(command: str) -> None:
    with pytest.raises(DbtCommandError, match="'fail_fast'"):
        build(command, fail_fast=True)


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("deps", "select", "my_model"),
        ("debug", "exclude", "my_model"),
        ("clean", "selector", "nightly"),
        ("parse", "select", ["a", "b"]),
    ],
)
def test_selection_refused_for_commands_without_selection(command: str, option: str, value: Any) -> None:
    with pytest.raises(DbtCommandError, match=f"does not take the '{option}' option"):
        build(command, **{option: value})


@pytest.mark.parametrize(
    ("command", "expected"),
    [("run", ["--threads", "4"]), ("test", ["--threads", "4"]), ("run-operation m", ["--threads", "4"])],
)
def test_threads_rendered_where_accepted(command: str, expected: list[str]) -> None:
    argv = build(command, threads=4)
    idx = argv.index("--threads")
    assert argv[idx : idx + 2] == expected


@pytest.mark.parametrize("command", ["deps", "debug", "ls", "clean"])
def test_threads_dropped_where_not_accepted(command: str) -> None:
    assert "--threads" not in build(command, threads=4)


@pytest.mark.parametrize("threads", [0, -1, 2.5, "4"])
def test_invalid_threads_refused(threads: Any) -> None:
    with pytest.raises(DbtCommandError, match="threads must be a positive integer"):
        DbtCommand("run", threads=threads)


def test_boolean_threads_refused() -> None:
    with pytest.raises(DbtCommandError):
        DbtCommand("run", threads=True)


# ---------------------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("select", "tokens"),
    [
        ("my_model", ["my_model"]),
        ("tag:nightly  +orders", ["tag:nightly", "+orders"]),
        (["a", "b c"], ["a", "b", "c"]),
        (("path:models/marts", "config.materialized:table"), ["path:models/marts", "config.materialized:table"]),
        (["@orders", "source:raw.*+"], ["@orders", "source:raw.*+"]),
        ("tag:a,tag:b", ["tag:a,tag:b"]),
    ],
)
def test_select_tokens(select: Any, tokens: list[str]) -> None:
    argv = build("build", select=select)
    assert values_after(argv, "--select") == tokens


def test_exclude_and_selector() -> None:
    argv = build("run", select="a", exclude=["b", "c d"], selector="nightly")
    assert values_after(argv, "--select") == ["a"]
    assert values_after(argv, "--exclude") == ["b", "c", "d"]
    assert values_after(argv, "--selector") == ["nightly"]


@pytest.mark.parametrize("empty", [None, "", "   ", [], ()])
def test_empty_selection_adds_no_flag(empty: Any) -> None:
    argv = build("run", select=empty, exclude=empty)
    assert "--select" not in argv
    assert "--exclude" not in argv


def test_empty_selection_allowed_for_commands_without_selection() -> None:
    assert "--select" not in build("deps", select=[])


@pytest.mark.parametrize(
    ("value", "char"),
    [
        ("a;b", ";"),
        ("a | b", "|"),
        ("$(whoami)", "$"),
        ("`id`", "`"),
        ("a\nb", "\n"),
        ("a && b", "&"),
        ("a > out", ">"),
        ("a\\b", "\\"),
    ],
)
@pytest.mark.parametrize("option", ["select", "exclude", "selector"])
def test_shell_metacharacters_refused_and_named(option: str, value: str, char: str) -> None:
    with pytest.raises(DbtCommandError) as excinfo:
        build("run", **{option: value})
    message = str(excinfo.value)
    assert repr(char) in message
    assert "shell metacharacters" in message
    assert option in message


def test_shell_metacharacter_in_list_item_refused() -> None:
    with pytest.raises(DbtCommandError, match=r"';'"):
        build("run", select=["ok_model", "bad;model"])


def test_non_string_selection_item_refused() -> None:
    with pytest.raises(DbtCommandError, match="select must be strings, got int"):
        build("run", select=["a", 3])


# ---------------------------------------------------------------------------------------------------------
# Vars
# ---------------------------------------------------------------------------------------------------------


def test_vars_rendered_as_json_with_sorted_keys() -> None:
    argv = build("run", vars={"zeta": 1, "alpha": {"y": [1, 2], "x": "s"}, "mid": None})
    rendered = option_value(argv, "--vars")
    assert rendered == '{"alpha": {"x": "s", "y": [1, 2]}, "mid": null, "zeta": 1}'
    assert json.loads(rendered) == {"zeta": 1, "alpha": {"y": [1, 2], "x": "s"}, "mid": None}


def test_vars_string_passed_through_unchanged() -> None:
    assert option_value(build("run", vars="{key: value}"), "--vars") == "{key: value}"


@pytest.mark.parametrize("empty", [None, {}, "", "  \n"])
def test_empty_vars_give_no_flag(empty: Any) -> None:
    assert "--vars" not in build("run", vars=empty)
    assert serialize_vars(empty) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"tags": {"a", "b"}}, "type set is not JSON serialisable"),
        ({"obj": object()}, "type object is not JSON serialisable"),
        ({"ratio": math.nan}, "Out of range float values"),
        ({"ratio": math.inf}, "Out of range float values"),
        ({"nested": {"deep": [1, -math.inf]}}, "Out of range float values"),
    ],
)
def test_unserialisable_vars_refused(value: dict[str, Any], problem: str) -> None:
    with pytest.raises(DbtCommandError) as excinfo:
        build("run", vars=value)
    message = str(excinfo.value)
    assert message.startswith("dbt_vars cannot be passed to dbt:")
    assert problem in message


@pytest.mark.parametrize("value", [["a", "b"], 42, ("k", "v")])
def test_vars_of_wrong_type_refused(value: Any) -> None:
    with pytest.raises(DbtCommandError, match=f"not {type(value).__name__}"):
        serialize_vars(value)


# ---------------------------------------------------------------------------------------------------------
# run-operation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run-operation my_macro", "RUN-OPERATION  my_macro", "run-operation\tmy_macro"])
def test_run_operation_shorthand(command: str) -> None:
    cmd = DbtCommand(command)
    assert cmd.command == "run-operation"
    assert cmd.macro == "my_macro"
    argv = cmd.argv(project_dir=PROJECT, profiles_dir=None, target_path=None, log_path=None)
    assert argv[:2] == ["run-operation", "my_macro"]
    assert "--args" not in argv


def test_run_operation_with_macro_keyword_and_args() -> None:
    argv = build("run-operation", macro="pkg.grant_select", macro_args={"role": "reporter", "schemas": ["a", "b"]})
    assert argv[:2] == ["run-operation", "pkg.grant_select"]
    assert option_value(argv, "--args") == '{"role": "reporter", "schemas": ["a", "b"]}'
    assert option_value(argv, "--target-path") == TARGET_PATH


def test_run_operation_explicit_macro_wins_over_shorthand() -> None:
    assert DbtCommand("run-operation from_command", macro="explicit").macro == "explicit"


def test_run_operation_macro_args_must_be_serialisable() -> None:
    with pytest.raises(DbtCommandError, match="not JSON serialisable"):
        build("run-operation m", macro_args={"x": {1, 2}})


def test_run_operation_without_macro_refused() -> None:
    with pytest.raises(DbtCommandError, match="needs a macro name"):
        DbtCommand("run-operation")


@pytest.mark.parametrize("macro", ["my-macro", "1macro", "drop;table", "macro name", "$(id)", "../x"])
def test_invalid_macro_name_refused(macro: str) -> None:
    with pytest.raises(DbtCommandError, match="is not a valid dbt macro name"):
        DbtCommand("run-operation", macro=macro)


def test_invalid_macro_name_in_shorthand_refused() -> None:
    with pytest.raises(DbtCommandError, match="is not a valid dbt macro name"):
        DbtCommand("run-operation my-macro")


def test_run_operation_refuses_selection() -> None:
    with pytest.raises(DbtCommandError, match="does not take the 'select' option"):
        build("run-operation m", select="x")


def test_run_operation_with_extra_words_is_unknown() -> None:
    with pytest.raises(DbtCommandError, match="Unknown dbt command"):
        DbtCommand("run-operation a b")


def test_macro_refused_for_other_commands() -> None:
    with pytest.raises(DbtCommandError):
        build("run", macro="my_macro")


# ---------------------------------------------------------------------------------------------------------
# Extra args and option order
# ---------------------------------------------------------------------------------------------------------


def test_extra_args_appended_last_verbatim() -> None:
    argv = build("run", select="a", extra_args=("--no-partial-parse", "--warn-error"))
    assert argv[-2:] == ["--no-partial-parse", "--warn-error"]


def test_non_string_extra_args_refused() -> None:
    with pytest.raises(DbtCommandError, match="extra dbt arguments must be strings"):
        build("run", extra_args=("--threads", 4))


def test_full_build_argv() -> None:
    argv = build(
        "build",
        select="tag:nightly",
        exclude="orders",
        vars={"b": 2, "a": 1},
        full_refresh=True,
        threads=8,
        fail_fast=True,
        target="prod",
    )
    assert argv == [
        "build",
        "--project-dir", PROJECT,
        "--profiles-dir", PROFILES,
        "--target", "prod",
        "--target-path", TARGET_PATH,
        "--log-path", LOG_PATH,
        "--select", "tag:nightly",
        "--exclude", "orders",
        "--vars", '{"a": 1, "b": 2}',
        "--full-refresh",
        "--threads", "8",
        "--fail-fast",
    ]  # fmt: skip


def test_accepts_reflects_command_table() -> None:
    assert DbtCommand("run").accepts("full_refresh")
    assert not DbtCommand("test").accepts("full_refresh")
    assert not DbtCommand("deps").accepts("target_path")


def test_without_succeeded_excludes_previous_successes_and_keeps_user_excludes() -> None:
    command = DbtCommand("build", select="tag:daily", exclude="legacy", vars={"x": 1})
    resumed = command.without_succeeded("/runs/r1/previous_state")
    argv = resumed.argv(project_dir="/p", profiles_dir=None, target_path="/t", log_path="/l")
    exclude_at = argv.index("--exclude")
    assert argv[exclude_at + 1 : exclude_at + 3] == ["legacy", "result:success"]
    assert argv[argv.index("--state") + 1] == "/runs/r1/previous_state"
    assert argv[argv.index("--select") + 1] == "tag:daily"
    assert command.exclude == "legacy", "the original command is unchanged"
