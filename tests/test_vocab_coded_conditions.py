"""Conditions sent as codes only (no display) reach the rules that read their group (reaudit-clin #2/3/7/8/9).

A FHIR Condition normally carries a code and nothing else; the term fallback (display text) then has
nothing to read. So for every condition group a pack rule reads, and for each of ICD-10-CM and
SNOMED CT, one code of ``rules/vocabulary/codes.csv`` is sent **without a display** and must change
the outcome of a rule that reads the group -- through the JSON facts path (``Engine.evaluate``) and
through the CDS Hooks path (FHIR prefetch -> order-sign cards). Every condition code row of such a
group must also classify on its own (code first, no text).

Where no verified code exists (the VSAC value set is not in shared/, see
tests/test_vocabulary_coverage.py ``KNOWN_GAPS``), the audit's code-only examples are kept here as
**strict xfails**: they document the fail-open gap (no card for a code-only schizophrenia) and fail
the day a verified code list closes it, so this file is then updated rather than left stale.

Negatives: history codes, look-alikes and codes deliberately left out never fire the group's rule.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from cds_engine.engine import Engine
from cds_engine.facts.model import Coding, Condition, PatientFacts
from cds_engine.sources.gestation import coded_weeks, weeks_from_conditions
from cds_engine.vocabulary import HISTORY_KIND
from test_vocabulary_coverage import KNOWN_GAPS, groups_read

REPO = Path(__file__).resolve().parents[1]
CODES = REPO / "rules" / "vocabulary" / "codes.csv"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
SYSTEMS = {"icd10cm": ICD, "snomed": SCT}
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
BACLOFEN_TABLET = "197391"
AS_OF = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
Post = Callable[[list[dict[str, Any]], str], set[tuple[str, str]]]  # the hook fixture
ONSET = "2025-12-20"  # recent: an AKI/TBI onset inside every window the pack uses

# (kind, group) -> (scenario, rule id): the rule, reading the group, whose outcome a code-only entry
# must change. Scenarios: "new" = new oral order, eGFR 95; "no_egfr" = the same without any eGFR
# (ESRD/CKD 5 without a current eGFR); "ongoing" = an active oral order continued (monitoring rule);
# "it_tbi" = intrathecal order for TBI spasticity (JSON path only, see _HOOK_SCENARIOS).
READERS: dict[tuple[str, str], tuple[str, str]] = {
    ("condition_group", "aki"): ("new", "BAC-R01"),
    ("condition_group", "autonomic_dysreflexia"): ("new", "BAC-S04"),
    ("condition_group", "ckd_stage5"): ("no_egfr", "BAC-R02"),
    ("condition_group", "delirium"): ("new", "BAC-S02"),
    ("condition_group", "depression_suicidality"): ("new", "BAC-S02"),
    ("condition_group", "diabetes"): ("ongoing", "BAC-M03"),
    ("condition_group", "dialysis"): ("new", "BAC-R03"),
    ("condition_group", "epilepsy"): ("new", "BAC-S01"),
    ("condition_group", "esrd"): ("no_egfr", "BAC-R02"),
    ("condition_group", "lactation"): ("new", "BAC-P02"),
    ("condition_group", "liver_disease"): ("ongoing", "BAC-M03"),
    ("condition_group", "peptic_ulcer"): ("new", "BAC-S04"),
    ("condition_group", "pregnancy"): ("new", "BAC-P01"),
    ("condition_group", "psychosis"): ("new", "BAC-S02"),
    ("condition_group", "respiratory_impairment"): ("new", "BAC-S03"),
    ("condition_group", "sci_t6_or_above"): ("new", "BAC-S04"),
    ("condition_group", "stroke"): ("new", "BAC-S04"),
    ("condition_group", "substance_use_disorder"): ("new", "BAC-S02"),
    ("condition_group", "tbi"): ("it_tbi", "BAC-I01"),
    ("condition_group", "urinary_retention"): ("new", "BAC-S04"),
    (HISTORY_KIND, "peptic_ulcer"): ("new", "BAC-S04"),
}
_HOOK_SCENARIOS = ("new", "no_egfr", "ongoing")  # the IT/TBI order is checked on the JSON path only

# The audit's code-only examples for groups with no verified code (codes already used by
# tests/test_vocabulary_coverage.py or named in the audit; none is added to the vocabulary).
GAP_EXAMPLES: list[tuple[str, str, str, str]] = [  # (kind, group, system, code)
    ("condition_group", "psychosis", ICD, "F20.9"),
    ("condition_group", "psychosis", SCT, "58214004"),
    ("condition_group", "delirium", ICD, "F05"),
    ("condition_group", "depression_suicidality", SCT, "6471006"),
    ("condition_group", "stroke", ICD, "I63.9"),
    ("condition_group", "peptic_ulcer", ICD, "K27.9"),
    ("condition_group", "urinary_retention", ICD, "R33.9"),
    ("condition_group", "autonomic_dysreflexia", ICD, "G90.4"),
]
_GAP_REASON = "fail-open gap: no verified code in shared/ (rules/vocabulary/README.md, Code-only conditions)"
# Not gaps of a group but of its code list: verified nowhere in shared/, so not in codes.csv.
UNVERIFIED_EXAMPLES: list[tuple[str, str, str, str]] = [
    ("condition_group", "dialysis", SCT, "105502003"),  # dependence on renal dialysis
    ("condition_group", "sci_t6_or_above", ICD, "S24.104A"),  # cord injury at T4
    ("condition_group", "sci_t6_or_above", ICD, "S14.105A"),  # cervical cord injury
]


@cache
def _rows() -> tuple[dict[str, str], ...]:
    with CODES.open(newline="", encoding="utf-8") as fh:
        return tuple(csv.DictReader(fh))


def _code_for(kind: str, group: str, system: str) -> str | None:
    """The first code row of (kind, group, system), skipping range rows such as ``F10-F19``."""
    for row in _rows():
        if (row["kind"], row["group"], row["system"]) == (kind, group, system) and "-" not in row["code"]:
            return row["code"]
    return None


@cache
def _engine() -> Engine:
    return Engine.from_dir(REPO / "rules")


def _pack(pack_id: str = "baclofen") -> Any:
    return next(p for p in _engine().packs if p.id == pack_id)


# ── the JSON facts path ──────────────────────────────────────────────────────────────────────
def _facts(conditions: list[dict[str, Any]], scenario: str) -> PatientFacts:
    order: dict[str, Any] = {
        "product": {"system": RXNORM, "code": BACLOFEN_TABLET},
        "route": "oral",
        "dose_amount": 5,
        "dose_unit": "mg",
        "doses_per_day": 3,
        "indication_group": "spasticity",
        "action": "new",
    }
    data: dict[str, Any] = {
        "as_of": AS_OF.isoformat(),
        "birth_date": "1980-05-02",
        "sex": "female",
        "renal": {"egfr": {"value": 95, "date": "2026-01-05"}},
        "order": order,
        "conditions": conditions,
    }
    if scenario == "no_egfr":
        data["renal"] = {}
    elif scenario == "ongoing":
        order["action"] = "continue"
        data["medications"] = [
            {"product": order["product"], "status": "active", "start": "2025-01-01", "route": "oral",
             "daily_dose_mg": 15}
        ]
    elif scenario == "it_tbi":
        order.update(
            {"product": {"system": RXNORM, "code": "1300890"}, "route": "intrathecal",
             "indication_group": "spasticity_tbi", "dose_amount": 0.05, "doses_per_day": 1}
        )
    return PatientFacts.model_validate(data)


def _json_outcome(conditions: list[dict[str, Any]], scenario: str) -> set[tuple[str, str]]:
    return {(a.rule_id, a.tier_id) for a in _engine().evaluate(_facts(conditions, scenario))}


def _code_only(system: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"code": {"system": system, "code": code}, "onset": ONSET, **extra}


def _json_fires(system: str, code: str, scenario: str, rule: str) -> bool:
    """Did adding the code-only condition raise or change an alert of ``rule``?"""
    before = {t for t in _json_outcome([], scenario) if t[0] == rule}
    after = {t for t in _json_outcome([_code_only(system, code)], scenario) if t[0] == rule}
    return bool(after - before)


# ── the CDS Hooks path ───────────────────────────────────────────────────────────────────────
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1980-05-02", "gender": "female"}
EGFR = {
    "resourceType": "Observation", "id": "egfr-1", "status": "final", "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
    "effectiveDateTime": "2026-01-05",
    "valueQuantity": {"value": 95, "unit": "mL/min/{1.73_m2}", "system": "http://unitsofmeasure.org",
                      "code": "mL/min/{1.73_m2}"},
}


def _fhir_condition(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {
        "resourceType": "Condition", "id": "c-1", "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [coding]}, "onsetDateTime": ONSET,
    }


@pytest.fixture(scope="module")
def hook() -> Iterator[Post]:
    """post(resources, scenario) -> {(rule id, indicator)} of the order-sign cards."""
    from fastapi.testclient import TestClient

    from cds_engine.service import create_app
    from cds_engine.service.discovery import prefetch_templates
    from service_helpers import LocalFhir, hook_request, medication_request

    engine = _engine()
    pack = _pack()
    app = create_app(lambda: engine, auth=None, clock=lambda: AS_OF)
    with TestClient(app) as client:

        def post(extra: list[dict[str, Any]], scenario: str) -> set[tuple[str, str]]:
            resources = [PATIENT, *extra]
            if scenario != "no_egfr":
                resources.append(EGFR)
            if scenario == "ongoing":  # an active home order of the same drug and route: "continue"
                resources.append(medication_request(id="home-1", dose=5, per_day=3, status="active",
                                                    authoredOn="2025-01-01"))
            prefetch = LocalFhir(resources).prefetch(prefetch_templates(pack), {"patientId": "p1"})
            draft = medication_request(id="draft-1", dose=5, per_day=3)
            response = client.post("/cds-services/baclofen-order-sign",
                                   json=hook_request("order-sign", "p1", [draft], prefetch=prefetch))
            assert response.status_code == 200, response.text
            return {(c["source"]["topic"]["code"], c["indicator"]) for c in response.json()["cards"]}

        yield post


def _hook_fires(post: Post, system: str, code: str, scenario: str, rule: str) -> bool:
    before = {t for t in post([], scenario) if t[0] == rule}
    after = {t for t in post([_fhir_condition(system, code)], scenario) if t[0] == rule}
    return bool(after - before)


# ── the matrix ───────────────────────────────────────────────────────────────────────────────
def _matrix() -> list[Any]:
    cases = []
    for kind, group in sorted(READERS):
        scenario, rule = READERS[(kind, group)]
        for name, system in SYSTEMS.items():
            code = _code_for(kind, group, system)
            if code is None:
                continue  # a known gap with no code at all: GAP_EXAMPLES / test_vocabulary_coverage
            cases.append(pytest.param(kind, group, system, code, scenario, rule, id=f"{group}-{kind}-{name}"))
    return cases


def test_every_group_a_rule_reads_has_a_reader_here() -> None:
    """A group a pack starts reading must be added to READERS (and so to the matrix)."""
    assert set(groups_read()) == set(READERS)


def test_every_group_and_system_without_a_code_is_a_known_gap() -> None:
    """No (group, system) silently drops out of the matrix: a missing code is a listed gap."""
    for kind, group in READERS:
        for system in SYSTEMS.values():
            if _code_for(kind, group, system) is None:
                assert (kind, group, system) in KNOWN_GAPS, (kind, group, system)


@pytest.mark.parametrize(("kind", "group", "system", "code", "scenario", "rule"), _matrix())
def test_code_only_condition_fires_through_json(
    kind: str, group: str, system: str, code: str, scenario: str, rule: str
) -> None:
    assert _json_fires(system, code, scenario, rule), f"{code} ({group}) did not change {rule}"


@pytest.mark.parametrize(("kind", "group", "system", "code", "scenario", "rule"), _matrix())
def test_code_only_condition_fires_through_the_hook(
    hook: Post, kind: str, group: str, system: str, code: str, scenario: str, rule: str
) -> None:
    if scenario not in _HOOK_SCENARIOS:
        pytest.skip("intrathecal TBI order: JSON path only")
    assert _hook_fires(hook, system, code, scenario, rule), f"{code} ({group}) gave no {rule} card"


def test_every_condition_code_row_classifies_without_a_display() -> None:
    """Every code row of a group a rule reads answers by code alone (the term fallback is not needed)."""
    vocab = _pack().vocabulary
    wrong = [
        (r["kind"], r["group"], r["code"])
        for r in _rows()
        if (r["kind"], r["group"]) in READERS
        and r["group"] not in vocab.classify(Coding(system=r["system"], code=r["code"]), r["kind"])
    ]
    assert not wrong, wrong[:10]


# ── the audit's examples ─────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize(
    ("system", "code", "rule", "tier"),
    [
        (ICD, "Z99.2", "BAC-R03", "BAC-R03.avoid_start"),
        (SCT, "236435004", "BAC-R03", "BAC-R03.avoid_start"),
        # unspecified convulsions stay in epilepsy (VSAC Epilepsy set; a code that cannot tell is
        # read conservatively, and the card's advice -- never stop abruptly -- holds for any seizures)
        (ICD, "R56.9", "BAC-S01", "BAC-S01.epilepsy"),
    ],
)
def test_audit_codes_that_now_fire(system: str, code: str, rule: str, tier: str) -> None:
    assert (rule, tier) in _json_outcome([_code_only(system, code)], "new")


@pytest.mark.parametrize(("kind", "group", "system", "code"), GAP_EXAMPLES + UNVERIFIED_EXAMPLES)
@pytest.mark.xfail(strict=True, reason=_GAP_REASON)
def test_code_only_gap_examples_fire(kind: str, group: str, system: str, code: str) -> None:
    scenario, rule = READERS[(kind, group)]
    assert _json_fires(system, code, scenario, rule)


@pytest.mark.parametrize(("kind", "group", "system", "code"), GAP_EXAMPLES[:2] + UNVERIFIED_EXAMPLES[:1])
@pytest.mark.xfail(strict=True, reason=_GAP_REASON)
def test_code_only_gap_examples_fire_through_the_hook(
    hook: Post, kind: str, group: str, system: str, code: str
) -> None:
    scenario, rule = READERS[(kind, group)]
    assert _hook_fires(hook, system, code, scenario, rule)


# ── negatives: history, look-alikes, codes left out on purpose ──────────────────────────────
NEGATIVES = [
    # (system, code, display or None, rule, tier that must not appear)
    (ICD, "Z87.11", None, "BAC-S04", "BAC-S04.ulcer"),  # ulcer *history*: the caution only
    (ICD, "F32.2", None, "BAC-S02", "BAC-S02.psychosis"),
    (ICD, "F32.2", "Major depressive disorder, single episode, severe without psychotic features",
     "BAC-S02", "BAC-S02.psychosis"),
    (ICD, "G47.32", None, "BAC-S03", "BAC-S03.respiratory"),  # high-altitude periodic breathing
    (SCT, "53521000119106", None, "BAC-S01", "BAC-S01.epilepsy"),  # first seizure
    (SCT, "735235000", None, "BAC-S01", "BAC-S01.epilepsy"),  # withdrawal seizure
    (SCT, "123391000119106", None, "BAC-S04", "BAC-S04.caution"),  # functional quadriplegia
    # quadriplegia with level and cause unstated (e.g. from MS) is not SCI at T6 or above: the
    # project's fixture R-BAC-S04-silent-quadriplegia-unspecified keeps S04 silent for G82.50
    (ICD, "G82.50", None, "BAC-S04", "BAC-S04.caution"),
    (SCT, "11538006", None, "BAC-S04", "BAC-S04.caution"),
    (SCT, "22881000119100", None, "BAC-S04", "BAC-S04.caution"),
    (SCT, "275468009", None, "BAC-S04", "BAC-S04.caution"),  # congenital quadriplegia
    (ICD, "G12.9", None, "BAC-S04", "BAC-S04.caution"),  # spinal muscular atrophy
    (ICD, "G82.5", None, "BAC-S04", "BAC-S04.caution"),  # a category, not a billable code
    (ICD, "G82.20", None, "BAC-S04", "BAC-S04.caution"),  # paraplegia: level below the neck unknown
    (ICD, "T67.01XA", None, "BAC-S04", "BAC-S04.caution"),  # heatstroke
    (ICD, "N18.6", None, "BAC-R03", "BAC-R03.avoid_start"),  # ESRD is not dialysis dependence
]


@pytest.mark.parametrize(("system", "code", "display", "rule", "tier"), NEGATIVES)
def test_history_and_look_alike_codes_do_not_fire(
    system: str, code: str, display: str | None, rule: str, tier: str
) -> None:
    condition = _code_only(system, code)
    if display:
        condition["code"]["display"] = display
    assert (rule, tier) not in _json_outcome([condition], "new")


_SEVERITY = {  # a card names its rule and severity, not its tier
    "BAC-S04.ulcer": "warning",
    "BAC-S02.psychosis": "warning",
    "BAC-S03.respiratory": "warning",
    "BAC-S01.epilepsy": "warning",
    "BAC-S04.caution": "info",
    "BAC-R03.avoid_start": "critical",
}


@pytest.mark.parametrize(("system", "code", "display", "rule", "tier"), NEGATIVES)
def test_history_and_look_alike_codes_do_not_fire_through_the_hook(
    hook: Post, system: str, code: str, display: str | None, rule: str, tier: str
) -> None:
    assert (rule, _SEVERITY[tier]) not in hook([_fhir_condition(system, code, display)], "new")


def test_the_history_code_gives_only_the_history_caution() -> None:
    outcome = _json_outcome([_code_only(ICD, "Z87.11")], "new")
    assert ("BAC-S04", "BAC-S04.caution") in outcome


# ── gestational age from an ICD-10-CM Z3A code (sources/gestation.py) ────────────────────────
@pytest.mark.parametrize(
    ("code", "weeks"),
    [("Z3A.37", 37.0), ("Z3A.08", 8.0), ("Z3A.42", 42.0), ("Z3A.49", 42.0), ("z3a37", 37.0),
     ("Z3A.00", None), ("Z3A.01", None), ("Z3A.07", None), ("Z3A.43", None), ("Z3A.3", None),
     ("Z3A.370", None), ("O09.00", None)],
)
def test_coded_weeks(code: str, weeks: float | None) -> None:
    assert coded_weeks(ICD, code) == weeks
    assert coded_weeks(SCT, code) is None


def _z3a(code: str = "Z3A.37", **extra: Any) -> Condition:
    return Condition(code=Coding(system=ICD, code=code), **extra)


def test_weeks_from_conditions() -> None:
    assert weeks_from_conditions([_z3a()], AS_OF) == 37.0  # undated: as stated (a floor)
    assert weeks_from_conditions([_z3a(onset=date(2026, 1, 1))], AS_OF) == 39.0  # advanced 14 days
    assert weeks_from_conditions([_z3a(recorded=date(2026, 1, 8))], AS_OF) == 38.0
    assert weeks_from_conditions([_z3a(onset=date(2025, 1, 1))], AS_OF) is None  # a past pregnancy
    assert weeks_from_conditions([_z3a(onset=date(2025, 12, 1))], AS_OF) is None  # 37 + 6.4 > 42
    newest = [_z3a("Z3A.20", onset=date(2025, 10, 1)), _z3a("Z3A.30", onset=date(2025, 12, 25))]
    assert weeks_from_conditions(newest, AS_OF) == 33.0
    assert weeks_from_conditions([_z3a(clinical_status="resolved")], AS_OF) is None
    assert weeks_from_conditions([_z3a(verification_status="refuted")], AS_OF) is None
    assert weeks_from_conditions([_z3a("O09.00")], AS_OF) is None


def test_z3a_37_alone_gives_the_late_pregnancy_card(hook: Post) -> None:
    cards = hook([_fhir_condition(ICD, "Z3A.37")], "new")
    assert ("BAC-P01", "critical") in cards


def test_z3a_37_alone_reads_the_same_on_the_json_path() -> None:
    """facts.derive reads the coded weeks too (facts/coded_gestation.py), unless the body states them."""
    from cds_engine.facts.derive import derive

    engine = Engine.from_dir(REPO / "rules")
    pack = engine.packs[0]
    body = {"as_of": AS_OF.isoformat(), "birth_date": "1996-01-01", "sex": "female",
            "conditions": [{"code": {"system": ICD, "code": "Z3A.37"}}]}
    flat = derive(PatientFacts.model_validate(body), pack.vocabulary, pack.context)
    assert flat["gestational_age_weeks"] == 37.0 and flat["pregnant"] is True
    stated = {**body, "reproductive": {"gestational_age_weeks": 20}}
    assert derive(PatientFacts.model_validate(stated), pack.vocabulary, pack.context)["gestational_age_weeks"] == 20
