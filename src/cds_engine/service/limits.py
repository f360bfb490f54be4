"""Bounded work per hook call, without refusing the sickest patients.

* **Drafts**: at most :attr:`HookLimits.max_drafts` entries in ``draftOrders`` (default 250);
  more is a 413 OperationOutcome naming ``context.draftOrders.entry``, and counted. Only drafts
  of the pack's drug or a partner class are reviewed; the others are co-medication.
* **Resources per prefetch key** (given in the request or read by a call-back): at most
  :attr:`HookLimits.max_resources_per_key` (default 1,000). Observations keep the newest N *per
  observation group* with no card — an older result never changes a newest-value fact. Every
  other key keeps active resources first, then the newest; when anything is dropped the
  data-unavailable card names the key. So a dialysis patient with years of labs is never refused.
* **Time**: fact mapping and evaluation run in worker threads (a limiter of their own, so sync
  endpoints such as ``/healthz`` keep their threads) and stop at the hook deadline with a 503
  rather than answer from a partial evaluation.

Refusals are counted (``refusal_counts``, shown by ``/healthz``); the log names the kind only.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BeforeValidator

from cds_engine import metrics
from cds_engine.service.errors import HookError

__all__ = [
    "DEFAULT_MAX_RESOURCES",
    "MAX_ACCEPTED_SUGGESTIONS",
    "MAX_FACT_LIST_ITEMS",
    "MAX_FEEDBACK_ITEMS",
    "MAX_SELECTIONS",
    "HookLimits",
    "cap_resources",
    "check_draft_count",
    "check_list_length",
    "check_nested_list_lengths",
    "count_refusal",
    "list_bound",
    "refusal_counts",
]

log = logging.getLogger("cds_engine.service.limits")

DEFAULT_MAX_RESOURCES = 1000  # per prefetch key; also the templates' _count
# Lists in request models, bounded on the model class (red-team re-audit #5): CDS Hooks feedback
# sends one item per card outcome, and a hook answer is a handful of cards — 30,000 items (7.5 MB,
# inside the body limit) took 8 minutes of writes and starved sign-in. Operational, not clinical.
MAX_FEEDBACK_ITEMS = 250
MAX_ACCEPTED_SUGGESTIONS = 50  # per feedback item: a card offers a few suggestions
#: any list of a plain-JSON ``PatientFacts`` body (/evaluate): medicines, conditions, results … — a
#: patient's record per kind, as a prefetch key (DEFAULT_MAX_RESOURCES). Unknown coded entries cost
#: ~0.4 ms each to classify by their text, so a 10 MB body of them was ~30 s of CPU (lead, 2026-12-08)
MAX_FACT_LIST_ITEMS = DEFAULT_MAX_RESOURCES
MAX_SELECTIONS = 250  # order-select: each selection names a draft, and drafts stop at 250 (HookLimits)
_lock = threading.Lock()
_counts: Counter[str] = Counter()

_ACTIVE = frozenset({"active", "on-hold", "in-progress", "recurrence", "relapse", "draft", "intended"})
# the element each type is sorted by (newest first) — the same as the template's _sort parameter
_EFFECTIVE = ("effectiveDateTime", "effectivePeriod.end", "effectivePeriod.start")
_DATE_ELEMENTS: dict[str, tuple[str, ...]] = {
    "Observation": (*_EFFECTIVE, "effectiveInstant", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod.end", "performedPeriod.start"),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
    "MedicationRequest": ("authoredOn",),
    "Condition": ("recordedDate", "onsetDateTime", "onsetPeriod.start"),
    "MedicationStatement": (*_EFFECTIVE, "dateAsserted"),
    "MedicationAdministration": _EFFECTIVE,
}


@dataclass(frozen=True)
class HookLimits:
    """Per-call bounds (operational, not clinical: they live with the service settings)."""

    max_drafts: int = 250
    max_resources_per_key: int = DEFAULT_MAX_RESOURCES
    deadline_seconds: float = 10.0  # fact mapping + evaluation of one call
    eval_threads: int = 2  # concurrent evaluations (CPU bound: more only share the same cores)
    # A call this small (body bytes, draft orders) is evaluated on the event loop: a few ms of CPU,
    # less than the worker-thread hop costs it (issue 19); larger calls keep the event loop free
    # (red-team H1). 0 bytes: every call goes to the worker threads.
    inline_max_bytes: int = 128 * 1024
    inline_max_drafts: int = 10


def count_refusal(kind: str) -> None:
    """Count one refused or trimmed request by kind (never a value) and log it."""
    with _lock:
        _counts[kind] += 1
    metrics.LIMITED.labels(metrics.label(kind)).inc()
    log.warning("request limited: kind=%s", kind)


def refusal_counts() -> dict[str, int]:
    with _lock:
        return dict(sorted(_counts.items()))


def check_draft_count(bundle: Any, max_drafts: int) -> None:
    """413 (counted) when ``draftOrders`` has more entries than we review in one call."""
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if isinstance(entries, list) and len(entries) > max_drafts:
        count_refusal("drafts-over-limit")
        raise HookError(
            413,
            "context.draftOrders.entry",
            f"more than {max_drafts} draft orders in one call: split the order set",
        )


def check_list_length(value: Any, limit: int, field: str) -> None:
    """413 (counted) when a request list is longer than ``limit`` — checked *before* its items are
    validated, so an oversized list costs one ``len`` and never reaches validation or the store.

    Raised as :class:`HookError` from a pydantic ``mode="before"`` validator: pydantic passes any
    exception other than ``ValueError``/``AssertionError`` through, and the app's handler answers
    the OperationOutcome naming ``field`` and the limit."""
    if isinstance(value, list | tuple) and len(value) > limit:
        count_refusal(f"{field.rsplit('.', 1)[-1]}-over-limit")
        raise HookError(413, field, f"more than {limit} items: send at most {limit} per call")


def _element(resource: dict[str, Any], path: str) -> str:
    node: Any = resource
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, str) else ""


def _when(resource: dict[str, Any]) -> str:
    """The resource's date as written (ISO 8601 strings sort by time); '' when it has none."""
    for path in _DATE_ELEMENTS.get(str(resource.get("resourceType")), ()):
        value = _element(resource, path)
        if value:
            return value
    return ""


def _status(resource: dict[str, Any]) -> str | None:
    clinical = resource.get("clinicalStatus")
    if isinstance(clinical, dict):
        codes = [c.get("code") for c in clinical.get("coding") or [] if isinstance(c, dict)]
        return next((c for c in codes if isinstance(c, str)), None)
    status = resource.get("status")
    return status if isinstance(status, str) else None


def cap_resources(
    resources: list[dict[str, Any]],
    limit: int,
    groups_of: Callable[[dict[str, Any]], Iterable[str]] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """(kept, how many dropped) for one prefetch key.

    With ``groups_of`` (observations): the newest ``limit`` of each group are kept, and a result
    is kept when it is among the newest of any of its groups. Otherwise: active first, then newest.
    """
    if len(resources) <= limit:
        return resources, 0
    newest = sorted(resources, key=_when, reverse=True)
    if groups_of is not None:
        taken: dict[str, int] = defaultdict(int)
        kept = []
        for resource in newest:
            groups = list(groups_of(resource)) or [""]
            room = [g for g in groups if taken[g] < limit]
            for group in room:
                taken[group] += 1
            if room:
                kept.append(resource)
        return kept, len(resources) - len(kept)
    ordered = sorted(newest, key=lambda r: _status(r) not in _ACTIVE)  # stable: newest within each
    return ordered[:limit], len(resources) - limit


def list_bound(limit: int, field: str) -> BeforeValidator:
    """``Annotated[list[X], list_bound(n, "path")]``: :func:`check_list_length` before the items
    are validated (one bound per request-model list, the same 413 naming the field)."""

    def check(value: Any) -> Any:
        check_list_length(value, limit, field)
        return value

    return BeforeValidator(check)


def check_nested_list_lengths(tree: Any, limit: int, path: str = "") -> None:
    """413 (counted) naming the first list anywhere in ``tree`` (a dumped model) longer than ``limit``.

    For bodies whose model has many lists (``PatientFacts``): one bound for all of them, checked on
    the dump the endpoint already makes, before any derivation work."""
    stack: list[tuple[Any, str]] = [(tree, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in node.items()
                         if isinstance(v, dict | list))
        elif isinstance(node, list):
            check_list_length(node, limit, where or "body")
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node) if isinstance(v, dict | list))
