"""Medicines and the order under review, from MedicationRequests, statements and administrations.

Part of the FHIR → facts mapping (:mod:`cds_engine.sources.fhir`): which draft is the order, what
its dose, route, indication and action are, which other medicines are active, and the episodes
of the pack's drug that :mod:`cds_engine.sources.history` turns into a therapy history. The
order action: *discontinue*/*hold* for a draft with status stopped or cancelled / on-hold;
*modify* with a ``priorPrescription``; *modify* or *continue* when an active order of the same
drug and route exists (continue only when the daily dose is unchanged); otherwise *new*.
Sequenced ``dosageInstruction`` phases with decreasing daily doses form a taper plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any

from cds_engine.facts.model import Coding, Medication, Order, TaperPlan
from cds_engine.facts.normalize import MASS_UNITS_TO_MG, normalize_route
from cds_engine.sources.dosage import Dosage, DosePhase, read_dosage
from cds_engine.sources.fhir_read import (
    ResourceIndex,
    as_list,
    best_coding,
    codings,
    concept_groups,
    concept_text,
    parse_date,
    parse_datetime,
    quantity,
    status_code,
)
from cds_engine.sources.history import ACTIVE_STATUSES, Episode
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
        request_keys = {f"MedicationRequest/{r.get('id')}" for r in self.by_type.get("MedicationRequest", [])}
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
        for draft in self.drafts:
            if draft is focus or status_code(draft.get("status")) in (
                "entered-in-error",
                "cancelled",
                "stopped",
            ):
                continue
            med, _ = self._medicine(
                draft, "active", _setting(draft, default="inpatient" if inpatient else "outpatient")
            )
            if med is not None:
                meds.append(med)
        return meds, episodes

    def _medicine(
        self, resource: dict[str, Any], status: str, setting: str
    ) -> tuple[Medication | None, Episode | None]:
        concept, medication = self._product(resource)
        if concept is None:
            return None, None
        coding = best_coding(concept, self.vocab, "drug_class")
        if coding is None:
            return None, None
        classes = concept_groups(concept, self.vocab, "drug_class")
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
        dosage = read_dosage(draft.get("dosageInstruction"))
        product, concentration = self._strength(coding, medication)
        daily, _single = self._mg(
            dosage, dosage.unit, product, concentration, dosage.prn_max_doses_per_day if dosage.prn else None
        )
        route = normalize_route(dosage.route) or (product.route if product else None)
        action, replaces = self._action(draft, episodes, daily, route)
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
            taper=self._taper(dosage, product, concentration),
            replaces=replaces,
            date=parse_datetime(draft.get("authoredOn")),
        )

    def _action(
        self, draft: dict[str, Any], episodes: list[Episode], daily: float | None, route: str | None
    ) -> tuple[str, str | None]:
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
        match = same or (active[-1] if active else None)
        replaces = prior_id or (match.id if match else None)
        if status in ("stopped", "cancelled"):
            return "discontinue", replaces or draft_id
        if status == "on-hold":
            return "hold", replaces or draft_id
        if prior_id is not None:
            return "modify", prior_id
        if match is not None:
            unchanged = (
                daily is not None and match.daily_mg is not None and abs(daily - match.daily_mg) < 1e-9
            )
            return ("continue" if unchanged else "modify"), match.id
        return "new", None

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
    ) -> TaperPlan | None:
        if len(dosage.phases) < 2:
            return None
        steps = [self._mg(p, p.unit, product, concentration)[0] for p in dosage.phases]
        if None in steps:
            return None
        known = [s for s in steps if s is not None]
        if not all(b <= a for a, b in pairwise(known)) or known[-1] >= known[0]:
            return None  # rising or flat phases: a titration plan, not a taper
        days = [p.days for p in dosage.phases]
        ends = [p.end for p in dosage.phases if p.end]
        return TaperPlan(
            duration_days=sum(d or 0.0 for d in days) if None not in days else None,
            steps=known,
            end_date=max(ends) if ends else None,
        )


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


def _reference_id(reference: Any) -> str | None:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str) or not ref:
        return None
    return ref.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].lstrip("#")
