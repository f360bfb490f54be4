"""The second pack (gabapentinoid) proves the engine is generic: no Python names it, it lints clean,
its fixtures pass with full coverage on both evaluators, and as a draft it runs silently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.fixtures import run_pack_fixtures
from cds_engine.rules.governance import RUNNING_STATUSES
from cds_engine.rules.verify import verify_dir
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
