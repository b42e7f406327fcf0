"""``dbt Docs``, ``dbt Artifacts`` and ``dbt Run Report`` buttons on a DbtOperator task, read from the summary
the task pushed.

Airflow 3 computes a link on the worker when the task finishes (success or failure) and stores it in XCom
under the link's ``xcom_key``; the UI then shows that stored value. So the URLs are worked out by the
operator after its run (``docs_url`` / ``artifacts_url`` / ``report_url`` in the ``dbt_summary`` XCom) and the
links only read them, falling back to the operator's configured URL. Unconfigured means an empty link, never an
error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

logger = logging.getLogger(__name__)

SUMMARY_XCOM_KEY = "dbt_summary"  # DbtOperator's XCOM_SUMMARY_KEY (a test keeps them equal)
DOCS_URL_KEY = "docs_url"
ARTIFACTS_URL_KEY = "artifacts_url"
REPORT_URL_KEY = "report_url"
_DEEP_LINK_TYPES = ("model.", "snapshot.", "seed.")


def first_model(node_ids: Iterable[str]) -> str | None:
    """The first model the run executed (run_results order), else the first snapshot or seed."""
    ids = list(node_ids)
    for prefix in _DEEP_LINK_TYPES:
        for node_id in ids:
            if node_id.startswith(prefix):
                return node_id
    return None


def docs_url(base: str, node_id: str | None = None) -> str:
    """The dbt docs site at ``base``, deep-linked to ``node_id`` (``#!/model/model.shop.orders``) when given."""
    if not node_id:
        return base
    page = f"#!/{node_id.split('.', 1)[0]}/{node_id}"
    site = base.split("#", 1)[0]
    return site + page if site.endswith(".html") else f"{site.rstrip('/')}/{page}"


def _summary(ti_key: Any) -> dict[str, Any]:
    from airflow.sdk.execution_time.xcom import XCom

    try:
        value = XCom.get_value(ti_key=ti_key, key=SUMMARY_XCOM_KEY)
    except Exception as err:  # a missing XCom backend or API must not break the task page
        logger.debug("No dbt summary for %s: %s", ti_key, err)
        return {}
    return value if isinstance(value, dict) else {}


class _SummaryLink(BaseOperatorLink):
    """A link whose URL the task stored in its summary, else the operator's own setting, else empty."""

    summary_key: ClassVar[str]
    operator_attribute: ClassVar[str | None] = None

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        configured = getattr(operator, self.operator_attribute, None) if self.operator_attribute else None
        if getattr(operator, "summary_pushed", None) is False:  # the task's own finish: it pushed no summary
            return str(configured or "")
        stored = _summary(ti_key).get(self.summary_key)
        return str(stored or configured or "")


class DbtDocsLink(_SummaryLink):
    """``dbt_docs_url`` (deep-linked to the first model the run built), or the docs this task published."""

    name = "dbt Docs"
    summary_key = DOCS_URL_KEY
    operator_attribute = "dbt_docs_url"


class DbtArtifactsLink(_SummaryLink):
    """Where this try's artifacts were uploaded (through ``artifacts_url`` when set), or ``artifacts_url``."""

    name = "dbt Artifacts"
    summary_key = ARTIFACTS_URL_KEY
    operator_attribute = "artifacts_url"


class DbtRunReportLink(_SummaryLink):
    """This try's uploaded ``run_report.html`` (through ``artifacts_url`` when set); empty without an upload."""

    name = "dbt Run Report"
    summary_key = REPORT_URL_KEY
