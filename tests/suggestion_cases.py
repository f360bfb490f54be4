"""Seeded FHIR R4 patients with a baclofen draft order, for the one-click suggestion closure test.

Every case is a Patient, an eGFR (or none, or a stale one), optionally dialysis dependence, home or
active baclofen orders (for modify / continue and titration history), and one draft
MedicationRequest: tablets (marketed or not, counted or in mg), a liquid with or without a
concentration, by mouth or by an enteral tube (SNOMED or text), for spasticity or alcohol use
disorder, new / modify / continue. ``random.Random(seed)`` makes the set the same on every run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

AS_OF = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

TABLETS = {  # code: (display, strength mg)
    "197391": ("Baclofen 10 MG Oral Tablet", 10.0),
    "197392": ("Baclofen 20 MG Oral Tablet", 20.0),
    "199280": ("Baclofen 25 MG Oral Tablet", 25.0),  # marketed: no
    "202109": ("Baclofen 10 MG Oral Tablet [Lioresal]", 10.0),  # marketed: unverified
    "666857": ("Baclofen 10 MG Disintegrating Oral Tablet [Kemstro]", 10.0),  # marketed: no
}
# marketed tablets most often (they are what a suggestion can change), the others to prove none is proposed
PRODUCT_WEIGHTS = ("197391",) * 4 + ("197392",) * 4 + ("199280", "202109", "666857")
ROUTES: list[dict[str, Any]] = [
    {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]},
    {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]},
    {"coding": [{"system": SNOMED, "code": "127492001", "display": "Nasogastric route"}]},
    {"coding": [{"system": SNOMED, "code": "127490009", "display": "Gastrostomy route"}]},
    {"text": "Per G tube"},
    {"text": "PO"},
]
BANDS = ("N", "L", "M", "S", "D", "none", "stale")
EGFR = {"N": (81, 120), "L": (50, 80), "M": (30, 49.9), "S": (5, 29.9), "D": (5, 15)}
INDICATIONS = {
    "spasticity": {"coding": [{"system": ICD10, "code": "G35", "display": "Multiple sclerosis"}]},
    "aud": {"coding": [{"system": ICD10, "code": "F10.20", "display": "Alcohol dependence, uncomplicated"}]},
}
TIMING_CODES = {1: "QD", 2: "BID", 3: "TID", 4: "QID"}


@dataclass
class Case:
    n: int
    resources: list[dict[str, Any]]
    draft: dict[str, Any]
    dims: dict[str, Any] = field(default_factory=dict)


def _timing(rng: random.Random, per_day: int) -> dict[str, Any]:
    if rng.random() < 0.5:
        code = TIMING_CODES[per_day]
        return {
            "code": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": code}
                ]
            }
        }
    return {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}}


def _tablet_dose(rng: random.Random, strength: float, per_day: int) -> tuple[dict[str, Any], float]:
    """A dose quantity (mg or a count of tablets) and its mg per administration."""
    units = rng.choice((0.5, 1, 1, 1, 2, 2, 3, 4))
    mg = units * strength
    if rng.random() < 0.5 and units == int(units):
        unit = rng.choice(("{tbl}", "tablet"))
        return {"value": units, "unit": unit, "system": UCUM, "code": "{tbl}"}, mg
    return {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}, mg


def _request(
    ident: str,
    status: str,
    concept: dict[str, Any] | None,
    route: dict[str, Any],
    dose: dict[str, Any],
    timing: dict[str, Any],
    authored: date,
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": ident,
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": authored.isoformat(),
        "dosageInstruction": [{"route": route, "timing": timing, "doseAndRate": [{"doseQuantity": dose}]}],
        **extra,
    }
    if concept is not None:
        resource["medicationCodeableConcept"] = concept
    return resource


def _tablet_concept(code: str) -> dict[str, Any]:
    display, _ = TABLETS[code]
    return {"coding": [{"system": RXNORM, "code": code, "display": display}], "text": display}


def generate(count: int, seed: int) -> Iterator[Case]:
    rng = random.Random(seed)
    today = AS_OF.date()
    for n in range(count):
        band = BANDS[n % len(BANDS)]
        action = ("new", "modify", "continue")[(n // len(BANDS)) % 3]
        age = rng.choice((30, 45, 64, 65, 70, 80, 90))
        birth = date(today.year - age, 1, 1) if rng.random() < 0.5 else date(today.year - age - 1, 12, 31)
        resources: list[dict[str, Any]] = [
            {
                "resourceType": "Patient",
                "id": "p1",
                "birthDate": birth.isoformat(),
                "gender": rng.choice(("female", "male")),
            }
        ]
        if band in EGFR or band == "stale":
            low, high = EGFR.get(band, (20, 90))
            value = round(rng.uniform(low, high), 1) if rng.random() < 0.8 else rng.choice((low, high))
            when = today - timedelta(days=200 if band == "stale" else rng.choice((1, 10, 60)))
            resources.append(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": LOINC, "code": "62238-1"}]},
                    "subject": {"reference": "Patient/p1"},
                    "effectiveDateTime": when.isoformat(),
                    "valueQuantity": {"value": value, "unit": "mL/min/{1.73_m2}"},
                }
            )
        if band == "D":
            resources.append(
                {
                    "resourceType": "Condition",
                    "code": {
                        "coding": [
                            {"system": ICD10, "code": "Z99.2", "display": "Dependence on renal dialysis"}
                        ]
                    },
                    "clinicalStatus": {"coding": [{"code": "active"}]},
                    "subject": {"reference": "Patient/p1"},
                }
            )
        indication = "aud" if rng.random() < 0.2 else "spasticity"
        route = rng.choice(ROUTES)
        liquid = rng.random() < 0.12
        per_day = rng.choice((1, 2, 3, 3, 4))
        if liquid:
            concentration = rng.choice((1.0, 2.0, 5.0, None))
            medication: dict[str, Any] = {
                "resourceType": "Medication",
                "id": "liq",
                "code": {"text": "Baclofen oral solution"},
                "form": {"text": "Oral solution"},
            }
            if concentration is not None:
                medication["ingredient"] = [
                    {
                        "itemCodeableConcept": {"text": "baclofen"},
                        "strength": {
                            "numerator": {"value": concentration, "unit": "mg", "system": UCUM, "code": "mg"},
                            "denominator": {"value": 1, "unit": "mL", "system": UCUM, "code": "mL"},
                        },
                    }
                ]
            resources.append(medication)
            ml = rng.choice((2.5, 5, 10, 15, 20))
            dose = (
                {"value": ml, "unit": "mL", "system": UCUM, "code": "mL"}
                if rng.random() < 0.6
                else {"value": ml * (concentration or 1), "unit": "mg", "system": UCUM, "code": "mg"}
            )
            concept = None
            extra: dict[str, Any] = {"medicationReference": {"reference": "Medication/liq"}}
            product = "liquid"
        else:
            product = rng.choice(PRODUCT_WEIGHTS)
            dose, _mg = _tablet_dose(rng, TABLETS[product][1], per_day)
            concept = _tablet_concept(product)
            extra = {}
        if rng.random() < 0.05:
            extra["dosageInstruction_prn"] = True
        draft_extra: dict[str, Any] = {"reasonCode": [INDICATIONS[indication]]}
        if rng.random() < 0.3:
            draft_extra["category"] = [
                {"coding": [{"code": rng.choice(("inpatient", "outpatient", "community"))}]}
            ]
        if action in ("modify", "continue"):
            # the active order the draft replaces: same product and route; its dose differs for modify
            prior_per_day = per_day if action == "continue" else rng.choice((1, 2, 3, 4))
            if liquid:
                prior_dose = dict(dose)
                if action == "modify":
                    prior_dose["value"] = dose["value"] * rng.choice((0.5, 1.5, 2, 3))
            else:
                prior_dose, _ = _tablet_dose(rng, TABLETS[product][1], prior_per_day)
                if action == "continue":
                    prior_dose = dict(dose)
            changed = today - timedelta(days=rng.choice((1, 2, 5, 30, 400)))
            resources.append(
                _request(
                    "active-1",
                    "active",
                    concept,
                    route,
                    prior_dose,
                    {"repeat": {"frequency": prior_per_day, "period": 1, "periodUnit": "d"}},
                    changed,
                    **({"medicationReference": {"reference": "Medication/liq"}} if liquid else {}),
                )
            )
            if rng.random() < 0.8:  # else the replacement is only presumed (no one-click)
                draft_extra["priorPrescription"] = {"reference": "MedicationRequest/active-1"}
        if not liquid and rng.random() < 0.12:
            # a second active order of the drug the draft does not replace (combined oral dose)
            other_dose, _ = _tablet_dose(rng, TABLETS[product][1], 1)
            resources.append(
                _request(
                    "active-2",
                    "active",
                    concept,
                    rng.choice(ROUTES),
                    other_dose,
                    {"repeat": {"frequency": rng.choice((1, 2)), "period": 1, "periodUnit": "d"}},
                    today - timedelta(days=100),
                )
            )
            if action != "new":
                draft_extra["priorPrescription"] = {"reference": "MedicationRequest/active-1"}
        prn = extra.pop("dosageInstruction_prn", False)
        draft = _request(
            "draft-1", "draft", concept, route, dose, _timing(rng, per_day), today, **extra, **draft_extra
        )
        if prn:
            draft["dosageInstruction"][0]["asNeededBoolean"] = True
        yield Case(
            n,
            resources,
            draft,
            {
                "band": band,
                "action": action,
                "age": age,
                "indication": indication,
                "product": product,
                "route": route.get("text") or route["coding"][0]["code"],
            },
        )
