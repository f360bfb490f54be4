"""The durable_rules (Rete) evaluator, used only in the safe pattern of rule-engines.md §A.

* One flat fact per evaluation, asserted with ``assert_fact`` so every matching rule fires.
* Every rule starts with the positive guard ``kind == "patient"``; no negative-only rules.
* A fixed slot session id per evaluator (never a patient id: sids are a 32-bit hash).
* The fact carries a fresh ``id`` and is retracted by id in ``finally``.
* The C module is driven directly: no ``Host``, so no background dispatcher thread.
* Actions are not Python callbacks: the engine reports rule names, we map them to tiers.

Each tier compiles to a rule ``t<i>`` (condition TRUE) and, where missing data can leave it
undecided, ``p<i>`` (condition possibly TRUE). TRUE = t fired; UNKNOWN = p fired but not t.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import durable_rules_engine as dre

from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.conditions import FALSE, TRUE, UNKNOWN, Clause
from cds_engine.rules.projection import Projection, project_node

__all__ = ["EngineFailure", "ReteEvaluator", "durable_ruleset", "nest"]

_GUARD = {"kind": "patient"}
_ruleset_ids = itertools.count()


class EngineFailure(RuntimeError):
    """durable_rules reported an error for a fact; the caller must not treat it as 'no alerts'."""


def _clause(c: Clause) -> dict[str, Any]:
    if c.kind == "absent":
        return {"$nex": {c.fact: 1}}
    if c.kind == "present":
        return {"$ex": {c.fact: 1}}
    if c.op == "eq":
        return {c.fact: c.value}
    if c.op == "ne":
        return {"$neq": {c.fact: c.value}}
    if c.op == "in":
        items = [{c.fact: v} for v in c.value]
        return items[0] if len(items) == 1 else {"$or": items}
    if c.op == "not_in":
        items = [{"$neq": {c.fact: v}} for v in c.value]
        return items[0] if len(items) == 1 else {"$and": items}
    return {f"${c.op}": {c.fact: c.value}}


def _flatten(op: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``$and`` inside ``$and`` (and ``$or`` inside ``$or``) is one operator, not two."""
    out: list[dict[str, Any]] = []
    for item in items:
        out.extend(item[op] if set(item) == {op} else [item])
    return {op: out}


_DURABLE: Projection[dict[str, Any]] = Projection(
    clause=_clause,
    conj=lambda items: _flatten("$and", items),
    disj=lambda items: _flatten("$or", items),
)

# durable_rules keeps at most 32 entries in a rule's expression sequence (MAX_SEQUENCE_EXPRESSIONS);
# each $and/$or costs two (operator + end). Larger conditions are split into several rules.
_MAX_OPERATORS = 14


def _operators(expr: Any) -> int:
    if isinstance(expr, dict):
        return sum((1 if k in ("$and", "$or") else 0) + _operators(v) for k, v in expr.items())
    if isinstance(expr, list):
        return sum(_operators(v) for v in expr)
    return 0


def _split(expr: dict[str, Any]) -> list[dict[str, Any]]:
    """Rewrite a too-large condition as a disjunction of conditions that each fit one rule.

    A top-level ``$or`` becomes one rule per branch; an ``$and`` with an ``$or`` inside is
    distributed over that ``$or``'s branches. Both preserve meaning exactly.
    """
    if _operators(expr) + 1 <= _MAX_OPERATORS:  # +1 for the guard's $and
        return [expr]
    if "$or" in expr and len(expr) == 1:
        return [part for branch in expr["$or"] for part in _split(branch)]
    if "$and" in expr and len(expr) == 1:
        items = expr["$and"]
        ors = [i for i, item in enumerate(items) if set(item) == {"$or"}]
        if ors:
            k = max(ors, key=lambda i: _operators(items[i]))
            rest = items[:k] + items[k + 1 :]
            return [part for branch in items[k]["$or"] for part in _split(_flatten("$and", [*rest, branch]))]
    raise ValueError(f"condition too large for durable_rules and cannot be split: {json.dumps(expr)[:200]}")


def durable_ruleset(pack: CompiledPack) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """The durable JSON ruleset of a pack and a map rule-name -> (tier id, 't'|'p')."""
    rules: dict[str, Any] = {}
    names: dict[str, tuple[str, str]] = {}
    for i, tier in enumerate(pack.tiers):
        is_true = project_node(tier.node, "is_true", _DURABLE)
        maybe_true = project_node(tier.node, "maybe_true", _DURABLE)
        for prefix, expr in (("t", is_true), ("p", maybe_true)):
            if expr is False or (prefix == "p" and expr == is_true):
                continue
            parts: list[Any] = [True] if expr is True else _split(expr)
            for j, part in enumerate(parts):
                name = f"{prefix}{i}_{j}"
                rules[name] = [] if part is True else list(_flatten("$and", [part])["$and"])
                names[name] = (tier.id, prefix)
    return _shared_prefix_order(rules), names


def _shared_prefix_order(conjuncts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Order each rule's conjuncts by how many rules share them, most shared first.

    durable_rules builds an alpha network in which rules with the same leading tests share
    nodes, and it walks the nodes a fact matches with a 64-entry stack (error 303 beyond).
    Leading with the widely shared tests turns the network into a trie, so the number of
    simultaneously matching nodes stays small however many rules the pack has. ``$or`` tests go
    last: each one hangs a private "forward" node under the shared branch nodes, and a branch
    node shared by many rules would push all their forward nodes at once.
    """
    key = lambda item: json.dumps(item, sort_keys=True)  # noqa: E731
    counts: dict[str, int] = {}
    for items in conjuncts.values():
        for k in {key(i) for i in items}:
            counts[k] = counts.get(k, 0) + 1
    rules: dict[str, Any] = {}
    for name, items in conjuncts.items():
        ordered = sorted(items, key=lambda i: ("$or" in i, -counts[key(i)], key(i)))
        rules[name] = {"all": [{"m": {"$and": [_GUARD, *ordered]} if ordered else _GUARD}]}
    return rules


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted fact names become nested objects: durable reads ``meds.opioid`` as a path."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        head, dot, tail = key.partition(".")
        if dot:
            out.setdefault(head, {})[tail] = value
        else:
            out[key] = value
    return out


class ReteEvaluator:
    """Tier outcomes of one pack by durable_rules. One instance per thread (a lock guards misuse)."""

    def __init__(self, pack: CompiledPack, slot: str = "slot-0") -> None:
        self.pack = pack
        self.slot = slot
        rules, self._names = durable_ruleset(pack)
        self.rule_count = len(rules)
        self._tier_ids: Sequence[str] = [t.id for t in pack.tiers]
        self._handle = dre.create_ruleset(f"{pack.id}-{next(_ruleset_ids)}", json.dumps(rules))
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Free the C ruleset (the pure-C create/delete pair does not leak)."""
        if self._handle is not None:
            dre.delete_ruleset(self._handle)
            self._handle = None

    def fired(self, projected: Mapping[str, Any]) -> set[str]:
        """Names of the durable rules matched by one (projected) fact."""
        fact = nest(projected)
        fact_id = f"f{next(self._ids)}"
        fact.update(sid=self.slot, id=fact_id, kind="patient")
        fired: set[str] = set()
        with self._lock:
            if self._handle is None:
                raise EngineFailure("ruleset closed (engine swapped out by a reload)")
            try:
                code, state = dre.assert_fact(self._handle, json.dumps(fact))
                if code == 2:
                    raise EngineFailure("durable_rules saw an identical fact twice (stale state in slot)")
                if code == 0:
                    result = dre.start_action_for_state(self._handle, state)
                    while result:
                        fired.update(json.loads(result[1]).keys())
                        nxt = dre.complete_and_start_action(self._handle, state)
                        result = (result[0], nxt) if nxt else None
                elif code not in (1, 3):
                    raise EngineFailure(f"durable_rules returned code {code}")
            except dre.error as exc:
                raise EngineFailure(f"durable_rules failed: {exc}") from exc
            finally:
                with contextlib.suppress(dre.error):  # a fact that matched nothing was never stored
                    dre.retract_fact(self._handle, json.dumps({"sid": self.slot, "id": fact_id}))
        return fired

    def outcomes(self, projected: Mapping[str, Any]) -> dict[str, int]:
        fired = self.fired(projected)
        result = dict.fromkeys(self._tier_ids, FALSE)
        for name in fired:
            tier_id, kind = self._names[name]
            if kind == "t":
                result[tier_id] = TRUE
            elif result[tier_id] != TRUE:
                result[tier_id] = UNKNOWN
        return result

    def leftover_facts(self) -> list[Any]:
        """Facts still stored in the slot (health check: must be empty)."""
        return json.loads(dre.get_facts(self._handle, self.slot))
