"""Invalid rule packs are refused with file:line:rule-id findings; the good pack lints clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cds_engine.rules.compile import compile_pack
from cds_engine.rules.errors import PackLoadError
from cds_engine.vocabulary import Vocabulary
from conftest import RULES

GOOD = (RULES / "baclofen" / "pack.yaml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_dir(RULES / "vocabulary")


def _findings(text: str, vocab: Vocabulary):
    with pytest.raises(PackLoadError) as info:
        compile_pack(text, "pack.yaml", vocab)
    return info.value.findings


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_good_pack_compiles(vocab):
    pack = compile_pack(GOOD, "pack.yaml", vocab)
    # the knowledge file's 35 rules, plus new rules marked as local additions (sign-off pending)
    ids = {r.spec.id for r in pack.rules}
    added = {r.spec.id for r in pack.rules if r.spec.local_addition}
    new_rules = {"BAC-F04", "BAC-F05"} & ids
    assert len(ids) - len(new_rules) == 35 and new_rules <= added
    assert all(r.spec.local_addition.signoff == "pending" for r in pack.rules if r.spec.local_addition)
    assert pack.spec.pack.approval.status == "pending-local-clinical-validation"


def test_malformed_yaml_names_line(vocab):
    text = GOOD.replace("  id: baclofen\n", "  id: [baclofen\n", 1)
    findings = _findings(text, vocab)
    assert findings[0].line is not None and "YAML" in findings[0].message


def test_unknown_fact_names_file_line_and_rule(vocab):
    text = GOOD.replace(
        "{fact: combined_oral_daily_mg, gt: {param: max_daily_mg}}",
        "{fact: combined_oral_daily_mgs, gt: {param: max_daily_mg}}",
    )
    (finding,) = _findings(text, vocab)
    assert finding.rule_id == "BAC-D01"
    assert finding.line == _line_of(text, "combined_oral_daily_mgs")
    assert "unknown fact 'combined_oral_daily_mgs'" in finding.message
    assert str(finding).startswith(f"pack.yaml:{finding.line}: BAC-D01: error:")


def test_type_mismatch(vocab):
    text = GOOD.replace(
        '{fact: cond.epilepsy, eq: true}\n    summary: "Epilepsy',
        '{fact: cond.epilepsy, gt: 3}\n    summary: "Epilepsy',
    )
    findings = _findings(text, vocab)
    assert any(f.rule_id == "BAC-S01" and "type mismatch" in f.message for f in findings)


def test_undefined_parameter(vocab):
    text = GOOD.replace("gt: {param: aud_daily_critical_mg}", "gt: {param: aud_daily_critical_mgx}")
    findings = _findings(text, vocab)
    assert any(f.rule_id == "BAC-D04" and "aud_daily_critical_mgx" in f.message for f in findings)


def test_schema_error_points_at_rule(vocab):
    text = GOOD.replace(
        "    category: order-error\n    applies: {ref: drug_order_active}\n    tiers:\n      - id: BAC-F02",
        "    category: order-mistake\n    applies: {ref: drug_order_active}\n    tiers:\n      - id: BAC-F02",
    )
    findings = _findings(text, vocab)
    assert any(
        f.rule_id == "BAC-F02" and "category" in f.message and f.line == _line_of(text, "order-mistake")
        for f in findings
    )


def test_unknown_vocabulary_group(vocab):
    text = GOOD.replace(
        "meds.gabapentinoid, gte: 1}\n    summary", "meds.gabapentinoidz, gte: 1}\n    summary"
    )
    findings = _findings(text, vocab)
    assert any(f.rule_id == "BAC-C03" and "gabapentinoidz" in f.message for f in findings)


def test_summary_too_long(vocab):
    long = "x" * 150
    text = GOOD.replace(
        'summary: "Epilepsy: baclofen may worsen', f'summary: "{long} Epilepsy: baclofen may worsen'
    )
    findings = _findings(text, vocab)
    assert any(f.rule_id == "BAC-S01" and "140" in f.message for f in findings)


def test_alias_bomb_and_tags_refused(vocab):
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    assert "aliases" in _findings(bomb, vocab)[0].message
    tagged = "pack: !!python/object/apply:os.system ['true']\n"
    assert "tag" in _findings(tagged, vocab)[0].message


def test_duplicate_rule_id(vocab):
    start = GOOD.index("  - id: BAC-S01\n")
    block = GOOD[start : GOOD.index("  - id: BAC-S02\n")]
    text = GOOD.replace(block, block + block, 1)
    findings = _findings(text, vocab)
    assert any("duplicate rule id BAC-S01" in f.message for f in findings)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cds_engine.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or RULES.parent,
        timeout=120,
    )


def test_cli_lint_passes_on_repository_rules():
    result = _cli("rules", "lint", "rules")
    assert result.returncode == 0, result.stderr
    assert "pack baclofen" in result.stdout and "rules" in result.stdout  # 35 + local additions


def test_cli_lint_fails_with_location(tmp_path):
    shutil.copytree(RULES / "vocabulary", tmp_path / "vocabulary")  # a link out of the rules dir is refused
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pack.yaml").write_text(
        GOOD.replace(
            "{fact: lactating, eq: true, missing: skip}", "{fact: lactation, eq: true, missing: skip}"
        )
    )
    result = _cli("rules", "lint", str(tmp_path))
    assert result.returncode == 1
    assert "pack.yaml:" in result.stderr and "BAC-P02" in result.stderr and "lactation" in result.stderr


def test_cli_check_rejects_invalid_facts_naming_the_field(tmp_path):
    bad = tmp_path / "facts.json"
    bad.write_text(
        '{"as_of": "2026-01-15T12:00:00+00:00", "renal": {"egfr": {"value": "high", "date": "2026-01-01"}}}'
    )
    result = _cli("check", str(bad))
    assert result.returncode == 2
    assert "renal.egfr.value" in result.stderr
