"""Issue 19: the per-pack parts of alerts and cards (worked out once per loaded pack) give exactly
what building them per call gave — template rendering, evidence, the approval note, sources,
card sources and links, and a card naming its order while it is built."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

from tests.service_helpers import REPO

from cds_engine.alerts import Alert
from cds_engine.engine import Engine
from cds_engine.facts.catalog import companions
from cds_engine.facts.model import PatientFacts
from cds_engine.messages import _PLACEHOLDER, fill, render, with_params
from cds_engine.results import _approval_note, build_alerts, evidence_of
from cds_engine.rules.conditions import BOUND_SUFFIXES, FALSE, TRUE, UNKNOWN, facts_of
from cds_engine.rules.governance import approval_state
from cds_engine.service.cards import _source, alert_card
from cds_engine.service.order_label import name_orders


def _render_by_sub(template: str, facts: Mapping[str, Any], params: Mapping[str, Any],
                   extra: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """The rendering as it was: one regex substitution per call (the reference for the template
    parsing; each placeholder's text is the module's own ``_fill``, as the substitution gave)."""
    from cds_engine.messages import _fill

    return _PLACEHOLDER.sub(
        lambda match: _fill(match.group(1), match.group(2), facts, params, extra, labels), template)


def _evidence_as_walked(tier: Any, flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for leaf in facts_of(tier.node):
        if leaf.fact in flat:
            out[leaf.fact] = flat[leaf.fact]
        elif leaf.default is not None:
            out[leaf.fact] = leaf.default
        if leaf.bounded:
            for suffix in BOUND_SUFFIXES:
                if leaf.fact + suffix in flat:
                    out[leaf.fact + suffix] = flat[leaf.fact + suffix]
        for name in companions(leaf.fact):
            if name in flat:
                out[name] = flat[name]
    return out


TEMPLATES = [
    "", "plain text", "{egfr}", "{egfr}{egfr}", "{param.x}", "a {param.x} b {param.y|none} c",
    "{missing|none on file} and {missing}", "{param.x}{egfr|-}{param.y}", "{ind} {meds.opioid}",
    "{not closed", "{{egfr}}", "eGFR {egfr} ({egfr_age}) {param.x}", "{meds_named.opioid|none}",
]


def _flats(rng: random.Random, names: list[str]) -> list[dict[str, Any]]:
    values: list[Any] = [None, 0, 0.0, -0.0, 1, 59.99, 53.333, 1e-12, True, False, "spasticity", "text",
                         [1, 2.5]]
    out = [{}]
    for _ in range(60):
        flat = {n: rng.choice(values) for n in rng.sample(names, k=rng.randint(0, len(names)))}
        if rng.random() < 0.3:
            flat["egfr__gt"] = 60
        if rng.random() < 0.5:
            flat["medication_lists_complete"] = rng.random() < 0.5
        out.append(flat)
    return out


def test_render_and_params_filled_once_equal_the_substitution() -> None:
    engine = Engine.from_dir(REPO / "rules")
    rng = random.Random(19)
    labels = {"spasticity": "Spasticity (label)"}
    templates = list(TEMPLATES)
    for pack in engine.packs:
        for tier in pack.tiers:
            templates += [tier.summary, tier.detail]
        for rule in pack.spec.rules:
            templates += [sg.label for sg in rule.suggestions]
    names = sorted({m.group(1) for t in templates for m in _PLACEHOLDER.finditer(t)} | {"egfr", "ind"})
    params_list = [{"x": 10, "y": None}, engine.packs[0].params, {}]
    for flat in _flats(rng, names):
        for params in params_list:
            extra = {"rule_id": "R", "severity": "warning"}
            for template in templates:
                want = _render_by_sub(template, flat, params, extra, labels)
                assert render(template, flat, params, extra, labels) == want, template
                assert fill(with_params(template, params), flat, params, extra, labels) == want, template


def test_evidence_and_alerts_equal_the_per_call_build() -> None:
    engine = Engine.from_dir(REPO / "rules")
    rng = random.Random(20)
    fixtures = sorted((REPO / "fixtures").glob("*/*.json"))
    assert fixtures
    for pack in engine.packs:
        names = sorted({leaf.fact for tier in pack.tiers for leaf in facts_of(tier.node)})
        for flat in _flats(rng, names + [n + s for n in names[:20] for s in BOUND_SUFFIXES]):
            for tier in pack.tiers:
                assert evidence_of(tier, flat) == _evidence_as_walked(tier, flat)
                assert list(evidence_of(tier, flat)) == list(_evidence_as_walked(tier, flat))  # same order
        checked = 0
        for path in fixtures:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict) or not isinstance(raw.get("facts"), dict):
                continue  # not a facts fixture
            facts = PatientFacts.model_validate(raw["facts"])
            checked += 1
            flat = engine.flat_facts(pack, facts)
            outcomes = {t.id: rng.choice([FALSE, FALSE, TRUE, UNKNOWN]) for t in pack.tiers}
            alerts = build_alerts(pack, flat, outcomes)
            again = build_alerts(pack, flat, dict(reversed(list(outcomes.items()))))  # order does not matter
            assert [a.model_dump() for a in alerts] == [a.model_dump() for a in again]
            for alert in alerts:
                if alert.kind == "finding":
                    rule = pack.rule(alert.rule_id)
                    assert [s.model_dump() for s in alert.sources] == [
                        {"id": sid, "title": pack.spec.sources[sid].title, "url": pack.spec.sources[sid].url}
                        for sid in rule.spec.sources]
                    fitting = [s for s in rule.spec.suggestions
                               if s.tiers is None or alert.tier_id in s.tiers]
                    assert len(alert.suggestions) == len(fitting)  # the advice of the tier that fired
        assert checked > 100


def test_a_pack_given_a_new_spec_gets_its_own_note() -> None:
    pack = next(p for p in Engine.from_dir(REPO / "rules").packs if p.id == "baclofen")
    assert _approval_note(pack) == approval_state(pack.spec).sentence()
    pack.spec = pack.spec.model_copy(deep=True)  # a copy: never touch a spec another test holds
    pack.spec.pack.approval.status = "approved"
    assert _approval_note(pack) == approval_state(pack.spec).sentence()
    assert "approved (" in _approval_note(pack)


def test_a_card_named_while_built_equals_one_named_after() -> None:
    engine = Engine.from_dir(REPO / "rules")
    pack = next(p for p in engine.packs if p.id == "baclofen")
    for rule in pack.spec.rules[:8]:
        for detail in ("d", "", "**Order:** old\n\nrest", "**Orders:** a; b", "  spaced  "):
            sources = [{"id": sid, "title": pack.spec.sources[sid].title, "url": pack.spec.sources[sid].url}
                       for sid in rule.sources]
            alert = Alert.model_validate({
                "rule_id": rule.id, "tier_id": rule.tiers[0].id, "title": rule.title,
                "category": rule.category, "severity": rule.tiers[0].severity, "summary": "s",
                "detail": detail, "pack_id": pack.id, "pack_version": pack.version,
                "pack_hash": pack.content_hash, "pack_url": pack.spec.pack.url, "pack_status": "active",
                "approval": "approved", "sources": sources})
            for labels in ([], ["Drug — 10 mg"], ["A", "B"]):
                built = alert_card(alert, pack, None, labels=labels).model_dump(exclude={"uuid"})
                after = name_orders(alert_card(alert, pack), labels).model_dump(exclude={"uuid"})
                assert built == after
                assert built["source"] == _source(pack, alert.rule_id, alert.title).model_dump()
