"""FHIR R4 resources → :class:`PatientFacts`: one mapping for hooks, Synthea bundles and Bulk NDJSON.

What counts (the rules of the fact model, applied here):

* **Conditions and allergies** are all mapped with their clinical and verification status; the
  derivation then counts only active, non-refuted ones. A condition dated after ``as_of`` is
  ignored; one that has abated without a status reads as resolved.
* **Observations** count when ``final``, ``amended`` or ``corrected`` and dated on or before
  ``as_of``. The eGFR is the latest result whose LOINC code is in the vocabulary's
  ``observation`` group ``egfr`` (codes, never displays); a ``valueQuantity.comparator`` (or a
  ``valueString`` such as ">60") stays a bound. The readable eGFR results also go to
  ``renal.egfr_results`` with their specimen and race stratum (groups ``egfr_among_blacks`` /
  ``egfr_among_non_blacks``) so that :mod:`cds_engine.facts.renal` resolves race-stratified
  pairs; the CrCl is the latest result of group ``crcl``. A coded AKI stays a condition with its
  onset, recording date and encounter-diagnosis flag (never a life-long ``aki`` flag). Every
  other observation group only records the date it was last done (monitoring). An hCG result
  never makes anyone pregnant: pregnancy and lactation come from conditions of those groups only.
* **Dialysis** is a dependence condition (derived from the ``dialysis`` condition group) or the
  date of the latest procedure of the ``dialysis_procedure`` group — the pack's look-back is
  applied by :mod:`cds_engine.facts.derive`; ESRD alone is never dialysis.
* **Medicines**: MedicationRequests of every status, MedicationStatements (home medicines, unless
  they merely restate a request), the other draft orders (status ``draft``: co-medicines that
  are summed and counted but never exposure nor a replaced order, see
  :mod:`cds_engine.sources.fhir_meds`). The pack drug's history comes from
  :mod:`cds_engine.sources.history`.
* **The order** is the first draft MedicationRequest of the pack's drug (else the first draft);
  its dose, indication, action and taper are read by :mod:`cds_engine.sources.fhir_meds`.

No code, drug or threshold is written here: groups come from the vocabulary by name.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from cds_engine.facts.lab_units import egfr_unit_ok
from cds_engine.facts.model import (
    Allergy,
    Condition,
    Encounter,
    LabResult,
    PatientFacts,
    Renal,
    Reproductive,
    UnreadableResult,
)
from cds_engine.sources.fhir_meds import MedicineReader
from cds_engine.sources.fhir_read import (
    ResourceIndex,
    SharedRecord,
    as_list,
    best_coding,
    coded_groups,
    coding_and_groups,
    codings,
    concept_groups,
    parse_date,
    parse_datetime,
    quantity,
    resolve_in,
    status_code,
)
from cds_engine.sources.gestation import gestational_age_weeks, weeks_from_conditions
from cds_engine.sources.history import therapy_history
from cds_engine.vocabulary import Vocabulary

__all__ = [
    "FINAL_OBSERVATION_STATUSES",
    "GROUPS",
    "FhirGroups",
    "bundle_resources",
    "facts_for_drafts",
    "facts_from_resources",
    "medication_classes",
    "medication_concept",
]


@dataclass(frozen=True, slots=True)
class FhirGroups:
    """Vocabulary group names with a fixed meaning in the fact model (names, not codes)."""

    egfr: str = "egfr"
    crcl: str = "crcl"
    pregnancy: str = "pregnancy"
    lactation: str = "lactation"
    dialysis: str = "dialysis"
    dialysis_procedure: str = "dialysis_procedure"
    aki: str = "aki"
    egfr_black: str = "egfr_among_blacks"
    egfr_non_black: str = "egfr_among_non_blacks"


GROUPS = FhirGroups()

# the statuses of an Observation the mapping counts (sources/ndjson.py skips the others undecoded)
FINAL_OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected"})
_CLINICAL = frozenset({"active", "recurrence", "relapse", "inactive", "remission", "resolved"})
_CONDITION_VERIFICATION = frozenset(
    {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
)
_ALLERGY_VERIFICATION = frozenset({"confirmed", "unconfirmed", "presumed", "refuted", "entered-in-error"})
_INPATIENT_CLASSES = frozenset({"imp", "acute", "nonac", "inpatient", "inpatient encounter"})
_CURRENT_ENCOUNTER = frozenset({"in-progress", "arrived", "triaged", "onleave"})
_BOUND = re.compile(r"^\s*(<=|>=|<|>)?\s*(\d+(?:\.\d+)?)\s*$")


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a Bundle (nested Bundles flattened, search outcomes dropped).

    A lone resource comes back as a one-item list, so prefetch values of either shape read alike.
    """
    out: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        for entry in as_list(node.get("entry")):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            search = entry.get("search") if isinstance(entry.get("search"), dict) else {}
            if resource.get("resourceType") == "OperationOutcome" and search.get("mode") == "outcome":
                continue
            if resource.get("resourceType") == "Bundle":
                walk(resource)
            else:
                out.append(resource)

    if not isinstance(bundle, dict):
        return out
    if bundle.get("resourceType") == "Bundle":
        walk(bundle)
    elif isinstance(bundle.get("resourceType"), str):
        out.append(bundle)
    return out


def facts_from_resources(
    resources: list[dict[str, Any]],
    *,
    as_of: datetime,
    vocab: Vocabulary,
    drug_class: str,
    draft_orders: list[dict[str, Any]] | None = None,
) -> PatientFacts:
    """Map one patient's FHIR R4 resources (plus the draft orders under review) to facts at ``as_of``."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must carry a timezone")
    drafts = [
        d
        for d in (draft_orders or [])
        if isinstance(d, dict) and d.get("resourceType") == "MedicationRequest"
    ]
    return _Mapper(resources, drafts, as_of, vocab, drug_class).facts()


def facts_for_drafts(
    resources: list[dict[str, Any]],
    drafts: list[dict[str, Any]],
    reviewed: list[dict[str, Any]],
    *,
    as_of: datetime,
    vocab: Vocabulary,
    drug_class: str,
) -> list[PatientFacts]:
    """Facts for each of ``reviewed`` (every other draft a co-medicine), the record mapped once.

    Same facts as :func:`facts_from_resources` with ``[draft, *other drafts]`` per reviewed draft,
    but linear in the number of drafts: the record and every draft are read once and shared.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must carry a timezone")
    mapper = _Mapper(resources, [d for d in drafts if isinstance(d, dict)], as_of, vocab, drug_class)
    return [mapper.facts(mapper.meds.focus_for(draft)) for draft in reviewed]


def medication_concept(resource: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The medication CodeableConcept of a request: inline, from a resolved reference, or its display."""
    concept = resource.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    reference = resource.get("medicationReference")
    medication = resolve_in(resources, reference, container=resource)  # one look-up: no index built
    if medication is not None and isinstance(medication.get("code"), dict):
        return dict(medication["code"])
    if isinstance(reference, dict) and isinstance(reference.get("display"), str):
        return {"text": reference["display"]}
    return None


def medication_classes(
    resource: dict[str, Any], resources: list[dict[str, Any]], vocab: Vocabulary
) -> set[str] | None:
    """Drug classes of a request's medication; None when its medication cannot be resolved."""
    concept = medication_concept(resource, resources)
    return None if concept is None else concept_groups(concept, vocab, "drug_class")


class _Mapper:
    def __init__(
        self,
        resources: list[dict[str, Any]],
        drafts: list[dict[str, Any]],
        as_of: datetime,
        vocab: Vocabulary,
        drug_class: str,
    ) -> None:
        self.as_of = as_of
        self.today = as_of.date()
        self.vocab = vocab
        self.drug_class = drug_class
        self.drafts = drafts
        self.index = ResourceIndex.of_record(resources, drafts)  # a Bulk record's shared part indexed once
        self.by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        by_type = self.by_type
        # a Bulk record: only its own resources are walked; the shared ones come grouped once per
        # partition (the same lists, types and order as walking [*own, *shared])
        bulk = isinstance(resources, SharedRecord) and resources.intact()
        shared = resources.shared_by_type if bulk else None  # type: ignore[attr-defined]
        for resource in resources[: resources.own] if bulk else resources:  # type: ignore[attr-defined]
            rtype = resource.get("resourceType") if isinstance(resource, dict) else None
            if isinstance(rtype, str):
                by_type[rtype].append(resource)
        if shared is not None:
            for rtype, found in shared.items():
                by_type[rtype].extend(found)
        self.observations = self._observations()
        self.meds = MedicineReader(self.index, self.by_type, drafts, vocab, drug_class, as_of)
        self._record: tuple[Any, ...] | None = None  # what no draft changes, read once

    def _shared(self) -> tuple[Any, ...]:
        if self._record is None:
            conditions = self._conditions()
            self._record = (
                conditions,
                self._renal(conditions),
                self._reproductive(conditions),
                self._allergies(),
                self._monitoring(),
                self.meds.administrations(),
            )
        return self._record

    # ── top level ──────────────────────────────────────────────────────────────────────────
    def facts(self, focus: dict[str, Any] | None = None) -> PatientFacts:
        focus = focus if focus is not None else self.meds.focus()
        conditions, renal, reproductive, allergies, monitoring, administrations = self._shared()
        encounter = self._encounter(focus)
        medications, episodes = self.meds.medications(focus, encounter.inpatient)
        history, current = therapy_history(episodes, administrations, self.as_of)
        order = self.meds.order(focus, episodes, current) if focus is not None else None
        patient = self._patient(focus)
        birth = parse_date(patient.get("birthDate")) if patient else None
        if birth is not None and birth > self.today:
            birth = None
        facts = PatientFacts(
            as_of=self.as_of,
            patient_id=patient.get("id") if patient else None,
            birth_date=birth,
            sex=_sex(patient.get("gender")) if patient else None,
            deceased=_deceased(patient, self.as_of) if patient else False,
            renal=renal,
            reproductive=reproductive,
            allergies=allergies,
            conditions=conditions,
            order=order,
            history=history,
            monitoring=monitoring,
            encounter=encounter,
        )
        # each Medication was validated when it was made; re-checking the list per reviewed draft
        # would make many drafts quadratic (every draft is every other draft's co-medicine)
        facts.medications = medications
        return facts

    # ── patient ────────────────────────────────────────────────────────────────────────────
    def _patient(self, focus: dict[str, Any] | None) -> dict[str, Any] | None:
        patients = self.by_type.get("Patient", [])
        if focus is not None:
            subject = self.index.resolve(focus.get("subject"))
            if subject is not None and subject.get("resourceType") == "Patient":
                return subject
        return patients[0] if patients else None

    # ── conditions, allergies, observations, procedures ────────────────────────────────────
    def _conditions(self) -> list[Condition]:
        out: list[Condition] = []
        for resource in self.by_type.get("Condition", []):
            onset = parse_date(
                resource.get("onsetDateTime") or (resource.get("onsetPeriod") or {}).get("start")
            )
            if onset is not None and onset > self.today:
                continue
            concept = resource.get("code")
            coding, groups = coding_and_groups(concept, self.vocab, "condition_group")
            if coding is None:
                continue
            clinical = status_code(resource.get("clinicalStatus"))
            abated = parse_date(
                resource.get("abatementDateTime") or (resource.get("abatementPeriod") or {}).get("end")
            )
            if clinical is None and abated is not None and abated <= self.today:
                clinical = "resolved"
            verification = status_code(resource.get("verificationStatus"))
            out.append(
                Condition(
                    code=coding,
                    groups=sorted(groups),
                    clinical_status=clinical
                    if clinical in _CLINICAL
                    else ("active" if clinical is None else None),  # type: ignore[arg-type]
                    verification_status=verification if verification in _CONDITION_VERIFICATION else None,  # type: ignore[arg-type]
                    onset=onset,
                    recorded=parse_date(resource.get("recordedDate")),
                    encounter_diagnosis=self._encounter_diagnosis(resource),
                )
            )
        return out

    def _encounter_diagnosis(self, resource: dict[str, Any]) -> bool | None:
        """True for an encounter-diagnosis of an encounter that is current at ``as_of``."""
        if not any(  # (a set of every category code, then a look-up, before: the same answer)
            str(c.get("code")) == "encounter-diagnosis"
            for cat in as_list(resource.get("category"))
            for c in codings(cat)
        ):
            return None
        encounter = self.index.resolve(resource.get("encounter"))
        if encounter is None or encounter.get("resourceType") != "Encounter":
            return None
        status = status_code(encounter.get("status"))
        period = encounter.get("period") if isinstance(encounter.get("period"), dict) else {}
        start, end = parse_datetime(period.get("start")), parse_datetime(period.get("end"))
        if status in ("cancelled", "entered-in-error", "planned") or (start and start > self.as_of):
            return False
        return status in _CURRENT_ENCOUNTER if end is None else end >= self.as_of

    def _allergies(self) -> list[Allergy]:
        out: list[Allergy] = []
        for resource in self.by_type.get("AllergyIntolerance", []):
            concepts = [resource.get("code")] + [
                r.get("substance") for r in as_list(resource.get("reaction")) if isinstance(r, dict)
            ]
            concepts = [c for c in concepts if isinstance(c, dict)]
            if not concepts:
                continue
            coding = best_coding(concepts[0], self.vocab, "allergy_group")
            if coding is None:
                continue
            groups: set[str] = set()
            for concept in concepts:
                groups |= concept_groups(concept, self.vocab, "allergy_group")
            clinical = status_code(resource.get("clinicalStatus"))
            verification = status_code(resource.get("verificationStatus"))
            category = as_list(resource.get("category"))
            out.append(
                Allergy(
                    substance=coding,
                    groups=sorted(groups),
                    clinical_status=clinical
                    if clinical in ("active", "inactive", "resolved")
                    # type: ignore[arg-type]
                    else ("active" if clinical is None else None),
                    verification_status=verification if verification in _ALLERGY_VERIFICATION else None,  # type: ignore[arg-type]
                    category=category[0] if category and isinstance(category[0], str) else None,
                )
            )
        return out

    def _observations(self) -> list[tuple[set[str], dict[str, Any], datetime, bool]]:
        """Countable observations: groups, resource, effective time, matched by code; newest first."""
        out = []
        for resource in self.by_type.get("Observation", []):
            if status_code(resource.get("status")) not in FINAL_OBSERVATION_STATUSES:
                continue
            # the code before the date (most observations belong to no group: their dates need not be
            # read); a code that cannot be read fails only where the date would have let it count,
            # as when the date was read first
            failed: Exception | None = None
            try:
                groups, coded = self._observation_groups(resource)
            except Exception as exc:  # re-raised below, unchanged, if the date lets it count
                groups, coded, failed = set(), False, exc
            if failed is None and not groups:
                continue
            when = _effective(resource)
            if when is None or when > self.as_of:
                continue
            if failed is not None:
                raise failed
            if groups:
                out.append((groups, resource, when, coded))
        out.sort(key=lambda item: item[2], reverse=True)
        return out

    def _observation_groups(self, resource: dict[str, Any]) -> tuple[set[str], bool]:
        """An observation's groups, and whether they come from its codes (else from its text: free-text
        monitoring entries only; lab values need a code)."""
        return coded_groups(resource.get("code"), self.vocab, "observation")

    def _lab(self, group: str) -> LabResult | None:
        for groups, resource, when, coded in self.observations:
            if group not in groups or not coded:
                continue
            value, unit, comparator = _observation_value(resource)
            if value is None:
                continue
            code = next((str(c["code"]) for c in codings(resource.get("code")) if c.get("code")), None)
            return LabResult(value=value, comparator=comparator, unit=unit, date=when, method=code)  # type: ignore[arg-type]
        return None

    def _lab_results(self, group: str, limit: int = 20) -> list[LabResult]:
        """Readable coded results of a group, newest first, with specimen and race stratum."""
        out: list[LabResult] = []
        for groups, resource, when, coded in self.observations:
            if group not in groups or not coded:
                continue
            value, unit, comparator = _observation_value(resource)
            if value is None:
                continue
            code = next((str(c["code"]) for c in codings(resource.get("code")) if c.get("code")), None)
            specimen = resource.get("specimen") if isinstance(resource.get("specimen"), dict) else {}
            reference = specimen.get("reference")
            out.append(
                LabResult(
                    value=value,
                    comparator=comparator,  # type: ignore[arg-type]
                    unit=unit,
                    date=when,
                    method=code,
                    specimen=reference if isinstance(reference, str) else None,
                    race_stratum=_race_stratum(groups),
                )
            )
            if len(out) >= limit:
                break
        return out

    def _monitoring(self) -> dict[str, date]:
        out: dict[str, date] = {}
        for groups, _resource, when, _coded in self.observations:
            for group in groups:
                if group not in out:
                    out[group] = when.date()
        return out

    def _last_procedure(self, group: str) -> date | None:
        latest: date | None = None
        for resource in self.by_type.get("Procedure", []):
            if status_code(resource.get("status")) not in ("completed", "in-progress"):
                continue
            if group not in concept_groups(resource.get("code"), self.vocab, "condition_group"):
                continue
            period = (
                resource.get("performedPeriod") if isinstance(resource.get("performedPeriod"), dict) else {}
            )
            when = parse_date(resource.get("performedDateTime") or period.get("end") or period.get("start"))
            if when is not None and when <= self.today and (latest is None or when > latest):
                latest = when
        return latest

    def _unreadable_newest_egfr(self) -> UnreadableResult | None:
        """The newest eGFR when nothing taken at its time can be read (no value, or a non-renal unit)."""
        newest: datetime | None = None
        problem: str | None = None
        for groups, resource, when, coded in self.observations:
            if GROUPS.egfr not in groups or not coded:
                continue
            if newest is None:
                newest = when
            elif when < newest:
                break
            value, unit, _ = _observation_value(resource)
            if value is not None and egfr_unit_ok(unit):
                return None
            problem = problem or ("no-value" if value is None else "unit")
        if newest is None or problem is None:
            return None
        return UnreadableResult(date=newest, problem=problem)  # type: ignore[arg-type]

    def _renal(self, conditions: list[Condition]) -> Renal:
        unreadable = self._unreadable_newest_egfr()  # then no older eGFR is used in its place
        return Renal(
            egfr=None if unreadable else self._lab(GROUPS.egfr),
            egfr_results=[] if unreadable else self._lab_results(GROUPS.egfr),
            egfr_unreadable=unreadable,
            crcl=self._lab(GROUPS.crcl),
            dialysis_dependent=True if _has_active(conditions, GROUPS.dialysis) else None,
            last_dialysis_procedure=self._last_procedure(GROUPS.dialysis_procedure),
            # coded AKI stays a condition (its dates decide whether it is current); never a flag for life
        )

    def _reproductive(self, conditions: list[Condition]) -> Reproductive:
        # Never from an hCG result: a documented pregnancy condition, or a current gestational age
        # (a GA or estimated-delivery-date observation, sources/gestation.py) documents a pregnancy.
        weeks = gestational_age_weeks(self.observations, self.as_of)
        if weeks is None:  # a pregnancy coded "Z3A.37" states its weeks (facts/coded_gestation.py)
            weeks = weeks_from_conditions(conditions, self.as_of)
        pregnant = _has_active(conditions, GROUPS.pregnancy) or weeks is not None
        return Reproductive(
            pregnant=True if pregnant else None,
            gestational_age_weeks=weeks,
            lactating=True if _has_active(conditions, GROUPS.lactation) else None,
        )

    # ── encounter ──────────────────────────────────────────────────────────────────────────
    def _encounter(self, focus: dict[str, Any] | None) -> Encounter:
        encounters = list(self.by_type.get("Encounter", []))
        if focus is not None:
            linked = self.index.resolve(focus.get("encounter"))
            if linked is not None and linked.get("resourceType") == "Encounter":
                encounters.insert(0, linked)
        for resource in encounters:
            status = status_code(resource.get("status"))
            period = resource.get("period") if isinstance(resource.get("period"), dict) else {}
            start, end = parse_datetime(period.get("start")), parse_datetime(period.get("end"))
            if status in ("cancelled", "entered-in-error", "planned"):
                continue
            if start is not None and start > self.as_of:
                continue
            current = status in _CURRENT_ENCOUNTER if end is None else end >= self.as_of
            if not current:
                continue
            classes = {
                str(c.get(k, "")).strip().lower()
                for cls in as_list(resource.get("class"))
                for c in (codings(cls) or [cls])
                if isinstance(c, dict)
                for k in ("code", "display")
            }
            if classes & _INPATIENT_CLASSES:
                return Encounter(inpatient=True, admission_time=start)
        return Encounter()


# ── small readers ──────────────────────────────────────────────────────────────────────────
def _has_active(conditions: list[Condition], group: str) -> bool:
    return any(
        group in c.groups
        and (c.clinical_status or "active") in ("active", "recurrence", "relapse")
        and c.verification_status not in ("refuted", "entered-in-error")
        for c in conditions
    )


def _race_stratum(groups: set[str]) -> str | None:
    if GROUPS.egfr_black in groups:
        return "black"
    if GROUPS.egfr_non_black in groups:
        return "non-black"
    return None


def _sex(gender: Any) -> str | None:
    return gender if gender in ("female", "male", "other", "unknown") else None


def _deceased(patient: dict[str, Any], as_of: datetime) -> bool:
    if patient.get("deceasedBoolean") is True:
        return True
    when = parse_datetime(patient.get("deceasedDateTime"))
    return when is not None and when <= as_of


def _effective(resource: dict[str, Any]) -> datetime | None:
    period = resource.get("effectivePeriod") if isinstance(resource.get("effectivePeriod"), dict) else {}
    return (
        parse_datetime(resource.get("effectiveDateTime"))
        or parse_datetime(resource.get("effectiveInstant"))
        or parse_datetime(period.get("end") or period.get("start"))
        or parse_datetime(resource.get("issued"))
    )


def _observation_value(resource: dict[str, Any]) -> tuple[float | None, str | None, str | None]:
    if "dataAbsentReason" in resource:
        return None, None, None
    if isinstance(resource.get("valueQuantity"), dict):
        return quantity(resource["valueQuantity"])
    for key in ("valueInteger", "valueDecimal"):
        value = resource.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), None, None
    text = resource.get("valueString")
    if isinstance(text, str):
        match = _BOUND.match(text)
        if match:
            return float(match.group(2)), None, match.group(1)
    return None, None, None
