"""Compile a condition tree's two-valued projections into a target expression language.

The Rete (durable_rules JSON) and vector (polars) compilers share this walk; each supplies how
to write a clause, a conjunction and a disjunction. Constants are folded so a tier that can
never fire produces no engine rule at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from cds_engine.rules.conditions import (
    And,
    AtLeastNode,
    Clause,
    Const,
    Leaf,
    Node,
    NotNode,
    Or,
    at_least_groups,
    leaf_clauses,
)

__all__ = ["Projection", "Want", "project_node"]

Want = Literal["is_true", "is_false", "maybe_true", "maybe_false"]
E = TypeVar("E")
_FLIP: dict[str, Want] = {
    "is_true": "is_false",
    "is_false": "is_true",
    "maybe_true": "maybe_false",
    "maybe_false": "maybe_true",
}


@dataclass(frozen=True)
class Projection(Generic[E]):
    clause: Callable[[Clause], E]
    conj: Callable[[Sequence[E]], E]
    disj: Callable[[Sequence[E]], E]


def _and(items: Sequence[E | bool], p: Projection[E]) -> E | bool:
    kept: list[E] = []
    for item in items:
        if item is False:
            return False
        if item is not True:
            kept.append(item)  # type: ignore[arg-type]
    if not kept:
        return True
    return kept[0] if len(kept) == 1 else p.conj(kept)


def _or(items: Sequence[E | bool], p: Projection[E]) -> E | bool:
    kept: list[E] = []
    for item in items:
        if item is True:
            return True
        if item is not False:
            kept.append(item)  # type: ignore[arg-type]
    if not kept:
        return False
    return kept[0] if len(kept) == 1 else p.disj(kept)


def project_node(
    node: Node, want: Want, p: Projection[E], memo: dict[tuple[int, str], tuple[Node, E | bool]] | None = None
) -> E | bool:
    """``want`` of ``node`` as an expression, or a constant ``True``/``False``.

    ``memo`` (one dict per projection ``p``) keeps each sub-tree's result by identity: the
    vector compiler projects every sub-tree on every leaf's path (its "undecided" columns), which
    without it re-walks the same nodes tens of thousands of times for one pack.
    """
    if memo is None:
        return _project(node, want, p, None)
    key = (id(node), want)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (node, _project(node, want, p, memo))  # the node is kept: ids stay unique
    return hit[1]


def _project(
    node: Node, want: Want, p: Projection[E], memo: dict[tuple[int, str], tuple[Node, E | bool]] | None
) -> E | bool:
    if isinstance(node, Const):
        return node.value if want in ("is_true", "maybe_true") else not node.value
    if isinstance(node, Leaf):
        return _or([_and([p.clause(c) for c in conj], p) for conj in leaf_clauses(node, want)], p)
    if isinstance(node, NotNode):
        return project_node(node.child, _FLIP[want], p, memo)
    positive = want in ("is_true", "maybe_true")
    if isinstance(node, And | Or):
        children = [project_node(c, want, p, memo) for c in node.children]
        conjunctive = isinstance(node, And) == positive
        return _and(children, p) if conjunctive else _or(children, p)
    assert isinstance(node, AtLeastNode)
    groups = at_least_groups(node.n, len(node.children), want_true=positive)
    parts = [project_node(c, want, p, memo) for c in node.children]
    return _or([_and([parts[i] for i in group], p) for group in groups], p)
