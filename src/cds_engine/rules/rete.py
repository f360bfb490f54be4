"""The durable_rules (Rete) evaluator, used only in the safe pattern of rule-engines.md §A.

* One flat fact per evaluation, asserted with ``assert_fact`` so every matching rule fires.
* Every rule starts with the positive guard ``kind == "patient"``; no negative-only rules.
* A fixed slot session id per evaluator (never a patient id: sids are a 32-bit hash).
* The fact carries a fresh ``id`` and is retracted by id in ``finally``.
* The C module is driven directly: no ``Host``, so no background dispatcher thread.
* Actions are not Python callbacks: the engine reports rule names, we map them to tiers.
* Facts travel under short flat names (``f0``, ``f1`` …, see :func:`_short_names`): the C module
  parses and re-serialises the fact once per matching rule, so long dotted names were most of
  its work and of ours (decoding every action's JSON). Renaming is a bijection applied after the
  ruleset is ordered, so the alpha network has exactly the shape it had with the long names.

Each tier compiles to a formula over rule names for "condition TRUE" and, where missing data can
leave it undecided, one for "condition possibly TRUE". TRUE = the first holds; UNKNOWN = only the
second. A condition that fits one durable rule is one rule; a larger one is several rules joined
by AND/OR here, never distributed into a product of rules (see :meth:`_Rules.formula`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import durable_rules_engine as dre

from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.conditions import FALSE, TRUE, UNKNOWN, Clause, Node
from cds_engine.rules.dnf import Expander, fact_kind
from cds_engine.rules.pack_memo import PackMemo
from cds_engine.rules.projection import Want, project_node
from cds_engine.rules.simplify import TREE, Tree, simplify

__all__ = ["EngineFailure", "Formula", "ReteEvaluator", "durable_ruleset", "holds", "nest", "short_ruleset"]

log = logging.getLogger(__name__)

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


# durable_rules keeps at most 32 entries in a rule's expression sequence (MAX_SEQUENCE_EXPRESSIONS,
# error 113 when the 32nd is added); each $and/$or costs two (operator + end) and plain comparisons
# cost none. So a rule holds at most 15 operators, the guard's $and included.
_MAX_OPERATORS = 15

# How a tier's outcome follows from the rules that fired: a rule name, or ("and"|"or", parts).
Formula = str | tuple[str, tuple[Any, ...]]


def _operators(expr: Any) -> int:
    if isinstance(expr, dict):
        return sum((1 if k in ("$and", "$or") else 0) + _operators(v) for k, v in expr.items())
    if isinstance(expr, list):
        return sum(_operators(v) for v in expr)
    return 0


def _conjuncts(expr: dict[str, Any]) -> list[dict[str, Any]]:
    return list(expr["$and"]) if set(expr) == {"$and"} else [expr]


class _Rules:
    """Durable rules deduplicated by content: identical conditions (across tiers too) are one rule."""

    def __init__(self) -> None:
        self.conjuncts: dict[str, list[dict[str, Any]]] = {}
        self._by_key: dict[str, str] = {}
        self._keys: dict[int, tuple[dict[str, Any], str]] = {}

    def key(self, item: dict[str, Any]) -> str:
        """A canonical text of one conjunct (cached: the same objects recur in many rules)."""
        known = self._keys.get(id(item))
        if known is None:
            known = self._keys[id(item)] = (item, json.dumps(item, sort_keys=True))
        return known[1]

    def rule(self, items: list[dict[str, Any]]) -> str:
        key = "\n".join(sorted(self.key(i) for i in items))
        name = self._by_key.get(key)
        if name is None:
            name = self._by_key[key] = f"r{len(self._by_key)}"
            self.conjuncts[name] = items
        return name

    def formula(self, expr: dict[str, Any]) -> Formula:
        """``expr`` as rules that each fit durable's limit, combined by AND/OR in Python.

        A condition that fits is one rule. A larger ``$and`` is packed into several rules whose
        conjunction is the condition: each takes some of the ``$or`` items and repeats every plain
        test (plain tests cost no operator and keep each rule as selective as the whole). Only an
        ``$or`` too large for a rule of its own is split into its branches. Meaning is preserved
        exactly, and nothing is distributed, so the rule count grows with the size of a condition,
        not with the product of its disjunctions.
        """
        items = _conjuncts(expr)
        costs = [_operators(i) for i in items]
        if 1 + sum(costs) <= _MAX_OPERATORS:
            return self.rule(items)
        if set(expr) == {"$or"}:
            return ("or", tuple(self.formula(b) for b in expr["$or"]))
        plain = [i for i, c in zip(items, costs, strict=True) if c == 0]
        compound = sorted(((c, i) for i, c in zip(items, costs, strict=True) if c > 0), key=lambda ci: -ci[0])
        parts: list[Formula] = []
        groups: list[tuple[list[int], list[dict[str, Any]]]] = []  # ([operators used], items)
        for cost, item in compound:
            if 1 + cost > _MAX_OPERATORS:  # an $or too large for one rule: one formula per branch
                if set(item) != {"$or"}:
                    raise ValueError(f"condition too large for durable_rules: {json.dumps(item)[:200]}")
                parts.append(("or", tuple(self.formula(_flatten("$and", [*plain, b])) for b in item["$or"])))
                continue
            for used, group in groups:  # first fit
                if 1 + used[0] + cost <= _MAX_OPERATORS:
                    used[0] += cost
                    group.append(item)
                    break
            else:
                groups.append(([cost], [item]))
        parts.extend(self.rule([*plain, *group]) for _, group in groups)
        return parts[0] if len(parts) == 1 else ("and", tuple(parts))


def holds(formula: Formula, fired: set[str]) -> bool:
    """Does ``formula`` hold when exactly the rules ``fired`` matched?"""
    if isinstance(formula, str):
        return formula in fired
    op, parts = formula
    return all(holds(p, fired) for p in parts) if op == "and" else any(holds(p, fired) for p in parts)


def _kind(fact: str) -> str:
    """Value kinds for pruning impossible branches: numbers as numbers, anything else as free text.

    Deliberately weaker than the catalog's types (no "a boolean is true or false", no "a count is
    whole"): a branch is dropped only for a contradiction in the tests themselves.
    """
    return "number" if fact_kind(fact) in ("number", "integer") else "string"


def _render(tree: Tree) -> dict[str, Any]:
    if isinstance(tree, Clause):
        return _clause(tree)
    op, items = tree
    return _flatten(f"${op}", [_render(i) for i in items])


def _condition(node: Node, want: Want, expander: Expander) -> dict[str, Any] | bool:
    """A projection of ``node`` in durable JSON, simplified (:mod:`cds_engine.rules.simplify`)."""
    tree = project_node(node, want, TREE)
    if not isinstance(tree, bool):
        tree = simplify(tree, expander.possible)
    return tree if isinstance(tree, bool) else _render(tree)


def durable_ruleset(pack: CompiledPack) -> tuple[dict[str, Any], list[tuple[Formula | None, Formula | None]]]:
    """The durable JSON ruleset of a pack and, per tier, the formulas for TRUE and possibly TRUE.

    A tier is TRUE when its first formula holds, UNKNOWN when only the second does (``None``:
    never holds; for "possibly TRUE", ``None`` also when it is the same as TRUE).
    """
    built = _Rules()
    expander = Expander(kind_of=_kind)
    formulas: list[tuple[Formula | None, Formula | None]] = []
    for tier in pack.tiers:
        is_true = _condition(tier.node, "is_true", expander)
        maybe_true = _condition(tier.node, "maybe_true", expander)
        pair: list[Formula | None] = []
        for prefix, expr in (("t", is_true), ("p", maybe_true)):
            if expr is False or (prefix == "p" and expr == is_true):
                pair.append(None)
            else:
                pair.append(built.rule([]) if expr is True else built.formula(expr))
        formulas.append((pair[0], pair[1]))
    return _shared_prefix_order(built.conjuncts, built.key), formulas


def _shared_prefix_order(
    conjuncts: dict[str, list[dict[str, Any]]], key: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Order each rule's conjuncts by how many rules share them, most shared first.

    durable_rules builds an alpha network in which rules with the same leading tests share
    nodes, and it walks the nodes a fact matches with a 64-entry stack (error 303 beyond).
    Leading with the widely shared tests turns the network into a trie, so the number of
    simultaneously matching nodes stays small however many rules the pack has. ``$or`` tests go
    last: each one hangs a private "forward" node under the shared branch nodes, and a branch
    node shared by many rules would push all their forward nodes at once. Among the ``$or``
    tests the largest goes first: only the first one's branch nodes can be shared with other
    rules (everything after a forward node is private), so that keeps the network smallest.
    """
    counts: dict[str, int] = {}
    for items in conjuncts.values():
        for k in {key(i) for i in items}:
            counts[k] = counts.get(k, 0) + 1

    def rank(item: dict[str, Any]) -> tuple[bool, int, str]:
        k = key(item)
        return ("$or" in item, -len(k) if "$or" in item else -counts[k], k)

    rules: dict[str, Any] = {}
    for name, items in conjuncts.items():
        ordered = sorted(items, key=rank)
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


# durable_rules finds a fact's properties by a 32-bit FNV-1a hash of the name alone (no string
# compare), so two names with one hash would read each other's values. Short names are chosen so
# that every hash in a fact is distinct, the reserved ones included.
_FNV_BASIS, _FNV_PRIME = 0x811C9DC5, 16777619
_RESERVED = ("sid", "id", "kind")
_VALUE_OPS = frozenset({"$ex", "$nex", "$neq", "$lt", "$lte", "$gt", "$gte"})


def _fnv1a(name: str) -> int:
    """durable's property hash (``getStringAndHash`` in its json.c) of an ASCII name."""
    h = _FNV_BASIS
    for byte in name.encode("ascii"):
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def _short_names(facts: Sequence[str]) -> dict[str, str]:
    """A short, flat durable name per fact name (``f0``, ``f1`` …), every hash distinct."""
    used = {_fnv1a(r) for r in _RESERVED}
    out: dict[str, str] = {}
    counter = itertools.count()
    for fact in facts:
        while True:
            short = f"f{next(counter)}"
            h = _fnv1a(short)
            if h not in used:
                used.add(h)
                out[fact] = short
                break
    return out


def _fact_names(expr: Any, into: dict[str, None]) -> None:
    """Fact names read by one durable expression, in first-seen order."""
    ((key, value),) = expr.items()  # every test is a one-key object; anything else fails loudly
    if key in ("$and", "$or"):
        for item in value:
            _fact_names(item, into)
    elif key in _VALUE_OPS:
        ((fact, _),) = value.items()
        into[fact] = None
    elif key.startswith("$"):
        raise ValueError(f"unexpected durable operator {key!r}")
    else:
        into[key] = None


def _renamed(expr: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    ((key, value),) = expr.items()
    if key in ("$and", "$or"):
        return {key: [_renamed(item, names) for item in value]}
    if key in _VALUE_OPS:
        ((fact, operand),) = value.items()
        return {key: {names[fact]: operand}}
    return {names[key]: value}


def short_ruleset(rules: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``rules`` with every fact name replaced by a short flat one, and the names used (fact → short).

    Applied to the finished ruleset, so conjunct order (and with it the alpha network) is unchanged.
    """
    seen: dict[str, None] = {}
    for rule in rules.values():
        for part in rule["all"]:
            _fact_names(part["m"], seen)
    facts = [f for f in seen if f not in _GUARD]
    names = {**_short_names(facts), **{k: k for k in _GUARD}}
    renamed = {
        name: {"all": [{**part, "m": _renamed(part["m"], names)} for part in rule["all"]]}
        for name, rule in rules.items()
    }
    return renamed, {f: names[f] for f in facts}


_Built = tuple[str, int, list[tuple[Formula | None, Formula | None]], dict[str, str]]

# The probe rule every evaluator's ruleset gets besides the pack's (see ReteEvaluator._open_session):
# it tests a fact name no projected fact carries (those are f0, f1 …), so it never fires for a patient
# and no tier formula names it; the pack's rule count and names are those of the text without it.
_PROBE = "probe~"
_PROBE_ID = "probe~"
_PROBE_RULE = json.dumps({_PROBE: {"all": [{"m": {"$and": [_GUARD, {_PROBE: True}]}}]}})


def _with_probe(text: str) -> str:
    """The ruleset JSON ``text`` (an object of rules) with the probe rule added."""
    return f"{text[:-1]}, {_PROBE_RULE[1:]}" if text != "{}" else _PROBE_RULE


def _build(pack: CompiledPack) -> _Built:
    """The ruleset JSON, rule count and formulas of a pack (see :data:`_built`)."""
    rules, formulas = durable_ruleset(pack)
    short, names = short_ruleset(rules)
    return json.dumps(short), len(short), formulas, names


# The ruleset JSON, rule count and formulas of a pack, built once per pack object: every thread has
# its own evaluator (and durable ruleset); they share this compiled text.
_built: Callable[[CompiledPack], _Built] = PackMemo(_build).get


Check = Callable[[set[str]], bool]


def _check(formula: Formula) -> Check:
    """``formula`` as a function of the fired set (same meaning as :func:`holds`, fewer frames).

    A formula is almost always one rule name or an AND/OR of names: those become one set method.
    """
    if isinstance(formula, str):
        return frozenset((formula,)).issubset
    op, parts = formula
    if all(isinstance(p, str) for p in parts):
        names = frozenset(parts)
        return names.issubset if op == "and" else (lambda fired: not names.isdisjoint(fired))
    checks = [_check(p) for p in parts]
    if op == "and":
        return lambda fired: all(c(fired) for c in checks)
    return lambda fired: any(c(fired) for c in checks)


def _formula_rules(formula: Formula | None, into: set[str]) -> None:
    if isinstance(formula, str):
        into.add(formula)
    elif formula is not None:
        for part in formula[1]:
            _formula_rules(part, into)


class ReteEvaluator:
    """Tier outcomes of one pack by durable_rules. One instance per thread (a lock guards misuse)."""

    def __init__(self, pack: CompiledPack, slot: str = "slot-0") -> None:
        self.pack = pack
        self.slot = slot
        text, self.rule_count, self._formulas, self._names = _built(pack)
        self._tier_ids: Sequence[str] = [t.id for t in pack.tiers]
        self._rule_names = frozenset(json.loads(text))
        # Which tiers a fired rule can decide: a formula is an AND/OR of rule names, so a tier none
        # of whose rules fired is FALSE, unless its formula holds with nothing fired (kept always).
        watch: dict[str, set[int]] = {}
        always: list[int] = []
        for index, (is_true, maybe_true) in enumerate(self._formulas):
            mentioned: set[str] = set()
            _formula_rules(is_true, mentioned)
            _formula_rules(maybe_true, mentioned)
            for rule in mentioned:
                watch.setdefault(rule, set()).add(index)
            if any(f is not None and holds(f, set()) for f in (is_true, maybe_true)):
                always.append(index)
        self._checks = [
            (None if t is None else _check(t), None if m is None else _check(m)) for t, m in self._formulas
        ]
        self._watch = {rule: tuple(sorted(tiers)) for rule, tiers in watch.items()}
        self._always = tuple(always)
        self._sid = json.dumps(slot)
        try:
            handle = dre.create_ruleset(f"{pack.id}-{next(_ruleset_ids)}", _with_probe(text))
        except dre.error as exc:  # e.g. a pack past durable_rules' limits: the oracle answers instead
            raise EngineFailure(f"durable_rules refused the ruleset: {exc}") from exc
        self._handle: int | None = handle
        self._ids = itertools.count()
        self._lock = threading.Lock()
        #: why this evaluator must not answer any more (its session's state is unknown), else None
        self._broken: str | None = None
        if not self._open_session(handle):
            self._broken = "its durable_rules session could not be prepared (probe fact)"
            log.error("rete evaluator for pack %s: %s; the oracle answers its calls", pack.id, self._broken)

    @property
    def broken(self) -> bool:
        """True when this evaluator refuses to answer (its session's state is unknown): the engine
        answers from the oracle and builds a new evaluator for the next call."""
        return self._broken is not None

    def _open_session(self, handle: int) -> bool:
        """Create the slot's session with one action run through, so :meth:`close` can free it.

        Why: durable_rules leaves a new session's action context uninitialised until an action
        starts, and ``delete_state`` frees it — a crash for a session no fact ever fired a rule in
        (an empty patient fires none). The probe fact fires the probe rule (and possibly rules
        that test for absent facts), every action is completed, which leaves the context empty,
        and the fact is retracted. True when that happened; otherwise the session is never freed.
        """
        probe = {"sid": self.slot, "id": _PROBE_ID, "kind": "patient", _PROBE: True}
        try:
            code, state = dre.assert_fact(handle, json.dumps(probe))
            if code != 0:
                return False
            message = dre.start_action_for_state(handle, state)
            while message:
                message = dre.complete_and_start_action(handle, state)
            return True
        except dre.error:
            return False
        finally:
            with contextlib.suppress(dre.error):
                dre.retract_fact(handle, json.dumps({"sid": self.slot, "id": _PROBE_ID}))

    def close(self) -> None:
        """Free the C ruleset and the slot's session state in it.

        Why both: ``delete_ruleset`` frees the network but not a session's own pools (frames,
        messages, results), which the first asserted fact creates — ~2 MB per evaluator leaked on
        every hot reload (each thread's evaluators of the old engine) until ``delete_state`` was
        called first. Under the lock: a late request on this evaluator finishes its fact first,
        then finds the handle gone (:class:`EngineFailure`, answered by the oracle).
        """
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            # broken: a session not prepared may have an uninitialised context, one that failed an action
            # still in progress (see _open_session, fired): freeing either could crash — left, not freed
            if self._broken is None:
                with contextlib.suppress(dre.error):
                    dre.delete_state(handle, self.slot)
            dre.delete_ruleset(handle)

    def _rule_of(self, message: str) -> list[str]:
        """The rule an action message names: ``{"<rule>":<frame>}`` (durable's ``serializeResult``).

        Read from the first characters rather than by decoding the whole frame (a copy of the
        fact, once per fired rule). Anything not in exactly that shape is decoded in full.
        """
        if message.startswith('{"'):
            end = message.find('"', 2)
            name = message[2:end]
            if end > 2 and message.startswith('":', end) and name in self._rule_names:
                return [name]
        return list(json.loads(message).keys())

    def fired(self, projected: Mapping[str, Any]) -> set[str]:
        """Names of the durable rules matched by one (projected) fact."""
        names = self._names
        fact = {names[k]: v for k, v in projected.items() if k in names}
        fact_id = f"f{next(self._ids)}"
        fact.update(sid=self.slot, id=fact_id, kind="patient")
        fired: set[str] = set()
        with self._lock:
            if self._handle is None:
                raise EngineFailure("ruleset closed (engine swapped out by a reload)")
            if self._broken is not None:
                raise EngineFailure(self._broken)
            try:
                code, state = dre.assert_fact(self._handle, json.dumps(fact))
                if code == 2:
                    raise EngineFailure("durable_rules saw an identical fact twice (stale state in slot)")
                if code == 0:
                    message = dre.start_action_for_state(self._handle, state)
                    message = message[1] if message else None
                    rule_names = self._rule_names
                    while message:
                        # _rule_of, inlined: one action message per fired rule (~20 a patient)
                        name = message[2 : message.find('":', 2)]
                        if message.startswith('{"') and name in rule_names:
                            fired.add(name)
                        else:
                            fired.update(self._rule_of(message))
                        message = dre.complete_and_start_action(self._handle, state)
                elif code not in (1, 3):
                    raise EngineFailure(f"durable_rules returned code {code}")
            except dre.error as exc:
                # an action may be left in progress: the session would answer later facts with no
                # rule fired (then crash when its lock expires), so this evaluator answers no more
                self._broken = f"durable_rules failed on an earlier fact: {exc}"
                raise EngineFailure(f"durable_rules failed: {exc}") from exc
            finally:
                with contextlib.suppress(dre.error):  # a fact that matched nothing was never stored
                    dre.retract_fact(self._handle, f'{{"sid":{self._sid},"id":"{fact_id}"}}')
        return fired

    def outcomes(self, projected: Mapping[str, Any]) -> dict[str, int]:
        fired = self.fired(projected)
        result = dict.fromkeys(self._tier_ids, FALSE)
        todo = set(self._always)
        watch = self._watch
        for rule in fired:
            todo.update(watch.get(rule, ()))
        tier_ids, checks = self._tier_ids, self._checks
        for index in todo:
            is_true, maybe_true = checks[index]
            if is_true is not None and is_true(fired):
                result[tier_ids[index]] = TRUE
            elif maybe_true is not None and maybe_true(fired):
                result[tier_ids[index]] = UNKNOWN
        return result

    def leftover_facts(self) -> list[Any]:
        """Facts still stored in the slot (health check: must be empty)."""
        return json.loads(dre.get_facts(self._handle, self.slot))
