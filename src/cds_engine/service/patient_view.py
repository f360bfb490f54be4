"""``{pack}-patient-view``: monitoring at chart open for a patient on the pack's drug.

It runs on every chart open of every patient, so the common case costs almost nothing: the
prefetch asks only for *active* MedicationRequests and MedicationStatements, and a patient who is
not on the pack's drug gets ``{"cards": []}`` with no outbound call and nothing stored. For a
patient on the drug the rest of the record is read through ``fhirServer`` (the bounded call-back
client, the order hooks' templates), each active order of the drug is evaluated as the therapy
being continued, and only the rules the pack runs on ``patient-view`` (``hooks:`` per rule) are
answered. Without ``fhirServer`` one info card per encounter says monitoring could not be checked.

A patient or a relative opening their own chart (``userId`` of type Patient or RelatedPerson,
a portal) gets 200 with no cards, counted. Cards are shown once per (patient, encounter — or
calendar day) and tier until their facts change, except those that always show
(:mod:`cds_engine.service.fatigue`). Evaluations are stored under their own source label,
``patient-view``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

import anyio
from pydantic import Field

from cds_engine.alerts import Alert
from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.compile import CompiledPack
from cds_engine.service.cards import alert_card
from cds_engine.service.coverage import unavailable_alert
from cds_engine.service.discovery import PATIENT_VIEW, ServiceRef, patient_view_templates, prefetch_templates
from cds_engine.service.errors import HookError
from cds_engine.service.fatigue import client_key
from cds_engine.service.hook import HookHandler, HookResult, _map_facts
from cds_engine.service.hook_scope import runs_on
from cds_engine.service.medication_refs import (
    UNIDENTIFIED,
    mark_unidentified,
    resolve_references,
    unidentified,
)
from cds_engine.service.metrics_http import count_cards
from cds_engine.service.models import Card, CardsResponse, HookRequest, OrderContext
from cds_engine.service.prefetch import _has_next, gather_prefetch, readable
from cds_engine.sources.fhir import bundle_resources, facts_from_resources, medication_classes
from cds_engine.store.api import EvaluationRecord, IssuedAlert, NullSink
from cds_engine.store.failures import count_not_stored

__all__ = [
    "ACTIVE_MEDICATION_KEYS",
    "PORTAL_USER_TYPES",
    "PatientViewHandler",
    "PatientViewRequest",
    "patient_view_counts",
]

log = logging.getLogger("cds_engine.service")

HOOK = PATIENT_VIEW
PORTAL_USER_TYPES = frozenset({"Patient", "RelatedPerson"})
ACTIVE_MEDICATION_KEYS = ("activeMedicationRequests", "activeMedicationStatements")
UNCHECKED_RULE = "monitoring-unchecked"
_lock = threading.Lock()
_counts: Counter[str] = Counter()


def _count(kind: str) -> None:
    with _lock:
        _counts[kind] += 1


def patient_view_counts() -> dict[str, int]:
    """Chart opens by outcome (``/healthz``): portal-user, not-on-drug, unchecked, evaluated …"""
    with _lock:
        return dict(_counts)


class PatientViewContext(OrderContext):
    """``patient-view`` context: userId, patientId and (optional) encounterId; no draft orders."""

    draftOrders: dict[str, Any] = Field(default_factory=dict, description="not used by patient-view")


class PatientViewRequest(HookRequest):
    context: PatientViewContext


def _drug_orders(pack: CompiledPack, resources: list[dict[str, Any]]) -> tuple[bool, list[dict[str, Any]]]:
    """(is the pack's drug active, its active MedicationRequests) from the active lists."""
    drug = pack.context.drug_class
    active, orders = False, []
    for resource in resources:
        if resource.get("status") != "active":
            continue
        classes = medication_classes(resource, resources, pack.vocabulary) or set()
        if drug in classes:
            active = True
            if resource.get("resourceType") == "MedicationRequest":
                orders.append(resource)
    return active, orders


# the active-medicine key each type comes from (the unchecked card names it)
_ACTIVE_KEYS = {
    "MedicationRequest": ACTIVE_MEDICATION_KEYS[0],
    "MedicationStatement": ACTIVE_MEDICATION_KEYS[1],
}


def _resources(value: dict[str, Any]) -> list[dict[str, Any]]:
    """A prefetch value's resources (a Bundle too deep to walk gives none: nothing is resolved from it)."""
    try:
        return bundle_resources(value)
    except RecursionError:
        return []


def _whole_lists(given: dict[str, Any]) -> bool:
    """Both active-medicine keys hold a Bundle (or null) this service can read whole: one page, every
    entry a readable MedicationRequest/MedicationStatement (prefetch.readable)."""
    templates = patient_view_templates()
    for key in ACTIVE_MEDICATION_KEYS:
        value = given.get(key)
        if value is None:
            continue
        if _has_next(value) or readable(value, templates[key])[1] is not None:
            return False
    return True


def _unchecked_alert(pack: CompiledPack, why: str, *, on_drug: bool = True) -> Alert:
    """Monitoring not done. ``on_drug`` False: not even known whether the patient takes the drug —
    never read as "not on it" (fail safe); shown once per encounter like any other card."""
    info = pack.spec.pack
    rules = sorted(
        r.id for r in pack.spec.rules if HOOK in r.hooks or any(HOOK in (t.hooks or []) for t in r.tiers)
    )
    return Alert(
        kind="cannot-assess",
        rule_id=UNCHECKED_RULE,
        tier_id=f"{UNCHECKED_RULE}.record",
        title="Monitoring could not be checked",
        category="missing-data",
        severity="info",
        summary=f"{info.drug.display} monitoring could not be checked at chart open — review it manually",
        detail=(f"The patient takes {info.drug.display}, but {why}" if on_drug else
                f"It is not known whether the patient takes {info.drug.display}: {why}")
        + f", so the monitoring checks were not done: {', '.join(rules)}.",
        missing=["record"],
        not_assessed=rules,
        pack_id=info.id,
        pack_version=info.version,
        pack_hash=pack.content_hash,
        pack_url=info.url,
        pack_status=info.status,
        approval=info.approval.status,
    )


def _scope(pack: CompiledPack, request: HookRequest, as_of: datetime) -> str:
    """Shown-once scope: the encounter, else the calendar day (UTC) of the chart open."""
    context = request.context
    where = f"Encounter/{context.encounterId}" if context.encounterId else as_of.date().isoformat()
    raw = f"{pack.id}|Patient/{context.patientId}|{where}"
    return hashlib.sha256(raw.encode()).hexdigest()


def _dedupe(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The active lists and the full fetch overlap: one copy of each (type, id)."""
    seen: set[tuple[Any, Any]] = set()
    out = []
    for resource in resources:
        key = (resource.get("resourceType"), resource.get("id"))
        if key[1] is not None and key in seen:
            continue
        seen.add(key)
        out.append(resource)
    return out


class PatientViewHandler:
    """Answers ``patient-view`` with the order hooks' fetcher, workers, sink and fatigue state."""

    def __init__(self, hooks: HookHandler) -> None:
        self.hooks = hooks

    async def __call__(
        self,
        ref: ServiceRef,
        request: HookRequest,
        engine: Engine,
        issuer: str | None = None,
        tenant: str | None = None,
    ) -> HookResult:
        if request.hook != HOOK:
            raise HookError(400, "hook", f"service {ref.id} answers {HOOK} only")
        user = request.context.userId or ""
        if user.split("/", 1)[0] in PORTAL_USER_TYPES:
            _count("portal-user")
            return HookResult(CardsResponse(cards=[]))
        pack = ref.pack
        given = request.prefetch or {}
        lists = [given.get(k) for k in ACTIVE_MEDICATION_KEYS]
        if any(not isinstance(v, dict) and v is not None for v in lists) or any(
            isinstance(v, dict) and v.get("resourceType") == "OperationOutcome" for v in lists
        ) or any(k not in given for k in ACTIVE_MEDICATION_KEYS) or not _whole_lists(given):
            # the medicines were not sent, or not as whole lists (another shape, unreadable entries,
            # one page of several): read them first (two searches), nothing else yet
            meds = await gather_prefetch(
                request.model_copy(update={"prefetch": {}}), patient_view_templates(), self.hooks.fetcher
            )
            if set(meds.unavailable) & set(ACTIVE_MEDICATION_KEYS):
                # unknown is not "not on the drug": say the check was not done (once per encounter)
                _count("medicines-unreadable")
                alerts = [_unchecked_alert(pack, "the current medicines were neither prefetched nor readable "
                                           "from a FHIR server", on_drug=False)]
                return await self._answer(ref, request, pack, self.hooks.clock(), client_key(issuer, tenant),
                                          [(None, alerts)])
            current = meds.resources
        else:
            current = [r for v in lists if isinstance(v, dict) for r in bundle_resources(v)]
        # a medicine named by a Medication reference: contained, prefetched, or read like the order
        # hooks' (bounded); one that stays unknown may be the drug: never read as "not on it"
        deadline = time.monotonic() + (self.hooks.fetcher.budget if self.hooks.fetcher else 0.0)
        known = [*current, *(r for v in given.values() if isinstance(v, dict) for r in _resources(v))]
        unknown = await resolve_references(
            self.hooks.fetcher, request, current, known, deadline, _ACTIVE_KEYS
        )
        # the Medications prefetched or read, for the class look-up
        current = [*current, *(r for r in known[len(current):] if r.get("resourceType") == "Medication")]
        active, orders = _drug_orders(pack, current)
        if unknown and not active:
            _count("medicines-unreadable")
            alerts = [_unchecked_alert(pack, f"{UNIDENTIFIED} ({', '.join(sorted(unknown))})", on_drug=False)]
            return await self._answer(ref, request, pack, self.hooks.clock(), client_key(issuer, tenant),
                                      [(None, alerts)])
        if not active:
            _count("not-on-drug")
            return HookResult(CardsResponse(cards=[]))

        as_of = self.hooks.clock()
        claims_key = client_key(issuer, tenant)
        if request.fhirServer is None or self.hooks.fetcher is None:
            _count("unchecked")
            alerts = [_unchecked_alert(pack, "no FHIR server was given to read the rest of the record")]
            return await self._answer(ref, request, pack, as_of, claims_key, [(None, alerts)])

        prefetched = await gather_prefetch(
            request.model_copy(update={"prefetch": {}}),
            prefetch_templates(pack),
            self.hooks.fetcher,
            cap=self.hooks._cap(pack),
        )
        pool = _dedupe([*prefetched.resources, *current])
        # the full lists' medicines too: one whose product stays unknown makes its list incomplete
        mark_unidentified(
            prefetched,
            await resolve_references(self.hooks.fetcher, request, prefetched.resources, pool, deadline),
        )
        mark_unidentified(prefetched, unidentified(current, pool))  # an active one the full lists lack
        patient_id = request.context.patientId
        if not any(r.get("resourceType") == "Patient" and r.get("id") == patient_id for r in pool):
            _count("unchecked")
            alerts = [_unchecked_alert(pack, "the patient's record could not be read from the FHIR server")]
            return await self._answer(ref, request, pack, as_of, claims_key, [(None, alerts)])
        _count("evaluated")
        results = await self.hooks.workers.run(self._evaluate, engine, pack, pool, orders, prefetched, as_of)
        return await self._answer(ref, request, pack, as_of, claims_key, results)

    @staticmethod
    def _evaluate(
        engine: Engine,
        pack: CompiledPack,
        pool: list[dict[str, Any]],
        orders: list[dict[str, Any]],
        prefetched: Any,
        as_of: datetime,
    ) -> list[tuple[dict[str, Any] | None, list[Alert]]]:
        """Each active order of the drug evaluated as continued; none (statements only): no order."""
        complete = prefetched.medication_lists_complete()
        if orders:
            facts_list: list[PatientFacts] = _map_facts(pool, as_of, pack, orders, orders)
            focus: list[dict[str, Any] | None] = list(orders)
        else:
            facts_list = [facts_from_resources(pool, as_of=as_of, vocab=pack.vocabulary,
                                               drug_class=pack.context.drug_class)]
            focus = [None]
        extra = [unavailable_alert(pack, prefetched.unavailable)] if prefetched.unavailable else []
        out: list[tuple[dict[str, Any] | None, list[Alert]]] = []
        for order, facts in zip(focus, facts_list, strict=True):
            facts = facts.model_copy(update={"medication_lists_complete": complete})
            found = [a for a in engine.evaluate_pack(pack, facts) if runs_on(pack, a, HOOK)]
            out.append((order, sorted([*found, *extra], key=Alert.sort_key)))
            extra = []
        return out

    async def _answer(
        self,
        ref: ServiceRef,
        request: HookRequest,
        pack: CompiledPack,
        as_of: datetime,
        claims_key: str,
        results: list[tuple[dict[str, Any] | None, list[Alert]]],
    ) -> HookResult:
        seen: set[tuple[str, str]] = set()
        issued: list[tuple[dict[str, Any] | None, list[tuple[Alert, Card]]]] = []
        for order, alerts in results:
            pairs = []
            for alert in alerts:
                if (alert.tier_id, alert.summary) in seen:
                    continue  # the same advice for a second active order: once
                seen.add((alert.tier_id, alert.summary))
                pairs.append((alert, alert_card(alert, pack, None, self.hooks.link_hosts)))
            issued.append((order, pairs))
        sent = [pair for _, pairs in issued for pair in pairs]
        screened = await anyio.to_thread.run_sync(
            lambda: self.hooks.fatigue.screen(
                pack, f"Patient/{request.context.patientId}", claims_key, sent, as_of,
                once_scope=_scope(pack, request, as_of),
            ),
            limiter=self.hooks.store_limiter,
        )
        hidden = screened.hidden
        shown = sorted(screened.shown, key=lambda p: p[0].sort_key())
        await self._record(ref, request, pack, as_of, issued, hidden)
        return HookResult(CardsResponse(cards=[c for _, c in shown]), [a.rule_id for a, _ in shown])

    async def _record(
        self,
        ref: ServiceRef,
        request: HookRequest,
        pack: CompiledPack,
        as_of: datetime,
        issued: list[tuple[dict[str, Any] | None, list[tuple[Alert, Card]]]],
        hidden: dict[str, str],
    ) -> None:
        for _order, pairs in issued:  # counted whether or not anything is stored
            count_cards(pack.id, [(a, c.uuid not in hidden) for a, c in pairs])
        sink = self.hooks.sink
        if isinstance(sink, NullSink):
            return
        info = pack.spec.pack
        context = request.context
        encounter = f"Encounter/{context.encounterId}" if context.encounterId else None
        for order, pairs in issued:
            ident = order.get("id") if order else None
            raw = f"{HOOK}|{context.patientId}|{encounter or ''}|{ident or ''}"
            key = hashlib.sha256(raw.encode()).hexdigest()
            record = EvaluationRecord(
                source="patient-view",
                hook_instance=request.hookInstance,
                hook=HOOK,
                service_id=ref.id,
                patient_ref=f"Patient/{request.context.patientId}",
                encounter_ref=encounter,
                user_ref=request.context.userId or "unknown",
                order_key=key[:32],
                order=order,
                as_of=as_of,
                pack_id=info.id,
                pack_version=info.version,
                pack_hash=pack.content_hash,
                alerts=[IssuedAlert(alert=a, card_uuid=c.uuid, shown=c.uuid not in hidden) for a, c in pairs],
            )
            try:
                if getattr(sink, "nonblocking", False):  # a journal append (as hook.py): no thread hop
                    sink.record_evaluation(record)
                else:
                    await anyio.to_thread.run_sync(
                        sink.record_evaluation, record, limiter=self.hooks.store_limiter
                    )
            except Exception as exc:  # the chart open never fails for the audit trail
                count_not_stored("sink-error")
                log.error("patient-view evaluation not recorded: hookInstance=%s error=%s",
                          request.hookInstance, type(exc).__name__)
