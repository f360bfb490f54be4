"""FHIR R4 → PatientFacts: dosage variants, medication resolution, what counts, history and order action."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from tests.service_helpers import (
    baclofen_concept,
    load_reference,
    medication_request,
    swap_to_baclofen,
    synthea_files,
    synthea_resources,
)

from cds_engine.facts.model import PatientFacts
from cds_engine.sources.dosage import read_dosage
from cds_engine.sources.fhir import bundle_resources, facts_from_resources

AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-05-01", "gender": "female"}
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def facts(pack, resources, drafts=None, as_of=AS_OF) -> PatientFacts:
    return facts_from_resources(
        [PATIENT, *resources],
        as_of=as_of,
        vocab=pack.vocabulary,
        drug_class=pack.context.drug_class,
        draft_orders=drafts,
    )


def egfr(code: str, value: float, when: str, *, status: str = "final", comparator: str | None = None) -> dict:
    quantity = {"value": value, "unit": "mL/min/{1.73_m2}"}
    if comparator:
        quantity["comparator"] = comparator
    return {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": quantity,
    }


def condition(
    code: str,
    *,
    system: str = SNOMED,
    clinical: str | None = "active",
    verification: str | None = None,
    onset: str = "2020-01-01",
) -> dict:
    resource: dict = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": onset,
    }
    if clinical:
        resource["clinicalStatus"] = {"coding": [{"code": clinical}]}
    if verification:
        resource["verificationStatus"] = {"coding": [{"code": verification}]}
    return resource


def group_code(pack, kind: str, group: str, system: str | None = None) -> tuple[str, str]:
    """A (system, code) of a vocabulary group — tests take codes from the vocabulary, like the code does."""
    for (k, sys, code), groups in sorted(pack.vocabulary.codes.items()):
        if k == kind and group in groups and (system is None or sys == system):
            return sys, code
    raise LookupError(group)


# ── dosage ─────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize(
    ("timing", "per_day"),
    [
        ({"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}}, 3.0),
        ({"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}}, 4.0),
        ({"repeat": {"frequency": 1, "frequencyMax": 2, "period": 1, "periodUnit": "d"}}, 2.0),
        ({"repeat": {"frequency": 1, "period": 3, "periodUnit": "d"}}, 1 / 3),
        ({"repeat": {"timeOfDay": ["08:00:00", "20:00:00"]}}, 2.0),
        ({"repeat": {"when": ["MORN", "AFT", "EVE"]}}, 3.0),
        ({"code": {"coding": [{"code": "BID"}]}}, 2.0),
        ({"code": {"coding": [{"code": "TID"}]}}, 3.0),
        ({"code": {"coding": [{"code": "QID"}]}}, 4.0),
        ({"code": {"coding": [{"code": "QD"}]}}, 1.0),
        ({"code": {"text": "tid"}}, 3.0),
        ({"repeat": {"frequency": 2}}, None),  # no period: not guessed
    ],
)
def test_timing_variants(timing, per_day):
    dose = read_dosage([{"timing": timing, "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}]}])
    assert dose.amount == 5 and dose.unit == "mg"
    assert dose.doses_per_day == pytest.approx(per_day) if per_day is not None else dose.doses_per_day is None


def test_prn_with_max_doses_and_max_amount():
    count = read_dosage(
        [
            {
                "asNeededBoolean": True,
                "timing": {"repeat": {"frequency": 1, "period": 4, "periodUnit": "h"}},
                "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
                "maxDosePerPeriod": {"numerator": {"value": 3}, "denominator": {"value": 1, "unit": "d"}},
            }
        ]
    )
    assert count.prn and count.prn_max_doses_per_day == 3 and count.doses_per_day == 6
    amount = read_dosage(
        [
            {
                "asNeededCodeableConcept": {"text": "spasm"},
                "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
                "maxDosePerPeriod": {
                    "numerator": {"value": 40, "unit": "mg"},
                    "denominator": {"value": 24, "unit": "h"},
                },
            }
        ]
    )
    assert amount.prn and amount.prn_max_doses_per_day == 4
    by_timing = read_dosage(
        [
            {
                "asNeededBoolean": True,
                "timing": {"code": {"coding": [{"code": "Q6H"}]}},
                "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}],
            }
        ]
    )
    assert by_timing.prn_max_doses_per_day == 4


def test_range_route_and_concurrent_schedule():
    ranged = read_dosage(
        [
            {
                "doseAndRate": [
                    {"doseRange": {"low": {"value": 5, "unit": "mg"}, "high": {"value": 10, "unit": "mg"}}}
                ],
                "route": {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]},
            }
        ]
    )
    assert ranged.amount == 10 and ranged.route == "26643006"
    split = read_dosage(
        [
            {
                "sequence": 1,
                "timing": {"repeat": {"when": ["MORN"]}},
                "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
            },
            {
                "sequence": 1,
                "timing": {"repeat": {"when": ["HS"]}},
                "doseAndRate": [{"doseQuantity": {"value": 20, "unit": "mg"}}],
            },
        ]
    )
    assert split.schedule == [10, 20] and split.doses_per_day == 2 and not split.phases


def test_sequenced_phases_are_a_taper(pack):
    steps = [
        (1, 20, "2025-03-01", "2025-03-05"),
        (2, 10, "2025-03-05", "2025-03-09"),
        (3, 5, "2025-03-09", "2025-03-13"),
    ]
    draft = medication_request(dose=None)
    draft["dosageInstruction"] = [
        {
            "sequence": seq,
            "timing": {
                "repeat": {
                    "frequency": 3,
                    "period": 1,
                    "periodUnit": "d",
                    "boundsPeriod": {"start": start, "end": end},
                }
            },
            "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg"}}],
        }
        for seq, mg, start, end in steps
    ]
    order = facts(pack, [], [draft]).order
    assert order is not None and order.dose_amount == 20 and order.doses_per_day == 3
    assert order.taper is not None and order.taper.steps == [60, 30, 15] and order.taper.duration_days == 12
    rising = [
        {**d, "doseAndRate": [{"doseQuantity": {"value": v, "unit": "mg"}}]}
        for d, v in zip(draft["dosageInstruction"], (5, 10, 15), strict=True)
    ]
    assert (
        facts(pack, [], [{**draft, "dosageInstruction": rising}]).order.taper is None
    )  # titration, not taper


# ── real MedicationRequest shapes ──────────────────────────────────────────────────────────
def test_inferno_order_select_shape(pack):
    request = swap_to_baclofen(load_reference("order_select_hook_request.json"))
    drafts = [e["resource"] for e in request["context"]["draftOrders"]["entry"]]
    mr = next(d for d in drafts if d["resourceType"] == "MedicationRequest")
    assert isinstance(mr["dosageInstruction"][0]["doseAndRate"], dict)  # the deviation we tolerate
    order = facts(pack, [], drafts).order
    assert order is not None and order.product.code in ("197391", "197392")
    assert order.dose_amount == 5 and order.dose_unit == "mL" and order.doses_per_day == 2
    assert order.action == "new"


def test_epic_shape_with_several_dose_rates(pack):
    request = swap_to_baclofen(load_reference("noPrefetch.json"))
    mr = request["context"]["draftOrders"]["entry"][0]["resource"]
    order = facts(pack, [], [mr]).order
    assert order.dose_amount == 1 and order.dose_unit == "patch"
    assert order.doses_per_day == pytest.approx(1 / 3)
    assert order.date is not None


def test_medication_reference_from_prefetch(pack):
    request = swap_to_baclofen(load_reference("order-sign-request_complete-prefetch.json"))
    pool = [r for v in request["prefetch"].values() if isinstance(v, dict) for r in bundle_resources(v)]
    drafts = [
        e["resource"]
        for e in request["context"]["draftOrders"]["entry"]
        if e["resource"]["resourceType"] == "MedicationRequest"
    ]
    assert all("medicationReference" in d for d in drafts)
    result = facts_from_resources(
        pool, as_of=AS_OF, vocab=pack.vocabulary, drug_class="baclofen", draft_orders=drafts
    )
    assert result.order.product.code == "197391"
    assert result.patient_id == "forprefetch"


def test_contained_medication_and_concentration(pack):
    draft = medication_request(dose=5, unit="mL")
    del draft["medicationCodeableConcept"]
    draft["contained"] = [
        {
            "resourceType": "Medication",
            "id": "med",
            "code": {"text": "baclofen oral solution"},
            "form": {"text": "oral solution"},
            "ingredient": [
                {
                    "itemCodeableConcept": {"text": "baclofen"},
                    "strength": {
                        "numerator": {"value": 5, "unit": "mg"},
                        "denominator": {"value": 1, "unit": "mL"},
                    },
                }
            ],
        }
    ]
    draft["medicationReference"] = {"reference": "#med"}
    result = facts(pack, [], [draft])
    assert result.order.form == "oral solution" and result.order.concentration_mg_per_ml == 5
    assert "baclofen" in pack.vocabulary.classify(result.order.product, "drug_class")


def test_indication_from_reason_code_and_reference(pack):
    system, code = group_code(pack, "indication", "spasticity")
    by_code = medication_request(reasonCode=[{"coding": [{"system": system, "code": code}]}])
    assert facts(pack, [], [by_code]).order.indication.code == code
    cond = {**condition(code, system=system), "id": "c1"}
    by_ref = medication_request(reasonReference=[{"reference": "Condition/c1"}])
    assert facts(pack, [cond], [by_ref]).order.indication.code == code


# ── what counts ────────────────────────────────────────────────────────────────────────────
def test_egfr_latest_by_any_code_and_bounds(pack):
    result = facts(
        pack,
        [
            egfr("33914-3", 55, "2024-01-01"),
            egfr("98979-8", 42, "2025-02-01"),
            egfr("98979-8", 20, "2025-02-20", status="preliminary"),
            egfr("98979-8", 10, "2025-04-01"),
        ],
    )  # after as_of
    assert result.renal.egfr.value == 42 and result.renal.egfr.method == "98979-8"
    bound = facts(pack, [egfr("33914-3", 60, "2025-02-01", comparator=">")])
    assert bound.renal.egfr.comparator == ">" and bound.renal.egfr.value == 60
    text = {**egfr("33914-3", 0, "2025-02-01"), "valueString": ">90"}
    del text["valueQuantity"]
    assert facts(pack, [text]).renal.egfr.comparator == ">"


def test_pregnancy_never_from_hcg(pack):
    system, code = group_code(pack, "observation", "pregnancy_test")
    hcg = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "effectiveDateTime": "2025-02-01",
        "valueString": "positive",
    }
    assert facts(pack, [hcg]).reproductive.pregnant is None
    psys, pcode = group_code(pack, "condition_group", "pregnancy")
    assert facts(pack, [condition(pcode, system=psys)]).reproductive.pregnant is True
    assert facts(pack, [condition(pcode, system=psys, verification="refuted")]).reproductive.pregnant is None
    assert facts(pack, [condition(pcode, system=psys, clinical="resolved")]).reproductive.pregnant is None


def test_conditions_keep_statuses_for_derivation(pack):
    system, code = group_code(pack, "condition_group", "epilepsy")
    mapped = facts(
        pack,
        [
            condition(code, system=system, verification="entered-in-error"),
            condition(code, system=system, clinical=None, onset="2030-01-01"),
        ],
    ).conditions
    assert len(mapped) == 1 and mapped[0].verification_status == "entered-in-error"
    assert "epilepsy" in mapped[0].groups


def test_dialysis_needs_dependence_or_recent_procedure(pack, engine):
    esys, ecode = group_code(pack, "condition_group", "esrd")
    only_esrd = facts(pack, [condition(ecode, system=esys)])
    assert engine.flat_facts(pack, only_esrd)["dialysis"] is False
    psys, pcode = group_code(pack, "condition_group", "dialysis_procedure")
    procedure = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": {"coding": [{"system": psys, "code": pcode}]},
        "performedPeriod": {"start": "2025-02-20T08:00:00Z", "end": "2025-02-20T12:00:00Z"},
    }
    recent = facts(pack, [procedure])
    assert recent.renal.last_dialysis_procedure == date(2025, 2, 20)
    assert engine.flat_facts(pack, recent)["dialysis"] is True
    old = facts(pack, [{**procedure, "performedPeriod": {"end": "2024-01-01"}}])
    assert engine.flat_facts(pack, old)["dialysis"] is False


def test_allergy_statuses(pack):
    allergy = {
        "resourceType": "AllergyIntolerance",
        "code": baclofen_concept(),
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "verificationStatus": {"coding": [{"code": "refuted"}]},
    }
    mapped = facts(pack, [allergy]).allergies
    assert mapped[0].verification_status == "refuted" and "baclofen" in mapped[0].groups


def test_inpatient_encounter(pack):
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"code": "IMP"},
        "period": {"start": "2025-02-28T08:00:00Z"},
    }
    result = facts(pack, [encounter])
    assert result.encounter.inpatient and result.encounter.admission_time == datetime(
        2025, 2, 28, 8, tzinfo=UTC
    )
    finished = {**encounter, "status": "finished", "period": {"start": "2025-01-01", "end": "2025-01-05"}}
    assert facts(pack, [finished]).encounter.inpatient is False


# ── history and order action ───────────────────────────────────────────────────────────────
def active(id: str, dose: float, authored: str | None, *, status: str = "active", **extra) -> dict:
    mr = medication_request(id=id, dose=dose, status=status, **extra)
    if authored:
        mr["authoredOn"] = authored
    return mr


def test_new_start_without_history(pack):
    result = facts(pack, [], [medication_request()])
    assert result.order.action == "new" and result.history.therapy_start is None
    assert result.history.last_exposure is None


def test_modify_when_active_with_other_dose(pack, engine):
    result = facts(pack, [active("old", 10, "2025-01-01")], [medication_request(dose=15)])
    assert result.order.action == "modify" and result.order.replaces == "old"
    assert result.history.previous_daily_dose_mg == 30 and result.history.therapy_start == date(2025, 1, 1)
    flat = engine.flat_facts(pack, result)
    assert (
        flat["daily_dose_mg"] == 45 and flat["previous_daily_dose_mg"] == 30 and flat["dose_increase"] is True
    )


def test_continue_when_same_dose_and_prior_prescription_is_modify(pack):
    same = facts(pack, [active("old", 10, "2025-01-01")], [medication_request(dose=10)])
    assert same.order.action == "continue"
    linked = facts(
        pack,
        [active("old", 10, "2025-01-01")],
        [medication_request(dose=10, priorPrescription={"reference": "MedicationRequest/old"})],
    )
    assert linked.order.action == "modify" and linked.order.replaces == "old"


def test_active_order_with_unknown_start_is_long_term(pack, engine):
    result = facts(pack, [active("old", 20, None)], [medication_request(status="stopped", dose=None)])
    assert result.order.action == "discontinue" and result.history.therapy_start is None
    flat = engine.flat_facts(pack, result)
    assert "days_on_therapy" not in flat  # unknown → the pack treats it as long-term (missing: fire)
    alerts = {a.rule_id for a in engine.evaluate(result)}
    assert "BAC-W01" in alerts


@pytest.mark.parametrize(
    ("status", "action"),
    [("stopped", "discontinue"), ("cancelled", "discontinue"), ("on-hold", "hold"), ("active", "continue")],
)
def test_draft_status_to_action(pack, status, action):
    result = facts(pack, [active("mr-1", 10, "2025-01-01")], [medication_request(status=status)])
    assert result.order.action == action


def test_history_chain_dose_change_and_stop(pack):
    chain = [
        active("a", 5, "2024-06-01", status="stopped"),
        active(
            "b", 10, "2024-06-10", status="active", priorPrescription={"reference": "MedicationRequest/a"}
        ),
    ]
    history = facts(pack, chain).history
    assert history.therapy_start == date(2024, 6, 1) and history.last_dose_change == date(2024, 6, 10)
    assert history.previous_daily_dose_mg == 30 and history.last_exposure == AS_OF
    stopped = facts(pack, [active("a", 5, "2025-02-20", status="stopped")], [medication_request()])
    assert stopped.order.action == "new" and stopped.history.previous_daily_dose_mg is None
    assert stopped.history.last_exposure == date(2025, 2, 20)


def test_other_drafts_and_statements_are_medicines(pack):
    opioid_sys, opioid_code = group_code(pack, "drug_class", "opioid_agonist")
    other = {
        "resourceType": "MedicationRequest",
        "id": "op",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": opioid_sys, "code": opioid_code}]},
    }
    statement = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": baclofen_concept(),
        "effectivePeriod": {"start": "2024-01-01"},
    }
    result = facts(pack, [statement], [medication_request(), other])
    classes = {c for m in result.medications for c in m.classes if m.status in ("active", "draft")}
    assert {"opioid_agonist", "baclofen"} <= classes
    # the other draft is a co-medicine (counted) but not yet taken: never exposure (tests/test_sibling_drafts.py)
    assert [m.status for m in result.medications if "opioid_agonist" in m.classes] == ["draft"]
    assert result.order.product.code == "197391"  # the pack's drug is the order, even when not first


# ── Synthea bundles (both dialects) ────────────────────────────────────────────────────────
def test_synthea_bundles_map(pack, engine):
    for path in synthea_files(6):
        resources = synthea_resources(path)
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        draft = medication_request(patient=patient["id"])
        result = facts_from_resources(
            resources, as_of=AS_OF, vocab=pack.vocabulary, drug_class="baclofen", draft_orders=[draft]
        )
        assert result.patient_id == patient["id"] and result.birth_date is not None
        assert result.renal.egfr is not None, path.name  # every selected patient has an eGFR (33914-3)
        assert result.medications, path.name
        engine.evaluate(result)
