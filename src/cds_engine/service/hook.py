"""One hook call, start to finish: draft orders → prefetch → facts → alerts → cards → record.

Advice never stops for missing data. The only refusals: a malformed request (400, naming the
field), and 412 when the patient or the draft order's medication cannot be had at all. Orders
that concern no pack answer ``{"cards": []}`` before any FHIR call. Every evaluated order is
recorded through the :class:`EvaluationSink` (off the event loop: a database may block), with an
``order_key`` that is the same for order-select and order-sign of one order.

Each step is timed; the split (parse, prefetch, facts, evaluation, cards, store) is returned in
a ``Server-Timing`` header for the benchmark and for operators.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from pydantic import ValidationError

from cds_engine.alerts import Alert
from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.governance import SHOWN_STATUSES
from cds_engine.service.cards import LINK_HOSTS, alert_card
from cds_engine.service.coverage import unavailable_alert
from cds_engine.service.discovery import ServiceRef, prefetch_templates
from cds_engine.service.errors import HookError
from cds_engine.service.fatigue import FatiguePolicy, client_key
from cds_engine.service.hook_scope import runs_on
from cds_engine.service.limits import HookLimits, cap_resources, check_draft_count, count_refusal
from cds_engine.service.medication_refs import mark_unidentified, readable_reference, resolve_references
from cds_engine.service.metrics_http import count_cards
from cds_engine.service.models import Card, CardsResponse, HookRequest
from cds_engine.service.order_label import PATIENT_LEVEL_RULES, name_orders, order_label
from cds_engine.service.orders import DraftOrders, read_draft_orders
from cds_engine.service.prefetch import FhirFetcher, Prefetched, gather_prefetch, local_prefetch
from cds_engine.service.suggestions import order_one_click
from cds_engine.service.workers import WorkerPool
from cds_engine.sources.demographics import PatientDemographics, from_fhir_patient
from cds_engine.sources.fhir import (
    bundle_resources,
    facts_for_drafts,
    medication_classes,
    medication_concept,
)
from cds_engine.sources.fhir_read import concept_groups
from cds_engine.store.api import EvaluationRecord, EvaluationSink, NullSink
from cds_engine.store.failures import count_not_stored

__all__ = ["HookHandler", "HookResult", "order_key"]

log = logging.getLogger("cds_engine.service")

_MEDICINE_KEYS = frozenset({"medicationRequests", "medicationStatements"})
# per evaluated draft: the draft, its facts, and each alert with its card (None when not shown)
_Issued = list[tuple[dict[str, Any], PatientFacts, list[tuple[Alert, Card | None]]]]


@dataclass(slots=True)
class HookResult:
    response: CardsResponse
    rule_ids: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # step -> milliseconds


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.timings[step] = self.timings.get(step, 0.0) + (now - self._last) * 1000
        self._last = now


def order_key(request: HookRequest, draft: dict[str, Any], issuer: str | None = None) -> str:
    """The order's identity: (issuer, patient, encounter, draft id, product) hashed.

    The same for order-select and order-sign of one order. Clients reuse draft ids across ordering
    sessions, so the store folds this key into a session (``store/order_sessions.py``: calls no
    more than an hour apart); the product keeps a reused id for another medicine apart even then.
    The issuer is the client's JWT ``iss``, else its fhirServer (``--no-auth`` trials).
    """
    concept = draft.get("medicationCodeableConcept") or draft.get("medicationReference") or {}
    product = repr(
        sorted((c.get("system"), c.get("code")) for c in concept.get("coding", []) if isinstance(c, dict))
        or concept.get("reference")
        or concept.get("text")
    )
    ident = draft.get("id") if isinstance(draft.get("id"), str) else ""
    who = issuer or request.fhirServer or ""
    raw = "|".join([str(who), request.context.patientId, request.context.encounterId or "",
                    f"MedicationRequest/{ident}", product])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _map_facts(
    pool: list[dict[str, Any]],
    as_of: datetime,
    pack: CompiledPack,
    drafts: list[dict[str, Any]],
    reviewed: list[dict[str, Any]],
) -> list[PatientFacts]:
    """Facts per reviewed draft (the others co-medication), the record mapped once: linear in drafts.

    Data the fact model refuses is the caller's error (400), never a 500. The message names the
    fact and the rule it broke, never the submitted value (no PHI echoed).
    """
    try:
        return facts_for_drafts(
            pool, drafts, reviewed, as_of=as_of, vocab=pack.vocabulary, drug_class=pack.context.drug_class
        )
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "record"
        message = f"the record could not be read as facts ({where}: {first['msg']})"
        raise HookError(400, None, message) from exc
    except ValueError as exc:
        raise HookError(400, None, f"the record could not be read as facts ({type(exc).__name__})") from exc


def _new_record(fields: dict[str, Any]) -> EvaluationRecord:
    """``EvaluationRecord(**fields)``, its alerts given as ``IssuedAlert`` fields, validated the same way.

    Why: one call into pydantic-core validates the record and every issued alert (the same schema,
    the same checks, an equal model with the same fields set), where ``EvaluationRecord(...)``
    around ``IssuedAlert(...)`` per alert paid Python's ``__init__`` and keyword packing for each
    — about a third of building a record, on every stored hook call (issue 19 item 2a)."""
    return _VALIDATE_RECORD(fields)


_VALIDATE_RECORD = EvaluationRecord.__pydantic_validator__.validate_python


class HookHandler:
    def __init__(
        self,
        sink: EvaluationSink,
        fetcher: FhirFetcher | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        link_hosts: tuple[str, ...] = LINK_HOSTS,
        store_threads: int = 2,
        limits: HookLimits | None = None,
        demographics: bool = True,
    ) -> None:
        self.sink = sink
        # who the patient is (name, birth date, MRN) for the review page; off: --no-demographics
        self.demographics = demographics
        self.fetcher = fetcher
        self.clock = clock
        self.link_hosts = link_hosts
        # Writes go through a few threads at most: many concurrent writers only fight over the
        # database's write lock (SQLite serialises them anyway).
        self.store_limiter = anyio.CapacityLimiter(store_threads)
        self.limits = limits or HookLimits()
        # parsing, fact mapping and evaluation of a call over the inline bounds: CPU work off the
        # event loop, on long-lived threads of its own (sync endpoints such as /healthz keep the
        # default pool)
        self.workers = WorkerPool(self.limits.eval_threads)
        # repeat suppression state, shared through the store (no store: every card shows)
        self.fatigue = FatiguePolicy(None)

    def warm(self, engine: Engine, as_of: datetime) -> None:
        """Build every worker thread's rulesets before the first order (start-up, not a clinician)."""
        self.workers.warm(lambda: [engine.evaluate_pack(p, PatientFacts(as_of=as_of)) for p in engine.packs])

    def close(self) -> None:
        self.workers.close()

    async def __call__(self, ref: ServiceRef, request: HookRequest, engine: Engine,
                       issuer: str | None = None, tenant: str | None = None,
                       body_bytes: int | None = None) -> HookResult:
        """``issuer``/``tenant``: the verified client's — only their feedback may suppress its cards.

        ``body_bytes``: the request body's size, when known; a small call without FHIR reads is
        evaluated on the event loop (:meth:`inline`), any other on the worker threads.
        """
        clock = _Clock()
        check_draft_count(request.context.draftOrders, self.limits.max_drafts)
        if request.hook != ref.hook:
            raise HookError(400, "hook", f"service {ref.id} answers {ref.hook} only")  # input not echoed
        pack = ref.pack
        if self.fetcher is None or request.fhirServer is None:
            # nothing can be read over FHIR: parse, prefetch and evaluation in one step — on the
            # event loop for a small call, else in one worker-thread hop instead of two (each hop
            # costs CPU and a wait for the event loop; issue 19)
            if self.inline(request, body_bytes):
                local = self._local_call(engine, pack, request, clock)
            else:
                local = await self.workers.run(self._local_call, engine, pack, request, clock)
            if local is None:
                return HookResult(CardsResponse(cards=[]), timings=clock.timings)
            issued, quiet, who, as_of = local
        else:
            drafts, relevant = await self.workers.run(self._parse, request, pack)
            clock.lap("parse")
            if not relevant:
                return HookResult(CardsResponse(cards=[]), timings=clock.timings)

            # one FHIR time budget per hook call, shared by the prefetch reads and the Medication reads
            deadline = time.monotonic() + self.fetcher.budget
            prefetched = await gather_prefetch(
                request, prefetch_templates(pack), self.fetcher, cap=self._cap(pack)
            )
            pool = self._pool(prefetched, drafts)
            await self._resolve_medications(request, relevant, pool, deadline, prefetched)
            who = self._patient(pool, request)
            clock.lap("prefetch")

            as_of = self.clock()
            issued, quiet = await self.workers.run(
                self._evaluate, engine, pack, drafts, relevant, pool, prefetched, as_of, clock, request.hook
            )
        clock.lap("resume")  # the event loop taking the call back from the evaluation thread (queueing)
        hidden: dict[str, str] = {}
        sent = [(a, c) for _, _, pairs in issued for a, c in pairs if c is not None]
        if self.fatigue.needs_store(pack, sent):  # suppressed cards are still stored, as not shown
            screened = await anyio.to_thread.run_sync(
                self.fatigue.screen, pack, f"Patient/{request.context.patientId}",
                client_key(issuer, tenant), sent, as_of, limiter=self.store_limiter,
            )
            hidden = screened.hidden
        ordered = sorted(
            (p for _, _, pairs in issued for p in pairs if p[1] is None or p[1].uuid not in hidden),
            key=lambda p: p[0].sort_key(),
        )
        cards = [card for _, card in ordered]
        await self._record(ref, request, pack, as_of, issued, issuer=issuer, who=who, hidden=hidden)
        for silent_pack, silent_issued in quiet:
            await self._record(ref, request, silent_pack, as_of, silent_issued, shown=False, issuer=issuer,
                               who=who)
        clock.lap("store")
        return HookResult(CardsResponse(cards=cards), [a.rule_id for a, _ in ordered], clock.timings)

    def inline(self, request: HookRequest, body_bytes: int | None) -> bool:
        """Whether a call is small enough to evaluate on the event loop (no worker-thread hop).

        Bounded by the body's size and the number of draft orders, both known before any work: the
        CPU of mapping and evaluation grows with them, so an inline call holds the event loop for a
        few milliseconds at most — less than the hop to a worker thread and back costs under load
        (issue 19). A large call, or one of unknown size (chunked), keeps the loop free (H1).
        """
        limits = self.limits
        if body_bytes is None or limits.inline_max_bytes <= 0 or body_bytes > limits.inline_max_bytes:
            return False
        entries = request.context.draftOrders.get("entry")
        return not isinstance(entries, list) or len(entries) <= limits.inline_max_drafts

    def _local_call(
        self, engine: Engine, pack: CompiledPack, request: HookRequest, clock: _Clock
    ) -> tuple[_Issued, list[tuple[CompiledPack, _Issued]], PatientDemographics | None, datetime] | None:
        """Parse, prefetch and evaluate in one worker-thread call when no FHIR server can be read.

        The same steps, checks and refusals as the two-hop path of :meth:`__call__` (which the
        tests compare); None when no draft concerns the pack (``{"cards": []}``).
        """
        drafts, relevant = self._parse(request, pack)
        clock.lap("parse")
        if not relevant:
            return None
        prefetched = local_prefetch(request, prefetch_templates(pack), cap=self._cap(pack))
        pool = self._pool(prefetched, drafts)
        if self._missing_medications(relevant, pool):  # a Medication to read, and no server to read it from
            raise HookError(412, "context.draftOrders", "the ordered medication cannot be resolved")
        who = self._patient(pool, request)
        clock.lap("prefetch")
        as_of = self.clock()
        issued, quiet = self._evaluate(
            engine, pack, drafts, relevant, pool, prefetched, as_of, clock, request.hook
        )
        return issued, quiet, who, as_of

    @staticmethod
    def _pool(prefetched: Prefetched, drafts: DraftOrders) -> list[dict[str, Any]]:
        """The record: prefetched and fetched resources, and the bundle's non-order resources."""
        return [
            *prefetched.resources,
            *(r for r in drafts.resources if r.get("resourceType") != "MedicationRequest"),
        ]

    def _patient(self, pool: list[dict[str, Any]], request: HookRequest) -> PatientDemographics | None:
        """412 unless the context patient is in the record; else who they are (None when not kept).

        The record is walked once: the resource found for the check is the one demographics are
        read from (the store step used to walk the whole pool a second time to find it again)."""
        patient_id = request.context.patientId
        patient = next((r for r in pool if r.get("resourceType") == "Patient" and r.get("id") == patient_id),
                       None)
        if patient is None:
            if request.fhirServer is None or self.fetcher is None:
                why = "not prefetched, and no fhirServer to read it from"
            else:  # the server was given: say so (never its address), not "no FHIR access"
                why = "not prefetched, and the FHIR server in fhirServer could not be read"
            raise HookError(412, "context.patientId", f"the patient could not be read ({why})")
        return self._who(patient)

    def _who(self, patient: dict[str, Any]) -> PatientDemographics | None:
        """Name, birth date and MRN-type identifiers of the context patient (None when not kept)."""
        if not self.demographics or isinstance(self.sink, NullSink):
            return None
        return from_fhir_patient(patient)

    def _parse(self, request: HookRequest, pack: CompiledPack) -> tuple[DraftOrders, list[dict[str, Any]]]:
        """The draft orders and the reviewed ones that concern the pack.

        The prefetched bundles are walked only when a reviewed draft names its product by
        reference (the walk finds the Medication): a draft with an inline concept never reads them.
        """
        drafts = read_draft_orders(request)
        local = drafts.resources
        if any(not isinstance(d.get("medicationCodeableConcept"), dict) for d in drafts.reviewed):
            bundles = [v for v in (request.prefetch or {}).values() if isinstance(v, dict)]
            local = [*drafts.resources, *(r for v in bundles for r in bundle_resources(v))]
        return drafts, self._relevant(pack, drafts, local)

    def _cap(
        self, pack: CompiledPack
    ) -> Callable[[str, list[dict[str, Any]]], tuple[list[dict[str, Any]], str | None]]:
        """Per prefetch key: observations the newest N per group (no card), others active-first (card)."""
        limit = self.limits.max_resources_per_key
        vocab = pack.vocabulary

        def groups_of(resource: dict[str, Any]) -> set[str]:
            concept = resource.get("code")
            return concept_groups(concept, vocab, "observation") if isinstance(concept, dict) else set()

        def cap(key: str, resources: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
            observations = bool(resources) and all(r.get("resourceType") == "Observation" for r in resources)
            kept, dropped = cap_resources(resources, limit, groups_of if observations else None)
            if not dropped:
                return kept, None
            count_refusal("observations-trimmed" if observations else "prefetch-key-trimmed")
            if observations:
                return kept, None  # an older result never changes a newest-value fact
            return kept, f"more than {limit} entries: the active ones and then the newest were read"

        return cap

    def _evaluate(
        self,
        engine: Engine,
        pack: CompiledPack,
        drafts: DraftOrders,
        relevant: list[dict[str, Any]],
        pool: list[dict[str, Any]],
        prefetched: Prefetched,
        as_of: datetime,
        clock: _Clock,
        hook: str = "order-sign",
    ) -> tuple[_Issued, list[tuple[CompiledPack, _Issued]]]:
        """Facts, evaluation and cards of every relevant draft (runs in a worker thread).

        Stops with a 503 at the hook deadline rather than answer from a partial evaluation.
        """
        deadline = time.monotonic() + self.limits.deadline_seconds
        issued: _Issued = []
        shown: set[str] = set()
        named: dict[str, tuple[list[tuple[Alert, Card | None]], int, list[str]]] = {}  # key -> card's place
        extra = [unavailable_alert(pack, prefetched.unavailable)] if prefetched.unavailable else []
        all_facts = _map_facts(pool, as_of, pack, drafts.medication_requests, relevant)
        complete = prefetched.medication_lists_complete()  # cards say "none" for a class only then
        all_facts = [f.model_copy(update={"medication_lists_complete": complete}) for f in all_facts]
        clock.lap("facts")
        for draft, facts in zip(relevant, all_facts, strict=True):
            if time.monotonic() > deadline:
                count_refusal("evaluation-deadline")
                raise HookError(
                    503, None, "the checks did not finish in time: no advice computed, review manually"
                )
            flat: dict[str, Any] | None = None
            truths: dict[str, int] | None = None
            flats: dict[str, dict[str, Any]] = {}  # the applicability check's own derivation, if it made one
            if self._applies(engine, pack, draft, pool, facts, flats):
                # derived once: for the checks and the one-click offer
                flat = flats.get(pack.id) or engine.flat_facts(pack, facts)
                alerts, outcomes = engine.evaluate_pack_outcomes(pack, facts, flat)
                truths = engine.one_click_truths(pack, flat, outcomes)  # no second walk of the trees
                alerts = [a for a in alerts if runs_on(pack, a, hook)]  # the pack says which hook runs it
            elif _MEDICINE_KEYS & set(prefetched.unavailable):
                alerts = []  # a partner drug, and we cannot tell whether the pack's drug is taken
            else:
                clock.lap("evaluation")
                continue  # a partner drug for a patient not on the pack's drug: nothing to say
            alerts = sorted([*alerts, *extra], key=Alert.sort_key)
            extra = []
            clock.lap("evaluation")
            pairs = []
            offer = order_one_click(  # at most one suggestion per order, on the card that offers it
                pack,
                alerts,
                draft,
                facts.order,
                lambda facts=facts, flat=flat: flat if flat is not None else engine.flat_facts(pack, facts),
                facts,
                truths,
            )
            label = order_label(draft, pack.vocabulary)
            for alert in alerts:
                alert, suggestions = offer.for_card(alert)
                key = (
                    alert.tier_id
                    if alert.kind == "cannot-assess"
                    else f"{alert.tier_id}|{alert.summary}|{alert.detail}"
                )
                if not suggestions and key in shown:
                    # the same advice for a second order of the same request: one card naming both
                    where, index, labels = named[key]
                    if labels and label not in labels:
                        labels.append(label)
                        where[index] = (where[index][0], name_orders(where[index][1], labels))
                    continue
                shown.add(key)
                labels = [] if alert.rule_id in PATIENT_LEVEL_RULES else [label]
                card = alert_card(alert, pack, suggestions, self.link_hosts, labels)  # naming its order
                named[key] = (pairs, len(pairs), labels)
                pairs.append((alert, card))
            issued.append((draft, facts, pairs))
            clock.lap("cards")
        return issued, self._silent(engine, pool, drafts, as_of)

    def _relevant(
        self, pack: CompiledPack, drafts: DraftOrders, local: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Reviewed drafts of the pack's drug or a partner class (unresolvable ones kept: decide later)."""
        triggers = pack.spec.pack.triggers
        wanted = set(triggers.drug_classes) | set(triggers.partner_classes)
        out = []
        for draft in drafts.reviewed:
            classes = medication_classes(draft, local, pack.vocabulary)
            if classes is None or classes & wanted:
                out.append(draft)
        return out

    @staticmethod
    def _applies(
        engine: Engine,
        pack: CompiledPack,
        draft: dict[str, Any],
        pool: list[dict[str, Any]],
        facts: PatientFacts,
        flats: dict[str, dict[str, Any]] | None = None,
    ) -> bool:
        """An order of the pack's own drug always applies; a partner drug only as the engine decides.

        ``flats`` receives the flat facts the engine derived while deciding (pack id -> facts), so
        the caller does not derive them a second time.
        """
        classes = medication_classes(draft, [*pool, draft], pack.vocabulary) or set()
        own = bool(classes & set(pack.spec.pack.triggers.drug_classes))
        return own or pack in engine.applicable(facts, flats)

    async def _resolve_medications(
        self,
        request: HookRequest,
        drafts: list[dict[str, Any]],
        pool: list[dict[str, Any]],
        deadline: float,
        prefetched: Prefetched | None = None,
    ) -> None:
        """Read referenced Medications the request did not carry; 412 if a draft's product stays unknown.

        The patient's other medicines (``prefetched``) are resolved the same way; one that stays
        unknown makes its list unavailable, so the card says an interaction check was not done
        (red-team finding 2: an unresolved co-medication vanished without a card).
        """
        missing = self._missing_medications(drafts, pool)
        if missing:
            if self.fetcher is None or request.fhirServer is None:
                raise HookError(412, "context.draftOrders", "the ordered medication cannot be resolved")
            token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
            fetched = await self.fetcher.get_many(
                request.fhirServer, missing, token, deadline - time.monotonic()
            )
            for resources in fetched.values():
                if not resources:
                    raise HookError(412, "context.draftOrders", "the ordered medication cannot be resolved")
                pool.extend(resources)
        if prefetched is not None:
            unknown = await resolve_references(self.fetcher, request, prefetched.resources, pool, deadline)
            mark_unidentified(prefetched, unknown)

    @staticmethod
    def _missing_medications(drafts: list[dict[str, Any]], pool: list[dict[str, Any]]) -> dict[str, str]:
        """Key -> ``Medication/<id>`` to read for drafts whose product is not in the record; 412 when a
        draft's product is unknown and names no readable Medication."""
        missing: dict[str, str] = {}
        for i, draft in enumerate(drafts):
            if medication_concept(draft, pool) is None:
                ref = readable_reference(draft)  # a FHIR id: nothing else goes into a call-back URL
                if ref is not None:
                    missing[f"medication{i}"] = ref
                else:
                    raise HookError(412, "context.draftOrders", "the ordered medication cannot be resolved")
        return missing

    def _silent(
        self, engine: Engine, pool: list[dict[str, Any]], drafts: DraftOrders, as_of: datetime
    ) -> list[tuple[CompiledPack, _Issued]]:
        """Silent mode: packs that may run but not be shown (draft) are evaluated and stored, no cards."""
        out: list[tuple[CompiledPack, _Issued]] = []
        if isinstance(self.sink, NullSink):
            return out
        for quiet in engine.packs:
            if quiet.spec.pack.status in SHOWN_STATUSES or quiet.spec.pack.status not in engine.statuses:
                continue
            triggers = quiet.spec.pack.triggers
            wanted = set(triggers.drug_classes) | set(triggers.partner_classes)
            issued: _Issued = []
            reviewed = [
                draft
                for draft in drafts.reviewed
                if (medication_classes(draft, [*pool, draft], quiet.vocabulary) or set()) & wanted
            ]
            try:  # a silent pack must never cost the clinician the shown answer
                all_facts = _map_facts(pool, as_of, quiet, drafts.medication_requests, reviewed)
            except HookError as exc:
                log.warning("silent pack %s not evaluated: %s", quiet.id, exc.message)
                continue
            for draft, facts in zip(reviewed, all_facts, strict=True):
                if quiet in engine.applicable(facts):
                    issued.append((draft, facts, [(a, None) for a in engine.evaluate_pack(quiet, facts)]))
            if issued:
                out.append((quiet, issued))
        return out

    async def _record(
        self,
        ref: ServiceRef,
        request: HookRequest,
        pack: CompiledPack,
        as_of: datetime,
        issued: _Issued,
        shown: bool = True,
        issuer: str | None = None,
        who: PatientDemographics | None = None,
        hidden: dict[str, str] | None = None,
    ) -> None:
        for _draft, _facts, pairs in issued:  # counted whether or not anything is stored
            count_cards(pack.id, [(a, not (c is not None and c.uuid in (hidden or {}))) for a, c in pairs],
                        silent=not shown)
        if isinstance(self.sink, NullSink):
            return  # nothing to keep: skip the thread hop
        info = pack.spec.pack
        hidden = hidden or {}
        for draft, _facts, pairs in issued:
            record = _new_record({
                "source": "hook",
                "hook_instance": request.hookInstance,
                "hook": request.hook,
                "service_id": ref.id,
                "patient_ref": f"Patient/{request.context.patientId}",
                "encounter_ref": f"Encounter/{request.context.encounterId}"
                if request.context.encounterId
                else None,
                "user_ref": request.context.userId or "unknown",
                "order_key": order_key(request, draft, issuer),
                "order": draft,
                "as_of": as_of,
                "pack_id": info.id,
                "pack_version": info.version,
                "pack_hash": pack.content_hash,
                "alerts": [
                    {"alert": a, "card_uuid": c.uuid if c else None,
                     "shown": shown and not (c is not None and c.uuid in hidden),
                     "card_suggestions": len(c.suggestions or []) if c else None}
                    for a, c in pairs
                ],
                "demographics": who,
            })
            try:
                if getattr(self.sink, "nonblocking", False):  # a journal append: no thread hop, no queue
                    self.sink.record_evaluation(record)
                else:
                    await anyio.to_thread.run_sync(
                        self.sink.record_evaluation, record, limiter=self.store_limiter
                    )
            except Exception as exc:  # the sink must spool, but a hook never fails for the audit trail
                count_not_stored("sink-error")
                log.error(
                    "evaluation not recorded: hookInstance=%s error=%s",
                    request.hookInstance,
                    type(exc).__name__,
                )
