"""Turn operator/hook options into a dbt argv: validated, no shell involved, flags only where dbt takes them."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dlh_airflow_common.exceptions.dbt import DbtException

# Which options each supported command accepts (checked against dbt-core 1.11's click definitions).
_SELECTING = frozenset({"select", "exclude", "selector"})
_COMMANDS: dict[str, frozenset[str]] = {
    "run": _SELECTING | {"full_refresh", "threads", "fail_fast", "target_path"},
    "build": _SELECTING | {"full_refresh", "threads", "fail_fast", "target_path"},
    "test": _SELECTING | {"threads", "fail_fast", "target_path"},
    "seed": _SELECTING | {"full_refresh", "threads", "fail_fast", "target_path"},
    "snapshot": _SELECTING | {"threads", "fail_fast", "target_path"},
    "compile": _SELECTING | {"full_refresh", "threads", "fail_fast", "target_path"},
    "docs generate": _SELECTING | {"threads", "fail_fast", "target_path"},
    "source freshness": _SELECTING | {"threads", "fail_fast", "target_path"},
    "ls": _SELECTING | {"fail_fast", "target_path"},
    "list": _SELECTING | {"fail_fast", "target_path"},
    "run-operation": frozenset({"threads", "target_path"}),
    "retry": frozenset({"full_refresh", "threads", "fail_fast", "target_path"}),
    "deps": frozenset(),
    "debug": frozenset(),
    "parse": frozenset({"threads", "target_path"}),
    "clean": frozenset({"target_path"}),
}
SUPPORTED_COMMANDS: tuple[str, ...] = tuple(sorted(_COMMANDS))

# Characters that only make sense to a shell. dbt never sees a shell here, but a selection holding one is
# almost always a templating or quoting mistake, so it is refused with a message naming it.
_SHELL_METACHARACTERS = frozenset(";|&$`<>\\\n\r\x00")


class DbtCommandError(DbtException):
    """Options that cannot form a valid dbt command line (raised before dbt starts)."""


def normalize_command(command: str) -> str:
    """Fold whitespace ("docs  generate" -> "docs generate") and check the command is one we run."""
    normalized = " ".join(str(command).split()).lower()
    if normalized not in _COMMANDS:
        raise DbtCommandError(f"Unknown dbt command {command!r}. Supported commands: {', '.join(SUPPORTED_COMMANDS)}.")
    return normalized


def serialize_vars(dbt_vars: Mapping[str, Any] | str | None) -> str | None:
    """Render ``--vars`` as JSON (valid YAML); refuse values dbt could not receive intact."""
    if dbt_vars is None:
        return None
    if isinstance(dbt_vars, str):
        return dbt_vars if dbt_vars.strip() else None
    if not isinstance(dbt_vars, Mapping):
        raise DbtCommandError(f"dbt_vars must be a mapping or a YAML/JSON string, not {type(dbt_vars).__name__}.")
    if not dbt_vars:
        return None
    try:
        return json.dumps(dict(dbt_vars), allow_nan=False, sort_keys=True, default=_reject)
    except (TypeError, ValueError) as err:
        raise DbtCommandError(f"dbt_vars cannot be passed to dbt: {err}") from None


def _reject(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - json handles floats
        raise ValueError(f"non-finite number {value!r}")
    raise TypeError(f"value {value!r} of type {type(value).__name__} is not JSON serialisable")


def _selection(name: str, value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    tokens: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise DbtCommandError(f"{name} must be strings, got {type(item).__name__}.")
        bad = sorted({ch for ch in item if ch in _SHELL_METACHARACTERS})
        if bad:
            shown = ", ".join(repr(ch) for ch in bad)
            raise DbtCommandError(
                f"{name} {item!r} contains shell metacharacters ({shown}); dbt selectors never need them."
            )
        tokens.extend(item.split())
    return tokens


@dataclass(frozen=True)
class DbtCommand:
    """One dbt command with its options; ``argv()`` renders it for dbt's CLI parser."""

    command: str
    select: str | Sequence[str] | None = None
    exclude: str | Sequence[str] | None = None
    selector: str | None = None
    vars: Mapping[str, Any] | str | None = None
    full_refresh: bool = False
    threads: int | None = None
    fail_fast: bool = False
    target: str | None = None
    extra_args: Sequence[str] = field(default_factory=tuple)

    macro: str | None = None
    macro_args: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        words = str(self.command).split()
        if len(words) == 2 and words[0].lower() == "run-operation":  # "run-operation <macro>" shorthand
            object.__setattr__(self, "macro", self.macro or words[1])
            words = words[:1]
        object.__setattr__(self, "command", normalize_command(" ".join(words)))
        if self.macro is not None and self.command != "run-operation":
            raise DbtCommandError(f"A macro ({self.macro!r}) only goes with run-operation, not dbt {self.command}.")
        if self.command == "run-operation" and not self.macro:
            raise DbtCommandError("dbt run-operation needs a macro name: dbt_command='run-operation <macro>'.")
        if self.macro is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", self.macro):
            raise DbtCommandError(f"Macro name {self.macro!r} is not a valid dbt macro name.")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise DbtCommandError(f"threads must be a positive integer, got {self.threads!r}.")
        self.argv(project_dir=".", profiles_dir=None, target_path=None, log_path=None)  # refuse bad options now

    def without_succeeded(self, state_path: str) -> DbtCommand:
        """This command minus the nodes a previous run (its run_results.json in ``state_path``) built."""
        excluded = _selection("exclude", self.exclude)
        extra = [*self.extra_args, "--state", state_path]
        return dataclasses.replace(self, exclude=[*excluded, "result:success"], extra_args=tuple(extra))

    @property
    def words(self) -> list[str]:
        return self.command.split()

    def accepts(self, option: str) -> bool:
        return option in _COMMANDS[self.command]

    def argv(
        self,
        *,
        project_dir: str,
        profiles_dir: str | None,
        target_path: str | None,
        log_path: str | None,
    ) -> list[str]:
        """Arguments after ``dbt``: the command words, then options. Unsupported options are refused."""
        args = [*self.words]
        if self.macro:
            args.append(self.macro)
            if self.macro_args:
                args += ["--args", serialize_vars(self.macro_args) or "{}"]
        args += ["--project-dir", project_dir]
        if profiles_dir:
            args += ["--profiles-dir", profiles_dir]
        if self.target:
            args += ["--target", self.target]
        if target_path and self.accepts("target_path"):
            args += ["--target-path", target_path]
        if log_path:
            args += ["--log-path", log_path]
        for option, flag in (("select", "--select"), ("exclude", "--exclude")):
            tokens = _selection(option, getattr(self, option))
            if tokens:
                self._require(option)
                args += [flag, *tokens]
        if self.selector:
            self._require("selector")
            args += ["--selector", *_selection("selector", self.selector)]
        rendered_vars = serialize_vars(self.vars)
        if rendered_vars is not None:
            args += ["--vars", rendered_vars]
        if self.full_refresh:
            self._require("full_refresh")
            args.append("--full-refresh")
        if self.threads is not None and self.accepts("threads"):
            args += ["--threads", str(self.threads)]
        if self.fail_fast:
            self._require("fail_fast")
            args.append("--fail-fast")
        for extra in self.extra_args:
            if not isinstance(extra, str):
                raise DbtCommandError(f"extra dbt arguments must be strings, got {extra!r}.")
            args.append(extra)
        return args

    def _require(self, option: str) -> None:
        if not self.accepts(option):
            raise DbtCommandError(f"dbt {self.command} does not take the {option!r} option.")
