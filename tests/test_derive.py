"""Derived facts: units checked, missing kept missing, bounds kept as bounds, record semantics."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cds_engine.facts.derive import DrugContext, derive
from cds_engine.facts.model import PatientFacts

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
AS_OF = "2026-01-15T12:00:00+00:00"


def _flat(pack, **facts):
    model = PatientFacts.model_validate({"as_of": AS_OF, **facts})
    return derive(model, pack.vocabulary, pack.context)


def _order(**kw):
    return {
        "product": {"system": RX, "code": "197391", "display": "Baclofen 10 MG Oral Tablet"},
        "route": "oral",
        "dose_unit": "mg",
        "dose_amount": 10,
        "doses_per_day": 3,
        **kw,
    }


def test_daily_dose_from_mg_and_schedule(pack):
    assert _flat(pack, order=_order())["daily_dose_mg"] == 30
    flat = _flat(pack, order=_order(schedule=[15, 20, 20], dose_amount=None, doses_per_day=None))
    assert flat["daily_dose_mg"] == 55 and flat["max_single_dose_mg"] == 20


def test_units_are_converted_never_guessed(pack):
    assert (
        _flat(pack, order=_order(dose_unit="mcg", dose_amount=400, doses_per_day=1))["daily_dose_mg"] == 0.4
    )
    assert _flat(pack, order=_order(dose_unit="g", dose_amount=0.01))["daily_dose_mg"] == 30
    tablets = _flat(pack, order=_order(dose_unit="tablet", dose_amount=2))  # product strength 10 mg
    assert tablets["daily_dose_mg"] == 60
    liquid = _flat(
        pack,
        order=_order(
            product={"display": "baclofen oral solution"}, form="solution", dose_unit="mL", dose_amount=5
        ),
    )
    assert "daily_dose_mg" not in liquid and liquid["order_is_liquid"] is True
    with_conc = _flat(
        pack,
        order=_order(
            product={"display": "baclofen oral solution"},
            form="solution",
            dose_unit="mL",
            dose_amount=5,
            concentration_mg_per_ml=1,
        ),
    )
    assert with_conc["daily_dose_mg"] == 15
    assert "daily_dose_mg" not in _flat(pack, order=_order(dose_unit="drop"))
    prn_without_max = _flat(pack, order=_order(prn=True))
    assert "daily_dose_mg" not in prn_without_max


def test_egfr_bound_is_kept_as_bound(pack):
    flat = _flat(pack, renal={"egfr": {"value": 60, "comparator": ">", "date": "2026-01-01"}})
    assert "egfr" not in flat and flat["egfr__gt"] == 60 and flat["egfr_days_old"] == 14
    flat = _flat(pack, renal={"egfr": {"value": 44, "date": "2026-01-01", "unit": "mg/dL"}})
    assert "egfr" not in flat  # a unit that is not a clearance is not read as eGFR


def test_dialysis_semantics(pack):
    esrd = {
        "code": {"system": "http://snomed.info/sct", "code": "46177005", "display": "End-stage renal disease"}
    }
    assert _flat(pack, conditions=[esrd])["dialysis"] is False
    assert _flat(pack, renal={"last_dialysis_procedure": "2025-12-16"})["dialysis"] is True  # 30 days
    assert _flat(pack, renal={"last_dialysis_procedure": "2025-12-15"})["dialysis"] is False  # 31 days
    assert _flat(pack, renal={"dialysis": "HD"})["dialysis_modality"] == "HD"


def test_refuted_and_resolved_conditions(pack):
    epi = {"system": "http://snomed.info/sct", "code": "84757009", "display": "Epilepsy"}
    assert _flat(pack, conditions=[{"code": epi}])["cond.epilepsy"] is True
    assert "cond.epilepsy" not in _flat(pack, conditions=[{"code": epi, "verification_status": "refuted"}])
    resolved = _flat(pack, conditions=[{"code": epi, "clinical_status": "resolved"}])
    assert "cond.epilepsy" not in resolved and resolved["cond_history.epilepsy"] is True


def test_pregnancy_unknown_stays_missing(pack):
    assert "pregnant" not in _flat(pack)


def test_unknown_start_of_active_order_counts_as_long_term(engine):
    facts = PatientFacts.model_validate(
        {
            "as_of": AS_OF,
            "birth_date": "1980-01-01",
            "renal": {"egfr": {"value": 90, "date": "2026-01-10"}},
            "medications": [
                {"product": {"system": RX, "code": "197391"}, "route": "oral", "daily_dose_mg": 60}
            ],
            "order": _order(action="discontinue", dose_amount=None, doses_per_day=None),
        }
    )
    fired = {(a.rule_id, a.severity) for a in engine.evaluate(facts)}
    assert ("BAC-W01", "critical") in fired


def test_modify_replaces_the_active_order(pack):
    meds = [{"id": "m1", "product": {"system": RX, "code": "197391"}, "route": "oral", "daily_dose_mg": 30}]
    flat = _flat(
        pack,
        medications=meds,
        order=_order(action="modify", dose_amount=20, replaces="m1"),
        history={"previous_daily_dose_mg": 30},
    )
    assert (
        flat["drug_active_count"] == 1
        and flat["daily_dose_change_mg"] == 30
        and flat["dose_increase"] is True
    )
    flat = _flat(pack, medications=meds, order=_order(action="new"))
    assert flat["drug_active_count"] == 2 and flat["days_since_last_exposure"] == 0


def test_partner_order_counts_as_active_medicine(pack):
    opioid = {"product": {"display": "oxycodone 5 mg tablet"}, "route": "oral", "action": "new"}
    meds = [{"product": {"system": RX, "code": "197391"}, "route": "oral"}]
    flat = _flat(pack, medications=meds, order=opioid)
    assert (
        flat["order_present"] is False and flat["meds.opioid_agonist"] == 1 and flat["drug_active_count"] == 1
    )


def test_as_of_must_carry_a_timezone():
    with pytest.raises(ValidationError, match="timezone"):
        PatientFacts.model_validate({"as_of": "2026-01-15T12:00:00"})


def test_drug_context_is_the_only_pack_input(pack):
    assert isinstance(pack.context, DrugContext) and pack.context.dialysis_procedure_lookback_days == 30
