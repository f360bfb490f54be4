"""The baclofen fixtures (``fixtures/baclofen/*.json``) against both evaluators and the CLI.

Each fixture holds PatientFacts and what the pack's clinical basis (docs/clinical/baclofen.md; the
review's rule table and 25 scenarios) says must happen:

* ``expect.fire``: the COMPLETE set of rules that raise a finding, each at its severity;
* ``expect.silent``: rules (``BAC-D01``) or single tiers (``BAC-D01.single``) that must not fire;
* ``expect.cannot_assess``: the complete set of missing-data items reported.

A failing fixture is a disagreement between the engine and the knowledge file: fix the pack or
the engine (or, after clinical review, the knowledge file), never the expectation alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from cds_engine.alerts import Alert
from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
FIXTURES = REPO / "fixtures" / "baclofen"
FILES = sorted(FIXTURES.glob("*.json"))
EVALUATORS = ("rete", "oracle")
SEVERITIES = {"info", "warning", "critical"}
MISSING_PREFIX = "missing-data."
# three fixtures through ``cds-engine check --json``: findings at three severities, and a suppressed
# cannot-assess item (the dose gap covered by BAC-F03)
CLI_SAMPLES = (("T11.json", "rete"), ("T25.json", "oracle"), ("CA-liquid-no-concentration.json", "rete"))


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@cache
def _base_engine() -> Engine:
    return Engine.from_dir(RULES)


@cache
def _engine(evaluator: str) -> Engine:
    return Engine(_base_engine().packs, evaluator)  # type: ignore[arg-type]


def _pack():
    return next(p for p in _base_engine().packs if p.id == "baclofen")


@cache
def _alerts(name: str, evaluator: str) -> tuple[Alert, ...]:
    facts = PatientFacts.model_validate(_load(name)["facts"])
    engine = _engine(evaluator)
    before = getattr(engine, "fallbacks", 0)
    alerts = tuple(engine.evaluate(facts))
    assert getattr(engine, "fallbacks", 0) == before, f"{evaluator}: the Rete evaluator failed on {name}"
    return alerts


def _findings(alerts: tuple[Alert, ...]) -> set[tuple[str, str]]:
    return {(a.rule_id, a.severity) for a in alerts if a.kind == "finding"}


def _cannot_assess(alerts: tuple[Alert, ...]) -> set[str]:
    return {a.tier_id.removeprefix(MISSING_PREFIX) for a in alerts if a.kind == "cannot-assess"}


def _describe(alerts: tuple[Alert, ...]) -> list[str]:
    return [f"{a.kind}:{a.tier_id}:{a.severity}" for a in alerts]


# ───────────────────────── well-formed fixtures ─────────────────────────


def test_fixture_files_exist():
    names = {f.name for f in FILES}
    assert len(FILES) >= 60
    for scenario in range(1, 26):
        assert any(n.startswith(f"T{scenario:02d}") for n in names), (
            f"scenario T{scenario:02d} has no fixture"
        )


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_fixture_is_well_formed(path: Path):
    fixture = _load(path.name)
    assert fixture["id"] == path.stem
    assert set(fixture) >= {"id", "scenario", "description", "source", "facts", "expect"}
    expect = fixture["expect"]
    assert set(expect) == {"fire", "silent", "cannot_assess"}
    pack = _pack()
    rule_ids = {r.spec.id for r in pack.rules}
    tier_ids = {t.id for t in pack.tiers}
    items = {i.item for i in pack.spec.missing_data}
    for rule, severity in expect["fire"].items():
        assert rule in rule_ids, f"unknown rule {rule}"
        assert severity in SEVERITIES
        assert severity in {t.severity for t in pack.tiers if t.id.split(".")[0] == rule}, (
            f"{rule} has no {severity} tier"
        )
    for entry in expect["silent"]:
        assert entry in rule_ids or entry in tier_ids, f"unknown rule or tier {entry}"
        if entry in rule_ids:
            assert entry not in expect["fire"], f"{entry} is both in fire and silent"
        else:
            rule = entry.split(".")[0]
            sev = next(t.severity for t in pack.tiers if t.id == entry)
            assert expect["fire"].get(rule) != sev, f"{entry} is silent but {rule} must fire at {sev}"
    for item in expect["cannot_assess"]:
        assert isinstance(item, str) and item
    assert not (set(expect["cannot_assess"]) - items - _fact_names()), "unknown cannot-assess item"
    PatientFacts.model_validate(fixture["facts"])  # extra keys forbidden: typos fail here
    assert fixture["facts"]["as_of"] == "2026-01-15T12:00:00+00:00"


@cache
def _fact_names() -> frozenset[str]:
    from cds_engine.facts.catalog import FACTS

    return frozenset(FACTS)


# ───────────────────────── the expectations, both evaluators ─────────────────────────


@pytest.mark.parametrize("evaluator", EVALUATORS)
@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_fixture_expectation(path: Path, evaluator: str):
    fixture = _load(path.name)
    expect = fixture["expect"]
    alerts = _alerts(path.name, evaluator)
    context = f"{fixture['id']} ({evaluator}): {fixture['description']}; engine gave {_describe(alerts)}"

    assert _findings(alerts) == set(expect["fire"].items()), context
    fired_rules = {a.rule_id for a in alerts if a.kind == "finding"}
    fired_tiers = {a.tier_id for a in alerts if a.kind == "finding"}
    for entry in expect["silent"]:
        assert entry not in (fired_tiers if "." in entry else fired_rules), (
            f"{entry} must not fire — {context}"
        )
    assert _cannot_assess(alerts) == set(expect["cannot_assess"]), context


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_evaluators_agree(path: Path):
    rete, oracle = _alerts(path.name, "rete"), _alerts(path.name, "oracle")
    assert [a.model_dump() for a in rete] == [a.model_dump() for a in oracle]


# ───────────────────────── coverage ─────────────────────────


def test_every_rule_fires_and_stays_silent_somewhere():
    pack = _pack()
    fire: set[str] = set()
    silent: set[str] = set()
    for path in FILES:
        expect = _load(path.name)["expect"]
        fire |= set(expect["fire"])
        silent |= {s for s in expect["silent"] if "." not in s}
    rule_ids = {r.spec.id for r in pack.rules}
    # the knowledge file's 35 rules; every rule added or changed locally (BAC-F04, BAC-F05 …) is
    # marked as a local addition and awaits sign-off
    added = {r.spec.id for r in pack.rules if r.spec.local_addition is not None}
    assert 35 <= len(rule_ids) <= 35 + len(added)
    assert all(r.spec.local_addition.signoff == "pending" for r in pack.rules if r.spec.local_addition)
    assert not rule_ids - fire, f"rules never expected to fire: {sorted(rule_ids - fire)}"
    assert not rule_ids - silent, f"rules never expected silent: {sorted(rule_ids - silent)}"


def test_every_rule_has_threshold_fixtures():
    names = {f.stem for f in FILES}
    for rule in (r.spec.id for r in _pack().rules):
        assert any(n.startswith(f"R-{rule}-fire") for n in names), f"no R-{rule}-fire-* fixture"
        assert any(n.startswith(f"R-{rule}-silent") for n in names), f"no R-{rule}-silent-* fixture"


def test_every_tier_is_reached():
    reached: set[str] = set()
    for path in FILES:
        for evaluator in EVALUATORS:
            reached |= {a.tier_id for a in _alerts(path.name, evaluator) if a.kind == "finding"}
    tiers = {t.id for t in _pack().tiers}
    assert not tiers - reached, f"tiers no fixture reaches: {sorted(tiers - reached)}"


def test_every_tier_is_expected_somewhere():
    """Each tier's rule is expected at that tier's severity in some fixture (not only reached by accident)."""
    expected = set()
    for path in FILES:
        expected |= set(_load(path.name)["expect"]["fire"].items())
    pack = _pack()
    missing = sorted(t.id for t in pack.tiers if (t.id.split(".")[0], t.severity) not in expected)
    assert not missing, f"no fixture expects these tiers: {missing}"


# ───────────────────────── the CLI ─────────────────────────


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("cds-engine")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cds_engine.cli"]


@pytest.mark.parametrize(("name", "evaluator"), CLI_SAMPLES, ids=[n for n, _ in CLI_SAMPLES])
def test_cli_check_json(name: str, evaluator: str):
    cmd = [*_cli(), "check", str(FIXTURES / name), "--json", "--rules", str(RULES), "--evaluator", evaluator]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    expect = _load(name)["expect"]
    findings = {(a["rule_id"], a["severity"]) for a in printed if a["kind"] == "finding"}
    assert findings == set(expect["fire"].items())
    assert {a["rule_id"] for a in printed if a["kind"] == "finding"} == set(expect["fire"])
    items = {a["tier_id"].removeprefix(MISSING_PREFIX) for a in printed if a["kind"] == "cannot-assess"}
    assert items == set(expect["cannot_assess"])
    assert [a["tier_id"] for a in printed] == [a.tier_id for a in _alerts(name, evaluator)]
