"""The durable ruleset compiler: conditions too large for one durable rule, and simplification."""

from __future__ import annotations

import json

import durable_rules_engine as dre

from cds_engine.rules.conditions import Clause
from cds_engine.rules.dnf import Expander
from cds_engine.rules.rete import _MAX_OPERATORS, _operators, _Rules, _shared_prefix_order, holds
from cds_engine.rules.simplify import simplify

_possible = Expander(kind_of=lambda fact: "number" if fact.startswith("n") else "string").possible


def _eq(fact: str, value: object) -> Clause:
    return Clause("cmp", fact, "eq", value)


def test_contradicting_branch_is_dropped_and_repeated_test_is_true():
    dialysis_off, dialysis_on = _eq("dialysis", False), Clause("cmp", "dialysis", "ne", False)
    low = Clause("cmp", "n_egfr", "lt", 30)
    tree = ("and", (dialysis_off, ("or", (dialysis_on, low, ("and", (dialysis_off, _eq("x", 1)))))))
    assert simplify(tree, _possible) == ("and", (dialysis_off, ("or", (low, _eq("x", 1)))))


def test_branch_against_every_alternative_of_a_sibling_or_is_dropped():
    high = ("or", (Clause("cmp", "n_egfr", "gte", 50), Clause("cmp", "n_egfr__gt", "gte", 50)))
    low = Clause("cmp", "n_egfr", "lt", 30)
    tree = ("and", (high, ("or", (low, _eq("aki", True)))))
    assert simplify(tree, _possible) == ("and", (_eq("aki", True), high))


def test_absorption_and_constants():
    a, b = _eq("a", 1), _eq("b", 1)
    assert simplify(("or", (a, ("and", (a, b)))), _possible) == a
    assert simplify(("and", (a, _eq("a", 2))), _possible) is False
    assert simplify(("or", (b, ("and", (b,)))), _possible) == b


def _fires(rules: dict, fact: dict) -> set[str]:
    handle = dre.create_ruleset(f"split-test-{id(fact)}", json.dumps(rules))
    try:
        fact = {**fact, "sid": "s", "id": "f1", "kind": "patient"}
        fired: set[str] = set()
        code, state = dre.assert_fact(handle, json.dumps(fact))
        if code == 0:
            result = dre.start_action_for_state(handle, state)
            while result:
                fired.update(json.loads(result[1]).keys())
                nxt = dre.complete_and_start_action(handle, state)
                result = (result[0], nxt) if nxt else None
        return fired
    finally:
        dre.delete_ruleset(handle)


def test_large_conjunction_is_packed_into_few_rules_not_distributed():
    """20 two-way ORs: distribution would need 2**20 rules; packing needs two."""
    items = [{"$or": [{f"a{i}": 1}, {f"b{i}": 1}]} for i in range(20)]
    built = _Rules()
    formula = built.formula({"$and": [{"x": 1}, *items]})
    assert len(built.conjuncts) == 2
    assert all(1 + _operators(c) <= _MAX_OPERATORS for c in built.conjuncts.values())
    rules = _shared_prefix_order(built.conjuncts, built.key)
    every = {"x": 1, **{f"a{i}": 1 for i in range(20)}}
    assert holds(formula, _fires(rules, every))
    for missing in (0, 19):  # one unmet OR in either rule: the conjunction is false
        assert not holds(formula, _fires(rules, {k: v for k, v in every.items() if k != f"a{missing}"}))
    assert not holds(formula, _fires(rules, {k: v for k, v in every.items() if k != "x"}))


def test_or_too_large_for_a_rule_is_split_by_branch():
    wide = {"$or": [{"$and": [{f"c{i}": 1}, *({"$or": [{f"d{i}{j}": 1}, {f"e{i}{j}": 1}]} for j in range(8))]}
                    for i in range(3)]}
    built = _Rules()
    formula = built.formula({"$and": [{"x": 1}, wide]})
    assert all(1 + _operators(c) <= _MAX_OPERATORS for c in built.conjuncts.values())
    rules = _shared_prefix_order(built.conjuncts, built.key)
    branch = {"x": 1, "c1": 1, **{f"d1{j}": 1 for j in range(8)}}
    assert holds(formula, _fires(rules, branch))
    assert not holds(formula, _fires(rules, {**branch, "c1": 0}))
