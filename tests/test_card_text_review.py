"""Review findings #11, #5 and #6 (cardtext): what a clinician reads, and which result is current.

* **No authoring notes** in any clinician-facing text of any shipped pack (compiled, as a card
  shows it): no "sign-off", "pending", "TODO", "design choice", "[R]", parameter or fact names.
* **Advice fits the tier that fired** (``Suggestion.tiers``): a new start is never told to taper,
  an ongoing therapy never told to "start", no suggestion advises an abrupt stop, and an
  intrathecal order is never told to state its dose in mg.
* **A result dated after the evaluation time is not a current value**, in the ``PatientFacts``
  path and in the FHIR path alike: it never bands the patient; an older result still does; when it
  was the only eGFR the card says the renal checks could not be done, and why.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.service_helpers import medication_request

from cds_engine.alerts import Alert
from cds_engine.authoring.text_lint import clinician_texts
from cds_engine.batch.store import alert_from_row
from cds_engine.facts.lab_units import FUTURE_PROBLEM_TEXT
from cds_engine.facts.model import LabResult, PatientFacts, Renal
from cds_engine.facts.renal import RenalWindows, renal_facts, select_egfr
from cds_engine.rules.compile import load_pack
from cds_engine.rules.errors import PackLoadError
from cds_engine.sources.fhir import facts_from_resources
from cds_engine.vocabulary import Vocabulary
from conftest import RULES, baclofen_rules_copy

AS_OF = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TODAY = AS_OF.date()
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
MS = {"system": "http://snomed.info/sct", "code": "24700007", "display": "Multiple sclerosis (disorder)"}
WINDOWS = RenalWindows()

# ── 1. no authoring notes ───────────────────────────────────────────────────────────────────

# Words that belong to authoring (sign-off state, evidence-grading marks, notes to the authors,
# engine/pack vocabulary), never to a card. "result pending" is a clinical state (an override
# reason: "Renal function result pending") and is allowed.
_AUTHORING = re.compile(
    r"sign[- ]?off|\bawait|\bpending\b|\bTODO\b|\bFIXME\b|\bTBD\b|\bXXX\b|design[- ]choice|(?-i:\bDERIVED\b)"
    r"|\bto be (?:confirmed|verified|re-?verified)\b|\bre-?verify\b|heading verified|\[R\]"
    r"|\bpack allowance\b|\bjurisdiction setting\b|\bpack vocabulary\b|\bknowledge file\b|\bseed\b"
    r"|\bparam(?:eter)?s?\b",
    re.IGNORECASE,
)
_ALLOWED = re.compile(r"result pending", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_IDENTIFIER = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")  # max_daily_mg, renal_fn …


def authoring_words(text: str) -> list[str]:
    """The authoring words of one clinician-facing text (placeholders are filled, not shown)."""
    literal = _ALLOWED.sub(" ", _PLACEHOLDER.sub(" ", text))
    return _AUTHORING.findall(literal) + _IDENTIFIER.findall(literal)


def _shipped_packs() -> list[Any]:
    vocab = Vocabulary.from_dir(RULES / "vocabulary")
    return [load_pack(path, vocab) for path in sorted(RULES.glob("*/pack.yaml"))]


def _all_clinician_texts(pack: Any) -> list[tuple[str, str]]:
    """(where, text) of every text a clinician sees: clinician_texts plus titles and card words."""
    out = [(f"{rule_id or pack.id} {where}", text) for _, rule_id, where, text in clinician_texts(pack)]
    out += [(f"{rule.id} title", rule.title) for rule in pack.spec.rules]
    out += [(f"label {code}", words) for code, words in pack.spec.labels.items()]
    return out


def test_every_shipped_pack_is_scanned():
    ids = {pack.id for pack in _shipped_packs()}
    assert {"baclofen", "gabapentinoid"} <= ids  # drafts are shipped too: their texts count


@pytest.mark.parametrize("pack", _shipped_packs(), ids=lambda p: p.id)
def test_no_authoring_notes_in_clinician_texts(pack):
    found = {where: words for where, text in _all_clinician_texts(pack) if (words := authoring_words(text))}
    assert not found, found


@pytest.mark.parametrize(
    "text",
    [
        "Titrate slowly. Caps are DERIVED and await sign-off.",
        "Counts as severe CKD (design choice, awaiting sign-off).",
        "Labels say so (heading verified, S28) [R].",
        "Maximum {param.max_daily_mg} mg (max_daily_mg).",
        "Window pending review.",
    ],
)
def test_the_scan_finds_authoring_notes(text):
    assert authoring_words(text)


def test_the_scan_allows_clinical_words():
    assert not authoring_words("Renal function result pending")
    assert not authoring_words("Kidney function: **{renal_fn_text|none}**, {param.band_m_start_max_mg}")
    assert not authoring_words("These caps are derived from pharmacokinetic data")


# ── 2. advice fits the tier ─────────────────────────────────────────────────────────────────


def _base(**order: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "as_of": AS_OF.isoformat(),
        "patient_id": "cardtext",
        "birth_date": "1981-01-15",
        "sex": "female",
        "renal": {
            "egfr": {"value": 95, "unit": "mL/min/{1.73_m2}", "date": "2026-01-05"},
            "dialysis": "none",
        },
        "reproductive": {"pregnant": False, "lactating": False},
        "allergies": [],
        "conditions": [{"code": MS}],
        "medications": [],
        "medication_lists_complete": True,
        "order": {
            "id": "order-1",
            "product": {"system": RX, "code": "197391", "display": "Baclofen 10 MG Oral Tablet"},
            "form": "tablet",
            "route": "oral",
            "dose_amount": 5,
            "dose_unit": "mg",
            "doses_per_day": 3,
            "indication": MS,
            "action": "new",
            "date": "2026-01-15",
        },
    }
    facts["order"].update(order)
    return facts


def _ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def _ongoing(facts: dict[str, Any], daily: float) -> dict[str, Any]:
    """On ``daily`` mg/day for a year; the order continues (or modifies) that home order."""
    facts["history"] = {
        "therapy_start": _ago(365),
        "previous_daily_dose_mg": daily,
        "last_dose_change": _ago(180),
        "stable_dose_since": _ago(180),
        "last_exposure": TODAY.isoformat(),
    }
    facts["medications"].append(
        {"id": "home-1", "product": facts["order"]["product"], "status": "active", "route": "oral",
         "form": "tablet", "daily_dose_mg": daily, "start": _ago(365)}
    )
    facts["order"].update(replaces="home-1", action="continue")
    facts["monitoring"] = {"spasticity_assessment": _ago(30)}
    return facts


def _alerts(engine, facts: dict[str, Any]) -> dict[str, Alert]:
    return {a.rule_id: a for a in engine.evaluate(PatientFacts.model_validate(facts)) if a.kind == "finding"}


_TAPER = re.compile(r"\btaper", re.IGNORECASE)
_START = re.compile(r"\bstart\b(?! of)", re.IGNORECASE)  # "start below/at/≤ …"
_ABRUPT_STOP = re.compile(r"\b(?:stop|discontinue)\b", re.IGNORECASE)
_NEGATED_STOP = re.compile(r"\b(?:never|not|do not|don't)\b[^.;]*\b(?:stop|discontinue)", re.IGNORECASE)


def _new_starts() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for egfr in (95, 70, 45, 20):
        for dose, per_day in ((5, 3), (10, 3), (20, 2), (7.5, 1), (30, 4)):
            facts = _base(dose_amount=dose, doses_per_day=per_day)
            facts["renal"]["egfr"]["value"] = egfr
            facts["birth_date"] = "1950-01-15"  # 76 years: the Beers rule too
            cases.append((f"new-egfr{egfr}-{dose}x{per_day}", facts))
    aki = _base(dose_amount=10, doses_per_day=2)
    aki["renal"]["aki"] = True
    dialysis = _base(dose_amount=10, doses_per_day=3)
    dialysis["renal"]["dialysis"] = "HD"
    return [*cases, ("new-aki", aki), ("new-dialysis", dialysis)]


def _ongoing_therapies() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for egfr in (95, 55, 45, 20):
        for daily, (dose, per_day) in ((40, (20, 2)), (20, (10, 2)), (60, (20, 3))):
            facts = _ongoing(_base(dose_amount=dose, doses_per_day=per_day), daily)
            facts["renal"]["egfr"]["value"] = egfr
            facts["birth_date"] = "1950-01-15"
            cases.append((f"ongoing-egfr{egfr}-{daily}", facts))
    dialysis = _ongoing(_base(dose_amount=20, doses_per_day=3), 60)
    dialysis["renal"]["dialysis"] = "HD"
    return [*cases, ("ongoing-dialysis", dialysis)]


def test_t09_new_start_in_severe_ckd_is_not_told_to_taper(engine):
    """Review #5: `check fixtures/baclofen/T09.json` suggested "Taper down to ≤ 26.7 mg/day"."""
    import json

    fixture = json.loads((RULES.parent / "fixtures" / "baclofen" / "T09.json").read_text(encoding="utf-8"))
    r02 = _alerts(engine, fixture["facts"])["BAC-R02"]
    assert r02.tier_id == "BAC-R02.avoid_start"
    assert r02.suggestions, "the card keeps its advice"
    for suggestion in r02.suggestions:
        assert not _TAPER.search(suggestion.label) and suggestion.action != "taper", suggestion


def test_r04_on_ongoing_therapy_is_not_told_to_start(engine):
    """Review #5: R04 on an ongoing 40 mg/day suggested "Start below 20 mg/day"."""
    facts = _ongoing(_base(dose_amount=20, doses_per_day=2), 40)
    facts["birth_date"], facts["renal"]["egfr"]["value"] = "1950-01-15", 55
    r04 = _alerts(engine, facts)["BAC-R04"]
    assert r04.tier_id == "BAC-R04.beers"
    assert r04.suggestions and not any(_START.search(s.label) for s in r04.suggestions), r04.suggestions


def test_ongoing_above_the_severe_ceiling_is_told_to_taper_never_to_stop(engine):
    facts = _ongoing(_base(dose_amount=20, doses_per_day=2), 40)
    facts["renal"]["egfr"]["value"] = 20
    r02 = _alerts(engine, facts)["BAC-R02"]
    assert r02.tier_id == "BAC-R02.avoid"
    assert [s.action for s in r02.suggestions] == ["taper"]
    assert "do not stop abruptly" in r02.suggestions[0].label


@pytest.mark.parametrize("name,facts", _new_starts(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_new_start_is_told_to_taper(engine, name, facts):
    for alert in _alerts(engine, facts).values():
        for suggestion in alert.suggestions:
            assert suggestion.action != "taper", (alert.tier_id, suggestion)
            assert not _TAPER.search(suggestion.label), (alert.tier_id, suggestion)


@pytest.mark.parametrize("name,facts", _ongoing_therapies(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_ongoing_therapy_is_told_to_start(engine, name, facts):
    for alert in _alerts(engine, facts).values():
        for suggestion in alert.suggestions:
            assert not _START.search(suggestion.label), (alert.tier_id, suggestion)


@pytest.mark.parametrize("pack", _shipped_packs(), ids=lambda p: p.id)
def test_no_suggestion_advises_an_abrupt_stop(pack):
    for rule in pack.spec.rules:
        for suggestion in rule.suggestions:
            label = suggestion.label
            if _ABRUPT_STOP.search(label):
                assert _NEGATED_STOP.search(label), (rule.id, label)


@pytest.mark.parametrize("pack", _shipped_packs(), ids=lambda p: p.id)
def test_every_tier_of_an_advising_rule_keeps_one_suggestion(pack):
    """Restricting advice to tiers must never leave a tier of an advising rule without any."""
    for rule in pack.spec.rules:
        if not rule.suggestions:
            continue
        for tier in rule.tiers:
            carried = [s.label for s in rule.suggestions if s.tiers is None or tier.id in s.tiers]
            assert len(carried) == 1, (tier.id, carried)


def test_intrathecal_advice_is_never_in_mg(pack):
    """Review #11: an intrathecal order was told to "state the dose in mg" (IT doses are mcg)."""
    rule = pack.spec.rules[[r.id for r in pack.spec.rules].index("BAC-F03")]
    for tier_id in ("BAC-F03.unit", "BAC-F03.it_daily"):
        labels = [s.label for s in rule.suggestions if s.tiers is None or tier_id in s.tiers]
        assert labels and all("mcg" in label for label in labels), (tier_id, labels)
    item = next(i for i in pack.spec.missing_data if i.item == "dose")
    assert "mcg" in item.summary and "intrathecal" in item.summary, item.summary


def test_a_suggestion_naming_an_unknown_tier_is_refused(tmp_path: Path):
    root = baclofen_rules_copy(tmp_path)
    path = root / "baclofen" / "pack.yaml"
    text = path.read_text(encoding="utf-8")
    assert "tiers: [BAC-R04.high_start]" in text
    misspelt = text.replace("tiers: [BAC-R04.high_start]", "tiers: [BAC-R04.high_strat]")
    path.write_text(misspelt, encoding="utf-8")
    with pytest.raises(PackLoadError, match="unknown tiers"):
        load_pack(path, Vocabulary.from_dir(root / "vocabulary"))


def test_a_batch_row_carries_the_advice_of_its_tier(engine):
    """The review page rebuilds a batch alert from its row: the same tier filter applies."""
    row = {
        "kind": "finding", "rule_id": "BAC-R02", "tier_id": "BAC-R02.avoid_start", "title": "t",
        "category": "renal", "severity": "critical", "summary": "s", "evidence": "{}", "missing": "",
        "not_assessed": "", "pack_id": "baclofen",
    }
    start = alert_from_row(row, engine)
    assert [s.action for s in start.suggestions] == ["reduce-dose"]
    ongoing = alert_from_row({**row, "tier_id": "BAC-R02.avoid"}, engine)
    assert [s.action for s in ongoing.suggestions] == ["taper"]


# ── 3. results dated after the evaluation time ──────────────────────────────────────────────


def _egfr_at(facts: dict[str, Any], value: float, when: str) -> dict[str, Any]:
    facts["renal"]["egfr"] = {"value": value, "unit": "mL/min/{1.73_m2}", "date": when}
    return facts


def test_json_future_egfr_95_is_not_an_all_clear(engine, pack):
    """Review #6: an eGFR of 95 dated 45 days after the evaluation time gave 0 alerts."""
    facts = _egfr_at(_base(), 95, (TODAY + timedelta(days=45)).isoformat())
    flat = engine.flat_facts(pack, PatientFacts.model_validate(facts))
    assert "renal_fn" not in flat and "egfr" not in flat and "egfr_days_old" not in flat
    alerts = _alerts(engine, facts)
    r00 = alerts["BAC-R00"]
    assert r00.tier_id == "BAC-R00.unreadable" and r00.severity == "warning"
    assert FUTURE_PROBLEM_TEXT in r00.summary and (TODAY + timedelta(days=45)).isoformat() in r00.summary


def test_json_future_egfr_20_is_cannot_assess_not_a_band(engine):
    facts = _egfr_at(_base(), 20, (TODAY + timedelta(days=2)).isoformat())
    alerts = _alerts(engine, facts)
    assert "BAC-R02" not in alerts and alerts["BAC-R00"].tier_id == "BAC-R00.unreadable"


def test_json_older_result_still_counts_when_a_later_one_exists(engine, pack):
    facts = _egfr_at(_base(), 95, (TODAY + timedelta(days=30)).isoformat())
    facts["renal"]["egfr_results"] = [{"value": 40, "unit": "mL/min/{1.73_m2}", "date": _ago(10)}]
    flat = engine.flat_facts(pack, PatientFacts.model_validate(facts))
    assert flat["renal_fn"] == 40 and flat["egfr_days_old"] == 10 and "egfr_unreadable" not in flat
    assert "BAC-R01" in _alerts(engine, facts)


def test_json_future_crcl_is_not_current_and_a_current_crcl_still_bands(engine, pack):
    only_later = _base()
    del only_later["renal"]["egfr"]
    later = (TODAY + timedelta(days=3)).isoformat()
    only_later["renal"]["crcl"] = {"value": 25, "unit": "mL/min", "date": later}
    flat = engine.flat_facts(pack, PatientFacts.model_validate(only_later))
    assert "crcl" not in flat and "renal_fn" not in flat
    alerts = _alerts(engine, only_later)
    assert "BAC-R02" not in alerts and alerts["BAC-R00"].severity == "warning"

    crcl_now = _egfr_at(_base(), 95, (TODAY + timedelta(days=3)).isoformat())
    crcl_now["renal"]["crcl"] = {"value": 25, "unit": "mL/min", "date": _ago(10)}
    alerts = _alerts(engine, crcl_now)
    assert alerts["BAC-R02"].summary.startswith("CrCl 25 (10 days ago)")
    assert "BAC-R00" not in alerts  # a current CrCl answers the renal question


def test_renal_facts_never_show_a_negative_age():
    later = LabResult(value=95, date=TODAY + timedelta(days=1))
    now = LabResult(value=55, date=TODAY)
    for renal in (
        Renal(egfr=later),
        Renal(egfr=later, egfr_results=[later, now]),
        Renal(crcl=later),
        Renal(egfr=now, crcl=later),
    ):
        out = renal_facts(renal, AS_OF, WINDOWS)
        assert all(v >= 0 for k, v in out.items() if k.endswith("days_old")), out
    assert select_egfr(Renal(egfr=later, egfr_results=[later, now]), AS_OF, 60.0) == now


def test_a_later_time_on_the_same_day_is_after_the_evaluation_time():
    """The FHIR mapping compares instants; the fact path does the same."""
    later_today = LabResult(value=95, date=AS_OF + timedelta(hours=1))
    out = renal_facts(Renal(egfr=later_today), AS_OF, WINDOWS)
    assert "renal_fn" not in out and out["egfr_unreadable_problem"] == FUTURE_PROBLEM_TEXT
    earlier_today = LabResult(value=95, date=AS_OF - timedelta(hours=1))
    assert renal_facts(Renal(egfr=earlier_today), AS_OF, WINDOWS)["renal_fn"] == 95


def _observation(value: float, when: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": value, "unit": "mL/min/{1.73_m2}"},
    }


def _fhir(engine, pack, observations: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Alert]]:
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1981-01-01", "gender": "female"}
    facts = facts_from_resources(
        [patient, *observations],
        as_of=AS_OF,
        vocab=pack.vocabulary,
        drug_class=pack.context.drug_class,
        draft_orders=[medication_request(dose=10, per_day=3)],
    )
    alerts = {a.rule_id: a for a in engine.evaluate(facts) if a.kind == "finding"}
    return engine.flat_facts(pack, facts), alerts


def _json(engine, pack, results: list[tuple[float, datetime]]) -> tuple[dict[str, Any], dict[str, Alert]]:
    facts = _base(dose_amount=10, doses_per_day=3)
    newest = max(results, key=lambda r: r[1])
    facts["renal"]["egfr"] = {"value": newest[0], "unit": "mL/min/{1.73_m2}", "date": newest[1].isoformat()}
    facts["renal"]["egfr_results"] = [
        {"value": v, "unit": "mL/min/{1.73_m2}", "date": w.isoformat()}
        for v, w in sorted(results, key=lambda r: r[1], reverse=True)
    ]
    model = PatientFacts.model_validate(copy.deepcopy(facts))
    return engine.flat_facts(pack, model), _alerts(engine, facts)


@pytest.mark.parametrize(
    "results",
    [
        [(20, AS_OF + timedelta(days=2))],  # review #6: FHIR read it as "No eGFR", JSON as current
        [(95, AS_OF + timedelta(days=45))],
        [(95, AS_OF + timedelta(days=2)), (40, AS_OF - timedelta(days=10))],
        [(20, AS_OF + timedelta(hours=2)), (70, AS_OF - timedelta(days=3))],
    ],
    ids=["only-20-later", "only-95-later", "later-and-older", "later-today-and-older"],
)
def test_fhir_and_json_paths_agree_on_later_results(engine, pack, results):
    fhir_flat, fhir_alerts = _fhir(engine, pack, [_observation(v, w) for v, w in results])
    json_flat, json_alerts = _json(engine, pack, results)
    for name in ("renal_fn", "renal_fn_measure", "renal_fn_current", "egfr", "egfr_days_old"):
        assert fhir_flat.get(name) == json_flat.get(name), name
    banding = {"BAC-R01", "BAC-R02", "BAC-R03", "BAC-R04"}
    assert banding & set(fhir_alerts) == banding & set(json_alerts)
    current = [v for v, w in results if w <= AS_OF]
    if current:
        assert json_flat["renal_fn"] == current[0]
    else:
        # neither path may read the later result as current: the renal question stays open
        assert "renal_fn" not in json_flat and "BAC-R00" in fhir_alerts and "BAC-R00" in json_alerts
        assert FUTURE_PROBLEM_TEXT in json_alerts["BAC-R00"].summary


def test_date_only_result_of_today_is_current():
    out = renal_facts(Renal(egfr=LabResult(value=20, date=date(2026, 1, 15))), AS_OF, WINDOWS)
    assert out["renal_fn"] == 20 and out["egfr_days_old"] == 0
