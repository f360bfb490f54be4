"""Issue #11 — never silent on odd inputs: routes, forms, unreadable labs, tapers, several orders.

Audit finding (the clinical audit of 2026-12) → fixtures (``fixtures/baclofen/``, generated
from ``fixtures/source/baclofen/odd_inputs.yaml``) → tests here:

| Finding | Fixtures | Tests |
|---|---|---|
| §2 #1 enteral routes (SNOMED 127492001, 127490009; "per G tube", "feeding tube", "PO/NG", "J-tube", "nasojejunal") switch the oral checks off (H4, H5) | R-BAC-F05-silent-enteral-* | test_route_spellings, test_fhir_enteral_route_checked_like_oral, test_hook_order_sign_by_tube_gets_the_oral_cards |
| §2 #1 an unrecognised route reads as FALSE | R-BAC-F05-fire-warning-route-unrecognised, …-markup | test_fhir_unrecognised_route_is_reported_escaped, test_unrecognised_route_kept_as_written |
| §2 #1 rectal / sublingual / buccal orders silent (P95–P101) | R-BAC-F05-fire-warning-no-product-* | test_fhir_no_product_route_checked_as_systemic |
| §2 #1 oral product with no route | R-BAC-F05-silent-route-missing-tablet | test_no_route_tablet_detail_says_checked_as_oral |
| §2 #5, §3 W01: stop with no route gives only "route not stated" (P88) | R-BAC-W01-fire-critical-route-missing, R-BAC-W01-silent-route-missing-pump | test_fhir_stop_without_route_fires_w01 |
| §2 #5, §3 W03: home baclofen without route is silent (P79) | R-BAC-W03-fire-warning-home-route-missing | (fixture) |
| §3 W02: pump-refill item without a pump (P25) | R-BAC-W02-silent-no-pump-no-refill-item, CA-it-no-refill-date | (fixtures) |
| §3 F01: "topical solution" read as an oral liquid (P91); lotion, foam, spray | R-BAC-F01-fire-critical-text-* | test_form_from_text |
| §3 F01/F03: text-only oral liquid in mL without concentration | R-BAC-F03-fire-warning-text-oral-solution-ml | test_form_from_text |
| newcomer run: text / wrong-unit eGFR becomes "no eGFR" or an older value | CA-egfr-unreadable-*, R-BAC-R02-fire-critical-egfr-unit-* | test_renal_unit_spellings, test_fhir_unreadable_newest_egfr_is_never_replaced, test_fhir_unreadable_egfr_with_esrd_floor_still_bands |
| §3 D01 / C07: several active oral orders (P51); T03, T04, T17 unchanged | R-BAC-D01-fire-critical-combined-*, R-BAC-C07-* | test_combined_oral_daily_mg_*, test_sum_active_oral_orders_parameter_off |
| taper orders (bounded phases, open-ended end, single phase, dispenseRequest) | R-BAC-W01-*-taper-* | test_taper_phases_via_fhir, test_taper_single_bounded_phase_or_supply_is_not_a_discontinuation |
| gestational age for BAC-P01's 36-week tier | R-BAC-P01-fire-*-ga-* | test_gestational_age_from_observations, test_gestational_age_older_than_42_weeks_is_ignored |
"""

# ruff: noqa: E501 — the audit-finding table of the module docstring is wider than a code line
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import hook_request, medication_request

from cds_engine.facts.model import PatientFacts
from cds_engine.facts.normalize import display_text, form_from_text, normalize_form, normalize_route
from cds_engine.service import create_app
from cds_engine.sources.fhir import facts_from_resources

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "baclofen"
AS_OF = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ELDERLY = {"resourceType": "Patient", "id": "p1", "birthDate": "1954-11-01", "gender": "female"}


def egfr_code(pack) -> str:
    for (kind, system, code), groups in sorted(pack.vocabulary.codes.items()):
        if kind == "observation" and "egfr" in groups and system == LOINC:
            return code
    raise LookupError("egfr")


def observation(code: str, when: str, **value) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        **value,
    }


def egfr_obs(pack, value: float, when: str = "2026-01-10", unit: str = "mL/min/{1.73_m2}") -> dict:
    return observation(egfr_code(pack), when, valueQuantity={"value": value, "unit": unit})


def evaluate(engine, pack, resources, drafts, patient=ELDERLY):
    facts = facts_from_resources(
        [patient, *resources],
        as_of=AS_OF,
        vocab=pack.vocabulary,
        drug_class=pack.context.drug_class,
        draft_orders=drafts,
    )
    return facts, {a.rule_id if a.kind == "finding" else a.tier_id: a for a in engine.evaluate(facts)}


def route_concept(code: str | None = None, display: str | None = None, text: str | None = None) -> dict:
    concept: dict = {}
    if code or display:
        pairs = (("system", SNOMED), ("code", code), ("display", display))
        concept["coding"] = [{k: v for k, v in pairs if v}]
    if text:
        concept["text"] = text
    return concept


def draft(route: dict | None, **kw) -> dict:
    resource = medication_request(dose=kw.pop("dose", 30), per_day=kw.pop("per_day", 4), **kw)
    if route is None:
        resource["dosageInstruction"][0].pop("route")
    else:
        resource["dosageInstruction"][0]["route"] = route
    return resource


# ── 1. routes ───────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("written", "family"),
    [
        ("127492001", "enteral"),
        ("127490009", "enteral"),
        ("127491008", "enteral"),
        ("418730005", "enteral"),
        ("420218003", "enteral"),
        ("Nasogastric route", "enteral"),
        ("Per G Tube", "enteral"),
        ("feeding tube", "enteral"),
        ("PO/NG", "enteral"),
        ("oral or G-tube", "enteral"),
        ("J-tube", "enteral"),
        ("nasojejunal", "enteral"),
        ("via PEG", "enteral"),
        ("NGT", "enteral"),
        ("PO", "oral"),
        ("Oral route (qualifier value)", "oral"),
        ("rectal", "rectal"),
        ("37839007", "sublingual"),
        ("buccal", "buccal"),
        ("IT", "intrathecal"),
        ("72607000", "intrathecal"),
    ],
)
def test_route_spellings(written, family):
    assert normalize_route(written) == family


def test_unrecognised_route_kept_as_written():
    assert normalize_route("via banana") == "via banana"
    assert normalize_route("PO/IV") == "po/iv"  # not all parts oral/enteral: not recognised
    assert display_text("<b>per *os*</b>") == r"\<b\>per \*os\*\</b\>"
    assert len(display_text("x" * 500) or "") == 40


@pytest.mark.parametrize(
    "route",
    [
        route_concept("127492001", "Nasogastric route"),
        route_concept("127490009", "Gastrostomy route"),
        route_concept(text="per G tube"),
        route_concept(text="PO/NG"),
        route_concept(text="nasojejunal"),
    ],
)
def test_fhir_enteral_route_checked_like_oral(engine, pack, route):
    """Audit H4/H5: 71 y, eGFR 20, 30 mg QID by tube gets the same criticals as by mouth."""
    _facts, alerts = evaluate(engine, pack, [egfr_obs(pack, 20)], [draft(route)])
    assert {"BAC-D01", "BAC-R02", "BAC-R04"} <= set(alerts)
    assert all(alerts[r].severity == "critical" for r in ("BAC-D01", "BAC-R02", "BAC-R04"))
    assert "BAC-F05" not in alerts


def test_fhir_unrecognised_route_is_reported_escaped(engine, pack):
    _facts, alerts = evaluate(engine, pack, [egfr_obs(pack, 20)], [draft(route_concept(text="via *banana*"))])
    assert alerts["BAC-F05"].tier_id == "BAC-F05.route_unrecognised"
    assert r"via \*banana\*" in alerts["BAC-F05"].summary
    assert {"BAC-D01", "BAC-R02", "BAC-R04"} <= set(alerts)  # checked as oral


def test_fhir_no_product_route_checked_as_systemic(engine, pack):
    rectal = route_concept("37161004", "Rectal route")
    _, alerts = evaluate(engine, pack, [egfr_obs(pack, 20)], [draft(rectal)])
    assert alerts["BAC-F05"].tier_id == "BAC-F05.no_product_for_route"
    assert alerts["BAC-R02"].severity == "critical"
    assert "BAC-F01" not in alerts and "BAC-F02" not in alerts


def test_no_route_tablet_detail_says_checked_as_oral(engine):
    fixture = json.loads((FIXTURES / "R-BAC-F05-silent-route-missing-tablet.json").read_text())
    alerts = engine.evaluate(PatientFacts.model_validate(fixture["facts"]))
    d01 = next(a for a in alerts if a.rule_id == "BAC-D01")
    assert "not stated — checked as oral" in d01.detail
    assert not any(a.tier_id.endswith(".route") and a.kind == "cannot-assess" for a in alerts)


def test_fhir_stop_without_route_fires_w01(engine, pack):
    """Audit P88: stopping long-term baclofen with no route recorded gives the critical W01."""
    active = medication_request(id="home-1", status="active", dose=20, per_day=3, authoredOn="2025-01-01")
    active["dosageInstruction"][0].pop("route")
    stop = draft(None, id="mr-2", status="stopped", dose=20, per_day=3,
                 priorPrescription={"reference": "MedicationRequest/home-1"})
    _, alerts = evaluate(engine, pack, [egfr_obs(pack, 90), active], [stop])
    assert alerts["BAC-W01"].severity == "critical"


# ── 3. unreadable renal results ────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "unit", ["mL/min/{1.73_m2}", "mL/min/1.73m2", "mL/min/1.73 m2", "ml/min/1.73m^2", "mL/min per 1.73 m2"]
)
def test_renal_unit_spellings(engine, pack, unit):
    facts, alerts = evaluate(engine, pack, [egfr_obs(pack, 25, unit=unit)], [draft(None, dose=5, per_day=3)])
    assert facts.renal.egfr is not None and facts.renal.egfr_unreadable is None
    assert alerts["BAC-R02"].severity == "critical"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"valueString": "abc"}, "no readable value"),
        ({"valueQuantity": {"value": 1.2, "unit": "mg/dL"}}, "not reported in mL/min/1.73"),
        ({"valueQuantity": {"value": 80, "unit": "umol/L"}}, "not reported in mL/min/1.73"),
        ({"dataAbsentReason": {"text": "haemolysed"}}, "no readable value"),
    ],
)
def test_fhir_unreadable_newest_egfr_is_never_replaced(engine, pack, value, problem):
    """Newcomer run: a text/mg/dL newest eGFR silently became 'no eGFR' or an older value."""
    older = egfr_obs(pack, 95, when="2025-12-20")
    newest = observation(egfr_code(pack), "2026-01-12", **value)
    facts, alerts = evaluate(engine, pack, [older, newest], [draft(None, dose=5, per_day=3)])
    assert facts.renal.egfr is None and facts.renal.egfr_unreadable is not None
    r00 = alerts["BAC-R00"]
    assert r00.tier_id == "BAC-R00.unreadable"
    assert "2026-01-12" in r00.summary and problem in r00.summary


def test_fhir_unreadable_egfr_with_esrd_floor_still_bands(engine, pack):
    """The ESRD floor of the renal issue still applies when the newest eGFR cannot be read."""
    esrd = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "N18.6"}]},
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
    }
    newest = observation(egfr_code(pack), "2026-01-12", valueString="abc")
    _, alerts = evaluate(engine, pack, [newest, esrd], [draft(None, dose=5, per_day=3)])
    assert "BAC-R00" in alerts
    assert "BAC-R02" in alerts  # treated as at least band S


# ── 6. several active oral orders ──────────────────────────────────────────────────────────


def active_order(id: str, dose: float, per_day: float, **extra) -> dict:
    resource = medication_request(id=id, status="active", dose=dose, per_day=per_day, **extra)
    resource["authoredOn"] = "2025-01-01"
    return resource


def test_combined_oral_daily_mg_prn_addon_via_fhir(engine, pack):
    """Audit P51: 20 mg QID plus a PRN 10 mg up to twice daily is 100 mg/day: BAC-D01 critical."""
    prn = draft(route_concept("26643006", "Oral route"), dose=10, per_day=None)
    prn["dosageInstruction"][0]["asNeededBoolean"] = True
    prn["dosageInstruction"][0]["maxDosePerPeriod"] = {
        "numerator": {"value": 20, "unit": "mg"},
        "denominator": {"value": 1, "unit": "d"},
    }
    facts, alerts = evaluate(
        engine, pack, [egfr_obs(pack, 95), active_order("old-1", 20, 4)], [prn],
        patient={**ELDERLY, "birthDate": "1980-01-01"},
    )
    assert facts.order is not None and facts.order.replaces_presumed
    assert alerts["BAC-D01"].severity == "critical" and "100" in alerts["BAC-D01"].summary
    assert "BAC-W01" not in alerts  # an add-on is never compared with the order beside it


def test_combined_oral_daily_mg_stop_old_and_new_in_one_request(engine, pack):
    old = active_order("old-1", 20, 4)
    new = draft(route_concept("26643006", "Oral route"), id="mr-new", dose=20, per_day=3)
    stop = medication_request(id="old-1", status="stopped", dose=20, per_day=4)
    facts, alerts = evaluate(
        engine, pack, [egfr_obs(pack, 95), old], [new, stop], patient={**ELDERLY, "birthDate": "1980-01-01"}
    )
    assert facts.order is not None and facts.order.replaces == "old-1" and not facts.order.replaces_presumed
    assert "BAC-C07" not in alerts and "BAC-D01" not in alerts


def test_combined_oral_daily_mg_resigned_order(engine, pack):
    old = active_order("old-1", 20, 4)
    again = draft(route_concept("26643006", "Oral route"), id="old-1", dose=20, per_day=4)
    facts, alerts = evaluate(
        engine, pack, [egfr_obs(pack, 95), old], [again], patient={**ELDERLY, "birthDate": "1980-01-01"}
    )
    assert facts.order is not None and facts.order.action == "continue" and not facts.order.replaces_presumed
    assert "BAC-C07" not in alerts and "BAC-D01" not in alerts


def test_combined_oral_daily_mg_presumed_replacement_says_if(engine):
    fixture = json.loads((FIXTURES / "R-BAC-C07-fire-warning-if-additional-bedtime.json").read_text())
    alerts = {a.rule_id: a for a in engine.evaluate(PatientFacts.model_validate(fixture["facts"]))}
    assert alerts["BAC-C07"].summary.startswith("If this order is in addition to")
    assert "100 mg/day" in alerts["BAC-C07"].summary
    assert alerts["BAC-W01"].summary.startswith("If this replaces")


def test_sum_active_oral_orders_parameter_off(engine):
    """With the parameter false the daily dose is per order (knowledge file §4.2)."""
    import dataclasses

    from cds_engine.facts.derive import derive

    fixture = json.loads((FIXTURES / "R-BAC-D01-fire-critical-combined-prn-addon.json").read_text())
    pack = next(p for p in engine.packs if p.id == "baclofen")
    facts = PatientFacts.model_validate(fixture["facts"])
    on = derive(facts, pack.vocabulary, pack.context)
    off = derive(facts, pack.vocabulary, dataclasses.replace(pack.context, sum_active_oral_orders=False))
    assert on["combined_oral_daily_mg"] == 100 and off["combined_oral_daily_mg"] == 20


# ── 2. forms from text ─────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("baclofen oral solution", "solution"),
        ("Baclofen 1% topical solution", "topical-solution"),
        ("baclofen 5% lotion", "lotion"),
        ("baclofen foam", "foam"),
        ("baclofen 2% spray", "spray"),
        ("Baclofen 10 MG Oral Tablet", "tablet"),
        ("baclofen intrathecal injection 2 mg/mL", "injection"),
        ("baclofen", None),
    ],
)
def test_form_from_text(text, form):
    assert form_from_text(text) == form
    if form is not None:
        assert normalize_form(text) == form


# ── 5. taper orders ────────────────────────────────────────────────────────────────────────


def phased(phases: list[tuple[float, float | None]], **kw) -> dict:
    """A draft with sequenced phases: (mg per dose TID, days or None for open-ended)."""
    resource = draft(route_concept("26643006", "Oral route"), **kw)
    instructions = []
    for seq, (mg, days) in enumerate(phases, start=1):
        repeat: dict = {"frequency": 3, "period": 1, "periodUnit": "d"}
        if days is not None:
            repeat["boundsDuration"] = {"value": days, "unit": "d", "code": "d"}
        instructions.append(
            {
                "sequence": seq,
                "route": route_concept("26643006", "Oral route"),
                "timing": {"repeat": repeat},
                "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg"}}],
            }
        )
    resource["dosageInstruction"] = instructions
    return resource


ADULT = {**ELDERLY, "birthDate": "1980-01-01"}


@pytest.mark.parametrize(
    ("phases", "action", "days", "w01"),
    [
        ([(20, 4), (10, 4), (5, 4)], "discontinue", 12, None),  # bounded taper to stop, long enough
        ([(10, 2), (5, 2)], "discontinue", 4, "critical"),  # taper to stop shorter than the minimum
        ([(10, 7), (5, None)], "modify", 7, None),  # stepped reduction, open-ended last phase
    ],
)
def test_taper_phases_via_fhir(engine, pack, phases, action, days, w01):
    old = active_order("old-1", 20, 4)
    facts, alerts = evaluate(engine, pack, [egfr_obs(pack, 95), old], [phased(phases)], patient=ADULT)
    assert facts.order is not None and facts.order.action == action
    assert facts.order.taper is not None and facts.order.taper.duration_days == days
    assert (alerts["BAC-W01"].severity if "BAC-W01" in alerts else None) == w01


def test_taper_single_bounded_phase_or_supply_is_not_a_discontinuation(engine, pack):
    old = active_order("old-1", 20, 4)
    single = phased([(10, 7)])
    supply = draft(route_concept("26643006", "Oral route"), dose=10, per_day=3)
    supply["dispenseRequest"] = {"expectedSupplyDuration": {"value": 7, "unit": "d", "code": "d"}}
    for resource in (single, supply):
        facts, _ = evaluate(engine, pack, [egfr_obs(pack, 95), old], [resource], patient=ADULT)
        assert facts.order is not None and facts.order.action != "discontinue"
        assert facts.order.taper is None


# ── 4. gestational age ─────────────────────────────────────────────────────────────────────

WOMAN = {"resourceType": "Patient", "id": "p1", "birthDate": "1995-03-01", "gender": "female"}


@pytest.mark.parametrize(
    ("code", "when", "value", "tier", "weeks"),
    [
        ("49051-6", "2025-12-31", {"valueQuantity": {"value": 34, "unit": "wk"}}, "BAC-P01.late", 36.14),
        ("11884-4", "2026-01-15", {"valueString": "35+6"}, "BAC-P01.pregnant", 35.86),
        ("18185-9", "2026-01-12", {"valueQuantity": {"value": 250, "unit": "d"}}, "BAC-P01.late", 36.14),
        ("11885-1", "2026-01-15", {"valueString": "36w 1d"}, "BAC-P01.late", 36.14),
        ("11778-8", "2026-01-01", {"valueDateTime": "2026-02-05"}, "BAC-P01.late", 37.0),
    ],
)
def test_gestational_age_from_observations(engine, pack, code, when, value, tier, weeks):
    """GA (weeks, days, weeks+days) or an estimated delivery date, advanced to as_of."""
    facts, alerts = evaluate(
        engine, pack, [egfr_obs(pack, 95), observation(code, when, **value)],
        [draft(None, dose=5, per_day=3)], patient=WOMAN,
    )
    assert facts.reproductive.pregnant is True
    assert facts.reproductive.gestational_age_weeks == pytest.approx(weeks, abs=0.01)
    assert alerts["BAC-P01"].tier_id == tier


def test_gestational_age_older_than_42_weeks_is_ignored(engine, pack):
    old = observation("49051-6", "2025-01-10", valueQuantity={"value": 10, "unit": "wk"})
    over = observation("49051-6", "2025-10-01", valueQuantity={"value": 30, "unit": "wk"})  # 45 wk today
    for resource in (old, over):
        facts, alerts = evaluate(
            engine, pack, [egfr_obs(pack, 95), resource], [draft(None, dose=5, per_day=3)], patient=WOMAN
        )
        assert facts.reproductive.gestational_age_weeks is None and facts.reproductive.pregnant is None
        assert "BAC-P01" not in alerts


# ── end to end: the audit's hook probes H4/H5 (NG / G-tube) ──────────────────────────────


@pytest.mark.parametrize(
    "route",
    [route_concept("127492001", "Nasogastric route"), route_concept(text="Per G Tube")],
)
def test_hook_order_sign_by_tube_gets_the_oral_cards(engine, pack, route):
    """71-year-old, eGFR 20, 30 mg QID by NG or G-tube: the same critical cards as by mouth."""
    prefetch_resources = [ELDERLY, egfr_obs(pack, 20)]
    bundle = {"resourceType": "Bundle", "type": "searchset",
              "entry": [{"resource": r} for r in prefetch_resources]}
    app = create_app(lambda: engine, auth=None, clock=lambda: AS_OF)
    body = hook_request("order-sign", "p1", [draft(route)], prefetch={"patient": ELDERLY, "observations": bundle})
    with TestClient(app) as client:
        response = client.post("/cds-services/baclofen-order-sign", json=body)
    assert response.status_code == 200, response.text
    cards = {c["source"]["topic"]["code"]: c["indicator"] for c in response.json()["cards"]}
    assert {cards.get(r) for r in ("BAC-D01", "BAC-R02", "BAC-R04")} == {"critical"}
