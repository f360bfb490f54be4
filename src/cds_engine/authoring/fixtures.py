"""Running a pack's fixtures and measuring what they cover (``cds-engine rules test``).

A fixture (``fixtures/<pack id>/*.json``) is a patient and what the pack must do with it::

    {"id": "T04", "facts": {...PatientFacts...},
     "expect": {"fire": {"RULE-D01": "critical"},        # the COMPLETE set of findings, with severity
                "silent": ["RULE-D03", "RULE-D01.single"],  # rules or single tiers that must not fire
                "cannot_assess": ["egfr"]}}               # the COMPLETE set of missing-data items

Coverage is what a committee needs to trust a pack: every rule has been seen to fire, has
been seen to stay silent (a fixture asserts it, usually at the threshold), and every tier has
been reached. Coverage counts only fixtures that pass. Missing coverage is an error for an
``active`` pack and a warning for a draft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cds_engine.alerts import Alert
from cds_engine.engine import Engine, EvaluatorName
from cds_engine.facts.model import PatientFacts
from cds_engine.results import MISSING_DATA_RULE
from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.errors import Finding
from cds_engine.rules.yaml_lines import LineMap, YamlError, load_with_lines

__all__ = ["FixtureResult", "PackTestReport", "RuleCoverage", "fixtures_dir_for", "run_pack_fixtures"]

_ALL_STATUSES = ("draft", "active", "retired")
_SEVERITIES = frozenset({"info", "warning", "critical"})


@dataclass
class FixtureResult:
    path: Path
    id: str
    problems: list[str] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    expect: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RuleCoverage:
    rule_id: str
    tiers: dict[str, int]  # tier id -> passing fixtures that raised it
    fired: int = 0  # passing fixtures that expect the rule to fire
    silent: int = 0  # passing fixtures that assert the rule silent

    @property
    def gaps(self) -> list[str]:
        out = []
        if not self.fired:
            out.append("never fires in a fixture")
        if not self.silent:
            out.append("no fixture asserts it silent")
        unreached = [t for t, n in self.tiers.items() if not n]
        if unreached:
            out.append("tier(s) never reached: " + ", ".join(unreached))
        return out


@dataclass
class PackTestReport:
    pack: CompiledPack
    directory: Path
    results: list[FixtureResult]
    coverage: dict[str, RuleCoverage]
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def passed(self) -> int:
        return sum(r.ok for r in self.results)


def fixtures_dir_for(rules_dir: Path, pack_id: str, fixtures_root: Path | None = None) -> Path:
    """``fixtures/<pack id>`` next to the rule directory, unless a root is given."""
    root = fixtures_root if fixtures_root is not None else Path(rules_dir).resolve().parent / "fixtures"
    return root / pack_id


def _expectations(raw: dict[str, Any], pack: CompiledPack) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    expect = raw.get("expect")
    if not isinstance(expect, dict):
        return {"fire": {}, "silent": [], "cannot_assess": []}, ["no 'expect' object"]
    fire = expect.get("fire", {})
    silent = expect.get("silent", [])
    missing = expect.get("cannot_assess", [])
    if not isinstance(fire, dict) or not isinstance(silent, list) or not isinstance(missing, list):
        return {"fire": {}, "silent": [], "cannot_assess": []}, [
            "expect needs fire: {RULE: severity}, silent: [RULE or TIER], cannot_assess: [ITEM]"]
    rule_ids = {r.spec.id for r in pack.rules}
    tier_ids = {t.id for t in pack.tiers}
    for rule, severity in fire.items():
        if rule not in rule_ids:
            problems.append(f"expect.fire names unknown rule {rule}")
        elif severity not in _SEVERITIES:
            problems.append(f"expect.fire {rule}: severity {severity!r} is not info, warning or critical")
        elif severity not in {t.severity for t in pack.rule(rule).tiers}:
            problems.append(f"expect.fire {rule}: the rule has no {severity} tier")
    for entry in silent:
        if entry not in rule_ids and entry not in tier_ids:
            problems.append(f"expect.silent names unknown rule or tier {entry}")
    return {"fire": fire, "silent": silent, "cannot_assess": missing}, problems


def _check(result: FixtureResult, alerts: list[Alert]) -> None:
    expect = result.expect
    got = {a.rule_id: a for a in alerts if a.kind == "finding"}
    for rule, severity in expect["fire"].items():
        alert = got.get(rule)
        if alert is None:
            result.problems.append(f"{rule} should fire ({severity}) but stayed silent")
        elif alert.severity != severity:
            result.problems.append(
                f"{rule} should fire at {severity} but fired at {alert.severity} ({alert.tier_id})")
    for rule, alert in got.items():
        if rule not in expect["fire"]:
            result.problems.append(f"{rule} fired ({alert.severity}, {alert.tier_id}) but is not expected")
    tiers = {a.tier_id for a in got.values()}
    for entry in expect["silent"]:
        if entry in got or entry in tiers:
            result.problems.append(f"{entry} must stay silent but fired")
    items = {a.tier_id.removeprefix(MISSING_DATA_RULE + ".") for a in alerts if a.kind == "cannot-assess"}
    wanted = set(expect["cannot_assess"])
    if items != wanted:
        extra, lacking = sorted(items - wanted), sorted(wanted - items)
        parts = ([f"unexpected cannot-assess {', '.join(extra)}"] if extra else []) + (
            [f"expected cannot-assess {', '.join(lacking)} not reported"] if lacking else [])
        result.problems.append("; ".join(parts))


def run_fixture(path: Path, pack: CompiledPack, engine: Engine) -> FixtureResult:
    result = FixtureResult(path, path.stem)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        result.problems.append(f"cannot read fixture: {exc}")
        return result
    if not isinstance(raw, dict) or "facts" not in raw:
        result.problems.append("a fixture is an object with 'facts' and 'expect'")
        return result
    result.id = str(raw.get("id", path.stem))
    result.expect, problems = _expectations(raw, pack)
    result.problems.extend(problems)
    try:
        facts = PatientFacts.model_validate(raw["facts"])
    except ValidationError as exc:
        first = exc.errors()[0]
        result.problems.append(f"invalid facts at {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
        return result
    result.alerts = engine.evaluate(facts)
    if not problems:
        _check(result, result.alerts)
    return result


def run_pack_fixtures(pack: CompiledPack, directory: Path, evaluator: EvaluatorName = "oracle",
                      site_hash: str | None = None) -> PackTestReport:
    """Run every ``directory/*.json`` fixture against ``pack`` alone and measure coverage."""
    engine = Engine([pack], evaluator, statuses=_ALL_STATUSES, site_hash=site_hash)
    paths = sorted(Path(directory).glob("*.json"))
    results = [run_fixture(p, pack, engine) for p in paths]
    coverage = {r.spec.id: RuleCoverage(r.spec.id, {t.id: 0 for t in r.tiers}) for r in pack.rules}
    for res in results:
        if not res.ok:
            continue
        for rule in res.expect["fire"]:
            coverage[rule].fired += 1
        for entry in res.expect["silent"]:
            if entry in coverage:
                coverage[entry].silent += 1
        for alert in res.alerts:
            if alert.kind == "finding" and alert.rule_id in coverage:
                cov = coverage[alert.rule_id]
                cov.tiers[alert.tier_id] = cov.tiers.get(alert.tier_id, 0) + 1
    findings = [Finding(str(res.path), None, None, f"fixture {res.id}: {p}")
                for res in results for p in res.problems]
    lines = _pack_lines(pack)
    severity = "error" if pack.spec.pack.status == "active" else "warning"
    if not paths:
        message = f"pack {pack.id} has no fixtures: add {directory}/<case>.json files"
        findings.append(Finding(str(directory), None, None, message, severity))  # type: ignore[arg-type]
    for ri, rule in enumerate(pack.rules):
        gaps = coverage[rule.spec.id].gaps
        if gaps:
            findings.append(Finding(str(pack.file), lines.line_of(("rules", ri)), rule.spec.id,
                                    f"coverage: {'; '.join(gaps)} — add a fixture to {directory}/ "
                                    "that exercises it", severity))  # type: ignore[arg-type]
    return PackTestReport(pack, Path(directory), results, coverage, findings)


def _pack_lines(pack: CompiledPack) -> LineMap:
    try:
        return load_with_lines(pack.file.read_text(encoding="utf-8"))[1]
    except (OSError, YamlError, UnicodeDecodeError):
        return LineMap()
