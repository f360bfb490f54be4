"""Several draft orders in one request: each is a co-medicine of the others, never exposure.

A review found (reaudit-clin #1, #13, #10):

1. Two new drafts of the pack's drug in one order-sign lost every new-start check: the mapping made
   each sibling draft an *active* medication, so ``days_since_last_exposure`` was 0. A draft has
   not been taken; it is counted (class counts, duplicates, combined dose) but is never exposure
   and never the order a modify/continue replaces. The start caps read what the request starts:
   ``order_request_daily_mg`` = the draft plus its sibling drafts of the drug (oral family).
2. Two drafts that each modify their own home order summed one new dose with the *other* old
   order (220 mg/day where the truth is 180).
3. A JSON ``continue`` at 0 mg/day while on 60 mg/day gave no withdrawal alert: a changed (or
   0 mg) "continue" is a modify — the FHIR mapping already says so.

Checked through the real FHIR mapping (hook request bodies over HTTP, and ``facts_for_drafts``)
and the JSON PatientFacts path; Rete, oracle and vector evaluators must agree on every case.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import LocalFhir, RecordingSink, hook_request, medication_request

from cds_engine.engine import Engine, OracleEvaluator, project
from cds_engine.evaluators.vector import VectorPack, frame_from_flats
from cds_engine.facts.derive import DrugContext, derive
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.rete import ReteEvaluator
from cds_engine.service import ServiceSettings, create_app
from cds_engine.service.discovery import prefetch_templates
from cds_engine.sources.fhir import facts_for_drafts

AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
SIGN = "baclofen-order-sign"
OLD = "1948-06-01"  # 76 at AS_OF
IT_ROUTE = {
    "coding": [{"system": "http://snomed.info/sct", "code": "72607000", "display": "Intrathecal route"}]
}


def _code(pack: Any, kind: str, group: str, system: str | None = None) -> tuple[str, str]:
    """A (system, code) of a vocabulary group: codes come from the vocabulary, as in the code."""
    for (k, sys, code), groups in sorted(pack.vocabulary.codes.items()):
        if k == kind and group in groups and (system is None or sys == system):
            return sys, code
    raise LookupError(group)


def _patient(birth: str = OLD) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", "birthDate": birth, "gender": "female"}


def _egfr(pack: Any, value: float, days_ago: int = 5) -> dict[str, Any]:
    system, code = _code(pack, "observation", "egfr", "http://loinc.org")
    return {
        "resourceType": "Observation",
        "id": f"egfr-{value}",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": (AS_OF - timedelta(days=days_ago)).isoformat(),
        "valueQuantity": {"value": value, "unit": "mL/min/{1.73_m2}"},
    }


def _draft(id: str, dose: float | None, per_day: float | None, **extra: Any) -> dict[str, Any]:
    return medication_request(id=id, dose=dose, per_day=per_day, authoredOn=AS_OF.date().isoformat(), **extra)


def _it_draft(id: str = "it") -> dict[str, Any]:
    draft = _draft(id, 100, 1, unit="ug")
    draft["medicationCodeableConcept"] = {
        "coding": [{"system": RX, "code": "1666613", "display": "20 ML baclofen 2 MG/ML Injection"}]
    }
    draft["dosageInstruction"][0]["route"] = IT_ROUTE
    return draft


def _home(id: str, dose: float, per_day: float) -> dict[str, Any]:
    return medication_request(id=id, dose=dose, per_day=per_day, status="active", authoredOn="2023-01-01",
                              code="197392")


def _mapped(pack: Any, resources: list[dict[str, Any]], drafts: list[dict[str, Any]]) -> list[PatientFacts]:
    """The facts of every draft, through the hook's mapping (each other draft a co-medicine)."""
    return facts_for_drafts(
        [_patient(), *resources] if not any(r.get("resourceType") == "Patient" for r in resources)
        else resources,
        drafts,
        drafts,
        as_of=AS_OF,
        vocab=pack.vocabulary,
        drug_class=pack.context.drug_class,
    )


def _flat(pack: Any, facts: PatientFacts) -> dict[str, Any]:
    return derive(facts, pack.vocabulary, pack.context)


def _tiers(engine: Engine, facts: PatientFacts) -> set[str]:
    return {a.tier_id for a in engine.evaluate(facts)}


def _hook_tiers(engine: Engine, resources: list[dict[str, Any]], drafts: list[dict[str, Any]]) -> set[str]:
    """Tier ids recorded for an order-sign request sent over HTTP (the real hook path)."""
    pack = next(p for p in engine.packs if p.id == "baclofen")
    prefetch = LocalFhir([_patient(), *resources]).prefetch(prefetch_templates(pack), {"patientId": "p1"})
    body = hook_request("order-sign", "p1", drafts, prefetch=prefetch)
    sink = RecordingSink()
    app = create_app(lambda: engine, sink=sink, auth=None, settings=ServiceSettings(), clock=lambda: AS_OF)
    with TestClient(app) as client:
        answer = client.post(f"/cds-services/{SIGN}", json=body)
    assert answer.status_code == 200, answer.text
    return {a.alert.tier_id for record in sink.evaluations for a in record.alerts}


# ── 1. two new drafts: a new start, judged on what the request starts ─────────────────────────
def test_two_new_drafts_keep_the_new_start_checks_over_http(engine, pack):
    """Finding 1: 76 y, eGFR 45, two drafts of 10 mg BID: the same checks as one 20 mg BID draft."""
    two = _hook_tiers(engine, [_egfr(pack, 45)], [_draft("d1", 10, 2), _draft("d2", 10, 2)])
    one = _hook_tiers(engine, [_egfr(pack, 45)], [_draft("d1", 20, 2)])
    start_checks = {"BAC-R04.high_start", "BAC-D02.start_moderate"}
    assert start_checks <= one
    assert start_checks <= two, two
    assert any(t.startswith("BAC-R01.moderate") for t in two), two
    assert any(t.startswith("BAC-C07") for t in two), two  # the duplicate is still flagged


def test_sibling_draft_is_never_exposure(pack):
    for facts in _mapped(pack, [_egfr(pack, 45)], [_draft("d1", 10, 2), _draft("d2", 10, 2)]):
        flat = _flat(pack, facts)
        assert "days_since_last_exposure" not in flat  # nothing taken: a new start
        assert flat["order_request_daily_mg"] == 40  # the request starts 2 x 20 mg/day
        assert flat["daily_dose_mg"] == 20
        assert flat["combined_oral_daily_mg"] == 40
        assert flat["drug_active_count"] == 2 and flat["meds.baclofen"] == 2  # still a duplicate
        assert [m.status for m in facts.medications] == ["draft"]


@pytest.mark.parametrize(
    ("sibling", "fires"),
    [
        ((5, 2), True),  # 10 + 10 = 20 mg/day: at the encephalopathy threshold (gte)
        ((5, 1), False),  # 10 + 5 = 15 mg/day: below it
    ],
)
def test_start_cap_threshold_reads_the_request_sum(engine, pack, sibling, fires):
    drafts = [_draft("d1", 5, 2), _draft("d2", *sibling)]
    for facts in _mapped(pack, [_egfr(pack, 45)], drafts):
        tiers = _tiers(engine, facts)
        assert ("BAC-R04.high_start" in tiers) is fires, tiers
        assert "BAC-R04.beers" in tiers or fires  # the older-adult warning stays either way
        # the labeled start (15 mg/day, single 5 mg): 20 > 15 fires, 15 does not
        assert ("BAC-D02.start_moderate" in tiers) is fires, tiers


def test_one_draft_is_judged_as_before(engine, pack):
    """No sibling: the request is the draft; the new fact equals the draft's daily dose."""
    (facts,) = _mapped(pack, [_egfr(pack, 45)], [_draft("d1", 5, 2)])
    flat = _flat(pack, facts)
    assert flat["order_request_daily_mg"] == flat["daily_dose_mg"] == 10
    assert "BAC-R04.high_start" not in _tiers(engine, facts)


def test_oral_and_intrathecal_drafts_keep_the_oral_new_start(engine, pack):
    """Finding 1b: an IT draft beside an oral one is a co-medicine, not exposure, and not summed."""
    drafts = [_draft("d1", 10, 2), _it_draft()]
    oral, _it = _mapped(pack, [_egfr(pack, 45)], drafts)
    flat = _flat(pack, oral)
    assert "days_since_last_exposure" not in flat
    assert flat["order_request_daily_mg"] == 20  # the intrathecal draft is not an oral dose
    assert flat["drug_active_by_route.intrathecal"] == 1
    tiers = _tiers(engine, oral)
    assert {"BAC-R04.high_start", "BAC-D02.start_moderate"} <= tiers, tiers
    assert "BAC-R04.high_start" in _hook_tiers(engine, [_egfr(pack, 45)], drafts)


def test_unknown_sibling_dose_is_a_bound_never_a_no(engine, pack):
    """Fail-safe: a sibling of unknown dose makes the sum unknown; the known part stays a bound."""
    drafts = [_draft("d1", 10, 2), _draft("d2", None, 2)]
    facts = _mapped(pack, [_egfr(pack, 45)], drafts)[0]
    flat = _flat(pack, facts)
    assert "order_request_daily_mg" not in flat and flat["order_request_daily_mg__ge"] == 20
    assert "BAC-R04.high_start" in _tiers(engine, facts)  # >= 20 already decides it
    drafts = [_draft("d1", 5, 1), _draft("d2", None, 2)]
    facts = _mapped(pack, [_egfr(pack, 45)], drafts)[0]
    alerts = engine.evaluate(facts)
    assert "BAC-R04.high_start" not in {a.tier_id for a in alerts}
    # the start caps are reported as not assessed, as a warning naming the other orders' dose
    undecided = next(a for a in alerts if a.tier_id == "missing-data.combined_dose")
    assert undecided.severity == "warning"
    assert "order_request_daily_mg" in undecided.missing
    assert {"BAC-R04.high_start", "BAC-D02.start_moderate"} <= set(undecided.not_assessed)


def test_sibling_draft_is_never_the_replaced_order(pack):
    """A modify whose only same-drug medicine is another draft replaces nothing (no previous dose)."""
    facts = PatientFacts.model_validate(
        {
            "as_of": AS_OF.isoformat(),
            "birth_date": "1970-01-01",
            "medications": [
                {"id": "d2", "product": {"system": RX, "code": "197391"}, "status": "draft",
                 "route": "oral", "daily_dose_mg": 30},
            ],
            "order": {"product": {"system": RX, "code": "197391"}, "route": "oral", "dose_amount": 10,
                      "dose_unit": "mg", "doses_per_day": 2, "action": "modify"},
        }
    )
    flat = _flat(pack, facts)
    assert "previous_daily_dose_mg" not in flat
    assert flat["combined_oral_daily_mg"] == 50  # the draft is still summed
    assert "presumed_replaced_order" not in flat


# ── JSON path: a draft medication counts (it was silently ignored) ────────────────────────────
def test_json_draft_co_medicines_are_counted(engine, pack):
    opioid_system, opioid_code = _code(pack, "drug_class", "opioid_agonist")
    facts = PatientFacts.model_validate(
        {
            "as_of": AS_OF.isoformat(),
            "birth_date": OLD,
            "renal": {"egfr": {"value": 45, "date": "2025-02-20"}},
            "medications": [
                {"product": {"system": opioid_system, "code": opioid_code}, "status": "draft"},
                {"product": {"system": RX, "code": "197391"}, "status": "draft", "route": "oral",
                 "daily_dose_mg": 10},
            ],
            "order": {"product": {"system": RX, "code": "197391"}, "route": "oral", "dose_amount": 5,
                      "dose_unit": "mg", "doses_per_day": 2, "action": "new"},
        }
    )
    flat = _flat(pack, facts)
    assert flat["meds.opioid_agonist"] == 1
    assert "days_since_last_exposure" not in flat
    assert flat["order_request_daily_mg"] == 20
    tiers = _tiers(engine, facts)
    assert "BAC-R04.high_start" in tiers and any(t.startswith("BAC-C01") for t in tiers), tiers


def test_sum_switch_off_judges_the_draft_alone(pack):
    (facts, _) = _mapped(pack, [_egfr(pack, 45)], [_draft("d1", 10, 2), _draft("d2", 10, 2)])
    ctx: DrugContext = replace(pack.context, sum_active_oral_orders=False)
    flat = derive(facts, pack.vocabulary, ctx)
    assert flat["order_request_daily_mg"] == 20 and "days_since_last_exposure" not in flat


def test_second_pack_new_start_with_sibling_drafts(engine):
    """The class, not the instance: two drafts of another pack's drug are a new start there too."""
    gaba = next(p for p in engine.packs if p.id == "gabapentinoid")
    system, code = _code(gaba, "drug_class", gaba.context.drug_class)
    drafts = [_draft("g1", 300, 3), _draft("g2", 300, 3)]
    for draft in drafts:
        draft["medicationCodeableConcept"] = {"coding": [{"system": system, "code": code}]}
    for facts in _mapped(gaba, [_egfr(gaba, 45)], drafts):
        flat = _flat(gaba, facts)
        assert "days_since_last_exposure" not in flat
        assert flat[f"meds.{gaba.context.drug_class}"] == 2


# ── 2. two drafts, each modifying its own home order ──────────────────────────────────────────
def test_two_drafts_each_replacing_its_own_order_sum_the_new_doses(pack):
    """Finding 2: home 2 x 40 mg/day; drafts 90 + 90 mg/day replace them: 180, not 220."""
    homes = [_home("home-1", 20, 2), _home("home-2", 20, 2)]
    drafts = [
        _draft("d1", 30, 3, code="197392", priorPrescription={"reference": "MedicationRequest/home-1"}),
        _draft("d2", 30, 3, code="197392", priorPrescription={"reference": "MedicationRequest/home-2"}),
    ]
    for facts in _mapped(pack, [_egfr(pack, 95), *homes], drafts):
        flat = _flat(pack, facts)
        assert flat["combined_oral_daily_mg"] == 180, flat["combined_oral_daily_mg"]
        assert flat["previous_daily_dose_mg"] == 40  # each replaces its own order
        assert flat["days_since_last_exposure"] == 0  # the home orders are taken: not a start


def test_a_draft_not_replacing_keeps_the_other_order(pack):
    """Only an order another draft replaces is left out: an untouched home order is still summed."""
    homes = [_home("home-1", 20, 2), _home("home-2", 20, 2)]
    drafts = [
        _draft("d1", 30, 3, code="197392", priorPrescription={"reference": "MedicationRequest/home-1"}),
        _draft("d2", 10, 1),
    ]
    d1 = _flat(pack, _mapped(pack, [_egfr(pack, 95), *homes], drafts)[0])
    assert d1["combined_oral_daily_mg"] == 90 + 40 + 10


# ── 3. JSON continue at 0 mg/day ──────────────────────────────────────────────────────────────
def _continue(dose: float, per_day: float = 2) -> PatientFacts:
    return PatientFacts.model_validate(
        {
            "as_of": AS_OF.isoformat(),
            "birth_date": "1970-01-01",
            "renal": {"egfr": {"value": 95, "date": "2025-02-20"}},
            "medications": [
                {"id": "home-1", "product": {"system": RX, "code": "197392"}, "status": "active",
                 "route": "oral", "daily_dose_mg": 60, "start": "2023-01-01"},
            ],
            "history": {"therapy_start": "2023-01-01"},
            "order": {"product": {"system": RX, "code": "197392"}, "route": "oral", "dose_amount": dose,
                      "dose_unit": "mg", "doses_per_day": per_day, "action": "continue",
                      "replaces": "home-1"},
        }
    )


def test_continue_at_zero_is_a_stop(engine, pack):
    """Finding 3: a 'continue' at 0 mg/day while on 60 mg/day is an abrupt stop: W01 fires."""
    facts = _continue(0)
    assert _flat(pack, facts)["order_action"] == "modify"
    assert "BAC-W01.abrupt" in _tiers(engine, facts)


def test_continue_with_a_changed_dose_is_a_modify(engine, pack):
    facts = _continue(10)  # 60 -> 20 mg/day: a 67 % cut without taper
    assert _flat(pack, facts)["order_action"] == "modify"
    assert "BAC-W01.monitored" in _tiers(engine, facts)


def test_continue_at_the_same_dose_stays_continue(engine, pack):
    facts = _continue(30)
    assert _flat(pack, facts)["order_action"] == "continue"
    assert not any(t.startswith("BAC-W01") for t in _tiers(engine, facts))


# ── the evaluators agree on every case above ──────────────────────────────────────────────────
def _cases(pack: Any) -> list[PatientFacts]:
    homes = [_home("home-1", 20, 2), _home("home-2", 20, 2)]
    out: list[PatientFacts] = []
    for drafts in (
        [_draft("d1", 10, 2), _draft("d2", 10, 2)],
        [_draft("d1", 5, 2), _draft("d2", 5, 2)],
        [_draft("d1", 5, 2), _draft("d2", 5, 1)],
        [_draft("d1", 10, 2), _draft("d2", None, 2)],
        [_draft("d1", 5, 1), _draft("d2", None, 2)],
        [_draft("d1", 10, 2), _it_draft()],
    ):
        for egfr in (20, 45, 70, 95):
            out += _mapped(pack, [_egfr(pack, egfr)], drafts)
    out += _mapped(
        pack,
        [_egfr(pack, 45), *homes],
        [
            _draft("d1", 30, 3, code="197392", priorPrescription={"reference": "MedicationRequest/home-1"}),
            _draft("d2", 30, 3, code="197392", priorPrescription={"reference": "MedicationRequest/home-2"}),
        ],
    )
    out += [_continue(0), _continue(10), _continue(30)]
    return out


def test_rete_oracle_and_vector_agree(engine, pack):
    oracle_engine = Engine(engine.packs, evaluator="oracle")
    vp = VectorPack.compile(pack)
    rete = ReteEvaluator(pack, slot="sibling-drafts")
    oracle = OracleEvaluator(pack)
    referenced = pack.referenced_facts()
    try:
        flats = [_flat(pack, f) for f in _cases(pack)]
        vector = vp.outcome_dicts(frame_from_flats(vp, flats))
        for facts, flat, v_out in zip(_cases(pack), flats, vector, strict=True):
            projected = project(flat, referenced)
            o_out = oracle.outcomes(projected)
            assert rete.outcomes(projected) == o_out
            assert v_out == o_out, {t: (o_out[t], v_out[t]) for t in o_out if o_out[t] != v_out[t]}
            a = [(x.tier_id, json.dumps(x.evidence, sort_keys=True)) for x in engine.evaluate(facts)]
            b = [(x.tier_id, json.dumps(x.evidence, sort_keys=True)) for x in oracle_engine.evaluate(facts)]
            assert a == b
    finally:
        rete.close()


def test_alerts_name_the_request_sum(engine, pack):
    """Traceable: a start cap fired by the sum shows the sum and the draft's own dose as evidence."""
    facts = _mapped(pack, [_egfr(pack, 45)], [_draft("d1", 5, 2), _draft("d2", 5, 2)])[0]
    alert = next(a for a in engine.evaluate(facts) if a.tier_id == "BAC-R04.high_start")
    assert alert.evidence["order_request_daily_mg"] == 20
    assert alert.evidence["daily_dose_mg"] == 10


def test_other_drafts_are_draft_co_medicines(pack):
    """The mapping marks the other drafts 'draft' (not 'active'); statements stay as they were."""
    opioid_system, opioid_code = _code(pack, "drug_class", "opioid_agonist")
    other = {
        "resourceType": "MedicationRequest", "id": "op", "status": "draft", "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": opioid_system, "code": opioid_code}]},
    }
    facts = _mapped(pack, [], [_draft("d1", 5, 3), other])[0]
    assert {(m.status, tuple(m.classes)) for m in facts.medications} == {("draft", ("opioid_agonist",))}
    assert _flat(pack, facts)["meds.opioid_agonist"] == 1



# ── the card says the dose it judged (the lead's review of the start tiers) ─────────────────
def _two_drafts(sibling_daily: float | None) -> PatientFacts:
    sibling: dict[str, Any] = {"product": {"system": RX, "code": "197391"}, "status": "draft"}
    sibling["route"] = "oral"
    if sibling_daily is not None:
        sibling["daily_dose_mg"] = sibling_daily
    return PatientFacts.model_validate(
        {
            "as_of": AS_OF.isoformat(),
            "birth_date": OLD,
            "renal": {"egfr": {"value": 45, "date": "2025-02-20"}},
            "medications": [sibling],
            "order": {"product": {"system": RX, "code": "197391"}, "route": "oral", "dose_amount": 5,
                      "dose_unit": "mg", "doses_per_day": 3, "action": "new"},
        }
    )


def test_start_tiers_state_the_request_total_they_judged(engine: Engine) -> None:
    """Two 5 mg TID drafts: 30 mg/day started. A card saying "starting 15 mg/day … start below 20"
    would contradict itself; the start tiers name the total of the request's drafts."""
    found = {a.tier_id: a.summary for a in engine.evaluate(_two_drafts(15))}
    assert "starting 30 mg/day" in found["BAC-R04.high_start"]
    assert "ordered 30 mg/day" in found["BAC-D02.start_moderate"]
    assert "new start 30 mg/day" in found["BAC-R01.moderate_start"]


def test_a_sibling_dose_known_only_as_a_bound_keeps_the_start_tier(engine: Engine) -> None:
    """The other draft's dose unknown: the sum is only "≥15". The start tier still fires on the draft
    alone (its upper check reads the draft), never the ceiling tier with a claim that 15 exceeds 40."""
    found = {a.tier_id: a.summary for a in engine.evaluate(_two_drafts(None))}
    assert "BAC-R01.moderate" not in found
    assert "new start ≥15 mg/day" in found["BAC-R01.moderate_start"]
    assert "missing-data.combined_dose" in found  # what stays undecided is named
