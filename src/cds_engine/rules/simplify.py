"""Contextual simplification of a projected condition before it is written for an engine.

A projection (:func:`cds_engine.rules.projection.project_node`) of a tree with negated
definitions repeats tests and keeps branches no patient can reach: ``a == false and
(a != false or ...)``. :func:`simplify` removes them without changing the meaning:

* inside ``A and (B or C)``, a branch is read knowing the plain tests of ``A`` hold
  (``X and f(Y)`` equals ``X and f(Y given X)``): a branch impossible beside them is dropped and a
  test repeated from them is already true. A sibling ``or`` of plain tests counts too: a branch
  that contradicts each of its alternatives (``x < 1`` beside ``x >= 2 or x__gt >= 2``) is
  dropped;
* an ``or`` branch that contains every test of another branch is absorbed by it;
* nested operators of the same kind are merged and duplicates removed.

"Impossible" is decided by :func:`cds_engine.rules.intervals.conjunction_possible` (the
verifier's per-fact reasoning), so a branch is dropped only when no value of the facts meets it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from cds_engine.rules.conditions import Clause
from cds_engine.rules.intervals import base_fact
from cds_engine.rules.projection import Projection

__all__ = ["TREE", "Tree", "simplify"]

# A clause, or ("and" | "or", children).
Tree = Clause | tuple[str, tuple["Tree", ...]]

TREE: Projection[Tree] = Projection(
    clause=lambda c: c,
    conj=lambda items: ("and", tuple(items)),
    disj=lambda items: ("or", tuple(items)),
)

Possible = Callable[[frozenset[Clause]], bool]


def _items(op: str, tree: Tree) -> list[Tree]:
    """Children of ``tree`` under ``op``, nested operators of the same kind merged."""
    if isinstance(tree, Clause) or tree[0] != op:
        return [tree]
    return [leaf for child in tree[1] for leaf in _items(op, child)]


def _build(op: str, items: list[Tree]) -> Tree | bool:
    unique = list(dict.fromkeys(items))
    if not unique:
        return op == "and"
    return unique[0] if len(unique) == 1 else (op, tuple(unique))


@lru_cache(maxsize=4096)
def _base(fact: str) -> str:
    return base_fact(fact)[0]


class _Context:
    """What is known to hold: plain tests, and disjunctions of plain tests (one of each holds).

    :meth:`allows` checks only the facts a test mentions (facts are independent of each other),
    so it answers ``False`` only for a real contradiction and may miss some.
    """

    def __init__(self, possible: Possible, plain: frozenset[Clause] = frozenset(),
                 choices: tuple[tuple[Clause, ...], ...] = ()) -> None:
        self.possible, self.plain, self.choices = possible, plain, choices
        self._by_fact: dict[str, frozenset[Clause]] = {}
        for c in plain:
            self._by_fact[_base(c.fact)] = self._by_fact.get(_base(c.fact), frozenset()) | {c}

    def _on(self, facts: set[str]) -> frozenset[Clause]:
        return frozenset().union(*(self._by_fact.get(f, frozenset()) for f in facts))

    def allows(self, extra: frozenset[Clause]) -> bool:
        """Can ``extra`` hold beside the context? ``False`` only for a real contradiction."""
        facts = {_base(c.fact) for c in extra}
        known = self._on(facts) | extra
        if not self.possible(known):
            return False
        for choice in self.choices:
            if any(_base(c.fact) in facts for c in choice) and not any(
                self.possible(known | {c} | self._on({_base(c.fact)})) for c in choice
            ):
                return False
        return True

    def inside(self, items: list[Tree]) -> _Context:
        plain = frozenset(i for i in items if isinstance(i, Clause))
        choices = tuple(
            tuple(i[1]) for i in items if not isinstance(i, Clause) and i[0] == "or"
            and all(isinstance(b, Clause) for b in i[1])
        )
        return _Context(self.possible, self.plain | plain, self.choices + choices)  # type: ignore[arg-type]


def simplify(tree: Tree, possible: Possible) -> Tree | bool:
    """``tree`` simplified; ``True``/``False`` when it is constant."""
    for _ in range(4):  # a simplified child can become a plain test that helps its siblings
        result = _simplify(tree, _Context(possible))
        if isinstance(result, bool) or result == tree:
            return result
        tree = result
    return tree


def _simplify(tree: Tree, context: _Context) -> Tree | bool:
    """Only two rewrites: a test already in the plain context is true, and a part that cannot
    hold beside the context is false. Dropping false parts is sound whatever order siblings are
    simplified in; a test made true by the context is one the context keeps (an ancestor's)."""
    if isinstance(tree, Clause):
        if tree in context.plain:
            return True
        return tree if context.allows(frozenset({tree})) else False
    op = tree[0]
    items = list(dict.fromkeys(_items(op, tree)))
    if op == "and":
        if not context.allows(frozenset(c for c in items if isinstance(c, Clause))):
            return False
        inner = context.inside(items)
        kept: list[Tree] = [c for c in items if isinstance(c, Clause) and c not in context.plain]
        for item in items:
            if isinstance(item, Clause):
                continue
            part = _simplify(item, inner)
            if part is False:
                return False
            if part is not True:
                kept.extend(_items("and", part))
        return _build("and", kept)
    branches: list[Tree] = []
    for item in items:
        part = _simplify(item, context)
        if part is True:
            return True
        if part is not False:
            branches.extend(_items("or", part))
    return _build("or", _absorb(branches))


def _absorb(branches: list[Tree]) -> list[Tree]:
    """Drop every branch whose conjuncts include all conjuncts of another branch (A or A∧B = A)."""
    sets = [frozenset(_items("and", b)) for b in branches]
    kept = []
    for i, b in enumerate(branches):
        covered = any(j != i and sets[j] <= sets[i] and (sets[j] != sets[i] or j < i)
                      for j in range(len(sets)))
        if not covered:
            kept.append(b)
    return kept
