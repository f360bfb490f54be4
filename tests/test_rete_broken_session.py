"""A Rete evaluator whose durable_rules session is in an unknown state never answers "no alerts".

durable_rules keeps an action "in progress" (and the session locked) when completing it fails; the
session then answers later facts with no rule fired — every tier FALSE, as if the patient were
fine — and may crash the process once its lock expires. Such an evaluator (a failed probe at
creation, or a durable_rules error on an earlier fact) must refuse (``EngineFailure``), so the
engine answers from the oracle, and the engine must build a new evaluator for the next call.
A ruleset durable_rules refuses to create is an ``EngineFailure`` too (the oracle answers).
"""

from __future__ import annotations

import json
from pathlib import Path

import durable_rules_engine as dre
import pytest

from cds_engine.engine import Engine, project
from cds_engine.facts.model import PatientFacts
from cds_engine.rules import rete
from cds_engine.rules.rete import EngineFailure, ReteEvaluator
from conftest import REPO, RULES

FIXTURES = sorted((REPO / "fixtures" / "baclofen").glob("*.json"))


def _alerting_facts(engine: Engine) -> PatientFacts:
    """The first fixture patient the oracle raises alerts for."""
    for path in FIXTURES:
        facts = PatientFacts.model_validate(json.loads(Path(path).read_text())["facts"])
        if engine.evaluate(facts):
            return facts
    raise AssertionError("no fixture raises an alert")


def _failing_once(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the next call of ``dre.<name>`` raise ``dre.error`` (the later ones run for real)."""
    real = getattr(rete.dre, name)
    calls = {"n": 0}

    def once(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise dre.error("simulated durable_rules failure")
        return real(*args)

    monkeypatch.setattr(rete.dre, name, once)


def test_an_evaluator_whose_probe_failed_refuses_to_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.from_dir(RULES)
    pack = engine.packs[0]
    facts = _alerting_facts(engine)
    projected = project(engine.flat_facts(pack, facts), pack.referenced_facts())
    _failing_once(monkeypatch, "complete_and_start_action")  # the probe's own action
    evaluator = ReteEvaluator(pack, slot="slot-broken-probe")
    try:
        assert evaluator.broken
        with pytest.raises(EngineFailure, match="could not be prepared"):
            evaluator.outcomes(projected)
    finally:
        evaluator.close()  # does not touch the session left in doubt; frees the ruleset
    engine.close()


def test_a_durable_error_on_one_fact_stops_the_evaluator_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.from_dir(RULES)
    pack = engine.packs[0]
    facts = _alerting_facts(engine)
    projected = project(engine.flat_facts(pack, facts), pack.referenced_facts())
    evaluator = ReteEvaluator(pack, slot="slot-broken-fact")
    try:
        expected = evaluator.outcomes(projected)
        assert rete.TRUE in expected.values()
        _failing_once(monkeypatch, "complete_and_start_action")
        with pytest.raises(EngineFailure, match="durable_rules failed"):
            evaluator.outcomes(projected)
        assert evaluator.broken
        with pytest.raises(EngineFailure):  # never all tiers FALSE from the session in doubt
            evaluator.outcomes(projected)
    finally:
        evaluator.close()
    engine.close()


def test_the_engine_answers_from_the_oracle_then_builds_a_new_evaluator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = Engine.from_dir(RULES)  # rete by default
    oracle = Engine.from_dir(RULES, evaluator="oracle")
    facts = _alerting_facts(oracle)
    want = [(a.rule_id, a.tier_id) for a in oracle.evaluate(facts)]
    assert [(a.rule_id, a.tier_id) for a in engine.evaluate(facts)] == want
    pack = engine.packs[0]
    first = engine._evaluator(pack)
    _failing_once(monkeypatch, "complete_and_start_action")
    before = engine.fallbacks
    assert [(a.rule_id, a.tier_id) for a in engine.evaluate(facts)] == want  # the oracle's answer
    assert engine.fallbacks == before + 1
    second = engine._evaluator(pack)
    assert second is not first and not second.broken  # a new session for the next call
    assert [(a.rule_id, a.tier_id) for a in engine.evaluate(facts)] == want
    assert engine.fallbacks == before + 1
    engine.close()
    oracle.close()


def test_a_ruleset_durable_rules_refuses_is_an_engine_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.from_dir(RULES)
    oracle = Engine.from_dir(RULES, evaluator="oracle")
    facts = _alerting_facts(oracle)
    _failing_once(monkeypatch, "create_ruleset")
    with pytest.raises(EngineFailure, match="refused the ruleset"):
        ReteEvaluator(engine.packs[0], slot="slot-refused")
    _failing_once(monkeypatch, "create_ruleset")
    assert [(a.rule_id, a.tier_id) for a in engine.evaluate(facts)] == [
        (a.rule_id, a.tier_id) for a in oracle.evaluate(facts)
    ]
    engine.close()
    oracle.close()
