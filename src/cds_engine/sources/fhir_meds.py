"""Medicines and the order under review, from MedicationRequests, statements and administrations.

Part of the FHIR → facts mapping (:mod:`cds_engine.sources.fhir`): which draft is the order, what
its dose, route, indication and action are, which other medicines are active, and the episodes
of the pack's drug that :mod:`cds_engine.sources.history` turns into a therapy history. The
order action: *discontinue*/*hold* for a draft with status stopped or cancelled / on-hold;
*modify* with a ``priorPrescription``; *modify* or *continue* when an active order of the same
drug and route exists (continue only when the daily dose is unchanged); otherwise *new*.
Sequenced ``dosageInstruction`` phases with decreasing daily doses form a taper plan.

The *other* drafts of the request are co-medicines with status ``draft``: they will be taken if
signed (interaction counts, duplicates, combined dose) but have not been taken, so derive() never
reads them as exposure (new start) nor as the order a modify/continue replaces. An active order
that another (not stopping) draft of the request replaces (its ``priorPrescription``, or the same
id re-signed) is left out beside the reviewed draft: that draft stands in for it (two drafts that each
modify their own home order sum the two new doses, not a new dose and the old one it replaces).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from cds_engine.facts.model import Coding, Medication, Order, TaperPlan
from cds_engine.facts.normalize import MASS_UNITS_TO_MG, normalize_route
from cds_engine.sources.dosage import Dosage, DosePhase, read_dosage
from cds_engine.sources.dose_counts import counted_dosage
from cds_engine.sources.fhir_read import (
    ResourceIndex,
    as_list,
    best_coding,
    coding_and_groups,
    codings,
    concept_groups,
    concept_text,
    parse_date,
    parse_datetime,
    quantity,
    status_code,
)
from cds_engine.sources.history import ACTIVE_STATUSES, Episode
from cds_engine.sources.taper import read_taper
from cds_engine.vocabulary import Product, Vocabulary

__all__ = ["MedicineReader"]

_REQUEST_STATUS = frozenset(
    {"active", "on-hold", "stopped", "completed", "cancelled", "draft", "entered-in-error"}
)
_STATEMENT_STATUS = {
    "active": "active",
    "completed": "completed",
    "stopped": "stopped",
    "on-hold": "on-hold",
    "entered-in-error": "entered-in-error",
    "intended": "draft",
}
_COUNTED_UNITS = frozenset({"tablet", "capsule", "packet"})
_NOT_CO_MEDICINE = frozenset({"entered-in-error", "cancelled", "stopped"})  # drafts that are not taken


class MedicineReader:
    """The medicines of one patient's resources, seen from one pack's drug class."""

    def __init__(
        self,
        index: ResourceIndex,
        by_type: Mapping[str, list[dict[str, Any]]],
        drafts: list[dict[str, Any]],
        vocab: Vocabulary,
        drug_class: str,
        as_of: datetime,
    ) -> None:
        self.index = index
        self.by_type = by_type
        self.drafts = drafts
        self.vocab = vocab
        self.drug_class = drug_class
        self.as_of = as_of
        self.today = as_of.date()
        # one reading per (resource, status, setting): the facts of many drafts share their co-medicines
        self._read: dict[tuple[int, str, str], tuple[Medication | None, Episode | None]] = {}
        self._drafts_read: dict[bool, tuple[dict[int, int], list[Medication]]] = {}
        self._stopping: list[tuple[dict[str, Any], set[str]]] | None = None  # drafts that stop orders
        self._stopped_all: set[str] = set()
        self._own: dict[str, Any] | bool | None = False  # the pack's drug's first draft (False: not looked)
        self._claims: dict[str, int] | None = None  # order id -> how many drafts replace or stop it

    def _product(self, resource: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(medication concept, Medication resource) of a request/statement/administration."""
        concept = resource.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return concept, None
        reference = resource.get("medicationReference")
        medication = self.index.resolve(reference, container=resource)
        if medication is not None and medication.get("resourceType") == "Medication":
            return medication.get("code") if isinstance(medication.get("code"), dict) else None, medication
        if isinstance(reference, dict) and isinstance(reference.get("display"), str):
            return {"text": reference["display"]}, None
        return None, None

    def classes_of(self, resource: dict[str, Any]) -> set[str]:
        concept, _ = self._product(resource)
        return concept_groups(concept, self.vocab, "drug_class") if concept else set()

    def focus(self) -> dict[str, Any] | None:
        for draft in self.drafts:
            if self.drug_class in self.classes_of(draft):
                return draft
        return self.drafts[0] if self.drafts else None

    def focus_for(self, draft: dict[str, Any]) -> dict[str, Any]:
        """The order a reviewed draft is judged as: itself, or for a partner drug the pack's drug draft."""
        if self.drug_class in self.classes_of(draft):
            return draft
        if self._own is False:
            self._own = next((d for d in self.drafts if self.drug_class in self.classes_of(d)), None)
        return self._own if isinstance(self._own, dict) else draft

    def _strength(
        self, coding: Coding | None, medication: dict[str, Any] | None
    ) -> tuple[Product | None, float | None]:
        product = self.vocab.product(coding)
        concentration = _concentration(medication) or (product.concentration_mg_per_ml if product else None)
        return product, concentration

    def _mg(
        self,
        dosage: Dosage | DosePhase,
        unit: str | None,
        product: Product | None,
        concentration: float | None,
        prn_max: float | None = None,
    ) -> tuple[float | None, float | None]:
        """(daily mg, largest single mg) of a dose, or None where units cannot be reconciled."""
        factor = _mg_factor(unit, product, concentration)
        if factor is None:
            return None, None
        if dosage.schedule:
            return round(sum(dosage.schedule) * factor, 6), round(max(dosage.schedule) * factor, 6)
        if dosage.amount is None:
            return None, None
        per_day = prn_max if prn_max is not None else dosage.doses_per_day
        single = round(dosage.amount * factor, 6)
        return (round(dosage.amount * per_day * factor, 6) if per_day is not None else None), single

    def _request_dates(self, resource: dict[str, Any], dosage: Dosage) -> tuple[date | None, date | None]:
        """Start and (known) end of a request or statement: timing bounds, validity period, authoredOn."""
        starts, ends = [], []
        for raw in as_list(resource.get("dosageInstruction")) + as_list(resource.get("dosage")):
            repeat = ((raw.get("timing") or {}).get("repeat") or {}) if isinstance(raw, dict) else {}
            period = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
            if isinstance(period, dict):
                starts.append(parse_date(period.get("start")))
                ends.append(parse_date(period.get("end")))
        dispense = (
            resource.get("dispenseRequest") if isinstance(resource.get("dispenseRequest"), dict) else {}
        )
        validity = dispense.get("validityPeriod") if isinstance(dispense.get("validityPeriod"), dict) else {}
        effective = (
            resource.get("effectivePeriod") if isinstance(resource.get("effectivePeriod"), dict) else {}
        )
        start = (
            min((d for d in starts if d), default=None)
            or parse_date(validity.get("start"))
            or parse_date(resource.get("authoredOn"))
            or parse_date(effective.get("start"))
            or parse_date(resource.get("effectiveDateTime"))
        )
        end = (
            max((d for d in ends if d), default=None)
            or parse_date(validity.get("end"))
            or parse_date(effective.get("end"))
        )
        if (
            end is None
            and dosage.phases
            and start is not None
            and None not in [p.days for p in dosage.phases]
        ):
            end = start + timedelta(days=sum(p.days or 0.0 for p in dosage.phases))
        return start, end

    def medications(
        self, focus: dict[str, Any] | None, inpatient: bool
    ) -> tuple[list[Medication], list[Episode]]:
        meds: list[Medication] = []
        episodes: list[Episode] = []
        request_keys: set[str] | None = None  # made for the first statement (most records have none)
        for resource in self.by_type.get("MedicationRequest", []):
            status = status_code(resource.get("status"))
            if status not in _REQUEST_STATUS or status == "draft":
                continue
            med, episode = self._medicine(resource, status, _setting(resource, default="outpatient"))
            if med is None:
                continue
            if med.start is not None and med.start > self.today:
                continue
            meds.append(med)
            if episode is not None:
                episodes.append(episode)
        for resource in self.by_type.get("MedicationStatement", []):
            status = _STATEMENT_STATUS.get(status_code(resource.get("status")) or "")
            if status is None:
                continue
            if request_keys is None:
                request_keys = {
                    f"MedicationRequest/{r.get('id')}" for r in self.by_type.get("MedicationRequest", [])
                }
            based_on = [
                r.get("reference")
                for r in as_list(resource.get("basedOn")) + as_list(resource.get("derivedFrom"))
                if isinstance(r, dict)
            ]
            if any(
                isinstance(ref, str)
                and ref.split("/", 1)[0] == "MedicationRequest"
                and "/".join(ref.split("/")[-2:]) in request_keys
                for ref in based_on
            ):
                continue  # restates a request already counted
            med, episode = self._medicine(resource, status, "home")
            if med is None or (med.start is not None and med.start > self.today):
                continue
            meds.append(med)
            if episode is not None:
                episodes.append(episode)
        claims = self._draft_claims(meds)
        if claims:  # only a request whose drafts name orders of the record pays for this
            own = _claims_of(focus) if focus is not None else set()
            meds = [
                m
                for m in meds
                if m.id is None or claims.get(m.id, 0) - (1 if m.id in own else 0) <= 0
            ]
        positions, co_medicines = self._draft_medicines(inpatient)
        at = positions.get(id(focus)) if focus is not None else None
        meds.extend(co_medicines if at is None else co_medicines[:at] + co_medicines[at + 1 :])
        return meds, episodes

    def _draft_claims(self, meds: list[Medication]) -> dict[str, int]:
        """Ids of the record's orders the drafts replace, with how many drafts do (read once).

        Only drafts that become co-medicines count (not a stopping or cancelled one): a replaced
        order is left out because the draft that replaces it is counted in its place. Kept to the
        ids ``meds`` has (the record's, the same for every reviewed draft): usually none, and then
        no reviewed draft pays for a filter.
        """
        if self._claims is None:
            ids = {m.id for m in meds if m.id is not None}
            claims: dict[str, int] = {}
            for draft in self.drafts:
                if status_code(draft.get("status")) in _NOT_CO_MEDICINE:
                    continue
                for ref in _claims_of(draft) & ids:
                    claims[ref] = claims.get(ref, 0) + 1
            self._claims = claims
        return self._claims

    def _draft_medicines(self, inpatient: bool) -> tuple[dict[int, int], list[Medication]]:
        """The drafts as co-medicines (status draft), and where each draft is in that list.

        Each draft is read once, however many are reviewed: the facts of n drafts cost O(n) reads.
        """
        cached = self._drafts_read.get(inpatient)
        if cached is not None:
            return cached
        positions: dict[int, int] = {}
        out: list[Medication] = []
        for draft in self.drafts:
            if status_code(draft.get("status")) in _NOT_CO_MEDICINE:
                continue
            med, _ = self._medicine(
                draft, "draft", _setting(draft, default="inpatient" if inpatient else "outpatient")
            )
            if med is not None:
                positions[id(draft)] = len(out)
                out.append(med)
        self._drafts_read[inpatient] = (positions, out)
        return positions, out

    def _medicine(
        self, resource: dict[str, Any], status: str, setting: str
    ) -> tuple[Medication | None, Episode | None]:
        key = (id(resource), status, setting)
        if key not in self._read:
            self._read[key] = self._read_medicine(resource, status, setting)
        return self._read[key]

    def _read_medicine(
        self, resource: dict[str, Any], status: str, setting: str
    ) -> tuple[Medication | None, Episode | None]:
        concept, medication = self._product(resource)
        if concept is None:
            return None, None
        coding, classes = coding_and_groups(concept, self.vocab, "drug_class")
        if coding is None:
            return None, None
        dosage = read_dosage(
            resource.get("dosageInstruction") if "dosageInstruction" in resource else resource.get("dosage")
        )
        product, concentration = self._strength(coding, medication)
        daily, single = self._mg(
            dosage, dosage.unit, product, concentration, dosage.prn_max_doses_per_day if dosage.prn else None
        )
        start, end = self._request_dates(resource, dosage)
        med = Medication(
            id=resource.get("id") if isinstance(resource.get("id"), str) else None,
            product=coding,
            classes=sorted(classes),
            status=status,  # type: ignore[arg-type]
            route=dosage.route,
            form=_form(medication),
            concentration_mg_per_ml=concentration,
            daily_dose_mg=daily,
            setting=setting,  # type: ignore[arg-type]
            start=start,
            prn=dosage.prn,
        )
        episode = None
        if self.drug_class in classes:
            prior = self.index.resolve(resource.get("priorPrescription"))
            episode = Episode(
                id=med.id,
                status=status,
                start=start,
                end=end,
                daily_mg=daily,
                single_mg=single,
                route=normalize_route(dosage.route) or (product.route if product else None),
                prior_id=prior.get("id") if prior else _reference_id(resource.get("priorPrescription")),
            )
        return med, episode

    def administrations(self) -> list[datetime]:
        out = []
        for resource in self.by_type.get("MedicationAdministration", []):
            if status_code(resource.get("status")) not in ("completed", "in-progress"):
                continue
            if self.drug_class not in self.classes_of(resource):
                continue
            period = (
                resource.get("effectivePeriod") if isinstance(resource.get("effectivePeriod"), dict) else {}
            )
            when = parse_datetime(
                resource.get("effectiveDateTime") or period.get("end") or period.get("start")
            )
            if when is not None:
                out.append(when)
        return out

    def order(self, draft: dict[str, Any], episodes: list[Episode], current: Episode | None) -> Order | None:
        concept, medication = self._product(draft)
        coding = best_coding(concept, self.vocab, "drug_class") if concept else None
        if coding is None:
            return None
        product, concentration = self._strength(coding, medication)
        # a count of tablets/capsules: mg only through one strength source (else cannot-assess)
        dosage = counted_dosage(read_dosage(draft.get("dosageInstruction")), product, medication)
        daily, _single = self._mg(
            dosage, dosage.unit, product, concentration, dosage.prn_max_doses_per_day if dosage.prn else None
        )
        route = normalize_route(dosage.route) or (product.route if product else None)
        action, replaces, presumed = self._action(draft, episodes, daily, route)
        taper, taper_stops = self._taper(dosage, product, concentration)
        if taper_stops and action in ("new", "modify", "continue"):
            action = "discontinue"  # every phase bounded: the drug stops after the last one
        status_reason = draft.get("statusReason")
        reason = next(
            (str(c["code"]) for c in codings(status_reason) if c.get("code")), None
        ) or concept_text(status_reason)
        return Order(
            id=draft.get("id") if isinstance(draft.get("id"), str) else None,
            product=coding,
            form=_form(medication),
            route=dosage.route,
            dose_amount=dosage.amount if not dosage.schedule else None,
            dose_unit=dosage.unit,
            doses_per_day=dosage.doses_per_day,
            schedule=dosage.schedule,
            prn=dosage.prn,
            prn_max_doses_per_day=dosage.prn_max_doses_per_day,
            concentration_mg_per_ml=_concentration(medication),
            indication=self._indication(draft),
            action=action,  # type: ignore[arg-type]
            reason=reason.strip().lower().replace(" ", "-") if reason else None,
            taper=taper,
            replaces=replaces,
            replaces_presumed=presumed,
            date=parse_datetime(draft.get("authoredOn")),
        )

    def _action(
        self, draft: dict[str, Any], episodes: list[Episode], daily: float | None, route: str | None
    ) -> tuple[str, str | None, bool]:
        """(action, replaced order id, whether the replacement is only presumed)."""
        status = status_code(draft.get("status"))
        draft_id = draft.get("id") if isinstance(draft.get("id"), str) else None
        prior_id = _reference_id(draft.get("priorPrescription"))
        same_drug = self.drug_class in self.classes_of(draft)
        active = [
            e
            for e in episodes
            if e.status in ACTIVE_STATUSES
            and same_drug
            and (route is None or e.route is None or e.route == route)
        ]
        same = next((e for e in active if draft_id is not None and e.id == draft_id), None)
        stopped = self._stopped_by_request(draft)
        stopped_match = next((e for e in reversed(active) if e.id in stopped), None)
        match = same or stopped_match or (active[-1] if active else None)
        replaces = prior_id or (match.id if match else None)
        # presumed: only the same drug and route say so (not priorPrescription, the same id re-signed,
        # or an order the same request stops); derive() keeps it only for the same form, both scheduled
        presumed = prior_id is None and same is None and stopped_match is None and match is not None
        if status in ("stopped", "cancelled"):
            return "discontinue", replaces or draft_id, False
        if status == "on-hold":
            return "hold", replaces or draft_id, False
        if prior_id is not None:
            return "modify", prior_id, False
        if match is not None:
            unchanged = (
                daily is not None and match.daily_mg is not None and abs(daily - match.daily_mg) < 1e-9
            )
            return ("continue" if unchanged else "modify"), match.id, presumed
        return "new", None, False

    def _stopped_by_request(self, draft: dict[str, Any]) -> set[str]:
        """Ids of the orders the other drafts of this request stop or cancel.

        The stopping drafts are found once per request (many reviewed drafts stay linear).
        """
        if self._stopping is None:
            self._stopping = [
                (other, {r for r in (_reference_id(other.get("priorPrescription")), other.get("id"))
                         if isinstance(r, str)})
                for other in self.drafts
                if status_code(other.get("status")) in ("stopped", "cancelled")
            ]
            self._stopped_all = set().union(*(refs for _, refs in self._stopping))
        if not any(other is draft for other, _ in self._stopping):
            return self._stopped_all
        out: set[str] = set()
        for other, refs in self._stopping:
            if other is not draft:
                out |= refs
        return out

    def _indication(self, draft: dict[str, Any]) -> Coding | None:
        concepts = [c for c in as_list(draft.get("reasonCode")) if isinstance(c, dict)]
        for reference in as_list(draft.get("reasonReference")):
            target = self.index.resolve(reference, container=draft)
            if target is not None and isinstance(target.get("code"), dict):
                concepts.append(target["code"])
            elif isinstance(reference, dict) and isinstance(reference.get("display"), str):
                concepts.append({"text": reference["display"]})
        first: Coding | None = None
        for concept in concepts:
            coding = best_coding(concept, self.vocab, "indication")
            if coding is None:
                continue
            if concept_groups(concept, self.vocab, "indication"):
                return coding
            first = first or coding
        return first

    def _taper(
        self, dosage: Dosage, product: Product | None, concentration: float | None
    ) -> tuple[TaperPlan | None, bool]:
        """(taper plan, whether the order stops the drug after it): sources/taper.py decides."""
        phases = dosage.phases
        reading = read_taper(
            [self._mg(p, p.unit, product, concentration)[0] for p in phases],
            [p.days for p in phases],
            [p.days is not None or p.end is not None for p in phases],
        )
        if reading is None:
            return None, False
        ends = [p.end for p in phases if p.end]
        stops = reading.kind == "taper-to-stop"
        plan = TaperPlan(
            duration_days=reading.days,
            steps=reading.steps,
            end_date=max(ends) if ends and stops else None,
        )
        return plan, stops


def _concentration(medication: dict[str, Any] | None) -> float | None:
    """mg/mL from a Medication's ingredient strength, when it is stated that way."""
    if not medication:
        return None
    for ingredient in as_list(medication.get("ingredient")):
        strength = ingredient.get("strength") if isinstance(ingredient, dict) else None
        if not isinstance(strength, dict):
            continue
        top, top_unit, _ = quantity(strength.get("numerator"))
        bottom, bottom_unit, _ = quantity(strength.get("denominator"))
        factor = MASS_UNITS_TO_MG.get((top_unit or "").strip().lower().replace("ug", "mcg"))
        if top is None or factor is None or (bottom_unit or "").strip().lower() != "ml" or not bottom:
            continue
        return round(top * factor / bottom, 6)
    return None


def _form(medication: dict[str, Any] | None) -> str | None:
    return concept_text(medication.get("form")) if medication else None


def _mg_factor(unit: str | None, product: Product | None, concentration: float | None) -> float | None:
    if unit in MASS_UNITS_TO_MG:
        return MASS_UNITS_TO_MG[unit]
    if unit == "mL":
        return concentration
    if unit in _COUNTED_UNITS and product is not None and product.strength_mg:
        return product.strength_mg
    return None


def _setting(resource: dict[str, Any], *, default: str) -> str:
    codes = {
        str(c.get("code", "")).lower() for cat in as_list(resource.get("category")) for c in codings(cat)
    }
    if "inpatient" in codes:
        return "inpatient"
    if codes & {"community", "patientspecified"}:
        return "home"
    if codes & {"outpatient", "discharge"}:
        return "outpatient"
    return default


def _period_start(period: Any) -> date | None:
    return parse_date(period.get("start")) if isinstance(period, dict) else None


def _claims_of(draft: dict[str, Any]) -> set[str]:
    """The order ids a draft replaces: its priorPrescription, and its own id (re-signed)."""
    refs = (_reference_id(draft.get("priorPrescription")), draft.get("id"))
    return {r for r in refs if isinstance(r, str) and r}


def _reference_id(reference: Any) -> str | None:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str) or not ref:
        return None
    return ref.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].lstrip("#")
