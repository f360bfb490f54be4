"""Condition trees as disjunctions of possible patient situations, for the verifier.

Each of a node's four projections (``is_true``, ``is_false``, ``maybe_true``, ``maybe_false``;
see :mod:`cds_engine.rules.conditions`) is expanded into a disjunctive normal form: a list of
conjunctions of :class:`Clause`. Conjunctions no patient can meet are dropped as they arise
(:func:`cds_engine.rules.intervals.conjunction_possible`), so an empty DNF means "never".

Parameter tests (``{param: jurisdiction, eq: US}``) are switches a site may flip; the verifier
reasons over every setting, so by default they constrain nothing (``params_free=True``).

The expansion is exponential in the worst case. It stops at :data:`MAX_TERMS` conjunctions
and raises :class:`TooComplex`; the verifier then skips that check rather than guess.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from cds_engine.facts import catalog
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
from cds_engine.rules.intervals import Interval, base_fact, conjunction_possible, projection, union

__all__ = ["DNF", "MAX_TERMS", "Expander", "TooComplex", "Want", "fact_kind"]

Want = Literal["is_true", "is_false", "maybe_true", "maybe_false"]
Conj = frozenset[Clause]
DNF = list[Conj]
MAX_TERMS = 4000
_FLIP: dict[str, Want] = {"is_true": "is_false", "is_false": "is_true",
                          "maybe_true": "maybe_false", "maybe_false": "maybe_true"}


class TooComplex(Exception):
    """The expansion would exceed :data:`MAX_TERMS` conjunctions."""


# Counts are whole numbers ("gte: 1" and "gt: 0" mean the same): the catalog's count facts and the
# families whose absent key means zero.
_COUNT_FACTS = frozenset({"drug_active_count", "drug_liquid_concentrations"})


def fact_kind(name: str) -> str:
    """integer | number | bool | string for a fact name of the catalog (bound suffixes are numbers)."""
    base, suffix = base_fact(name)
    if suffix:
        return "number"
    spec, family, _ = catalog.lookup(base)
    if spec is not None:
        return "integer" if spec.name in _COUNT_FACTS else spec.type
    if family is not None:
        return "integer" if family.type == "number" and family.default == 0 else family.type
    return "string"


class Expander:
    """Builds (and caches) DNFs of compiled nodes."""

    def __init__(self, *, params_free: bool = True, kind_of: Callable[[str], str] = fact_kind,
                 max_terms: int = MAX_TERMS) -> None:
        self.params_free = params_free
        self.kind_of = kind_of
        self.max_terms = max_terms
        self._cache: dict[tuple[int, str], DNF] = {}
        self._keep: list[Node] = []  # cached ids stay valid while the nodes live
        self._possible: dict[Conj, bool] = {}
        self.pairs_examined = 0  # pairs of conjunctions tried by :meth:`joint_projection` (a work count)
        self._bases: dict[str, str] = {}

    def possible(self, conj: Conj) -> bool:
        known = self._possible.get(conj)
        if known is None:
            known = self._possible[conj] = conjunction_possible(conj, self.kind_of)
        return known

    def dnf(self, node: Node, want: Want) -> DNF:
        key = (id(node), want)
        if key not in self._cache:
            self._keep.append(node)
            self._cache[key] = self._build(node, want)
        return self._cache[key]

    def conj(self, parts: Sequence[DNF]) -> DNF:
        """AND of DNFs: every combination of one conjunction from each, impossible ones dropped."""
        result: DNF = [frozenset()]
        for part in sorted(parts, key=len):
            nxt: dict[Conj, None] = {}
            for a in result:
                for b in part:
                    c = a | b
                    if c not in nxt and self.possible(c):
                        nxt[c] = None
                        if len(nxt) > self.max_terms:
                            raise TooComplex
            result = list(nxt)
            if not result:
                return []
        return result

    def joint_projection(self, a: DNF, b: DNF, fact: str) -> list[Interval]:
        """``projection(conj([a, b]), fact)`` without building the product.

        A conjunction is possible when each fact's clauses are (facts are independent; see
        :func:`~cds_engine.rules.intervals.conjunction_possible`) and every term of a DNF is
        possible on its own, so whether ``x | y`` is possible depends only on the base facts both
        ``a`` and ``b`` mention, and its projection only on the clauses about ``fact``. Terms are
        cut down to those facts and grouped by their clauses about ``fact``; for each pair of
        groups whose range would add to the answer, one compatible pair is searched for (the
        first witness ends the search). :attr:`pairs_examined` counts the pairs tried; past
        ``max_terms * 50`` of them the question is given up (:class:`TooComplex`).
        """
        target = base_fact(fact)[0]
        base = self._base

        def bases(d: DNF) -> set[str]:
            return {base(f) for f in {c.fact for conj in d for c in conj}}

        on = (bases(a) & bases(b)) | {target}

        def groups(d: DNF) -> dict[Conj, list[Conj]]:
            kept = frozenset(c for c in frozenset().union(*d) if base(c.fact) in on)
            about = frozenset(c for c in kept if base(c.fact) == target)
            out: dict[Conj, dict[Conj, None]] = defaultdict(dict)
            for conj in d:
                cut = conj & kept
                out[cut & about][cut] = None
            return {k: list(v) for k, v in out.items()}

        budget = self.pairs_examined + self.max_terms * 50  # per call
        covered: list[Interval] = []
        gb = groups(b)
        for fa, xs in groups(a).items():
            for fb, ys in gb.items():
                on_fact = fa | fb
                if not self.possible(on_fact):
                    continue
                adds = projection([on_fact], fact)
                if union([*covered, *adds]) == covered:
                    continue  # nothing new to learn from this pair of groups
                if self._witness(xs, ys, budget):
                    covered = union([*covered, *adds])
        return covered

    def _witness(self, xs: list[Conj], ys: list[Conj], budget: int) -> bool:
        for x in xs:
            for y in ys:
                self.pairs_examined += 1
                if self.pairs_examined > budget:
                    raise TooComplex
                if self.possible(x | y):
                    return True
        return False

    def _base(self, fact: str) -> str:
        known = self._bases.get(fact)
        if known is None:
            known = self._bases[fact] = base_fact(fact)[0]
        return known

    def disj(self, parts: Sequence[DNF]) -> DNF:
        out: dict[Conj, None] = {}
        for part in parts:
            for c in part:
                out[c] = None
        if len(out) > self.max_terms:
            raise TooComplex
        return list(out)

    def _build(self, node: Node, want: Want) -> DNF:
        positive = want in ("is_true", "maybe_true")
        if isinstance(node, Const):
            if self.params_free:
                return [frozenset()]
            return [frozenset()] if node.value == positive else []
        if isinstance(node, Leaf):
            return [frozenset(c) for c in leaf_clauses(node, want) if self.possible(frozenset(c))]
        if isinstance(node, NotNode):
            return self.dnf(node.child, _FLIP[want])
        if isinstance(node, And | Or):
            parts = [self.dnf(c, want) for c in node.children]
            return self.conj(parts) if isinstance(node, And) == positive else self.disj(parts)
        assert isinstance(node, AtLeastNode)
        parts = [self.dnf(c, want) for c in node.children]
        groups = at_least_groups(node.n, len(node.children), want_true=positive)
        return self.disj([self.conj([parts[i] for i in g]) for g in groups])

    def satisfiable(self, *terms: tuple[Node, Want]) -> bool:
        """Is there a patient for whom every (node, want) holds at once?

        Searched depth-first without expanding the nodes: each step extends one partial
        situation and drops it as soon as it is impossible, so the first witness ends the search
        (a full expansion of "not TRUE" of a large rule can run to tens of thousands of terms).
        """
        budget = [self.max_terms * 50]

        def chain(items: list[tuple[Node, Want]], acc: Conj) -> Iterator[Conj]:
            if not items:
                yield acc
                return
            (node, want), rest = items[0], items[1:]
            for partial in self._walk(node, want, acc, budget):
                yield from chain(rest, partial)

        return next(chain(list(terms), frozenset()), None) is not None

    def _walk(self, node: Node, want: Want, acc: Conj, budget: list[int]) -> Iterator[Conj]:
        """Possible extensions of ``acc`` under which ``want`` of ``node`` holds (lazily)."""
        budget[0] -= 1
        if budget[0] < 0:
            raise TooComplex
        positive = want in ("is_true", "maybe_true")
        if isinstance(node, Const):
            if self.params_free or node.value == positive:
                yield acc
            return
        if isinstance(node, Leaf):
            for conj in self.dnf(node, want):
                merged = acc | conj
                if self.possible(merged):
                    yield merged
            return
        if isinstance(node, NotNode):
            yield from self._walk(node.child, _FLIP[want], acc, budget)
            return
        if isinstance(node, And | Or):
            if isinstance(node, And) == positive:
                yield from self._all(list(node.children), want, acc, budget)
            else:
                for child in node.children:
                    yield from self._walk(child, want, acc, budget)
            return
        assert isinstance(node, AtLeastNode)
        for group in at_least_groups(node.n, len(node.children), want_true=positive):
            yield from self._all([node.children[i] for i in group], want, acc, budget)

    def _all(self, children: list[Node], want: Want, acc: Conj, budget: list[int]) -> Iterator[Conj]:
        if not children:
            yield acc
            return
        for partial in self._walk(children[0], want, acc, budget):
            yield from self._all(children[1:], want, partial, budget)

    def implies(self, a: Node, b: Node) -> bool:
        """Whenever ``a`` is TRUE, ``b`` is TRUE too (three-valued: b never FALSE or UNKNOWN then)."""
        return not self.satisfiable((a, "is_true"), (b, "maybe_false"))

    def facts(self, node: Node, want: Want = "is_true") -> set[str]:
        return {base_fact(c.fact)[0] for conj in self.dnf(node, want) for c in conj}
