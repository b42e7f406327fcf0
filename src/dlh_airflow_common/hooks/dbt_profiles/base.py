"""The machinery behind every adapter declaration: field sources, auth methods, coercion, secrets.

Secret fields never reach the profile file: they become ``env_var('DBT_ENV_SECRET_<FIELD>')`` references
(dbt scrubs such values from its logs) and their values travel only in the dbt process's environment.

A declaration names, for each dbt field, where its value comes from: a Connection attribute (``host``,
``login``, ``password``, ``schema``, ``port``) or ``extra.<key>``, first set source wins. Adapters that
authenticate in several ways declare one ``AuthMethod`` each; ``extra.method`` picks one explicitly,
otherwise the first method whose ``when`` sources are set, otherwise the first method without ``when``.
Connection fields follow the meaning the Airflow provider of that connection type gives them (for example
the ``schema`` field of a postgres, redshift or mssql connection is the database).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from dlh_airflow_common.dbt.redact import SECRET_ENV_PREFIX
from dlh_airflow_common.exceptions.dbt import DbtProfileException

_FALSE_WORDS = frozenset({"false", "0", "no", "off", "n", "f"})
_TRUE_WORDS = frozenset({"true", "1", "yes", "on", "y", "t"})
_CONN_ATTRIBUTES = {"host": "Host", "login": "Login", "password": "Password", "schema": "Schema", "port": "Port"}


class ConnectionLike(Protocol):
    """The parts of ``airflow.sdk.Connection`` a mapping reads (kept structural so tests need no DB)."""

    conn_id: str
    conn_type: str
    host: str | None
    login: str | None
    password: str | None
    schema: str | None
    port: int | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RenderedTarget:
    """A dbt target ready for profiles.yml plus the environment its secret references need."""

    target: dict[str, Any]
    secret_env: dict[str, str]
    method: str | None = None


@dataclass(frozen=True)
class AuthMethod:
    """One way of authenticating: fields, requirements, secrets and defaults added to the adapter's own.

    A field mapped to ``()`` is removed for this method (e.g. ``password`` when a key pair is used).
    """

    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    when: tuple[str, ...] = ()


def secret_env_name(field_name: str) -> str:
    return SECRET_ENV_PREFIX + "".join(ch if ch.isalnum() else "_" for ch in field_name).upper()


def _is_set(value: Any) -> bool:
    """Whether a source counts as given: not empty, not false (also "false" from a URI's query string)."""
    if value is None or value is False or value == "":
        return False
    return not (isinstance(value, str) and value.strip().lower() in _FALSE_WORDS)


def _extra(conn: ConnectionLike) -> dict[str, Any]:
    """The connection's extra, with Airflow's legacy ``extra__<conn_type>__<key>`` form folded to ``<key>``."""
    try:
        extra = conn.extra_dejson
    except (ValueError, json.JSONDecodeError) as err:  # pragma: no cover - Airflow logs and returns {}
        raise DbtProfileException(f"Connection {conn.conn_id!r} has an extra that is not valid JSON: {err}") from None
    if not isinstance(extra, Mapping):
        return {}
    prefix = f"extra__{(conn.conn_type or '').lower()}__"
    folded = {key: value for key, value in extra.items() if not key.startswith(prefix)}
    for key, value in extra.items():
        if key.startswith(prefix):
            folded.setdefault(key.removeprefix(prefix), value)
    return folded


def _describe(sources: tuple[str, ...]) -> str:
    """Where a user sets a field, for error messages: "the connection's Host field or extra.path"."""
    words = [f"the connection's {_CONN_ATTRIBUTES[s]} field" if s in _CONN_ATTRIBUTES else s for s in sources]
    return " or ".join(words) if words else "nowhere (set it in extra)"


class ProfileMapping:
    """Declarative mapping of one Airflow connection type onto one dbt adapter's target fields."""

    conn_types: ClassVar[tuple[str, ...]] = ()
    dbt_type: ClassVar[str] = ""
    fields: ClassVar[dict[str, tuple[str, ...]]] = {}
    # A required entry "a|b" is satisfied by either field.
    required: ClassVar[tuple[str, ...]] = ()
    secrets: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}
    integers: ClassVar[tuple[str, ...]] = ("port", "threads")
    booleans: ClassVar[tuple[str, ...]] = ()
    # extra keys copied as they are: the adapter's own profile fields.
    passthrough_extras: ClassVar[frozenset[str]] = frozenset()
    passthrough_all: ClassVar[bool] = False  # every extra key is a profile field (the generic ``dbt`` type)
    methods: ClassVar[dict[str, AuthMethod]] = {}
    method_field: ClassVar[str | None] = None  # the dbt field that receives the method name, if the adapter has one
    method_sources: ClassVar[tuple[str, ...]] = ("extra.method",)
    method_aliases: ClassVar[dict[str, str]] = {}
    # Fields a schema_override replaces.
    schema_fields: ClassVar[tuple[str, ...]] = ("schema",)
    field_help: ClassVar[dict[str, str]] = {}

    @classmethod
    def _source_value(cls, conn: ConnectionLike, extra: Mapping[str, Any], source: str) -> Any:
        if source.startswith("extra."):
            return extra.get(source.removeprefix("extra."))
        return getattr(conn, source, None)

    @classmethod
    def choose_method(cls, conn: ConnectionLike, extra: Mapping[str, Any]) -> str | None:
        if not cls.methods:
            return None
        for source in cls.method_sources:
            explicit = cls._source_value(conn, extra, source)
            if explicit not in (None, ""):
                name = cls.method_aliases.get(str(explicit).lower(), str(explicit).lower())
                if name not in cls.methods:
                    raise DbtProfileException(
                        f"Connection {conn.conn_id!r} (type {conn.conn_type}) asks for {source} {explicit!r}, "
                        f"which dbt-{cls.dbt_type} is not mapped for. Methods: {', '.join(cls.methods)}.",
                        conn_id=conn.conn_id,
                    )
                return name
        for name, method in cls.methods.items():
            if method.when and any(_is_set(cls._source_value(conn, extra, s)) for s in method.when):
                return name
        return next(name for name, method in cls.methods.items() if not method.when)

    @classmethod
    def render(cls, conn: ConnectionLike, *, schema_override: str | None = None) -> RenderedTarget:
        extra = _extra(conn)
        method_name = cls.choose_method(conn, extra)
        method = cls.methods[method_name] if method_name else AuthMethod()
        fields = {**cls.fields, **method.fields}
        target: dict[str, Any] = {"type": cls.dbt_type} if cls.dbt_type else {}
        for key in extra if cls.passthrough_all else cls.passthrough_extras | {"threads"}:
            if extra.get(key) not in (None, ""):
                target[key] = extra[key]
        for dbt_field, sources in fields.items():
            if not sources:
                target.pop(dbt_field, None)
            for source in sources:
                value = cls._source_value(conn, extra, source)
                if value not in (None, ""):
                    target[dbt_field] = value
                    break
        for key, value in {**cls.defaults, **method.defaults}.items():
            target.setdefault(key, value)
        if cls.method_field and method_name:
            target[cls.method_field] = method_name
        cls.transform(target, extra, conn)
        if schema_override:
            for key in cls.schema_fields:
                target[key] = schema_override
        for key in cls.integers:
            if key in target:
                target[key] = cls._integer(conn, key, target[key])
        for key in cls.booleans:
            if isinstance(target.get(key), str):
                target[key] = cls._boolean(conn, key, target[key])
        cls._check_required(conn, target, (*cls.required, *method.required), fields, method_name)
        return RenderedTarget(
            target=target,
            secret_env=cls._hide_secrets(conn, target, (*cls.secrets, *method.secrets)),
            method=method_name,
        )

    @classmethod
    def transform(cls, target: dict[str, Any], extra: Mapping[str, Any], conn: ConnectionLike) -> None:
        """Adapter-specific touch-ups after mapping (e.g. account + region); none by default."""

    @classmethod
    def _check_required(
        cls,
        conn: ConnectionLike,
        target: Mapping[str, Any],
        required: tuple[str, ...],
        fields: Mapping[str, tuple[str, ...]],
        method: str | None,
    ) -> None:
        missing = [entry for entry in required if all(target.get(f) in (None, "") for f in entry.split("|"))]
        if not missing:
            return
        where = "; ".join(
            f"{entry}: " + " or ".join(cls.field_help.get(f) or _describe(fields.get(f, ())) for f in entry.split("|"))
            for entry in missing
        )
        names = ", ".join(entry.replace("|", " or ") for entry in missing)
        adapter = f"dbt-{cls.dbt_type or target.get('type') or '<type>'}" + (f" (method {method})" if method else "")
        raise DbtProfileException(
            f"Connection {conn.conn_id!r} (type {conn.conn_type}) is missing required "
            f"field{'s' if len(missing) > 1 else ''} {names} for {adapter} ({where}).",
            conn_id=conn.conn_id,
        )

    @classmethod
    def _hide_secrets(cls, conn: ConnectionLike, target: dict[str, Any], secrets: tuple[str, ...]) -> dict[str, str]:
        secret_env: dict[str, str] = {}
        for key in dict.fromkeys(secrets):
            value = target.get(key)
            if value in (None, ""):
                continue
            if isinstance(value, (Mapping, list, tuple)):
                raise DbtProfileException(
                    f"Connection {conn.conn_id!r} (type {conn.conn_type}): secret field {key} must be a string.",
                    conn_id=conn.conn_id,
                )
            env_name = secret_env_name(key)
            secret_env[env_name] = str(value)
            target[key] = "{{ env_var('" + env_name + "') }}"
        return secret_env

    @classmethod
    def _integer(cls, conn: ConnectionLike, key: str, value: Any) -> int:
        try:
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        except (TypeError, ValueError):
            raise DbtProfileException(
                f"Connection {conn.conn_id!r} (type {conn.conn_type}): {key} must be an integer, got {value!r}.",
                conn_id=conn.conn_id,
            ) from None

    @classmethod
    def _boolean(cls, conn: ConnectionLike, key: str, value: str) -> bool:
        word = value.strip().lower()
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise DbtProfileException(
            f"Connection {conn.conn_id!r} (type {conn.conn_type}): {key} must be true or false, got {value!r}.",
            conn_id=conn.conn_id,
        )
