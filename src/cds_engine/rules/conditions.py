"""The compiled condition tree and its three-valued (Kleene) meaning.

Every condition evaluates to TRUE, FALSE or UNKNOWN. UNKNOWN arises only from a missing fact
whose test says ``missing: cannot-assess`` (or from a bound such as eGFR ">60" that does not
decide a comparison). ``all`` is the minimum and ``any`` the maximum of FALSE < UNKNOWN < TRUE;
``not`` swaps TRUE and FALSE.

This module is also the *plain-Python oracle*: the Rete and vector evaluators are compiled
from the same tree and must agree with :func:`evaluate` on every patient.

For the compilers, each node has four two-valued projections that need no negation of
missing data: ``is_true``, ``is_false``, ``maybe_true`` (= not is_false) and ``maybe_false``
(= not is_true). :func:`leaf_clauses` gives them for a leaf as plain comparisons.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

from cds_engine.rules.pack_memo import WeakTable, remember

__all__ = [
    "FALSE",
    "TRUE",
    "UNKNOWN",
    "And",
    "AtLeastNode",
    "Clause",
    "Const",
    "Leaf",
    "Node",
    "NotNode",
    "Or",
    "evaluate",
    "evaluate_walk",
    "facts_of",
    "leaf_clauses",
    "unknown_leaves",
]

FALSE, UNKNOWN, TRUE = 0, 1, 2
Truth = int
Op = Literal["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "exists"]
BOUND_SUFFIXES = ("__gt", "__ge", "__lt", "__le")

# Tree nodes take weak references (weakref_slot): the identity tables that cache work per tree
# (_COMPILED, _LEAVES) hold them weakly, so a reloaded pack's old trees are freed with the pack.


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Leaf:
    fact: str
    op: Op
    value: Any  # scalar, or a tuple for in/not_in, or bool for exists
    missing: Literal["fire", "skip", "cannot-assess"]
    bounded: bool = False
    default: Any = None  # family facts: the value an absent key stands for
    always: bool = False  # the fact is never missing (always derived, or a family with a default)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Const:
    value: bool


@dataclass(frozen=True, slots=True, weakref_slot=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True, weakref_slot=True)
class NotNode:
    child: Node


@dataclass(frozen=True, slots=True, weakref_slot=True)
class AtLeastNode:
    n: int
    children: tuple[Node, ...]


Node = Leaf | Const | And | Or | NotNode | AtLeastNode

_NEGATE: dict[str, str] = {
    "eq": "ne",
    "ne": "eq",
    "lt": "gte",
    "gte": "lt",
    "lte": "gt",
    "gt": "lte",
    "in": "not_in",
    "not_in": "in",
}


def _compare(op: str, x: Any, v: Any) -> bool:
    if op == "eq":
        return bool(x == v)
    if op == "ne":
        return bool(x != v)
    if op == "lt":
        return bool(x < v)
    if op == "lte":
        return bool(x <= v)
    if op == "gt":
        return bool(x > v)
    if op == "gte":
        return bool(x >= v)
    if op == "in":
        return x in v
    if op == "not_in":
        return x not in v
    raise ValueError(op)


# For a fact known only as a bound, when is "fact OP t" decided?  (suffix, op) -> (decides, result, test)
# e.g. eGFR ">60" (__gt, g=60) and "egfr < t": FALSE whenever g >= t.  The test compares g with t.
_BOUND_RULES: dict[tuple[str, str], tuple[bool, str]] = {
    ("__gt", "lt"): (False, "gte"),
    ("__gt", "lte"): (False, "gte"),
    ("__gt", "gt"): (True, "gte"),
    ("__gt", "gte"): (True, "gte"),
    ("__ge", "lt"): (False, "gte"),
    ("__ge", "lte"): (False, "gt"),
    ("__ge", "gt"): (True, "gt"),
    ("__ge", "gte"): (True, "gte"),
    ("__lt", "lt"): (True, "lte"),
    ("__lt", "lte"): (True, "lte"),
    ("__lt", "gt"): (False, "lte"),
    ("__lt", "gte"): (False, "lte"),
    ("__le", "lt"): (True, "lt"),
    ("__le", "lte"): (True, "lte"),
    ("__le", "gt"): (False, "lte"),
    ("__le", "gte"): (False, "lt"),
}


@dataclass(frozen=True, slots=True)
class Clause:
    """A two-valued comparison the compilers can express: ``fact op value`` or presence tests."""

    kind: Literal["cmp", "absent", "present"]
    fact: str
    op: str = ""
    value: Any = None


def _absent_facts(leaf: Leaf) -> tuple[str, ...]:
    if leaf.bounded:
        return (leaf.fact, *(leaf.fact + s for s in BOUND_SUFFIXES))
    return (leaf.fact,)


def leaf_clauses(
    leaf: Leaf, want: Literal["is_true", "is_false", "maybe_true", "maybe_false"]
) -> list[list[Clause]]:
    """The projection ``want`` of a leaf as a disjunction of conjunctions of clauses.

    Representations of a fact are mutually exclusive (exact value, one bound, or absent), so
    "maybe true" is simply "not decided false" within each representation.
    """
    if leaf.op == "exists" and leaf.always:
        return [[]] if (leaf.value == (want in ("is_true", "maybe_true"))) else []
    if leaf.op == "exists":
        present = [[Clause("present", f)] for f in _absent_facts(leaf)]
        absent = [[Clause("absent", f) for f in _absent_facts(leaf)]]
        positive = present if leaf.value else absent
        negative = absent if leaf.value else present
        return positive if want in ("is_true", "maybe_true") else negative
    op = leaf.op
    negated = _NEGATE[op]
    out: list[list[Clause]] = []
    # exact value
    if want in ("is_true", "maybe_true"):
        out.append([Clause("cmp", leaf.fact, op, leaf.value)])
    else:
        out.append([Clause("cmp", leaf.fact, negated, leaf.value)])
    # bounds
    if leaf.bounded and op in ("lt", "lte", "gt", "gte"):
        for suffix in BOUND_SUFFIXES:
            decides_true, test = _BOUND_RULES[(suffix, op)]
            bound_fact = leaf.fact + suffix
            if (want == "is_true" and decides_true) or (want == "is_false" and not decides_true):
                out.append([Clause("cmp", bound_fact, test, leaf.value)])
            elif (want == "maybe_true" and not decides_true) or (want == "maybe_false" and decides_true):
                # not decided against: the bound exists and the deciding test fails
                out.append([Clause("cmp", bound_fact, _NEGATE[test], leaf.value)])
            elif want in ("maybe_true", "maybe_false"):
                out.append([Clause("present", bound_fact)])
    elif leaf.bounded and want in ("maybe_true", "maybe_false"):
        out.extend([Clause("present", leaf.fact + s)] for s in BOUND_SUFFIXES)  # eq/in on a bound: undecided
    # missing
    policy = leaf.missing
    absent_true = {
        "is_true": policy == "fire",
        "is_false": policy == "skip",
        "maybe_true": policy != "skip",
        "maybe_false": policy != "fire",
    }[want]
    if absent_true and not leaf.always:
        out.append([Clause("absent", f) for f in _absent_facts(leaf)])
    return out


def _leaf_truth(leaf: Leaf, facts: Mapping[str, Any]) -> Truth:
    value = facts.get(leaf.fact, leaf.default)
    if value is None and leaf.always:
        # derive() always sets these; if a caller omits one anyway, read it as the compilers do
        return TRUE if leaf.op == "exists" and leaf.value else FALSE
    if leaf.op == "exists":
        present = value is not None or (leaf.bounded and any(leaf.fact + s in facts for s in BOUND_SUFFIXES))
        return TRUE if present == leaf.value else FALSE
    if value is not None:
        return TRUE if _compare(leaf.op, value, leaf.value) else FALSE
    if leaf.bounded:
        for suffix in BOUND_SUFFIXES:
            bound = facts.get(leaf.fact + suffix)
            if bound is None:
                continue
            if leaf.op not in ("lt", "lte", "gt", "gte"):
                return UNKNOWN
            decides_true, test = _BOUND_RULES[(suffix, leaf.op)]
            if _compare(test, bound, leaf.value):
                return TRUE if decides_true else FALSE
            return UNKNOWN
    return {"fire": TRUE, "skip": FALSE, "cannot-assess": UNKNOWN}[leaf.missing]


Check = Callable[[Mapping[str, Any]], Truth]
_MISSING_TRUTH: dict[str, Truth] = {"fire": TRUE, "skip": FALSE, "cannot-assess": UNKNOWN}
_COMPARATORS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
    "in": lambda x, v: x in v,
    "not_in": lambda x, v: x not in v,
}


def _compile_leaf(leaf: Leaf) -> Check:
    """A plain comparison leaf as one closure; every other leaf goes through :func:`_leaf_truth`."""
    compare = _COMPARATORS.get(leaf.op)
    if leaf.always or leaf.bounded or compare is None:
        return lambda facts: _leaf_truth(leaf, facts)
    fact, default, target, missing = leaf.fact, leaf.default, leaf.value, _MISSING_TRUTH[leaf.missing]

    def truth(facts: Mapping[str, Any]) -> Truth:
        value = facts.get(fact, default)
        if value is None:
            return missing
        return TRUE if compare(value, target) else FALSE

    return truth


def _compile(node: Node) -> Check:
    """``node`` as nested closures: the same Kleene walk, children in order, the same short cuts."""
    if isinstance(node, Leaf):
        return _compile_leaf(node)
    if isinstance(node, And):
        parts = tuple(_compile(c) for c in node.children)

        def all_of(facts: Mapping[str, Any]) -> Truth:
            result = TRUE
            for part in parts:
                value = part(facts)
                if value == FALSE:
                    return FALSE
                if value < result:
                    result = value
            return result

        return all_of
    if isinstance(node, Or):
        parts = tuple(_compile(c) for c in node.children)

        def any_of(facts: Mapping[str, Any]) -> Truth:
            result = FALSE
            for part in parts:
                value = part(facts)
                if value == TRUE:
                    return TRUE
                if value > result:
                    result = value
            return result

        return any_of
    if isinstance(node, NotNode):
        child = _compile(node.child)
        return lambda facts: TRUE + FALSE - child(facts)
    if isinstance(node, AtLeastNode):
        parts, n = tuple(_compile(c) for c in node.children), node.n

        def at_least(facts: Mapping[str, Any]) -> Truth:
            values = [part(facts) for part in parts]
            true = values.count(TRUE)
            if true >= n:
                return TRUE
            if true + values.count(UNKNOWN) < n:
                return FALSE
            return UNKNOWN

        return at_least
    constant = TRUE if node.value else FALSE
    return lambda facts: constant


# Compiled trees by object identity, like _LEAVES: the oracle, the one-click limits and the
# cannot-assess walk evaluate the same frozen trees on every patient. The node is held weakly
# (pack_memo.remember): an old pack's trees and closures go with it after a hot reload. A node's
# closure refers to its children (leaves), never to the node itself, so the entry cannot keep it.
_COMPILED: WeakTable[Check] = {}
_COMPILED_LIMIT = 32768


def evaluate(node: Node, facts: Mapping[str, Any]) -> Truth:
    """Kleene value of ``node`` over flat facts (missing facts are absent keys)."""
    if isinstance(node, Leaf):
        return _leaf_truth(node, facts)
    known = _COMPILED.get(id(node))
    if known is not None and known[0]() is node:
        return known[1](facts)
    if len(_COMPILED) >= _COMPILED_LIMIT:
        _COMPILED.clear()
    return remember(_COMPILED, node, _compile(node))(facts)


def evaluate_walk(node: Node, facts: Mapping[str, Any]) -> Truth:
    """The same value by a direct recursive walk: the reference :func:`evaluate`'s closures must match."""
    if isinstance(node, Leaf):
        return _leaf_truth(node, facts)
    if isinstance(node, And):
        result = TRUE
        for child in node.children:
            result = min(result, evaluate_walk(child, facts))
            if result == FALSE:
                return FALSE
        return result
    if isinstance(node, Or):
        result = FALSE
        for child in node.children:
            result = max(result, evaluate_walk(child, facts))
            if result == TRUE:
                return TRUE
        return result
    if isinstance(node, NotNode):
        return TRUE + FALSE - evaluate_walk(node.child, facts)
    if isinstance(node, AtLeastNode):
        values = [evaluate_walk(c, facts) for c in node.children]
        true = values.count(TRUE)
        if true >= node.n:
            return TRUE
        if true + values.count(UNKNOWN) < node.n:
            return FALSE
        return UNKNOWN
    return TRUE if node.value else FALSE


def unknown_leaves(node: Node, facts: Mapping[str, Any]) -> Iterator[Leaf]:
    """Leaves that left ``node`` UNKNOWN — only inside branches that are themselves undecided.

    In ``any: [no taper plan, taper < 7 days]`` with no taper plan, the taper length is not
    reported missing: the branch that decides is already TRUE.
    """
    if evaluate(node, facts) != UNKNOWN:
        return
    if isinstance(node, Leaf):
        yield node
    elif isinstance(node, And | Or | AtLeastNode):
        for child in node.children:
            yield from unknown_leaves(child, facts)
    elif isinstance(node, NotNode):
        yield from unknown_leaves(node.child, facts)


def _leaves(node: Node, into: list[Leaf]) -> None:
    if isinstance(node, Leaf):
        into.append(node)
    elif isinstance(node, And | Or | AtLeastNode):
        for child in node.children:
            _leaves(child, into)
    elif isinstance(node, NotNode):
        _leaves(node.child, into)


# Leaves per tree, by object identity: trees are frozen, and every alert reads its tier's evidence
# through this walk (nested generators cost a frame per level per leaf). The node is held weakly
# beside its leaves (pack_memo.remember), so a recycled id can never return another tree's and an
# old pack's trees are freed with it after a hot reload; the table is also emptied when large. A
# leaf is its own only leaf and is not kept: its entry would hold it alive.
_LEAVES: WeakTable[tuple[Leaf, ...]] = {}
_LEAVES_LIMIT = 8192


def facts_of(node: Node) -> Iterator[Leaf]:
    """Every leaf of a tree, left to right (for evidence, projections and linting)."""
    known = _LEAVES.get(id(node))
    if known is not None and known[0]() is node:
        return iter(known[1])
    if isinstance(node, Leaf):
        return iter((node,))
    found: list[Leaf] = []
    _leaves(node, found)
    if len(_LEAVES) >= _LEAVES_LIMIT:
        _LEAVES.clear()
    return iter(remember(_LEAVES, node, tuple(found)))


def at_least_groups(n: int, size: int, want_true: bool) -> list[tuple[int, ...]]:
    """Index groups for expanding ``at_least`` into OR-of-AND: n true, or size-n+1 false."""
    k = n if want_true else size - n + 1
    return list(combinations(range(size), k))
