"""``cds-engine rules lint|test|docs|diff`` on the shipped packs and on seeded copies."""

from __future__ import annotations

import html
import json
import re
import shutil
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cds_engine.authoring.shadow import assumed_order, diff_engines, iter_population, load_version
from cds_engine.cli import app
from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.conditions import TRUE, evaluate
from conftest import EXAMPLES, REPO, RULES

runner = CliRunner()
FIXTURES = REPO / "fixtures"
SYNTHEA = EXAMPLES / "synthea"
AS_OF = datetime(2026, 1, 15, 12, tzinfo=UTC)


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def copy_rules(tmp_path: Path, packs: tuple[str, ...] = ("baclofen", "gabapentinoid")) -> Path:
    root = tmp_path / "rules"
    root.mkdir()
    shutil.copytree(RULES / "vocabulary", root / "vocabulary")  # a link out of the rules dir is refused
    for name in packs:
        (root / name).mkdir()
        shutil.copy(RULES / name / "pack.yaml", root / name / "pack.yaml")
    return root


# ───────────────────────── lint ─────────────────────────

def test_lint_shipped_rules_passes():
    result = cli("rules", "lint", str(RULES))
    assert result.exit_code == 0, result.output
    # the knowledge file's 35 rules plus the marked local additions (BAC-F04, BAC-F05)
    assert re.search(r"baclofen/pack.yaml: ok — pack baclofen .* 3[5-9] rules", result.output)
    assert "gabapentinoid/pack.yaml: ok — pack gabapentinoid 0.2.0 (draft)" in result.output


def test_lint_error_exits_nonzero_with_file_line_rule(tmp_path):
    root = copy_rules(tmp_path, ("baclofen",))
    path = root / "baclofen" / "pack.yaml"
    text = path.read_text(encoding="utf-8")
    band_l = (
        "      - {fact: renal_fn, gte: {param: renal_band_m_below}}\n"
        "      - {fact: renal_fn, lte: {param: renal_band_l_max}}\n"
    )
    assert text.count(band_l) == 1
    contradiction = "      - {fact: renal_fn, lt: {param: renal_band_s_below}}\n"
    seeded = text.replace(band_l, band_l + contradiction, 1)
    path.write_text(seeded, encoding="utf-8")
    result = cli("rules", "lint", str(root))
    assert result.exit_code == 1
    line = next(i for i, s in enumerate(seeded.splitlines(), 1) if s.startswith("  band_L:"))
    # band_L is now empty: every tier using it can never fire (BAC-R01.mild), found at file:line
    assert re.search(r"pack.yaml:\d+: BAC-R01: error: tier BAC-R01.mild can never fire", result.output)
    assert f"pack.yaml:{line}: -: error: definition band_L can never hold" in result.output


def test_lint_schema_error(tmp_path):
    root = copy_rules(tmp_path, ("gabapentinoid",))
    path = root / "gabapentinoid" / "pack.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("severity: critical", "severity: fatal", 1))
    result = cli("rules", "lint", str(root))
    assert result.exit_code == 1 and "GAB-D01: error:" in result.output and "REJECTED" in result.output


# ───────────────────────── test (fixtures and coverage) ─────────────────────────

def test_rules_test_reports_full_coverage_for_shipped_packs():
    result = cli("rules", "test", str(RULES))
    assert result.exit_code == 0, result.output
    assert re.search(r"baclofen: (\d+)/\1 fixtures pass; coverage full", result.output), result.output
    assert re.search(r"gabapentinoid: (\d+)/\1 fixtures pass; coverage full", result.output), result.output


def _fixture_copy(tmp_path: Path, pack: str) -> Path:
    root = tmp_path / "fixtures"
    shutil.copytree(FIXTURES / pack, root / pack)
    return root


def test_rules_test_failing_fixture(tmp_path):
    fixtures = _fixture_copy(tmp_path, "gabapentinoid")
    path = fixtures / "gabapentinoid" / "G-C01-fire-opioid.json"
    doc = json.loads(path.read_text())
    doc["expect"]["fire"] = {"GAB-C01": "critical"}
    path.write_text(json.dumps(doc))
    root = copy_rules(tmp_path, ("gabapentinoid",))
    result = cli("rules", "test", str(root), "--fixtures", str(fixtures))
    assert result.exit_code == 1
    assert "G-C01-fire-opioid: GAB-C01 should fire at critical but fired at warning (GAB-C01.opioid)" in (
        result.output)


def test_missing_coverage_is_error_only_for_active_pack(tmp_path):
    fixtures = _fixture_copy(tmp_path, "gabapentinoid")
    for path in (fixtures / "gabapentinoid").glob("*.json"):  # every fixture in which GAB-R03 fires
        if "GAB-R03" in json.loads(path.read_text())["expect"]["fire"]:
            path.unlink()
    root = copy_rules(tmp_path, ("gabapentinoid",))
    draft = cli("rules", "test", str(root), "--fixtures", str(fixtures))
    assert draft.exit_code == 0, draft.output
    assert "GAB-R03: warning: coverage: never fires in a fixture" in draft.output
    path = root / "gabapentinoid" / "pack.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("  status: draft", "  status: active", 1))
    active = cli("rules", "test", str(root), "--fixtures", str(fixtures))
    assert active.exit_code == 1
    assert re.search(r"pack.yaml:\d+: GAB-R03: error: coverage: never fires in a fixture", active.output)


# ───────────────────────── docs ─────────────────────────

def test_docs_render_the_catalog(tmp_path):
    out = tmp_path / "catalog.html"
    result = cli("rules", "docs", str(RULES), "--out", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.count('class="rule"') == sum(len(p.rules) for p in Engine.from_dir(RULES).packs)
    for text in ("BAC-D01", "combined oral daily (mg/day) &gt; 80 mg/day (max_daily_mg)",
                 "if unknown: cannot assess",
                 "Approval: pending local clinical validation", "Discrepancy register", "SD-32",
                 "DRAFT — runs in silent mode", "GAB-R01.pregabalin_below15", "https://dailymed.nlm.nih.gov"):
        assert text in page, text
    assert 'href="#seed-baclofen-SD-32"' in page  # a rule's seed link points into the register
    assert "<script" not in page and "http://" not in page.split("<body>")[0]  # self-contained


def test_docs_escape_pack_text(tmp_path):
    root = copy_rules(tmp_path, ("gabapentinoid",))
    path = root / "gabapentinoid" / "pack.yaml"
    text = path.read_text(encoding="utf-8")
    text = text.replace("title: Gabapentinoid medication safety", 'title: "<script>alert(1)</script>"', 1)
    text = text.replace('url: null, tag: R}', 'url: "javascript:alert(2)", tag: R}', 1)
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "c.html"
    assert cli("rules", "docs", str(root), "--out", str(out)).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert "<script>" not in page and html.escape("<script>alert(1)</script>") in page
    assert "javascript:" not in page


def test_docs_show_site_overrides(tmp_path):
    root = copy_rules(tmp_path, ("baclofen",))
    (root / "site.yaml").write_text("site: {name: Test General}\npacks:\n  baclofen:\n"
                                    "    max_daily_mg: {value: 60, note: 'P&T minute 4'}\n", encoding="utf-8")
    out = tmp_path / "c.html"
    assert cli("rules", "docs", str(root), "--out", str(out)).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert "combined oral daily (mg/day) &gt; 60 mg/day (max_daily_mg)" in page
    assert "site setting</span> (pack default 80): P&amp;T minute 4" in page and "Test General" in page


# ───────────────────────── diff (shadow mode) ─────────────────────────

@cache
def _threshold_copy(root: Path) -> Path:
    (root / "baclofen").mkdir(parents=True, exist_ok=True)
    text = (RULES / "baclofen" / "pack.yaml").read_text(encoding="utf-8")
    changed = text.replace("max_daily_mg: {value: 80,", "max_daily_mg: {value: 60,", 1)
    assert changed != text
    (root / "baclofen" / "pack.yaml").write_text(changed, encoding="utf-8")
    return root / "baclofen" / "pack.yaml"


def _expected_d01_changes(facts_list: list[tuple[str, PatientFacts]]) -> tuple[set[str], set[str]]:
    """Independently of the diff: who newly crosses 60 < daily ≤ 80 (appear), or moves single → daily tier."""
    engine = Engine.from_dir(RULES, evaluator="oracle", site=None)
    pack = next(p for p in engine.packs if p.id == "baclofen")
    rule = pack.rule("BAC-D01")
    applies = rule.tiers[0].node.children[0]
    appear, changed = set(), set()
    for pid, facts in facts_list:
        if pack not in engine.applicable(facts):
            continue
        flat = engine.flat_facts(pack, facts)
        daily, single = flat.get("combined_oral_daily_mg"), flat.get("max_single_dose_mg")
        if daily is None or not (60 < daily <= 80) or evaluate(applies, flat) != TRUE:
            continue
        (changed if single is not None and single > 20 else appear).add(pid)
    return appear, changed


def test_diff_threshold_change_on_fixtures(tmp_path):
    new = _threshold_copy(tmp_path / "new")
    result = cli("rules", "diff", str(RULES / "baclofen" / "pack.yaml"), str(new), "--on",
                 str(FIXTURES / "baclofen"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = {r["rule"]: r for r in report["rules"] if r["appear"] or r["disappear"] or r["severity_changed"]}
    # BAC-C07.if_additional reads max_daily_mg too (the total if a presumed replacement is in addition)
    assert "BAC-D01" in rows and set(rows) <= {"BAC-D01", "BAC-C07"}, rows
    skipped: list[str] = []
    population = [(p.id, p.facts) for p in iter_population(FIXTURES / "baclofen", skipped)]
    appear, changed = _expected_d01_changes(population)
    d01 = rows["BAC-D01"]
    assert (d01["appear"], d01["disappear"], d01["severity_changed"]) == (len(appear), 0, len(changed))
    assert appear and set(d01["examples"]["appear"]) <= appear
    assert report["patients"] == len(population) and not skipped
    c07 = rows.get("BAC-C07", {"appear": 0, "disappear": 0, "severity_changed": 0})
    assert report["totals"] == {
        "appear": len(appear) + c07["appear"],
        "disappear": c07["disappear"],
        "severity_changed": len(changed) + c07["severity_changed"],
    }


def test_diff_same_version_changes_nothing():
    result = cli("rules", "diff", str(RULES), str(RULES), "--on", str(FIXTURES / "gabapentinoid"))
    assert result.exit_code == 0, result.output
    assert "alerts appearing: 0, disappearing: 0, changing severity: 0" in result.output


def test_diff_threshold_change_on_synthea_with_assumed_order(tmp_path):
    """Lowering max_daily_mg 80 → 60 with 70 mg/day assumed for everyone: D01 appears for each patient."""
    sample = tmp_path / "synthea"
    sample.mkdir()
    bundles = sorted(SYNTHEA.rglob("*.json.gz"))
    patients = [b for b in bundles if "Information" not in b.name]
    chosen = patients + [b for b in bundles if "Information" in b.name][:1]
    for i, b in enumerate(chosen):
        (sample / f"{i:02d}-{b.name}").symlink_to(b)
    new = _threshold_copy(tmp_path / "new")
    order = "baclofen 17.5 mg oral qid"
    result = cli("rules", "diff", str(RULES / "baclofen" / "pack.yaml"), str(new), "--on", str(sample),
                 "--assume-order", order, "--as-of", AS_OF.isoformat(), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert any("without a Patient" in s for s in report["skipped"])
    rows = {r["rule"]: r for r in report["rules"] if r["appear"] or r["disappear"] or r["severity_changed"]}
    assert set(rows) == {"BAC-D01"}
    # independent expectation from the mapped facts of the same bundles
    old_engine = load_version(RULES / "baclofen" / "pack.yaml")
    pack = old_engine.packs[0]
    skipped: list[str] = []
    facts_list = []
    assumed = assumed_order(order, old_engine)
    for patient in iter_population(sample, skipped):
        facts = patient.facts_for(pack.context.drug_class, pack.vocabulary, AS_OF, {})
        if facts.deceased:  # left out by diff, as by screen
            continue
        facts_list.append((patient.id, facts.model_copy(update={"order": assumed})))
    appear, changed = _expected_d01_changes(facts_list)
    assert report["patients"] == len(facts_list) and report["deceased_left_out"] == 1
    # 70 mg/day: newly above 60 for every adult order (the example child is the exception)
    assert len(appear) >= len(facts_list) - 2 and not changed
    assert rows["BAC-D01"]["appear"] == len(appear) and rows["BAC-D01"]["old"] == 0
    assert set(rows["BAC-D01"]["examples"]["appear"]) <= appear
    # the same engines through the library give the same counts (and 0 without the order)
    report_lib = diff_engines(old_engine, load_version(new, vocabulary=RULES / "vocabulary"),
                              iter_population(sample, []), as_of=AS_OF)
    assert report_lib.totals() == {"appear": 0, "disappear": 0, "severity_changed": 0}


def test_assumed_order_text_and_json():
    engine = load_version(RULES / "baclofen" / "pack.yaml")
    order = assumed_order("baclofen 10 mg PO TID for multiple sclerosis", engine)
    assert (order.dose_amount, order.dose_unit, order.route, order.doses_per_day, order.action) == (
        10, "mg", "oral", 3, "new")
    as_json = assumed_order('{"product": {"display": "baclofen"}, "dose_amount": 5, "dose_unit": "mg", '
                            '"doses_per_day": 3, "route": "oral", "action": "modify"}', engine)
    assert as_json.action == "modify" and as_json.dose_amount == 5
    with pytest.raises(ValueError):
        assumed_order("{not json", engine)
    bad = cli("rules", "diff", str(RULES), str(RULES), "--on", str(FIXTURES / "gabapentinoid"),
              "--assume-order", "10 mg")
    assert bad.exit_code == 2 and "assume-order" in bad.output


def test_rules_facts_lists_the_catalog():
    result = cli("rules", "facts")
    assert result.exit_code == 0 and "daily_dose_mg" in result.output and "meds.<drug_class>" in result.output
