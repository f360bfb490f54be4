"""Seeded defects: every finding type of the verifier (``cds-engine rules lint``) is found with the
right rule id, line and severity, in small packs written here against ``rules/vocabulary``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cds_engine.authoring.verify import PackReport, verify_dir, verify_text
from cds_engine.rules.errors import Finding
from cds_engine.vocabulary import Vocabulary
from conftest import RULES

HEAD = """\
pack:
  id: testpack
  title: Test pack
  version: 0.0.1
  status: draft
  jurisdiction: US
  url: https://example.org/packs/testpack
  drug: {class: gabapentinoid, display: Test drug}
  approval:
    status: pending-local-clinical-validation
  triggers: {drug_classes: [gabapentinoid]}
parameters:
  max_mg: {value: 80, unit: mg/day, basis: label}
%(parameters)s
definitions:
  order_on:
    fact: order_present
    eq: true
%(definitions)s
sources:
  S1: {title: Test source}
override_reasons:
  - {code: other, display: Other}
rules:
  - id: TST-D01
    title: Dose above maximum
    category: dose-range
    applies: {ref: order_on}
    tiers:
      - id: TST-D01.high
        severity: critical
        when: {fact: daily_dose_mg, gt: {param: max_mg}}
    summary: "Daily dose {daily_dose_mg} mg above {param.max_mg} mg/day"
    detail: "Dose {daily_dose_mg} mg/day."
    sources: [S1]
    seed: {note: none}
%(rules)s"""


def rule(rid: str, tiers: str, *, applies: str = "{ref: order_on}", category: str = "dose-range",
         summary: str = "Check {daily_dose_mg}", detail: str = "Detail.") -> str:
    return f"""\
  - id: {rid}
    title: Rule {rid}
    category: {category}
    applies: {applies}
    tiers:
{tiers}
    summary: "{summary}"
    detail: "{detail}"
    sources: [S1]
    seed: {{note: none}}
"""


def tier(tid: str, severity: str, when: str, summary: str | None = None) -> str:
    extra = f'\n        summary: "{summary}"' if summary else ""
    return f"      - id: {tid}\n        severity: {severity}\n        when: {when}{extra}"


DOSE10 = "{fact: daily_dose_mg, gt: 10}"


def pack(*, rules: str = "", definitions: str = "", parameters: str = "", head: str = HEAD) -> str:
    return head % {"rules": rules, "definitions": definitions, "parameters": parameters}


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_dir(RULES / "vocabulary")


def run(text: str, vocab: Vocabulary) -> PackReport:
    return verify_text(text, "pack.yaml", vocab)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


def only(report: PackReport, words: str) -> Finding:
    hits = [f for f in report.findings if words in f.message]
    assert len(hits) == 1, f"expected one finding with {words!r}, got: {[str(f) for f in report.findings]}"
    return hits[0]


def assert_finding(report: PackReport, words: str, *, rule_id: str | None, line: int,
                   severity: str) -> Finding:
    f = only(report, words)
    assert (f.rule_id, f.line, f.severity) == (rule_id, line, severity), str(f)
    assert str(f).startswith(f"pack.yaml:{line}: {rule_id or '-'}: {severity}: ")
    return f


# ───────────────────────── the clean baseline ─────────────────────────

def test_base_pack_is_clean(vocab):
    report = run(pack(), vocab)
    assert report.ok and report.findings == [], [str(f) for f in report.findings]


def test_shipped_rules_have_no_errors():
    report = verify_dir(RULES)
    assert report.ok, [str(f) for f in report.errors]
    assert {p.pack.id for p in report.packs if p.pack} >= {"baclofen", "gabapentinoid"}
    assert all(not p.skipped for p in report.packs), "no check of the shipped packs may be given up"


# ───────────────────── compile-level findings (schema, facts, types, parameters) ─────────────────────

def test_malformed_yaml(vocab):
    text = pack().replace("  title: Test pack\n", "  title: [Test pack\n")
    report = run(text, vocab)
    assert report.pack is None and report.errors and report.errors[0].line is not None
    assert "YAML" in report.errors[0].message


def test_schema_error_names_rule_and_line(vocab):
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "severe", "{fact: daily_dose_mg, gt: 10}")))
    report = run(text, vocab)
    f = only(report, "severity")
    assert (f.rule_id, f.line) == ("TST-D02", line_of(text, "severity: severe"))


def test_unknown_fact(vocab):
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", "{fact: daily_dose_mgs, gt: 10}")))
    assert_finding(run(text, vocab), "unknown fact 'daily_dose_mgs'", rule_id="TST-D02",
                   line=line_of(text, "daily_dose_mgs"), severity="error")


def test_type_mismatch(vocab):
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", "{fact: order_route, gt: 3}")))
    assert_finding(run(text, vocab), "type mismatch", rule_id="TST-D02",
                   line=line_of(text, "order_route, gt: 3"), severity="error")


def test_parameter_used_but_undefined(vocab):
    when = "{fact: daily_dose_mg, gt: {param: nope_mg}}"
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", when)))
    assert_finding(run(text, vocab), "parameter 'nope_mg' is used but not defined", rule_id="TST-D02",
                   line=line_of(text, "nope_mg"), severity="error")


def test_message_uses_unknown_fact_or_parameter(vocab):
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", "{fact: daily_dose_mg, gt: 10}"),
                           summary="Dose {daily_dose_mgx} above {param.nothing}"))
    report = run(text, vocab)
    assert {f.rule_id for f in report.errors} == {"TST-D02"}
    assert any("unknown fact 'daily_dose_mgx'" in f.message for f in report.errors)
    assert any("undefined parameter 'nothing'" in f.message for f in report.errors)


def test_unknown_source(vocab):
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", "{fact: daily_dose_mg, gt: 10}"))
                .replace("sources: [S1]", "sources: [S9]"))
    assert_finding(run(text, vocab), "source 'S9' is not in the pack's sources", rule_id="TST-D02",
                   line=line_of(text, "sources: [S9]"), severity="error")


def test_summary_always_too_long(vocab):
    long = "x" * 135 + " {daily_dose_mg}"
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", DOSE10), summary=long))
    f = only(run(text, vocab), "can reach")
    assert (f.rule_id, f.severity) == ("TST-D02", "error")


# ───────────────────────── contradictions ─────────────────────────

def test_contradictory_applies_eq_conflict(vocab):
    applies = "{all: [{fact: order_action, eq: new}, {fact: order_action, eq: modify}]}"
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", DOSE10), applies=applies))
    f = assert_finding(run(text, vocab), "can never fire", rule_id="TST-D02",
                       line=line_of(text, "applies: {all: [{fact: order_action"), severity="error")
    assert "order action = new" in f.message and "order action = modify" in f.message


def test_contradictory_tier_eq_ne(vocab):
    when = "{all: [{fact: order_route, eq: oral}, {fact: order_route, ne: oral}]}"
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", when)))
    assert_finding(run(text, vocab), "tier TST-D02.a can never fire", rule_id="TST-D02",
                   line=line_of(text, "when: {all: [{fact: order_route, eq: oral}"), severity="error")


def test_contradictory_tier_numeric_interval(vocab):
    when = "{all: [{fact: egfr, lt: 30}, {fact: egfr, gte: 50}]}"
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", when)))
    f = assert_finding(run(text, vocab), "tier TST-D02.a can never fire", rule_id="TST-D02",
                       line=line_of(text, "when: {all: [{fact: egfr, lt: 30}"), severity="error")
    assert "cannot both hold" in f.message


def test_missing_fire_is_not_a_contradiction(vocab):
    """egfr < 30 and egfr >= 50 both hold for a patient WITHOUT an eGFR when missing means fire."""
    when = "{all: [{fact: egfr, lt: 30, missing: fire}, {fact: egfr, gte: 50, missing: fire}]}"
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", when)))
    assert not [f for f in run(text, vocab).findings if "never fire" in f.message]


def test_tier_excluded_by_applies(vocab):
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", "{fact: order_route, eq: intrathecal}"),
                           applies="{fact: order_route, eq: oral}"))
    f = assert_finding(run(text, vocab), "contradicts the rule's applies", rule_id="TST-D02",
                       line=line_of(text, "when: {fact: order_route, eq: intrathecal}"), severity="error")
    assert "order route = oral" in f.message


# ───────────────────────── gaps and overlaps in bands ─────────────────────────

BANDS = """\
  band_low: {fact: egfr, lt: 30}
  band_mid: {all: [{fact: egfr, %(mid_lo)s}, {fact: egfr, %(mid_hi)s}]}
  band_high: {fact: egfr, gte: 60}
"""


def bands(mid_lo: str, mid_hi: str) -> str:
    return BANDS % {"mid_lo": mid_lo, "mid_hi": mid_hi}


def test_bands_without_gap_or_overlap_are_clean(vocab):
    report = run(pack(definitions=bands("gte: 30", "lt: 60")), vocab)
    assert report.findings == [], [str(f) for f in report.findings]


def test_band_point_gap(vocab):
    text = pack(definitions=bands("gt: 30", "lt: 60"))
    f = assert_finding(run(text, vocab), "gap in the bands", rule_id=None, line=line_of(text, "band_mid:"),
                       severity="error")
    assert "exactly 30" in f.message and "egfr" in f.message


def test_band_wide_gap(vocab):
    text = pack(definitions=bands("gte: 30", "lt: 45"))
    f = assert_finding(run(text, vocab), "gap in the bands", rule_id=None, line=line_of(text, "band_high:"),
                       severity="warning")
    assert "≥ 45 and < 60" in f.message


def test_band_overlap(vocab):
    text = pack(definitions=bands("gte: 30", "lte: 60"))
    f = assert_finding(run(text, vocab), "overlap in the bands", rule_id=None,
                       line=line_of(text, "band_high:"), severity="error")
    assert "= 60" in f.message and "band_mid" in f.message


def test_tier_gap_over_a_dose(vocab):
    tiers = "\n".join([
        tier("TST-D02.high", "critical", "{fact: daily_dose_mg, gt: 80}"),
        tier("TST-D02.mid", "warning",
             "{all: [{fact: daily_dose_mg, gt: 40}, {fact: daily_dose_mg, lt: 80}]}"),
    ])
    text = pack(rules=rule("TST-D02", tiers))
    f = assert_finding(run(text, vocab), "gap in the tiers", rule_id="TST-D02",
                       line=line_of(text, "- id: TST-D02.high"), severity="error")
    assert "exactly 80" in f.message


def test_tier_overlap_same_severity(vocab):
    tiers = "\n".join([
        tier("TST-D02.a", "warning",
             "{all: [{fact: daily_dose_mg, gt: 40}, {fact: daily_dose_mg, lte: 80}]}"),
        tier("TST-D02.b", "warning",
             "{all: [{fact: daily_dose_mg, gte: 80}, {fact: daily_dose_mg, lt: 120}]}"),
    ])
    text = pack(rules=rule("TST-D02", tiers))
    f = assert_finding(run(text, vocab), "overlap in the tiers", rule_id="TST-D02",
                       line=line_of(text, "- id: TST-D02.b"), severity="warning")
    assert "= 80" in f.message


def test_nested_tiers_of_different_severity_are_fine(vocab):
    tiers = "\n".join([tier("TST-D02.high", "critical", "{fact: max_single_dose_mg, gt: 40}"),
                       tier("TST-D02.mid", "warning", "{fact: max_single_dose_mg, gt: 20}")])
    report = run(pack(rules=rule("TST-D02", tiers, summary="Single dose {max_single_dose_mg}")), vocab)
    assert report.findings == [], [str(f) for f in report.findings]


# ───────────────────────── dead, duplicate and subsumed tiers and rules ─────────────────────────

def test_tier_never_raised(vocab):
    tiers = "\n".join([tier("TST-D02.crit", "critical", "{fact: daily_dose_mg, gt: 40}"),
                       tier("TST-D02.warn", "warning", "{fact: daily_dose_mg, gt: 80}")])
    text = pack(rules=rule("TST-D02", tiers))
    f = assert_finding(run(text, vocab), "is never raised", rule_id="TST-D02",
                       line=line_of(text, "- id: TST-D02.warn"), severity="error")
    assert "TST-D02.crit" in f.message


def test_duplicate_tier(vocab):
    tiers = "\n".join([tier("TST-D02.a", "warning", "{fact: order_route, eq: oral}"),
                       tier("TST-D02.b", "warning", "{fact: order_route, in: [oral]}")])
    text = pack(rules=rule("TST-D02", tiers))
    assert_finding(run(text, vocab), "duplicates TST-D02.a", rule_id="TST-D02",
                   line=line_of(text, "- id: TST-D02.b"), severity="error")


def test_duplicate_rules(vocab):
    one = rule("TST-C01", tier("TST-C01.a", "warning", "{fact: meds.opioid_agonist, gte: 1}"),
               category="drug-interaction", summary="Opioid {meds.opioid_agonist}")
    two = rule("TST-S01", tier("TST-S01.a", "info", "{fact: meds.opioid_agonist, gt: 0}"),
               category="drug-disease", summary="Opioid again {meds.opioid_agonist}")
    text = pack(rules=one + two)
    assert_finding(run(text, vocab), "duplicates TST-C01", rule_id="TST-S01",
                   line=line_of(text, "- id: TST-S01"), severity="warning")


def test_subsumed_rule(vocab):
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", "{fact: daily_dose_mg, gt: 100}")))
    f = assert_finding(run(text, vocab), "is subsumed by TST-D01", rule_id="TST-D02",
                       line=line_of(text, "- id: TST-D02"), severity="warning")
    assert "whenever it fires, TST-D01 fires too" in f.message


# ───────────────────────── parameters, messages, summaries ─────────────────────────

def test_parameter_defined_but_unused(vocab):
    text = pack(parameters="  spare_days: {value: 5, unit: days, basis: policy}")
    assert_finding(run(text, vocab), "parameter 'spare_days' is defined but no condition", rule_id=None,
                   line=line_of(text, "spare_days:"), severity="warning")


def test_message_shows_fact_the_rule_does_not_read(vocab):
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", "{fact: daily_dose_mg, gt: 10}"),
                           detail="eGFR {egfr}, dose {daily_dose_mg}"))
    f = assert_finding(run(text, vocab), "does not read", rule_id="TST-D02",
                       line=line_of(text, 'detail: "eGFR {egfr}'), severity="warning")
    assert "shows egfr" in f.message and "daily_dose_mg" not in f.message.split("does not read")[0]


def test_message_writes_a_threshold_literally(vocab):
    when = "{all: [{fact: max_single_dose_mg, gt: {param: max_mg}}, {fact: order_route, eq: oral}]}"
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", when),
                           summary="Single dose {max_single_dose_mg} mg above 80 mg"))
    f = assert_finding(run(text, vocab), "literal number", rule_id="TST-D02",
                       line=line_of(text, 'summary: "Single dose'), severity="error")
    assert "80 (max_mg)" in f.message and "{param.max_mg}" in f.message


def test_summary_can_exceed_140_with_real_values(vocab):
    # counted 8 wide (a number) the summary fits; a 20-character indication does not
    text_summary = "y" * 120 + " {order_indication}"
    when = "{all: [{fact: daily_dose_mg, gt: 10}, {fact: order_indication, ne: spasticity_cerebral_palsy}]}"
    text = pack(rules=rule("TST-D02", tier("TST-D02.a", "warning", when), summary=text_summary))
    f = assert_finding(run(text, vocab), "can reach", rule_id="TST-D02",
                       line=line_of(text, 'summary: "yyyy'), severity="warning")
    assert "{order_indication}" in f.message and "146" in f.message


# ───────────────────────── governance ─────────────────────────

def test_approved_without_approver_and_date(vocab):
    text = pack().replace("status: pending-local-clinical-validation", "status: approved")
    assert_finding(run(text, vocab), "has no approver and no date", rule_id=None,
                   line=line_of(text, "approval:"), severity="error")


def test_approved_with_bad_date_and_pending_parameter(vocab):
    text = pack(parameters="  step_mg: {value: 5, unit: mg, basis: design-choice, signoff: pending}",
                rules=rule("TST-D02", tier("TST-D02.a", "warning",
                                           "{fact: daily_dose_mg, gt: {param: step_mg}}"))
                ).replace("status: pending-local-clinical-validation",
                          "status: approved\n    approver: P&T committee\n    date: '15/01/2026'")
    report = run(text, vocab)
    assert_finding(report, "is not an ISO date", rule_id=None, line=line_of(text, "date: '15/01/2026'"),
                   severity="error")
    assert_finding(report, "parameter 'step_mg' (design-choice) is still pending", rule_id=None,
                   line=line_of(text, "step_mg:"), severity="warning")


# ───────────────────────── directory-level: pack folder and site settings ─────────────────────────

def _rules_dir(tmp_path: Path, text: str, folder: str = "testpack") -> Path:
    root = tmp_path / "rules"
    (root / folder).mkdir(parents=True)
    (root / folder / "pack.yaml").write_text(text, encoding="utf-8")
    shutil.copytree(RULES / "vocabulary", root / "vocabulary")  # a link out of the rules dir is refused
    return root


def test_pack_id_differs_from_folder(tmp_path):
    root = _rules_dir(tmp_path, pack(), folder="otherpack")
    report = verify_dir(root)
    (f,) = report.errors
    assert "differs from its folder 'otherpack'" in f.message and f.line == line_of(pack(), "id: testpack")


SITE = """\
site:
  name: Test hospital
packs:
  testpack:
    max_mg: {value: 60, note: "P&T 2026-01"}
%s"""


def test_site_unknown_parameter_type_and_pack(tmp_path):
    root = _rules_dir(tmp_path, pack())
    site = SITE % "    max_mgs: 70\n    max_mg_text: x\n  nopack:\n    a: 1\n"
    site = site.replace("    max_mg_text: x\n", "")
    (root / "site.yaml").write_text(site.replace("{value: 60,", "{value: sixty,"), encoding="utf-8")
    report = verify_dir(root)
    messages = {f.message.split(":")[0]: f for f in report.site_findings}
    unknown = next(f for f in report.site_findings if "overrides no parameter" in f.message)
    assert unknown.file.endswith("site.yaml") and unknown.line == line_of(site, "max_mgs:")
    assert unknown.severity == "error"
    wrong_type = next(f for f in report.site_findings if "is a text but the parameter is a number" in
                      f.message)
    assert wrong_type.line == line_of(site, "max_mg: {value")
    no_pack = next(f for f in report.site_findings if "not installed" in f.message)
    assert no_pack.line == line_of(site, "nopack:")
    assert not report.ok and messages


def test_site_settings_overlay_and_malformed_file(tmp_path):
    root = _rules_dir(tmp_path, pack())
    (root / "site.yaml").write_text(SITE % "", encoding="utf-8")
    report = verify_dir(root)
    assert report.ok, [str(f) for f in report.findings]
    assert report.packs[0].pack.params["max_mg"] == 60
    assert report.site.sha256 and len(report.site.sha256) == 64
    (root / "site.yaml").write_text("site:\n  name: x\npacks:\n  testpack: [1, 2]\n", encoding="utf-8")
    bad = verify_dir(root)
    assert not bad.ok and bad.site_findings[0].line == 4


def test_verifier_copes_with_the_shipped_pack_edited(tmp_path, vocab):
    """A realistic slip in the shipped pack — band M made inclusive at 50 — is caught as an overlap."""
    text = (RULES / "baclofen" / "pack.yaml").read_text(encoding="utf-8")
    edited = text.replace("      - {fact: renal_fn, lt: {param: renal_band_m_below}}",
                          "      - {fact: renal_fn, lte: {param: renal_band_m_below}}", 1)
    assert edited != text
    report = verify_text(edited, "pack.yaml", vocab)
    f = only(report, "overlap in the bands")
    assert f.severity == "error" and "band_M and band_L" in f.message and "= 50" in f.message
    assert f.line == line_of(edited, "  band_L:")
    shutil.rmtree(tmp_path, ignore_errors=True)
