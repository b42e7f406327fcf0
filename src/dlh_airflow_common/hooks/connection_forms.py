"""Connection types this provider registers with Airflow and their connection-form metadata (plain data).

Airflow keeps the first provider that registers a connection type, so only types no common provider owns are
registered: ``dbt`` (any adapter, extra = the dbt target), ``duckdb``, ``dremio`` and ``clickhouse``.
Connections of other types (postgres, trino, snowflake, ...) keep their own provider's form and still render
to a dbt profile, whether they live in the metadata DB, an ``AIRFLOW_CONN_*`` variable or a secrets backend.

Airflow 3.2+ reads the form declaratively from provider info (``conn-fields``, ``ui-field-behaviour``). This
module imports nothing from Airflow: ``get_provider_info`` runs while Airflow discovers providers.
"""

from __future__ import annotations

import json
from typing import Any

_HOOKS = "dlh_airflow_common.hooks.dbt_connection_types"


def _text(label: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": ["string", "null"], **schema}}


def _flag(label: str, description: str) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": ["boolean", "null"]}}


_THREADS = {
    "label": "dbt threads",
    "description": "How many models dbt builds at once (profile field threads).",
    "schema": {"type": ["integer", "null"], "minimum": 1},
}

_GENERIC_EXTRA_EXAMPLE = json.dumps(
    {"type": "bigquery", "method": "service-account", "project": "my-project", "dataset": "analytics",
     "keyfile": "/secrets/sa.json", "location": "EU"},
    indent=1,
)  # fmt: skip


CONNECTION_TYPES: list[dict[str, Any]] = [
    {
        "connection-type": "dbt",
        "hook-class-name": f"{_HOOKS}.DbtConnectionHook",
        "hook-name": "dbt (any adapter)",
        "ui-field-behaviour": {
            "hidden-fields": [],
            "relabeling": {"login": "User", "schema": "Schema (dbt)"},
            "placeholders": {
                "extra": _GENERIC_EXTRA_EXAMPLE,
                "host": "optional: the target's host when extra has none",
                "login": "optional: the target's user",
                "password": "optional: the target's password (kept out of profiles.yml)",
                "schema": "optional: the target's schema",
            },
        },
    },
    {
        "connection-type": "duckdb",
        "hook-class-name": f"{_HOOKS}.DuckDBConnectionHook",
        "hook-name": "DuckDB (dbt)",
        "ui-field-behaviour": {
            "hidden-fields": ["port", "login"],
            "relabeling": {"host": "Database path", "schema": "Schema", "password": "MotherDuck token"},
            "placeholders": {"host": "/data/warehouse.duckdb or md:my_db", "schema": "main"},
        },
        "conn-fields": {"threads": _THREADS},
    },
    {
        "connection-type": "dremio",
        "hook-class-name": f"{_HOOKS}.DremioConnectionHook",
        "hook-name": "Dremio (dbt)",
        "ui-field-behaviour": {
            "hidden-fields": [],
            "relabeling": {
                "host": "Host (Software) or Cloud API host",
                "login": "User",
                "password": "Password or personal access token",
                "schema": "Folder for tables and views",
            },
            "placeholders": {"host": "dremio.example.com or api.dremio.cloud", "port": "9047 (Software)"},
        },
        "conn-fields": {
            "method": _text(
                "Authentication",
                "password, pat (Password holds a personal access token) or cloud (Dremio Cloud).",
                enum=["password", "pat", "cloud", None],
            ),
            "cloud_project_id": _text("Cloud project id", "Dremio Cloud only."),
            "object_storage_source": _text("Object storage source", "Where tables are written (default $scratch)."),
            "object_storage_path": _text("Object storage path", "Folder under the source (default: Schema)."),
            "dremio_space": _text("Space", "Where views are created (default: the user's home space)."),
            "dremio_space_folder": _text("Space folder", "Folder inside the space (default: Schema)."),
            "use_ssl": _flag("Use TLS", "Connect over HTTPS."),
            "threads": _THREADS,
        },
    },
    {
        "connection-type": "clickhouse",
        "hook-class-name": f"{_HOOKS}.ClickHouseConnectionHook",
        "hook-name": "ClickHouse (dbt)",
        "ui-field-behaviour": {
            "hidden-fields": [],
            "relabeling": {"schema": "Database", "login": "User"},
            "placeholders": {"port": "8123/8443 (http) or 9000/9440 (native)", "schema": "default"},
        },
        "conn-fields": {
            "driver": _text("Driver", "http or native.", enum=["http", "native", None]),
            "secure": _flag("Secure", "Use TLS."),
            "verify": _flag("Verify certificate", "Check the server's TLS certificate."),
            "cluster": _text("Cluster", "ON CLUSTER name for distributed DDL."),
            "threads": _THREADS,
        },
    },
]


def _entry(conn_type: str) -> dict[str, Any]:
    return next(entry for entry in CONNECTION_TYPES if entry["connection-type"] == conn_type)


def ui_field_behaviour(conn_type: str) -> dict[str, Any]:
    """The form's field behaviour for ``conn_type`` as a hook's ``get_ui_field_behaviour`` returns it.

    :param conn_type: one of the connection types in ``CONNECTION_TYPES``.
    """
    behaviour = _entry(conn_type)["ui-field-behaviour"]
    return {
        "hidden_fields": list(behaviour["hidden-fields"]),
        "relabeling": dict(behaviour["relabeling"]),
        "placeholders": dict(behaviour["placeholders"]),
    }


def connection_form_widgets(conn_type: str) -> dict[str, Any]:
    """The form's extra fields for ``conn_type`` as WTForms fields (a hook's ``get_connection_form_widgets``).

    Airflow before 3.2 reads the form only from hooks; its API server stands in its own mocks for wtforms and
    flask_appbuilder, and without them the ImportError makes Airflow skip the widgets (logged, not raised).

    :param conn_type: one of the connection types in ``CONNECTION_TYPES``.
    """
    from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import BooleanField, IntegerField, StringField
    from wtforms.validators import Optional, any_of

    field_classes = {"string": StringField, "integer": IntegerField, "boolean": BooleanField}
    widgets: dict[str, Any] = {}
    for name, field in _entry(conn_type).get("conn-fields", {}).items():
        schema = field["schema"]
        kind = next(t for t in schema["type"] if t != "null")
        validators: list[Any] = [Optional()]
        if "enum" in schema:
            validators.append(any_of(schema["enum"]))
        options: dict[str, Any] = {"validators": validators, "description": field["description"]}
        if kind != "boolean":
            options["widget"] = BS3TextFieldWidget()
        widgets[name] = field_classes[kind](lazy_gettext(field["label"]), **options)
    return widgets
