"""Issue #12 — kidney function from FHIR to the card: CrCl, AKI, ESRD without a current eGFR,
race-stratified eGFR pairs, and the renal card text (age of the result, which cap, no rounding
across a threshold). Observations and conditions go through ``sources/fhir.py``, as a hook's do.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from tests.service_helpers import medication_request

from cds_engine.facts.model import LabResult, PatientFacts, Renal
from cds_engine.facts.renal import RenalWindows, age_text, renal_facts, select_egfr
from cds_engine.messages import fmt_value
from cds_engine.sources.fhir import facts_from_resources

AS_OF = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TODAY = AS_OF.date()
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"


def _patient(age: int = 45) -> dict[str, Any]:
    born = date(TODAY.year - age, 1, 1).isoformat()
    return {"resourceType": "Patient", "id": "p1", "birthDate": born, "gender": "female"}


def _day(days_ago: int, clock: str = "08:00:00") -> str:
    return f"{(TODAY - timedelta(days=days_ago)).isoformat()}T{clock}+00:00"


def obs(code: str, value: float, days_ago: int, unit: str, *, clock: str = "08:00:00", **kw: Any) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": _day(days_ago, clock),
        "valueQuantity": {"value": value, "unit": unit},
        **kw,
    }


def egfr(value: float, days_ago: int = 10, code: str = "98979-8", **kw: Any) -> dict:
    return obs(code, value, days_ago, "mL/min/{1.73_m2}", **kw)


def crcl(value: float, days_ago: int = 5, code: str = "35591-7", unit: str = "mL/min") -> dict:
    return obs(code, value, days_ago, unit)


def condition(code: str, *, onset_days: int | None = None, **kw: Any) -> dict:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": ICD10, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        **kw,
    }
    if onset_days is not None:
        resource["onsetDateTime"] = _day(onset_days)
    return resource


def evaluate(engine, pack, resources: list[dict], *, dose: float = 5, per_day: float = 3, age: int = 45):
    facts = facts_from_resources(
        [_patient(age), *resources],
        as_of=AS_OF,
        vocab=pack.vocabulary,
        drug_class=pack.context.drug_class,
        draft_orders=[medication_request(dose=dose, per_day=per_day, code="197391")],
    )
    flat = engine.flat_facts(pack, facts)
    alerts = {a.rule_id: a for a in engine.evaluate(facts) if a.kind == "finding"}
    return flat, alerts


# ── 1. CrCl ────────────────────────────────────────────────────────────────────────────────
def test_crcl_alone_bands_and_satisfies_r00(engine, pack):
    flat, alerts = evaluate(engine, pack, [crcl(25)])
    assert flat["renal_fn"] == 25 and flat["renal_fn_measure"] == "CrCl"
    assert alerts["BAC-R02"].severity == "critical" and alerts["BAC-R02"].tier_id == "BAC-R02.avoid_start"
    assert alerts["BAC-R02"].summary.startswith("CrCl 25 (5 days ago)")
    assert "BAC-R00" not in alerts


def test_measured_24h_clearance_is_crcl(engine, pack):
    flat, alerts = evaluate(engine, pack, [crcl(25, code="2164-2")])
    assert flat["renal_fn_measure"] == "CrCl" and "BAC-R02" in alerts


def test_stale_egfr_and_fresh_crcl(engine, pack):
    _, alerts = evaluate(engine, pack, [egfr(95, 200), crcl(40)])
    r01 = alerts["BAC-R01"]
    assert r01.tier_id == "BAC-R01.moderate_start"
    assert r01.summary.startswith("CrCl 40 (5 days ago): new start 15 mg/day")
    assert "≤ 7.5 mg/day" in r01.summary
    assert "no current eGFR (last eGFR 95 (6 months ago))" in r01.detail
    assert "BAC-R00" not in alerts


def test_fresh_egfr_and_fresh_crcl_egfr_wins_card_shows_both(engine, pack):
    flat, alerts = evaluate(engine, pack, [egfr(45, 3), crcl(70)])
    assert flat["renal_fn_measure"] == "eGFR" and flat["renal_fn"] == 45
    assert flat["renal_fn_text"] == "eGFR 45 (3 days ago); also CrCl 70 mL/min (5 days ago)"
    assert alerts["BAC-R01"].tier_id == "BAC-R01.moderate_start"
    assert "CrCl 70 mL/min" in alerts["BAC-R01"].detail


def test_both_stale_the_newer_bands_and_the_card_says_so(engine, pack):
    flat, alerts = evaluate(engine, pack, [egfr(95, 400), crcl(25, 120)])
    assert flat["renal_fn_measure"] == "CrCl" and flat["renal_fn_current"] is False
    assert "not current — the newer result" in alerts["BAC-R02"].detail
    assert alerts["BAC-R00"].severity == "warning"
    flat, alerts = evaluate(engine, pack, [egfr(95, 120), crcl(25, 400)])
    assert flat["renal_fn_measure"] == "eGFR" and "BAC-R02" not in alerts


def test_clearance_per_body_surface_is_not_crcl(engine, pack):
    flat, alerts = evaluate(engine, pack, [crcl(25, unit="mL/min/{1.73_m2}")])
    assert "crcl" not in flat and "renal_fn" not in flat
    assert "BAC-R02" not in alerts and alerts["BAC-R00"].severity == "warning"


def test_crcl_in_ml_per_second_is_converted(engine, pack):
    flat, _ = evaluate(engine, pack, [crcl(0.5, unit="mL/s")])
    assert flat["crcl"] == 30


# ── 2. AKI ─────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize(
    ("resource", "lifted"),
    [
        (condition("N17.9", onset_days=20), True),
        (condition("N17.9", onset_days=90), True),
        (condition("N17.9", onset_days=91), False),
        (condition("N17.9", onset_days=400, recordedDate=(TODAY - timedelta(days=10)).isoformat()), True),
        (condition("N17.9", onset_days=20, clinicalStatus={"coding": [{"code": "resolved"}]}), False),
    ],
    ids=["onset-20d", "onset-90d", "onset-91d-unresolved", "recorded-10d", "resolved"],
)
def test_aki_lifts_to_band_m_within_the_window(engine, pack, resource, lifted):
    _, alerts = evaluate(engine, pack, [egfr(95), resource])
    assert ("BAC-R01" in alerts) is lifted
    if lifted:
        assert alerts["BAC-R01"].tier_id == "BAC-R01.aki_start"
        assert alerts["BAC-R01"].summary.startswith("Recent AKI")


def test_aki_diagnosis_of_the_current_encounter(engine, pack):
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"code": "IMP"},
        "period": {"start": _day(2)},
    }
    old = condition("N17.9", onset_days=400)
    diagnosis = {
        **old,
        "category": [{"coding": [{"code": "encounter-diagnosis"}]}],
        "encounter": {"reference": "Encounter/e1"},
    }
    assert "BAC-R01" not in evaluate(engine, pack, [egfr(95), encounter, old])[1]
    assert evaluate(engine, pack, [egfr(95), encounter, diagnosis])[1]["BAC-R01"].severity == "warning"
    finished = {**encounter, "status": "finished", "period": {"start": _day(30), "end": _day(20)}}
    assert "BAC-R01" not in evaluate(engine, pack, [egfr(95), finished, diagnosis])[1]


def test_aki_never_lowers_band_s(engine, pack):
    _, alerts = evaluate(engine, pack, [egfr(20), condition("N17.9", onset_days=5)])
    assert alerts["BAC-R02"].severity == "critical" and "BAC-R01" not in alerts


# ── 3. ESRD / CKD 5 without a current eGFR ─────────────────────────────────────────────────
ESRD_TEXT = (
    "ESRD coded, no current eGFR or dialysis status: treated as severe CKD; "
    "if on dialysis the limit is about 5 mg/day (BAC-R03)"
)


@pytest.mark.parametrize("code", ["N18.6", "N18.5"])
def test_esrd_without_current_egfr_is_severe(engine, pack, code):
    _, alerts = evaluate(engine, pack, [condition(code, onset_days=700)])
    assert alerts["BAC-R02"].severity == "critical"
    assert alerts["BAC-R02"].summary == ESRD_TEXT
    _, alerts = evaluate(engine, pack, [condition(code, onset_days=700), egfr(40, 200)])
    assert alerts["BAC-R02"].summary == ESRD_TEXT


def test_esrd_with_current_egfr_or_dialysis_has_no_floor(engine, pack):
    _, alerts = evaluate(engine, pack, [condition("N18.6", onset_days=700), egfr(40, 10)])
    assert "BAC-R02" not in alerts and alerts["BAC-R01"].tier_id == "BAC-R01.moderate_start"
    dialysis = condition("Z99.2", onset_days=700)
    _, alerts = evaluate(engine, pack, [condition("N18.6", onset_days=700), dialysis])
    assert "BAC-R02" not in alerts and alerts["BAC-R03"].severity == "critical"


def test_esrd_floor_is_a_pending_parameter_that_disagrees_in_writing(pack):
    spec = pack.spec.parameters["esrd_no_egfr_floor_band"]
    assert spec.value == "S" and spec.signoff == "pending" and "UNKNOWN" in (spec.note or "")


# ── 4. race-stratified pairs ───────────────────────────────────────────────────────────────
BLACK, NON_BLACK = "48643-1", "48642-3"


@pytest.mark.parametrize("reverse", [False, True], ids=["black-first", "non-black-first"])
def test_race_pair_same_time_prefers_non_black_whatever_the_order(engine, pack, reverse):
    pair = [egfr(70, code=BLACK), egfr(58, code=NON_BLACK)]
    flat, alerts = evaluate(engine, pack, pair[::-1] if reverse else pair, dose=5, per_day=2, age=71)
    assert flat["egfr"] == 58 and flat["egfr_method"] == NON_BLACK
    assert alerts["BAC-R04"].severity == "warning"


def test_race_pair_within_window_or_same_specimen(engine, pack):
    specimen = {"specimen": {"reference": "Specimen/s1"}}
    near = [egfr(70, code=BLACK, clock="08:50:00"), egfr(58, code=NON_BLACK, clock="08:00:00")]
    assert evaluate(engine, pack, near, age=71)[0]["egfr"] == 58
    far = [egfr(70, code=BLACK, clock="11:00:00"), egfr(58, code=NON_BLACK, clock="08:00:00")]
    assert evaluate(engine, pack, far, age=71)[0]["egfr"] == 70  # the newest time wins across times
    same = [
        egfr(70, code=BLACK, clock="11:00:00", **specimen),
        egfr(58, code=NON_BLACK, clock="08:00:00", **specimen),
    ]
    assert evaluate(engine, pack, same, age=71)[0]["egfr"] == 58


def test_race_free_code_wins_and_ties_take_the_lower_value():
    when = AS_OF - timedelta(days=2)
    black = LabResult(value=40, date=when, race_stratum="black")
    non_black = LabResult(value=35, date=when, race_stratum="non-black")
    free_high = LabResult(value=50, date=when)
    free_low = LabResult(value=45, date=when)
    renal = Renal(egfr=black, egfr_results=[black, non_black, free_high, free_low])
    assert select_egfr(renal, AS_OF, 60).value == 45
    alone = Renal(egfr=black, egfr_results=[black])
    assert select_egfr(alone, AS_OF, 60).value == 40


# ── 5. renal text ──────────────────────────────────────────────────────────────────────────
def test_card_shows_the_age_of_the_result(engine, pack):
    _, alerts = evaluate(engine, pack, [egfr(25, 580)], dose=10, per_day=3)
    assert "eGFR 25 (19 months ago)" in alerts["BAC-R02"].summary
    assert age_text(0) == "today" and age_text(1) == "1 day ago" and age_text(800) == "2 years ago"


def test_r01_names_the_cap_that_was_crossed(engine, pack):
    _, start = evaluate(engine, pack, [egfr(40)], dose=5, per_day=3)
    assert start["BAC-R01"].tier_id == "BAC-R01.moderate_start"
    assert "new start 15 mg/day — moderate-CKD start is ≤ 7.5 mg/day" in start["BAC-R01"].summary
    _, ceiling = evaluate(engine, pack, [egfr(40)], dose=15, per_day=3)
    assert ceiling["BAC-R01"].tier_id == "BAC-R01.moderate"
    assert "45 mg/day exceeds the moderate-CKD daily ceiling of 40 mg" in ceiling["BAC-R01"].summary
    _, mild = evaluate(engine, pack, [egfr(70.3)], dose=5, per_day=3)
    assert "mild-CKD start is ≤ 10 mg/day" in mild["BAC-R01"].summary


def test_new_start_wording_has_no_taper(engine, pack):
    _, alerts = evaluate(engine, pack, [egfr(20)])
    assert "taper" not in alerts["BAC-R02"].summary and "avoid starting" in alerts["BAC-R02"].summary
    dialysis = condition("Z99.2", onset_days=700)
    _, alerts = evaluate(engine, pack, [egfr(8), dialysis])
    assert alerts["BAC-R03"].tier_id == "BAC-R03.avoid_start"
    assert "taper" not in alerts["BAC-R03"].summary


def test_no_rounding_across_a_threshold(engine, pack):
    assert fmt_value(59.99) == "59.99" and fmt_value(59.999) == "59.99" and fmt_value(29.96) == "29.96"
    assert fmt_value(53.3) == "53.3" and fmt_value(15.0) == "15" and fmt_value(-2.555) == "-2.55"
    _, alerts = evaluate(engine, pack, [egfr(59.99)], dose=5, per_day=3, age=70)
    assert "eGFR 59.99 (10 days ago)" in alerts["BAC-R04"].summary
    flat = renal_facts(
        Renal(egfr=LabResult(value=29.999, date=AS_OF, unit="mL/min/{1.73_m2}")), AS_OF, RenalWindows()
    )
    assert flat["renal_fn_text"] == "eGFR 29.99 (today)"


def test_patient_facts_round_trip_keeps_pairs_and_condition_dates():
    facts = PatientFacts.model_validate(
        {
            "as_of": AS_OF.isoformat(),
            "renal": {"egfr_results": [{"value": 50, "date": "2026-01-01", "race_stratum": "non-black"}]},
            "conditions": [
                {"code": {"code": "N17.9"}, "recorded": "2026-01-01", "encounter_diagnosis": True}
            ],
        }
    )
    again = PatientFacts.model_validate_json(facts.model_dump_json())
    assert again == facts


# ── the record table (CSV/Parquet) carries CrCl and the AKI flag ─────────────────────────────
def test_table_row_crcl_and_aki_columns(engine, pack):
    from cds_engine.sources.table import row_to_facts

    row = {
        "patient_id": "t1",
        "birth_date": date(1980, 1, 1),
        "crcl": 25.0,
        "crcl_unit": "mL/min",
        "crcl_date": AS_OF - timedelta(days=3),
    }
    order = {"product": {"display": "baclofen"}, "route": "oral", "dose_amount": 5, "dose_unit": "mg"}
    order["doses_per_day"] = 3
    drafted = PatientFacts.model_validate({"as_of": AS_OF, "order": order}).order
    facts = row_to_facts(row, AS_OF).model_copy(update={"order": drafted})
    alerts = {a.rule_id: a for a in engine.evaluate(facts) if a.kind == "finding"}
    assert alerts["BAC-R02"].summary.startswith("CrCl 25 (3 days ago)")
    flagged = row_to_facts({**row, "crcl": 90.0, "aki": True}, AS_OF)
    flagged = flagged.model_copy(update={"order": drafted})
    alerts = {a.rule_id: a for a in engine.evaluate(flagged) if a.kind == "finding"}
    assert alerts["BAC-R01"].tier_id == "BAC-R01.aki_start"  # the row's aki column: AKI now
