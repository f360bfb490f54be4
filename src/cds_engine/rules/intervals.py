"""Value domains of single facts: can a set of comparisons on one fact all hold at once?

The verifier reduces a condition to conjunctions of :class:`~cds_engine.rules.conditions.Clause`
(``egfr < 30``, ``order_route in [oral, enteral]``, ``dialysis absent`` …). A conjunction is
possible only if, for every fact it mentions, some value (or the fact's absence) meets all of
its clauses. This module answers that per fact, by interval reasoning for numbers and by finite
sets for booleans and listed strings, and it gives the numeric range a conjunction allows so
the verifier can find gaps and overlaps between bands.

A fact that may arrive as a bound (eGFR ``>60``) has several mutually exclusive
representations (``egfr``, ``egfr__gt`` …): a patient carries at most one of them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from cds_engine.rules.conditions import BOUND_SUFFIXES, Clause

__all__ = [
    "FULL",
    "Interval",
    "base_fact",
    "conjunction_possible",
    "fmt_interval",
    "holes",
    "intersect_sets",
    "projection",
    "projections",
    "union",
]


def base_fact(name: str) -> tuple[str, str]:
    """``egfr__gt`` -> (``egfr``, ``__gt``); a plain fact -> (name, '')."""
    for suffix in BOUND_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


@dataclass(frozen=True, slots=True, order=True)
class Interval:
    """A range of the real line; ``lo_open``/``hi_open`` say whether the end point is excluded."""

    lo: float
    hi: float
    lo_open: bool = True
    hi_open: bool = True

    @property
    def empty(self) -> bool:
        return self.lo > self.hi or (self.lo == self.hi and (self.lo_open or self.hi_open))

    @property
    def point(self) -> bool:
        return self.lo == self.hi and not self.empty

    def contains(self, x: float) -> bool:
        above = x > self.lo or (x == self.lo and not self.lo_open)
        below = x < self.hi or (x == self.hi and not self.hi_open)
        return above and below

    def intersect(self, other: Interval) -> Interval:
        # the larger low end wins; at equal ends the open one is the tighter
        if self.lo == other.lo:
            lo, lo_open = self.lo, self.lo_open or other.lo_open
        else:
            lo, lo_open = max((self.lo, self.lo_open), (other.lo, other.lo_open))
        if self.hi == other.hi:
            hi, hi_open = self.hi, self.hi_open or other.hi_open
        else:
            hi, hi_open = min((self.hi, self.hi_open), (other.hi, other.hi_open))
        return Interval(lo, hi, lo_open, hi_open)


FULL = Interval(-math.inf, math.inf)


def fmt_interval(iv: Interval) -> str:
    """Readable form: ``= 50``, ``≥ 30 and < 50``, ``> 80``."""
    if iv.point:
        return f"= {_num(iv.lo)}"
    parts = []
    if iv.lo != -math.inf:
        parts.append(f"{'>' if iv.lo_open else '≥'} {_num(iv.lo)}")
    if iv.hi != math.inf:
        parts.append(f"{'<' if iv.hi_open else '≤'} {_num(iv.hi)}")
    return " and ".join(parts) or "any value"


def _num(x: float) -> str:
    return f"{x:g}"


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Disjoint, sorted intervals covering the same points."""
    items = sorted((iv for iv in intervals if not iv.empty), key=lambda iv: (iv.lo, iv.lo_open))
    out: list[Interval] = []
    for iv in items:
        if out:
            last = out[-1]
            touches = iv.lo < last.hi or (iv.lo == last.hi and not (iv.lo_open and last.hi_open))
            if touches:
                if (iv.hi, not iv.hi_open) > (last.hi, not last.hi_open):
                    out[-1] = Interval(last.lo, iv.hi, last.lo_open, iv.hi_open)
                continue
        out.append(iv)
    return out


def holes(covered: Sequence[Interval]) -> list[Interval]:
    """The uncovered stretches *between* disjoint sorted intervals (not beyond either end)."""
    out = []
    for left, right in pairwise(covered):
        out.append(Interval(left.hi, right.lo, not left.hi_open, not right.lo_open))
    return [h for h in out if not h.empty]


def intersect_sets(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    return union(x.intersect(y) for x in a for y in b)


@dataclass(slots=True)
class _Values:
    """What the clauses on one representation of a fact allow."""

    allowed: set[Any] | None = None  # None: not restricted to a finite set
    excluded: set[Any] | None = None
    interval: Interval = FULL
    present: bool = False
    absent: bool = False

    def add(self, clause: Clause) -> None:
        if clause.kind == "absent":
            self.absent = True
            return
        self.present = True
        if clause.kind == "present":
            return
        op, v = clause.op, clause.value
        if op == "eq":
            self._allow({v})
        elif op == "in":
            self._allow(set(v))
        elif op == "ne":
            self.excluded = (self.excluded or set()) | {v}
        elif op == "not_in":
            self.excluded = (self.excluded or set()) | set(v)
        elif op in ("lt", "lte", "gt", "gte") and _is_number(v):
            x = float(v)
            bound = {"lt": Interval(-math.inf, x, True, True), "lte": Interval(-math.inf, x, True, False),
                     "gt": Interval(x, math.inf, True, True), "gte": Interval(x, math.inf, False, True)}[op]
            self.interval = self.interval.intersect(bound)

    def _allow(self, values: set[Any]) -> None:
        self.allowed = values if self.allowed is None else {a for a in self.allowed if a in values}

    def possible(self, kind: str) -> bool:
        if self.absent:
            return not self.present
        if not self.present:
            return True
        allowed = self.allowed
        if allowed is None and kind == "bool":
            allowed = {True, False}
        excluded = self.excluded or set()
        numeric = self.interval != FULL
        if allowed is not None:
            return any(a not in excluded and (not numeric or self._inside(a))
                       and (kind != "integer" or not _is_number(a) or float(a).is_integer()) for a in allowed)
        if kind == "integer":
            whole = integers(self.interval)
            if whole is None:
                return False
            lo, hi = whole
            if hi - lo > len(excluded):
                return True  # more whole numbers than exclusions
            return any(float(n) not in excluded for n in range(int(lo), int(hi) + 1))
        if kind == "number" or numeric:
            iv = self.interval
            if iv.empty:
                return False
            if iv.point:
                return iv.lo not in excluded
            return True  # a stretch of reals minus finitely many points
        return True  # strings: infinitely many values remain

    def _inside(self, value: Any) -> bool:
        return _is_number(value) and self.interval.contains(float(value))

    def range(self) -> list[Interval]:
        """Numbers this representation allows (finite sets become points)."""
        if self.absent:
            return []
        excluded = self.excluded or set()
        if self.allowed is not None:
            pts = [float(a) for a in self.allowed if _is_number(a) and a not in excluded
                   and self.interval.contains(float(a))]
            return union(Interval(p, p, False, False) for p in pts)
        return [] if self.interval.empty else [self.interval]


def integers(iv: Interval) -> tuple[float, float] | None:
    """The smallest and largest whole number inside ``iv`` (may be infinite), or None if there is none."""
    lo = iv.lo if iv.lo == -math.inf else (math.floor(iv.lo) + 1 if iv.lo_open else math.ceil(iv.lo))
    hi = iv.hi if iv.hi == math.inf else (math.ceil(iv.hi) - 1 if iv.hi_open else math.floor(iv.hi))
    return (lo, hi) if lo <= hi else None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _group(conj: Iterable[Clause]) -> dict[str, dict[str, _Values]]:
    by_fact: dict[str, dict[str, _Values]] = defaultdict(dict)
    for clause in conj:
        base, suffix = base_fact(clause.fact)
        by_fact[base].setdefault(suffix, _Values()).add(clause)
    return by_fact


def conjunction_possible(conj: Iterable[Clause], kind_of: Callable[[str], str]) -> bool:
    """Can one patient meet every clause? ``kind_of(fact)`` gives number | bool | string."""
    for base, reps in _group(conj).items():
        present = [s for s, v in reps.items() if v.present]
        if len(present) > 1:
            return False  # an exact value and a bound (or two bounds) never coexist
        for suffix, values in reps.items():
            kind = "number" if suffix else kind_of(base)
            if not values.possible(kind):
                return False
    return True


def projection(conjunctions: Iterable[Sequence[Clause]], fact: str) -> list[Interval]:
    """Values of ``fact`` (exact representation) that some conjunction allows; FULL if unconstrained."""
    return _project((_group(conj) for conj in conjunctions), fact)


def projections(conjunctions: Iterable[Iterable[Clause]], facts: Iterable[str]) -> dict[str, list[Interval]]:
    """For each fact, :func:`projection` of the conjunctions that compare it (``cmp`` on that exact
    name), each conjunction grouped once rather than once per fact."""
    grouped = [({c.fact for c in conj if c.kind == "cmp"}, _group(conj)) for conj in conjunctions]
    return {fact: _project((g for compared, g in grouped if fact in compared), fact) for fact in facts}


def _project(groups: Iterable[dict[str, dict[str, _Values]]], fact: str) -> list[Interval]:
    out: list[Interval] = []
    for by_fact in groups:
        reps = by_fact.get(fact)
        if reps is None:
            out.append(FULL)
            continue
        exact = reps.get("")
        if exact is None:
            if not any(v.present for v in reps.values()):
                out.append(FULL)  # only absence clauses on bounds: the exact value is free
            continue  # the conjunction holds via a bound: no exact value
        out.extend(exact.range())
    return union(out)
