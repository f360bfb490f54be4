"""Card text a prescriber can act on (issue #17).

Audit finding (`clinical-2026-12.md` §2 item 10, §3, §7; newcomer run §4 #14) → test here:

* interaction cards do not name the drug; "unknown" for classes not taken →
  ``test_interaction_card_names_the_medicine``, ``test_absent_class_reads_none_only_when_lists_complete``,
  ``test_prefetch_completeness``
* authoring notes ("the seed's …", parameter names, group ids) in card text →
  ``test_lint_refuses_authoring_notes``, ``test_shipped_card_text_has_no_authoring_notes``,
  ``test_offlabel_card_shows_words_not_group_ids``
* template bugs (R00 "no result on file days old", W01 "reduction 0%" on a stop, W03 hours since
  admission, F02 "do not give intrathecal" for an oral product, S03 condition, D04 cites S21) →
  ``test_template_bugs_fixed``
* C01/C06/A01 advise an abrupt stop → ``test_no_card_advises_an_abrupt_stop``
* the same five generic override reasons everywhere → ``test_override_reasons_per_rule``
* a site override gives "≤ 5", "≤ 2.5" and "≤ 26.7" on one alert; lint silent →
  ``test_lint_errors_on_literal_threshold_in_suggestion``, ``test_site_override_reaches_every_number``
* BAC-S04's SCI ≥ T6 branch missing → ``test_sci_at_t6_or_above_raises_the_caution``
* ``signoff: approved`` without approver/date → ``test_lint_refuses_approval_without_record``,
  ``test_shipped_parameters_carry_no_unrecorded_approval``, ``test_card_footer_and_healthz_show_approval``
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds_engine.authoring.text_lint import _NOT_A_THRESHOLD, _NUMBER, clinician_texts
from cds_engine.authoring.verify import verify_text
from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.messages import INCOMPLETE_MEDICATIONS, fmt_value
from cds_engine.rules.governance import approval_state
from cds_engine.rules.overrides import reasons_for
from cds_engine.service.cards import alert_card
from cds_engine.service.models import HookRequest
from cds_engine.service.prefetch import gather_prefetch
from cds_engine.vocabulary import Vocabulary
from conftest import RULES

FIXTURES = RULES.parent / "fixtures" / "baclofen"
AS_OF = "2026-01-15T12:00:00+00:00"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@pytest.fixture(scope="module")
def oracle() -> Engine:
    return Engine.from_dir(RULES, evaluator="oracle")


@pytest.fixture(scope="module")
def bac(oracle: Engine):
    return next(p for p in oracle.packs if p.id == "baclofen")


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_dir(RULES / "vocabulary")


def _patient(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "as_of": AS_OF,
        "birth_date": "1960-05-02",
        "renal": {"egfr": {"value": 95, "date": "2026-01-05"}},
        "order": {
            "product": {"system": RXNORM, "code": "197391"},
            "route": "oral", "dose_amount": 5, "dose_unit": "mg", "doses_per_day": 3,
            "indication_group": "spasticity", "action": "new",
        },
    }
    base.update(extra)
    return base


def _opioid(name: str = "oxycodone 5 mg tablet") -> dict[str, Any]:
    return {"product": {"display": name}, "classes": ["opioid_agonist"]}


def _alert(engine: Engine, facts: dict[str, Any], rule_id: str):
    alerts = [a for a in engine.evaluate(PatientFacts.model_validate(facts)) if a.rule_id == rule_id]
    assert alerts, f"{rule_id} did not fire"
    return alerts[0]


# ── 1. interaction cards name the medicines; "none" only for complete lists ──────────────────

def test_interaction_card_names_the_medicine(oracle):
    alert = _alert(oracle, _patient(medications=[_opioid()]), "BAC-C01")
    first_line = alert.detail.splitlines()[0]
    assert "oxycodone 5 mg tablet" in first_line
    assert alert.evidence["meds_named.opioid_agonist"] == "oxycodone 5 mg tablet"
    assert alert.evidence["meds.opioid_agonist"] == 1


def test_medicine_names_are_escaped_and_bounded(oracle):
    hostile = "**Morphine** [click](https://evil.example) " + "x" * 200
    alert = _alert(oracle, _patient(medications=[_opioid(hostile)]), "BAC-C01")
    named = alert.evidence["meds_named.opioid_agonist"]
    assert "**Morphine**" not in alert.detail and "](" not in named and len(named) <= 80


@pytest.mark.parametrize("complete", [None, False, True])
def test_absent_class_reads_none_only_when_lists_complete(oracle, complete):
    facts = _patient(medications=[_opioid()])
    if complete is not None:
        facts["medication_lists_complete"] = complete
    detail = _alert(oracle, facts, "BAC-C01").detail
    if complete:
        assert "benzodiazepines:\nnone" in detail or "benzodiazepines: none" in detail.replace("\n", " ")
        assert INCOMPLETE_MEDICATIONS not in detail
    else:
        assert INCOMPLETE_MEDICATIONS in detail
        assert "none" not in detail.split("Opioid co-use")[0]
    assert "benzodiazepines unknown" not in detail


def _request(prefetch: dict[str, Any]) -> HookRequest:
    return HookRequest.model_validate({
        "hook": "order-sign", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "p1",
                    "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": []}},
        "prefetch": prefetch,
    })


_TEMPLATES = {
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}",
    "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
    "medicationAdministrations": "MedicationAdministration?patient={{context.patientId}}",
}
_EMPTY = {"resourceType": "Bundle", "type": "searchset", "entry": []}
_PAGED = {**_EMPTY, "link": [{"relation": "next", "url": "https://ehr.example/fhir/next"}]}
_OUTCOME = {"resourceType": "OperationOutcome", "issue": []}


@pytest.mark.parametrize(
    ("prefetch", "complete"),
    [
        ({"medicationRequests": _EMPTY, "medicationStatements": _EMPTY, "medicationAdministrations": None},
         True),
        ({"medicationRequests": _EMPTY, "medicationStatements": _EMPTY}, False),  # administrations not read
        ({"medicationRequests": _PAGED, "medicationStatements": _EMPTY, "medicationAdministrations": _EMPTY},
         False),  # an unfollowed next link
        ({"medicationRequests": _OUTCOME, "medicationStatements": _EMPTY,
          "medicationAdministrations": _EMPTY}, False),  # the EHR failed
    ],
)
def test_prefetch_completeness(prefetch, complete):
    got = asyncio.run(gather_prefetch(_request(prefetch), _TEMPLATES, None))
    assert got.medication_lists_complete() is complete


# ── 2. no authoring notes in clinician text ──────────────────────────────────────────────────

_MINI = """\
pack:
  id: testpack
  title: Test pack
  version: 0.0.1
  status: draft
  jurisdiction: US
  url: https://example.org/packs/testpack
  drug: {class: gabapentinoid, display: Test drug}
  approval: {status: pending-local-clinical-validation}
  triggers: {drug_classes: [gabapentinoid]}
parameters:
  max_mg: {value: 80, unit: mg/day, basis: label%(signoff)s}
sources:
  S1: {title: Test source}
override_reasons:
  - {code: other, display: Other}
%(labels)s
rules:
  - id: TST-D01
    title: Dose above maximum
    category: dose-range
    tiers:
      - id: TST-D01.high
        severity: critical
        when:
          all:
            - {fact: daily_dose_mg, gt: {param: max_mg}}
            - {fact: order_indication, ne: aud, missing: fire}
    summary: "%(summary)s"
    detail: "%(detail)s"
    suggestions:
      - {label: "%(label)s", action: review}
    sources: [S1]
    seed: {note: none}
"""


def _lint(vocab, *, summary="Dose {daily_dose_mg} mg above {param.max_mg} mg/day", detail="Reduce.",
          label="Reduce the dose", signoff="", labels="") -> list[str]:
    text = _MINI % {"summary": summary, "detail": detail, "label": label, "signoff": signoff,
                    "labels": labels}
    report = verify_text(text, "pack.yaml", vocab)
    assert report.pack is not None, [str(f) for f in report.findings]
    return [f.message for f in report.errors]


def test_lint_clean_mini_pack(vocab):
    assert _lint(vocab) == []


@pytest.mark.parametrize(
    ("field", "text", "words"),
    [
        ("detail", "The seed's 60 mg/day is the last step.", "authoring note ('seed')"),
        ("detail", "Set max_mg from the local label.", "identifier 'max_mg'"),
        ("detail", "Set `max_mg` locally.", "authoring identifier"),
        ("detail", "Off-label use for aud.", "the code 'aud'"),
        ("summary", "Dose {daily_dose_mg} mg above {param max_mg}", "not a placeholder"),
        ("summary", "Dose above maximum for {order_indication}", "no card words"),
    ],
)
def test_lint_refuses_authoring_notes(vocab, field, text, words):
    labels = "labels:\n  aud: alcohol use disorder" if "aud." in text else ""
    errors = _lint(vocab, **{field: text}, labels=labels)
    assert any(words in e for e in errors), errors


def test_lint_errors_on_literal_threshold_in_suggestion(vocab):
    errors = _lint(vocab, label="Reduce to 80 mg/day")
    assert any("80 (max_mg)" in e and "{param.max_mg}" in e for e in errors), errors
    assert _lint(vocab, label="Reduce to {param.max_mg} mg/day") == []


def test_shipped_card_text_has_no_authoring_notes(bac):
    for _, rule_id, where, text in clinician_texts(bac):
        assert not re.search(r"\bseed", text, re.IGNORECASE), (rule_id, where)
        assert "`" not in text, (rule_id, where)


def test_offlabel_card_shows_words_not_group_ids(oracle):
    facts = _patient()
    facts["order"] = {**facts["order"], "indication_group": "aud"}
    alert = _alert(oracle, facts, "BAC-I01")
    assert "alcohol use disorder" in alert.summary and "(aud)" not in alert.summary


def test_template_bugs_fixed(oracle, bac):
    # R00: no eGFR on file
    r00 = _alert(oracle, _patient(renal={}), "BAC-R00")
    assert "no result on file days old" not in r00.detail
    # W01: a stop order is not "reduction 0%"
    stop = _patient(history={"therapy_start": "2025-01-01"})
    stop["order"] = {**stop["order"], "action": "discontinue"}
    w01 = _alert(oracle, stop, "BAC-W01")
    assert w01.tier_id == "BAC-W01.abrupt" and "reduction" not in w01.detail
    # W03: the summary does not quote hours since admission when the last dose fired it
    w03 = next(r for r in bac.rules if r.spec.id == "BAC-W03")
    assert "hours_since_admission" not in w03.spec.summary
    # F02: an oral product given intrathecally says so
    f02 = _patient()
    f02["order"] = {**f02["order"], "route": "intrathecal"}
    alert = _alert(oracle, f02, "BAC-F02")
    assert alert.tier_id == "BAC-F02.oral_intrathecal" and "never be given intrathecally" in alert.summary
    # S03 names the condition; D04 cites S21
    s03 = _alert(oracle, _patient(conditions=[{"code": {"display": "Obstructive sleep apnea"},
                                                "groups": ["respiratory_impairment"]}]), "BAC-S03")
    assert "Obstructive sleep apnea" in s03.summary
    assert s03.evidence["cond_named.respiratory_impairment"] == "Obstructive sleep apnea"
    d04 = next(r for r in bac.rules if r.spec.id == "BAC-D04")
    assert "S21" in d04.spec.sources


# ── 3. per-rule override reasons; never an abrupt stop ─────────────────────────────────────

def test_override_reasons_per_rule(bac):
    codes = {rid: [r.code for r in reasons_for(bac.spec, rid)] for rid in
             ("BAC-W02", "BAC-P01", "BAC-W01", "BAC-R00", "BAC-D01", "missing-data")}
    assert "pump-team-aware" in codes["BAC-W02"] and "tolerated-before" not in codes["BAC-W02"]
    assert "neonatal-team-informed" in codes["BAC-P01"]
    assert "taper-documented-elsewhere" in codes["BAC-W01"]
    assert "renal-result-pending" in codes["BAC-R00"]
    defaults = [r.code for r in bac.spec.override_reasons if r.default]
    assert codes["BAC-D01"] == codes["missing-data"] == defaults


def test_override_reasons_reach_the_card(oracle, bac):
    facts = _patient(pump={"present": True, "next_refill_date": "2026-01-10"})
    facts["order"] = {**facts["order"], "route": "intrathecal", "action": "hold", "dose_unit": "mcg",
                      "product": {"system": RXNORM, "code": "1300890"}}
    alert = _alert(oracle, facts, "BAC-W02")
    card = alert_card(alert, bac)
    assert [c.code for c in card.overrideReasons or []] == [r.code for r in reasons_for(bac.spec, "BAC-W02")]


_ABRUPT = re.compile(r"\bstop (one|it|the order)\b|cancel the order|stop one of", re.IGNORECASE)


def test_no_card_advises_an_abrupt_stop(bac):
    for rid in ("BAC-C01", "BAC-C06", "BAC-A01"):
        rule = next(r for r in bac.rules if r.spec.id == rid)
        texts = [rule.spec.summary, rule.spec.detail, *(t.summary or "" for t in rule.spec.tiers),
                 *(s.label for s in rule.spec.suggestions)]
        assert not any(_ABRUPT.search(t) for t in texts), rid
        assert all(s.action != "cancel-order" for s in rule.spec.suggestions), rid


# ── 4. every number from a parameter: a site at default × 1.37 ─────────────────────────────

def _numbers(text: str) -> set[str]:
    return {fmt_value(float(n)) for n in _NUMBER.findall(_NOT_A_THRESHOLD.sub(" ", text))}


def _fact_numbers(flat: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for value in flat.values():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out.add(fmt_value(value))
        elif isinstance(value, str):
            out |= _numbers(value)
    return out


def test_site_override_reaches_every_number(tmp_path: Path, bac):
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    defaults = {n: v for n, v in bac.params.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and v not in (0, 1)}
    site = {"site": {"name": "x1.37 test"},
            "packs": {"baclofen": {n: round(float(v) * 1.37, 2) for n, v in defaults.items()}}}
    (rules / "site.yaml").write_text(yaml.safe_dump(site), encoding="utf-8")
    engine = Engine.from_dir(rules, evaluator="oracle")
    scaled = next(p for p in engine.packs if p.id == "baclofen")
    listed = {fmt_value(x) for v in scaled.params.values() if isinstance(v, list)
              for x in v if isinstance(x, int | float)}
    stale = {fmt_value(v) for v in defaults.values()}
    seen, bad = 0, []
    for path in sorted(FIXTURES.glob("*.json")):
        facts = PatientFacts.model_validate(json.loads(path.read_text(encoding="utf-8"))["facts"])
        flat = engine.flat_facts(scaled, facts)
        allowed = _fact_numbers(flat) | listed
        for alert in engine.evaluate(facts):
            for text in (alert.summary, alert.detail, *(s.label for s in alert.suggestions)):
                seen += 1
                wrong = (_numbers(text) & stale) - allowed
                if wrong:
                    bad.append((path.name, alert.tier_id, sorted(wrong), text[:160]))
    assert seen > 500
    assert not bad, bad[:5]


# ── 5. BAC-S04: SCI at T6 or above ─────────────────────────────────────────────────────────

def test_sci_at_t6_or_above_raises_the_caution(oracle, vocab):
    codes = [(s, c) for (kind, s, c), groups in vocab.codes.items()
             if kind == "condition_group" and "sci_t6_or_above" in groups]
    assert codes, "no codes for the sci_t6_or_above group"
    system, code = codes[0]
    facts = _patient(conditions=[{"code": {"system": system, "code": code}}])
    alert = _alert(oracle, facts, "BAC-S04")
    assert alert.tier_id == "BAC-S04.caution"
    assert "T6" in alert.detail
    silent = _patient(conditions=[])
    assert not [a for a in oracle.evaluate(PatientFacts.model_validate(silent)) if a.rule_id == "BAC-S04"]


# ── 6. approvals with approver and date ────────────────────────────────────────────────────

def test_lint_refuses_approval_without_record(vocab):
    errors = _lint(vocab, signoff=", signoff: approved")
    assert any("approved_by and approved_on" in e for e in errors), errors
    signed = ", signoff: approved, approved_by: P&T committee, approved_on: "
    errors = _lint(vocab, signoff=signed + "'12/01/2026'")
    assert any("not an ISO date" in e for e in errors), errors
    assert _lint(vocab, signoff=signed + "'2026-01-12'") == []


def test_shipped_parameters_carry_no_unrecorded_approval(bac):
    for name, param in bac.spec.parameters.items():
        if param.signoff == "approved":
            assert param.approved_by and param.approved_on, name


def test_card_footer_and_healthz_show_approval(oracle, bac):
    from fastapi.testclient import TestClient

    from cds_engine.service.app import create_app

    state = approval_state(bac.spec)
    alert = _alert(oracle, _patient(medications=[_opioid()]), "BAC-C01")
    assert state.sentence() in alert.detail
    assert f"{state.parameters_signed_off} of {state.parameters}" in alert_card(alert, bac).detail
    app = create_app(lambda: oracle, auth=None)
    body = TestClient(app).get("/healthz").json()
    shown = next(p for p in body["packs"] if p["id"] == "baclofen")["approval"]
    assert shown["status"] == bac.spec.pack.approval.status
    assert shown["parameters_signed_off"] == state.parameters_signed_off


# ── end to end: the CDS Hooks service decides completeness from the prefetch ────────────────

def _hook_cards(engine: Engine, with_administrations: bool) -> list[dict[str, Any]]:
    from fastapi.testclient import TestClient
    from tests.service_helpers import hook_request, medication_request

    from cds_engine.service.app import create_app

    opioid = {
        "resourceType": "MedicationRequest", "id": "ox-1", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{
            "system": RXNORM, "code": "1014615",
            "display": "acetaminophen 300 MG / oxycodone hydrochloride 5 MG Oral Tablet"}]},
    }
    prefetch: dict[str, Any] = {
        "patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1960-05-02", "gender": "male"},
        "medicationRequests": {"resourceType": "Bundle", "type": "searchset",
                               "entry": [{"resource": opioid}]},
        "medicationStatements": None,
        "conditions": None, "allergies": None, "observations": None, "encounter": None,
        "dialysisProcedures": None,
    }
    if with_administrations:
        prefetch["medicationAdministrations"] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    client = TestClient(create_app(lambda: engine, auth=None))
    services = client.get("/cds-services").json()["services"]
    sid = next(s["id"] for s in services if s["hook"] == "order-sign" and "baclofen" in s["id"])
    body = hook_request("order-sign", "p1", [medication_request(dose=5, per_day=3)], prefetch=prefetch)
    response = client.post(f"/cds-services/{sid}", json=body)
    assert response.status_code == 200, response.text
    return response.json()["cards"]


@pytest.mark.parametrize("complete", [True, False])
def test_hook_card_names_the_opioid_and_says_none_only_for_complete_lists(oracle, complete):
    cards = _hook_cards(oracle, with_administrations=complete)
    c01 = next(c for c in cards if c["source"]["topic"]["code"] == "BAC-C01")
    lines = [ln for ln in c01["detail"].splitlines() if ln.strip() and not ln.startswith("**Order:**")]
    assert "oxycodone" in lines[0]  # the rule's own first line (after the line naming the draft)
    flat = " ".join(c01["detail"].split())
    if complete:
        assert "benzodiazepines: none" in flat and INCOMPLETE_MEDICATIONS not in flat
    else:
        assert f"benzodiazepines: {INCOMPLETE_MEDICATIONS}" in flat


def test_product_advice_follows_marketed_status(bac, vocab):
    """W03 advises only forms the vocabulary marks marketed (granules/ODT are not 'yes' today)."""
    marketed = {p.form for p in vocab.products.values() if p.marketed == "yes"}
    w03 = next(r for r in bac.rules if r.spec.id == "BAC-W03").spec
    advice = " ".join([w03.summary, w03.detail, *(t.summary or "" for t in w03.tiers),
                       *(s.label for s in w03.suggestions)]).lower()
    for form, words in {"granules": ("granule",), "odt": ("disintegrating", "odt")}.items():
        if form not in marketed:
            assert not any(w in advice for w in words), form
