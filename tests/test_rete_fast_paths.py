"""The Rete evaluator's shortcuts must mean exactly what the plain versions mean.

Short fact names, reading the rule name off an action message, compiled formulas and the
"only tiers a fired rule can decide" walk are all checked against the long way round here; the
parity tests (tests/test_engine_parity.py) then check the outcomes against the oracle.
"""

from __future__ import annotations

import itertools
import json
import random

import durable_rules_engine as dre
import pytest

from cds_engine.engine import project
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.conditions import And, Leaf, NotNode, Or, facts_of
from cds_engine.rules.rete import (
    ReteEvaluator,
    _check,
    _fact_names,
    _fnv1a,
    _short_names,
    durable_ruleset,
    holds,
    nest,
    short_ruleset,
)
from cds_engine.synthetic import PatientGenerator


def test_fnv1a_is_durables_property_hash():
    """The ids durable_rules itself hard-codes (HASH_ID, HASH_SID in its state.h)."""
    assert _fnv1a("id") == 926444256
    assert _fnv1a("sid") == 3593476751


def test_short_names_are_distinct_in_hash_and_avoid_reserved_names():
    names = _short_names([f"fact_{i}" for i in range(5000)])
    shorts = list(names.values())
    assert len({_fnv1a(s) for s in shorts}) == len(shorts)
    assert not {_fnv1a(r) for r in ("sid", "id", "kind")} & {_fnv1a(s) for s in shorts}


def test_short_ruleset_is_a_renaming_that_keeps_order(pack):
    rules, _ = durable_ruleset(pack)
    short, names = short_ruleset(rules)
    assert list(short) == list(rules)
    back = {v: k for k, v in names.items()}
    assert len(back) == len(names)
    read: dict[str, None] = {}
    for rule in short.values():
        _fact_names(rule["all"][0]["m"], read)
    assert set(read) == {*names.values(), "kind"}  # every test reads a short name (or the guard)
    assert json.dumps(short_ruleset(rules)[0]) == json.dumps(short)  # deterministic
    with pytest.raises(ValueError):
        short_ruleset({"r0": {"all": [{"m": {"$mystery": {"a": 1}}}]}})


def _fired_long(handle: int, projected: dict, fact_id: str) -> set[str]:
    """The rules the original long-name ruleset fires (nested dotted names, full JSON decoding)."""
    fact = nest(projected)
    fact.update(sid="long", id=fact_id, kind="patient")
    fired: set[str] = set()
    code, state = dre.assert_fact(handle, json.dumps(fact))
    if code == 0:
        result = dre.start_action_for_state(handle, state)
        while result:
            fired.update(json.loads(result[1]).keys())
            nxt = dre.complete_and_start_action(handle, state)
            result = (result[0], nxt) if nxt else None
    dre.retract_fact(handle, json.dumps({"sid": "long", "id": fact_id}))
    return fired


def test_short_names_fire_the_same_rules_as_long_names(engine, pack):
    rules, _ = durable_ruleset(pack)
    handle = dre.create_ruleset("long-names-check", json.dumps(rules))
    rete = ReteEvaluator(pack, slot="short-check")
    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    rng = random.Random(7)
    refs = pack.referenced_facts()
    try:
        for i in range(400):
            facts = PatientFacts.model_validate(gen.patient(rng))
            projected = project(engine.flat_facts(pack, facts), refs)
            assert rete.fired(projected) == _fired_long(handle, projected, f"l{i}")
        assert rete.leftover_facts() == []
    finally:
        dre.delete_ruleset(handle)
        rete.close()


def test_rule_name_read_off_a_message_or_decoded(pack):
    rete = ReteEvaluator(pack, slot="message-check")
    try:
        known = sorted(rete._rule_names)[0]
        assert rete._rule_of('{"' + known + '":{"m":{"f1": "x\\"y"}}}') == [known]
        # not the expected shape: decoded in full, never guessed
        assert rete._rule_of('{ "' + known + '" : {"m": 1}}') == [known]
        assert rete._rule_of('{"unknown":{"m":1}}') == ["unknown"]
        with pytest.raises(json.JSONDecodeError):
            rete._rule_of("not json")
    finally:
        rete.close()


def test_compiled_formulas_equal_holds():
    rng = random.Random(3)
    names = [f"r{i}" for i in range(6)]

    def formula(depth: int):
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(names)
        return (rng.choice(["and", "or"]), tuple(formula(depth - 1) for _ in range(rng.randint(1, 3))))

    for _ in range(300):
        f = formula(3)
        check = _check(f)
        for size in range(len(names) + 1):
            for fired in itertools.islice(itertools.combinations(names, size), 8):
                assert check(set(fired)) == holds(f, set(fired)), (f, fired)


def test_every_tier_is_watched_by_the_rules_of_its_formulas(pack):
    """A tier left out of the walk would silently read FALSE: every tier with a formula is watched."""
    rete = ReteEvaluator(pack, slot="watch-check")
    try:
        watched = {i for tiers in rete._watch.values() for i in tiers} | set(rete._always)
        with_formula = {i for i, (t, m) in enumerate(rete._formulas) if t is not None or m is not None}
        assert with_formula <= watched
    finally:
        rete.close()


def _walk(node) -> list[Leaf]:
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, NotNode):
        return _walk(node.child)
    if isinstance(node, And | Or) or hasattr(node, "children"):
        return [leaf for c in node.children for leaf in _walk(c)]
    return []


def test_facts_of_is_cached_by_identity_and_stays_exact(pack):
    for tier in pack.tiers:
        first = list(facts_of(tier.node))
        assert first == _walk(tier.node)
        assert list(facts_of(tier.node)) == first  # second call: from the table, same leaves
    a, b = Leaf("x", "eq", 1, "skip"), Leaf("y", "eq", 2, "skip")  # distinct trees never mix
    assert list(facts_of(And((a, b)))) == [a, b]
    assert list(facts_of(Or((b,)))) == [b]


def test_compiled_oracle_equals_the_recursive_walk(engine, pack):
    """:func:`evaluate` (closures, cached per tree) against :func:`evaluate_walk` on every node of
    every tier, for realistic patients and for sparse flat facts (missing data, bounds, defaults)."""
    from cds_engine.rules.conditions import AtLeastNode, evaluate, evaluate_walk

    def nodes(node):
        yield node
        if isinstance(node, And | Or | AtLeastNode):
            for child in node.children:
                yield from nodes(child)
        elif isinstance(node, NotNode):
            yield from nodes(node.child)

    every = [n for tier in pack.tiers for n in nodes(tier.node)]
    every += [cap.when for spec in pack.one_click.values() for cap in spec.caps if cap.when is not None]
    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    rng = random.Random(5)
    for i in range(300):
        flat = engine.flat_facts(pack, PatientFacts.model_validate(gen.patient(rng)))
        if i % 2:
            flat = {k: v for k, v in flat.items() if rng.random() < 0.6}
        for node in every:
            assert evaluate(node, flat) == evaluate_walk(node, flat)


def test_tier_truths_for_some_tiers_are_those_of_all(engine, pack):
    from cds_engine.rules.one_click import tier_truths

    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    rng = random.Random(9)
    for _ in range(50):
        flat = engine.flat_facts(pack, PatientFacts.model_validate(gen.patient(rng)))
        every = tier_truths(pack, flat)
        for only in (pack.one_click, pack.dose_dependent):
            assert tier_truths(pack, flat, only) == {k: v for k, v in every.items() if k in only}
