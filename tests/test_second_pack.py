"""The second pack (gabapentinoid) proves the engine is generic: no Python names it, it lints clean,
its fixtures pass with full coverage on both evaluators, and as a draft it runs silently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cds_engine.authoring.fixtures import run_pack_fixtures
from cds_engine.authoring.verify import verify_dir
from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.governance import RUNNING_STATUSES
from conftest import REPO, RULES

PACK_DIR = RULES / "gabapentinoid"
FIXTURES = REPO / "fixtures" / "gabapentinoid"
SRC = REPO / "src"


@pytest.fixture(scope="module")
def report():
    return verify_dir(RULES)


@pytest.fixture(scope="module")
def pack(report):
    return next(p.pack for p in report.packs if p.pack is not None and p.pack.id == "gabapentinoid")


def _python_lines_matching(pattern: str) -> list[str]:
    regex = re.compile(pattern, re.IGNORECASE)
    return [f"{p.relative_to(REPO)}:{i}" for p in SRC.rglob("*") if p.suffix in (".py", ".html")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if regex.search(line)]


def test_no_python_names_the_second_pack():
    assert not _python_lines_matching(r"gabapentin|GAB-[A-Z][0-9]")


def test_no_python_names_the_first_pack():
    assert not _python_lines_matching(r"baclofen|BAC-[A-Z][0-9]")


def test_pack_lints_clean(report):
    pr = next(p for p in report.packs if p.file.parent.name == "gabapentinoid")
    assert pr.ok and pr.findings == [] and pr.skipped == [], [str(f) for f in pr.findings]


def test_pack_governance(pack):
    info = pack.spec.pack
    assert info.status == "draft" and info.approval.status == "pending-local-clinical-validation"
    assert len(pack.rules) >= 5
    assert {r.category for r in pack.spec.rules} >= {"renal", "drug-interaction", "dose-range"}
    for name, param in pack.spec.parameters.items():
        assert param.signoff == "pending", name  # nothing in this pack is signed off
        assert param.note, f"parameter {name} has no note"
    unverified = {sid for sid, src in pack.spec.sources.items() if src.tag == "R"}
    assert unverified and all("[R]" in pack.spec.sources[s].title for s in unverified)
    for rule in pack.spec.rules:
        assert rule.sources, rule.id


def test_fixtures_pass_with_full_coverage_on_both_evaluators(pack):
    for evaluator in ("oracle", "rete"):
        result = run_pack_fixtures(pack, FIXTURES, evaluator)  # type: ignore[arg-type]
        assert [str(f) for f in result.findings] == []
        assert result.passed == len(result.results) >= 20
        assert all(not cov.gaps for cov in result.coverage.values())


def _facts(name: str) -> PatientFacts:
    return PatientFacts.model_validate(json.loads((FIXTURES / name).read_text())["facts"])


def test_draft_pack_is_silent_by_default_and_runs_in_silent_mode():
    patient = _facts("G-R01-fire-below15.json")
    default = Engine.from_dir(RULES, evaluator="oracle")
    assert not [a for a in default.evaluate(patient) if a.pack_id == "gabapentinoid"]
    silent = Engine.from_dir(RULES, evaluator="oracle", statuses=RUNNING_STATUSES)
    alerts = [a for a in silent.evaluate(patient) if a.pack_id == "gabapentinoid"]
    assert [(a.rule_id, a.severity, a.pack_status) for a in alerts] == [("GAB-R01", "critical", "draft")]


def test_partner_order_wakes_the_pack():
    """An opioid ordered for a patient on a gabapentinoid is reviewed by the gabapentinoid pack."""
    engine = Engine.from_dir(RULES, evaluator="rete", statuses=RUNNING_STATUSES)
    patient = _facts("G-C01-fire-partner-order.json")
    assert patient.order is not None and "oxycodone" in (patient.order.product.display or "")
    alerts = [a for a in engine.evaluate(patient) if a.pack_id == "gabapentinoid"]
    assert [(a.rule_id, a.severity) for a in alerts] == [("GAB-C01", "warning")]


def test_every_fixture_is_well_formed(pack):
    rule_ids = {r.spec.id for r in pack.rules}
    tier_ids = {t.id for t in pack.tiers}
    items = {m.item for m in pack.spec.missing_data}
    for path in sorted(Path(FIXTURES).glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["id"] == path.stem and set(doc["expect"]) == {"fire", "silent", "cannot_assess"}
        assert set(doc["expect"]["fire"]) <= rule_ids
        assert set(doc["expect"]["silent"]) <= rule_ids | tier_ids
        assert set(doc["expect"]["cannot_assess"]) <= items
        assert doc["facts"]["as_of"] == "2026-01-15T12:00:00+00:00"


# ── issue #23: product classes, per-product ceilings, closure ────────────────────────────────────
PRODUCT_CLASSES = ("gabapentin", "gabapentin_er", "gabapentin_enacarbil", "pregabalin", "pregabalin_cr")


def test_every_gabapentinoid_code_has_one_product_class_and_keeps_the_parent():
    """The split keeps the parent class the baclofen pack (BAC-C01/C03) and the triggers read."""
    import csv

    rows = list(csv.DictReader((RULES / "vocabulary" / "codes.csv").open(encoding="utf-8")))
    drug = [r for r in rows if r["kind"] == "drug_class"]
    parent = {(r["system"], r["code"]) for r in drug if r["group"] == "gabapentinoid"}
    product: dict[tuple[str, str], list[str]] = {}
    for r in drug:
        if r["group"] in PRODUCT_CLASSES:
            product.setdefault((r["system"], r["code"]), []).append(r["group"])
    assert len(parent) >= 50 and set(product) == parent
    assert all(len(groups) == 1 for groups in product.values()), product
    by_code = {code: groups[0] for (_, code), groups in product.items()}
    assert by_code["1101338"] == "gabapentin_enacarbil"  # gabapentin enacarbil is not gabapentin IR
    assert by_code["1806382"] == "gabapentin_er" and by_code["1988974"] == "pregabalin_cr"
    assert by_code["310431"] == "gabapentin" and by_code["483450"] == "pregabalin"


def _gab(engine: Engine, name: str) -> dict[str, str]:
    pack = next(p for p in engine.packs if p.id == "gabapentinoid")
    return {a.rule_id: a.severity for a in engine.evaluate_pack(pack, _facts(name)) if a.kind == "finding"}


@pytest.mark.parametrize(
    ("fixture", "rule", "severity"),
    [  # the audit's probes (clinical-2026-12 §6): G1, G2, G3, G4, G5, G6, G8 now alert
        ("G-D01-fire-pregabalin-1200.json", "GAB-D01", "critical"),
        ("G-R01-fire-pregabalin-start-crcl10.json", "GAB-R01", "critical"),
        ("G-R03-fire-gabapentin-1800-hd.json", "GAB-R03", "critical"),
        ("G-D01-fire-enacarbil-2400.json", "GAB-D01", "critical"),
        ("G-W01-fire-stop-no-taper.json", "GAB-W01", "warning"),
        ("G-A01-fire-gabapentin-allergy.json", "GAB-A01", "critical"),
        ("G-R01-fire-pregabalin-crcl45-600.json", "GAB-R01", "warning"),
    ],
)
def test_audit_probes_alert(fixture: str, rule: str, severity: str):
    engine = Engine.from_dir(RULES, evaluator="oracle", statuses=RUNNING_STATUSES)
    assert _gab(engine, fixture).get(rule) == severity


def test_no_text_of_the_pack_advises_an_abrupt_stop(pack):
    """Stopping a gabapentinoid is advised only as a taper: no 'stop'/'discontinue' imperative."""
    texts = [s.label for r in pack.spec.rules for s in (r.suggestions or [])]
    texts += [t for r in pack.spec.rules for t in (r.summary, r.detail or "")]
    texts += [t.summary or "" for r in pack.spec.rules for t in r.tiers]
    stop, taper = re.compile(r"\b(stop|discontinue)\b", re.I), re.compile(r"taper|abrupt", re.I)
    bad = [t for t in texts if stop.search(t) and not taper.search(t)]
    assert not bad, bad


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_closure_no_suggestion_on_a_fixture_creates_a_flagged_order(path: Path):
    """Issue #10's closure test over this pack: no one-click suggestion may create an order the pack flags.

    The pack declares no one-click caps, so no card may offer one; if one is ever added, its regimen is
    re-evaluated here against every dose-dependent tier.
    """
    from cds_engine.service.suggestions import order_one_click, would_fire

    engine = Engine.from_dir(RULES, evaluator="oracle", statuses=RUNNING_STATUSES)
    pack = next(p for p in engine.packs if p.id == "gabapentinoid")
    dose_tiers = {"GAB-D01.pregabalin", "GAB-R01.pregabalin_below15", "GAB-R03.gabapentin_dose"}
    assert dose_tiers <= pack.dose_dependent
    facts = _facts(path.name)
    if facts.order is None:
        return
    alerts = engine.evaluate_pack(pack, facts)
    draft = {"resourceType": "MedicationRequest", "id": "fixture-draft", "dosageInstruction": [{}]}
    offer = order_one_click(pack, alerts, draft, facts.order, lambda: engine.flat_facts(pack, facts), facts)
    assert offer.suggestion is None  # no one-click declared: reviewed before any is added
    if offer.regimen is not None:
        assert would_fire(pack, facts, offer.regimen) == []


@pytest.mark.parametrize(
    ("code", "display", "fires"),
    [
        ("483444", "pregabalin 300 MG Oral Capsule", True),  # 1200 mg/day: above pregabalin's maximum
        ("310433", "gabapentin 600 MG Oral Tablet", False),  # 1200 mg/day: within gabapentin's
    ],
)
def test_fhir_draft_order_gets_its_product_ceiling(code: str, display: str, fires: bool):
    """From a FHIR MedicationRequest (not fixture facts): the RxNorm code picks the product class."""
    from datetime import UTC, datetime

    from cds_engine.sources.fhir import facts_from_resources

    engine = Engine.from_dir(RULES, evaluator="oracle", statuses=RUNNING_STATUSES)
    pack = next(p for p in engine.packs if p.id == "gabapentinoid")
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "female"}
    draft = {
        "resourceType": "MedicationRequest", "id": "d1", "status": "draft", "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                  "code": code, "display": display}]},
        "dosageInstruction": [{
            "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
            "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]},
            "doseAndRate": [{"doseQuantity": {"value": 600, "unit": "mg"}}],
        }],
    }  # fmt: skip
    as_of = datetime(2026, 1, 15, 12, tzinfo=UTC)
    facts = facts_from_resources([patient], as_of=as_of, vocab=pack.vocabulary,
                                 drug_class=pack.context.drug_class, draft_orders=[draft])
    found = {a.rule_id: a.severity for a in engine.evaluate_pack(pack, facts) if a.kind == "finding"}
    assert (found.get("GAB-D01") == "critical") is fires, found
