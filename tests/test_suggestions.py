"""One-click dose suggestions (issue #10): one safe regimen per order, or none and the text says why.

Audit finding (``clinical-2026-12.md``) → test:

* §2 #2, H1/S3/S4 (D01 offers 80 mg/day on haemodialysis): ``test_dialysis_gets_no_one_click``
* §2 #2, H2/S1/S2 (D02/R04 offer 10 mg/day at eGFR 22): ``test_severe_ckd_gets_no_one_click``
* §2 #3, S5/P92 (D04 300 -> 60 mg/day in one click): ``test_aud_high_dose_gets_text_not_one_click``
* §2 #3, P89/P90 (R04 Beers 30-40 -> 10 mg/day): ``test_beers_ongoing_gets_text_not_one_click``
* §2 #3 (a one-click cut above ``abrupt_reduction_pct``): ``test_large_cut_is_advised_as_taper``,
  ``test_small_cut_is_offered``, ``test_step_limit_is_validated``
* §2 #4, P50 (25 mg tablet proposed; the single-dose tier cut the daily dose):
  ``test_single_dose_cap_spreads_the_same_daily_dose``,
  ``test_not_marketed_product_is_flagged_and_never_suggested``,
  ``test_products_carry_marketed_and_scored_with_sources``
* §3 D02 ("start at 5 mg three times daily" on dialysis): ``test_d02_states_the_lowest_start_limit``
* a draft without an id: ``test_draft_without_id_gets_none``
* item 4, the closure over 5,000 generated cases and every fixture: ``tests/test_suggestion_closure.py``
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from cds_engine.rules.compile import compile_pack
from cds_engine.rules.errors import PackLoadError
from cds_engine.service.cards import alert_card
from cds_engine.service.suggestions import OneClick, order_one_click
from cds_engine.sources.fhir import facts_from_resources
from suggestion_cases import AS_OF, ICD10, LOINC, RXNORM, SNOMED, UCUM

ROOT = Path(__file__).resolve().parents[1]
DISPLAY = {
    "197391": "Baclofen 10 MG Oral Tablet",
    "197392": "Baclofen 20 MG Oral Tablet",
    "199280": "Baclofen 25 MG Oral Tablet",
}
ORAL = {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]}
MS = {"coding": [{"system": ICD10, "code": "G35", "display": "Multiple sclerosis"}]}
AUD = {"coding": [{"system": ICD10, "code": "F10.20", "display": "Alcohol dependence, uncomplicated"}]}


def _request(
    ident: str, status: str, code: str, amount: float, unit: str, per_day: int, **extra: Any
) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": ident,
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-01-01" if status == "active" else AS_OF.date().isoformat(),
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": DISPLAY[code]}]},
        "dosageInstruction": [
            {
                "route": ORAL,
                "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [
                    {"doseQuantity": {"value": amount, "unit": unit, "system": UCUM, "code": unit}}
                ],
            }
        ],
        **extra,
    }


def _patient(*, age: int = 50, egfr: float | None = 90, dialysis: bool = False) -> list[dict]:
    out: list[dict] = [
        {
            "resourceType": "Patient",
            "id": "p1",
            "birthDate": f"{AS_OF.year - age - 1}-06-01",
            "gender": "female",
        }
    ]
    if egfr is not None:
        out.append(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "62238-1"}]},
                "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": "2026-11-20",
                "valueQuantity": {"value": egfr, "unit": "mL/min/{1.73_m2}"},
            }
        )
    if dialysis:
        out.append(
            {
                "resourceType": "Condition",
                "code": {"coding": [{"system": ICD10, "code": "Z99.2"}]},
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "subject": {"reference": "Patient/p1"},
            }
        )
    return out


def _offer(engine, pack, resources: list[dict], draft: dict) -> tuple[OneClick, list]:
    facts = facts_from_resources(
        resources, as_of=AS_OF, vocab=pack.vocabulary, drug_class="baclofen", draft_orders=[draft]
    )
    alerts = engine.evaluate_pack(pack, facts)
    offer = order_one_click(pack, alerts, draft, facts.order, lambda: engine.flat_facts(pack, facts))
    return offer, alerts


def _ongoing(
    code: str, amount: float, unit: str, per_day: int, draft_amount: float, draft_per_day: int, **kw
):
    """An active order and a draft that modifies it (priorPrescription)."""
    active = _request("active-1", "active", code, amount, unit, per_day)
    draft = _request(
        "draft-1",
        "draft",
        code,
        draft_amount,
        unit,
        draft_per_day,
        priorPrescription={"reference": "MedicationRequest/active-1"},
        **kw,
    )
    return active, draft


def test_dialysis_gets_no_one_click(engine, pack):
    active, draft = _ongoing("197391", 10, "mg", 3, 30, 4)  # 120 mg/day on haemodialysis
    offer, alerts = _offer(engine, pack, [*_patient(egfr=8, dialysis=True), active], draft)
    assert any(a.rule_id == "BAC-R03" for a in alerts) and any(a.rule_id == "BAC-D01" for a in alerts)
    assert offer.suggestion is None and "blocked" in offer.reason


def test_severe_ckd_gets_no_one_click(engine, pack):
    draft = _request("draft-1", "draft", "197391", 10, "mg", 1, reasonCode=[MS])  # new start 10 mg/day
    offer, alerts = _offer(engine, pack, _patient(age=70, egfr=22), draft)
    assert any(a.rule_id == "BAC-R02" for a in alerts)
    assert offer.suggestion is None and "blocked" in offer.reason


def test_aud_high_dose_gets_text_not_one_click(engine, pack):
    active, draft = _ongoing("197392", 3, "{tbl}", 5, 3, 5, reasonCode=[AUD])  # continue 300 mg/day
    offer, alerts = _offer(engine, pack, [*_patient(), active], draft)
    d04 = next(a for a in alerts if a.rule_id == "BAC-D04")
    assert d04.tier_id == "BAC-D04.mortality" and "reduce gradually under supervision" in d04.summary
    assert offer.suggestion is None  # D04 carries no one-click: 300 -> 80 mg/day would be an abrupt cut
    # an AUD dose increase (80 -> 240 mg/day) too fast: D03 may offer to keep the current dose,
    # and D04's threshold caps it
    active, draft = _ongoing("197392", 20, "mg", 4, 60, 4, reasonCode=[AUD])
    offer, alerts = _offer(engine, pack, [*_patient(), active], draft)
    assert offer.tier_id == "BAC-D03.fast" and offer.regimen is not None
    assert offer.regimen.daily_mg <= pack.params["aud_daily_warning_mg"]


def test_beers_ongoing_gets_text_not_one_click(engine, pack):
    active, draft = _ongoing("197391", 10, "mg", 4, 10, 4)  # continue 40 mg/day at 75 y, eGFR 55
    offer, alerts = _offer(engine, pack, [*_patient(age=75, egfr=55), active], draft)
    beers = next(a for a in alerts if a.rule_id == "BAC-R04")
    assert beers.tier_id == "BAC-R04.beers" and "reduce gradually" in beers.summary
    assert offer.suggestion is None


def test_single_dose_cap_spreads_the_same_daily_dose(engine, pack):
    category = [{"coding": [{"code": "outpatient"}]}]
    active, draft = _ongoing("197392", 40, "mg", 2, 40, 2, reasonCode=[MS], category=category)
    offer, alerts = _offer(engine, pack, [*_patient(), active], draft)  # 40 mg BID: single dose > 20
    assert offer.tier_id == "BAC-D01.single" and offer.suggestion is not None
    assert (offer.regimen.dose_mg, offer.regimen.per_day, offer.regimen.daily_mg) == (20, 4, 80)
    delete, create = offer.suggestion.actions
    assert delete.resourceId == "MedicationRequest/draft-1"
    created = create.resource
    assert created["medicationCodeableConcept"] == draft["medicationCodeableConcept"]  # same product
    for key in ("priorPrescription", "intent", "category", "reasonCode"):
        assert created[key] == draft[key], key
    assert created["dosageInstruction"][0]["route"] == ORAL and "id" not in created
    shown, suggestions = _carried(offer, alerts)
    card = alert_card(shown, pack, suggestions)
    assert card.suggestions and card.selectionBehavior == "at-most-one"
    # at most one suggestion per order
    assert sum(bool(offer.for_card(a)[1]) for a in alerts) == 1


def _carried(offer: OneClick, alerts: list) -> tuple:
    for alert in alerts:
        shown, suggestions = offer.for_card(alert)
        if suggestions:
            return shown, suggestions
    raise AssertionError("no card carries the suggestion")


def test_not_marketed_product_is_flagged_and_never_suggested(engine, pack):
    draft = _request("draft-1", "draft", "199280", 25, "mg", 2, reasonCode=[MS])  # the 25 mg tablet
    offer, alerts = _offer(engine, pack, _patient(), draft)
    f04 = next(a for a in alerts if a.rule_id == "BAC-F04")
    assert f04.tier_id == "BAC-F04.not_marketed" and f04.severity == "warning"
    assert offer.suggestion is None
    assert pack.rule("BAC-F04").spec.local_addition is not None
    assert pack.rule("BAC-F04").spec.local_addition.signoff == "pending"
    # a documented home medication of that product is not an order: no F04
    home = _request("active-1", "active", "199280", 25, "mg", 2)
    ok = _request("draft-2", "draft", "197391", 10, "mg", 3, reasonCode=[MS])
    _, alerts = _offer(engine, pack, [*_patient(), home], ok)
    assert not any(a.rule_id == "BAC-F04" for a in alerts)


def test_large_cut_is_advised_as_taper(engine, pack):
    active, draft = _ongoing("197391", 40, "mg", 3, 40, 3)  # continue 120 mg/day: cap 80 is a 33 % cut
    offer, alerts = _offer(engine, pack, [*_patient(), active], draft)
    assert offer.suggestion is None and offer.note and "taper" in offer.note
    shown, suggestions = _first_with_note(offer, alerts)
    assert not suggestions and "taper" in shown.detail


def _first_with_note(offer: OneClick, alerts: list) -> tuple:
    for alert in alerts:
        shown, suggestions = offer.for_card(alert)
        if shown is not alert:
            return shown, suggestions
    raise AssertionError("no card carries the note")


def test_small_cut_is_offered(engine, pack):
    active, draft = _ongoing("197391", 3, "{tbl}", 3, 3, 3)  # 3 tablets of 10 mg TID = 90 mg/day
    offer, _ = _offer(engine, pack, [*_patient(), active], draft)
    assert offer.suggestion is not None, offer.reason
    assert offer.regimen.daily_mg == 80 and offer.regimen.dose_mg <= 20  # 2 tablets four times daily
    quantity = offer.suggestion.actions[1].resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    assert quantity["value"] == 2 and quantity["code"] == "{tbl}"


def test_draft_without_id_gets_none(engine, pack):
    active, draft = _ongoing("197392", 40, "mg", 2, 40, 2)
    draft.pop("id")
    offer, _ = _offer(engine, pack, [*_patient(), active], draft)
    assert offer.suggestion is None and "id" in offer.reason


def test_step_limit_is_validated(pack):
    text = pack.file.read_text(encoding="utf-8")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("suggestion_max_step_pct:"))
    bad = text.replace(line, line.replace("value: 25", "value: 60"))
    with pytest.raises(PackLoadError, match="suggestion_max_step_pct"):
        compile_pack(bad, str(pack.file), pack.vocabulary)
    param = pack.spec.parameters["suggestion_max_step_pct"]
    assert param.basis == "design-choice" and param.signoff == "pending"
    assert pack.params["suggestion_max_step_pct"] < pack.params["abrupt_reduction_pct"]


@pytest.mark.parametrize(
    ("egfr", "dialysis", "limit"),
    [(8, True, "dialysis_daily_max_mg"), (22, False, "band_s_start_max_mg"),
     (40, False, "band_m_start_max_mg"), (65, False, "band_l_start_max_mg")],
)  # fmt: skip
def test_d02_states_the_lowest_start_limit(engine, pack, egfr, dialysis, limit):
    draft = _request("draft-1", "draft", "197391", 10, "mg", 3, reasonCode=[MS])  # new start 30 mg/day
    _, alerts = _offer(engine, pack, _patient(egfr=egfr, dialysis=dialysis), draft)
    d02 = next(a for a in alerts if a.rule_id == "BAC-D02")
    value = pack.params[limit]
    assert f"≤ {value:g} mg/day" in d02.summary and "three times daily" not in d02.summary
    assert value <= pack.params["start_daily_mg"]


def test_products_carry_marketed_and_scored_with_sources(pack):
    with (ROOT / "rules" / "vocabulary" / "products.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for col in ("marketed", "scored"):
            assert row[col] in ("yes", "no", "unverified"), row["code"]
            assert row[f"{col}_source"].strip(), (row["code"], col)
    by_code = {r["code"]: r for r in rows}
    assert by_code["199280"]["marketed"] == "no"
    assert all(r["marketed"] == "no" for r in rows if "Kemstro" in r["display"])
    assert all(r["marketed"] == "unverified" for r in rows if r["form"] == "granules")
    assert pack.vocabulary.products[(RXNORM, "197391")].marketed == "yes"


@pytest.mark.parametrize(("egfr", "dialysis", "expect"), [(90, False, 1), (8, True, 0)])
def test_hook_cards_carry_at_most_one_suggestion_per_order(engine, pack, egfr, dialysis, expect):
    """Through the service: 40 mg BID of 20 mg tablets (ongoing) — split on one card, none on dialysis."""
    from fastapi.testclient import TestClient
    from tests.service_helpers import LocalFhir, hook_request

    from cds_engine.service import ServiceSettings, create_app
    from cds_engine.service.validate import response_problems

    active, draft = _ongoing("197392", 40, "mg", 2, 40, 2, reasonCode=[MS])
    record = [*_patient(egfr=egfr, dialysis=dialysis), active]
    for i, resource in enumerate(record):
        resource.setdefault("id", f"r{i}")
        resource.setdefault("subject", {"reference": "Patient/p1"})
    fhir = LocalFhir(record)
    app = create_app(
        lambda: engine,
        auth=None,
        fhir_transport=fhir.transport("https://ehr.example/fhir"),
        clock=lambda: AS_OF,
        settings=ServiceSettings(max_body_bytes=200_000),
    )
    body = hook_request("order-sign", "p1", [draft], fhir_server="https://ehr.example/fhir")
    with TestClient(app) as client:
        response = client.post("/cds-services/baclofen-order-sign", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert response_problems(data) == []
    carrying = [c for c in data["cards"] if c.get("suggestions")]
    assert len(carrying) == expect
    for card in carrying:
        (suggestion,) = card["suggestions"]
        assert [a["type"] for a in suggestion["actions"]] == ["delete", "create"]
        assert "20 mg four times daily (80 mg/day)" in suggestion["label"]


def test_liquid_regimen_keeps_its_concentration_and_states_mg_and_ml(pack):
    from cds_engine.facts.model import Coding, Order
    from cds_engine.rules.one_click import Limits
    from cds_engine.service.suggestions import plan_regimen
    from cds_engine.vocabulary import Product

    liquid = Product(
        "x", RXNORM, "Baclofen 1 MG/ML Oral Solution", "baclofen", "solution", "oral", None, 1.0, "yes"
    )
    order = Order(product=Coding(code="x"), dose_amount=25, dose_unit="mL", doses_per_day=4, action="modify")
    lim = Limits(daily=80.0, single=20.0)
    regimen = plan_regimen(
        liquid, order, lim, ordered_daily=100, ordered_single=25, floor_daily=75, liquid_step_ml=0.5
    )
    assert regimen is not None and (regimen.dose_mg, regimen.per_day) == (20, 4)
    assert regimen.text("mL") == "20 mg (20 mL of 1 mg/mL) four times daily (80 mg/day)"
    assert plan_regimen(liquid, order, lim, ordered_daily=100, ordered_single=25) is None  # no volume step
    unmarketed = Product("y", RXNORM, "y", "baclofen", "solution", "oral", None, 1.0, "unverified")
    assert (
        plan_regimen(unmarketed, order, lim, ordered_daily=100, ordered_single=25, liquid_step_ml=0.5) is None
    )


def test_caps_apply_to_the_combined_oral_dose(engine, pack):
    """An active order the draft does not replace counts against the daily cap (issue #11's fact)."""
    active, draft = _ongoing("197392", 40, "mg", 2, 40, 2, reasonCode=[MS])  # 80 mg/day, 40 mg doses
    beside = _request("active-2", "active", "197391", 10, "mg", 1, authoredOn="2025-06-01")  # + 10 mg/day
    offer, _ = _offer(engine, pack, [*_patient(), active, beside], draft)
    assert offer.suggestion is not None, offer.reason
    # 80 mg/day in all: the draft may have 70, in whole 20 mg tablets and doses <= 20 mg: 60 mg/day
    assert (offer.regimen.dose_mg, offer.regimen.per_day) == (20, 3)
    created = dict(offer.suggestion.actions[1].resource, id="created-1")
    facts = facts_from_resources(
        [*_patient(), active, beside], as_of=AS_OF, vocab=pack.vocabulary, drug_class="baclofen",
        draft_orders=[created],
    )  # fmt: skip
    flat = engine.flat_facts(pack, facts)
    assert flat["combined_oral_daily_mg"] == 70
    assert not any(a.tier_id in pack.dose_dependent for a in engine.evaluate_pack(pack, facts))


def test_single_dose_cap_alone_never_lowers_the_daily_dose(engine, pack):
    # 50 mg once daily of 10 mg tablets: only the single-dose cap is crossed, and 50 mg/day cannot be
    # split into equal whole-tablet doses of <= 20 mg at up to four a day: no suggestion (not 40 mg/day)
    active, draft = _ongoing("197391", 50, "mg", 1, 50, 1, reasonCode=[MS])
    offer, alerts = _offer(engine, pack, [*_patient(), active], draft)
    assert {a.tier_id for a in alerts} >= {"BAC-D01.single"}
    assert offer.suggestion is None


def test_plan_regimen_respects_every_bound():
    """Property: whatever the limits, a planned regimen is within them, never higher, not below the floor."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cds_engine.facts.model import Coding, Order
    from cds_engine.rules.one_click import Limits
    from cds_engine.service.suggestions import plan_regimen
    from cds_engine.vocabulary import Product

    @settings(max_examples=400, derandomize=True, deadline=None)
    @given(
        strength=st.sampled_from([5.0, 10.0, 20.0]),
        scored=st.sampled_from(["yes", "no", "unverified"]),
        units=st.sampled_from([0.5, 1, 1.5, 2, 3, 4]),
        per_day=st.integers(1, 6),
        daily_cap=st.none() | st.floats(1, 120),
        strict=st.booleans(),
        single_cap=st.none() | st.floats(1, 40),
        floor_pct=st.floats(0, 1),
        other=st.floats(0, 40),
    )
    def check(strength, scored, units, per_day, daily_cap, strict, single_cap, floor_pct, other):
        product = Product("p", RXNORM, "p", "baclofen", "tablet", "oral", strength, None, "yes", scored)
        single = units * strength
        order = Order(product=Coding(code="p"), dose_amount=single, dose_unit="mg", doses_per_day=per_day)
        lim = Limits(daily=daily_cap, daily_strict=strict, single=single_cap)
        floor = single * per_day * floor_pct
        kept = {"ordered_daily": single * per_day, "ordered_single": single}
        regimen = plan_regimen(product, order, lim, floor_daily=floor, other_daily=other, **kept)
        if regimen is None:
            return
        assert lim.allows(regimen.daily_mg + other, regimen.dose_mg)
        assert regimen.daily_mg <= single * per_day + 1e-9 and regimen.dose_mg <= single + 1e-9
        assert regimen.daily_mg >= floor - 1e-9 and regimen.per_day in (1, 2, 3, 4)
        assert (regimen.units * 2).is_integer() and (scored == "yes" or float(regimen.units).is_integer())
        assert (regimen.daily_mg, regimen.per_day) != (single * per_day, per_day)

    check()


def test_service_recheck_withdraws_a_regimen_that_would_fire(engine, pack):
    from cds_engine.service.suggestions import Regimen, would_fire

    active, draft = _ongoing("197392", 40, "mg", 2, 40, 2, reasonCode=[MS])
    resources = [*_patient(), active]
    facts = facts_from_resources(
        resources, as_of=AS_OF, vocab=pack.vocabulary, drug_class="baclofen", draft_orders=[draft]
    )
    alerts = engine.evaluate_pack(pack, facts)
    offer = order_one_click(pack, alerts, draft, facts.order, lambda: engine.flat_facts(pack, facts), facts)
    assert offer.suggestion is not None and would_fire(pack, facts, offer.regimen) == []
    product = pack.vocabulary.products[(RXNORM, "197392")]
    too_much = Regimen(product, 2, 3, 40, 120)  # 40 mg three times daily
    assert {"BAC-D01.daily", "BAC-D01.single"} <= set(would_fire(pack, facts, too_much))
