"""The limits a one-click dose suggestion must respect, as the pack declares them per tier.

A tier may carry ``one_click`` (see :class:`cds_engine.rules.schema.OneClick`): ``offer`` (its
card may carry the order's one suggestion), ``block`` (no one-click at all while it fires) and
``caps`` (daily / single-dose limits, from parameters or facts, e.g. the previous dose plus the
allowed titration step). :func:`limits` evaluates every tier of a pack on one patient's flat
facts and combines the caps of every tier that fires into one daily and one single-dose limit:
the lowest of them. Nothing here names a drug, a rule or a threshold — the pack does.

Fail-safe choices: a cap whose ``when`` cannot be decided applies; a cap that reads a missing
fact makes the whole result *unknown* (no one-click suggestion, the card text stays).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cds_engine.rules.conditions import FALSE, TRUE, Node, evaluate

if TYPE_CHECKING:
    from cds_engine.rules.compile import CompiledPack

__all__ = [
    "LIQUID_STEP_PARAMETER",
    "PARAMETERS",
    "STEP_PARAMETER",
    "CompiledCap",
    "CompiledOneClick",
    "Limits",
    "limits",
    "tier_truths",
]

# Pack parameters the suggestion code reads by name (a pack without them gets no one-click for a
# patient taking the drug now, and none for liquids).
STEP_PARAMETER = "suggestion_max_step_pct"  # largest one-click cut below the daily dose taken now
LIQUID_STEP_PARAMETER = "suggestion_liquid_step_ml"  # smallest volume step of a liquid suggestion
PARAMETERS = frozenset({STEP_PARAMETER, LIQUID_STEP_PARAMETER})


@dataclass(frozen=True, slots=True)
class CompiledCap:
    dose: Literal["daily", "single"]
    strict: bool  # ``below``: the dose must stay strictly under the bound
    value: float | None  # a parameter's value (resolved when the pack loads)
    fact: str | None  # or a fact read per patient
    plus: float  # added to the bound (a parameter; 0 when none)
    when: Node | None
    label: str  # for the card text and the evidence: "max_daily_mg", "previous_daily_dose_mg + …"

    def bound(self, flat: Mapping[str, Any]) -> float | None:
        if self.fact is not None:
            value = flat.get(self.fact)
            if not isinstance(value, int | float) or isinstance(value, bool):
                return None
            return float(value) + self.plus
        return None if self.value is None else float(self.value) + self.plus


@dataclass(frozen=True, slots=True)
class CompiledOneClick:
    tier_id: str
    offer: bool
    block: bool
    caps: tuple[CompiledCap, ...]


@dataclass(slots=True)
class Limits:
    """The combined limits of every firing tier for one order."""

    daily: float | None = None  # highest allowed daily dose (mg)
    daily_strict: bool = False  # True: the daily dose must stay strictly below ``daily``
    single: float | None = None
    single_strict: bool = False
    blocked_by: list[str] = field(default_factory=list)  # tiers that forbid one-click suggestions
    unknown: list[str] = field(default_factory=list)  # caps that could not be computed (missing facts)
    capped_by: list[str] = field(default_factory=list)  # tiers whose caps apply
    offering: list[str] = field(default_factory=list)  # firing tiers that may carry the suggestion

    def allows(self, daily: float, single: float, eps: float = 1e-9) -> bool:
        for bound, strict, value in (
            (self.daily, self.daily_strict, daily),
            (self.single, self.single_strict, single),
        ):
            if bound is None:
                continue
            if (value >= bound - eps) if strict else (value > bound + eps):
                return False
        return True

    def _tighten(self, cap: CompiledCap, bound: float) -> None:
        if cap.dose == "daily":
            if self.daily is None or bound < self.daily or (bound == self.daily and cap.strict):
                self.daily, self.daily_strict = bound, cap.strict
        elif self.single is None or bound < self.single or (bound == self.single and cap.strict):
            self.single, self.single_strict = bound, cap.strict


def tier_truths(
    pack: CompiledPack, flat: Mapping[str, Any], only: Collection[str] | None = None
) -> dict[str, int]:
    """TRUE / FALSE / UNKNOWN of every tier (its rule's ``applies`` included), by the oracle.

    ``only``: just the tiers with these ids (a caller that reads a few tiers need not pay for all;
    on the hook path this walk cost more than the Rete evaluation itself).
    """
    if only is None:
        return {tier.id: evaluate(tier.node, flat) for tier in pack.tiers}
    return {tier.id: evaluate(tier.node, flat) for tier in pack.tiers if tier.id in only}


def limits(pack: CompiledPack, flat: Mapping[str, Any], truths: Mapping[str, int] | None = None) -> Limits:
    """Combine the one-click declarations of every tier that fires for this patient and order."""
    truths = tier_truths(pack, flat, pack.one_click) if truths is None else truths  # only these are read
    out = Limits()
    for tier_id, spec in pack.one_click.items():
        if truths.get(tier_id) != TRUE:
            continue
        if spec.block:
            out.blocked_by.append(tier_id)
        if spec.offer:
            out.offering.append(tier_id)
        applied = False
        for cap in spec.caps:
            if cap.when is not None and evaluate(cap.when, flat) == FALSE:
                continue  # only a cap that surely does not apply is skipped
            bound = cap.bound(flat)
            if bound is None:
                out.unknown.append(f"{tier_id}: {cap.label}")
                continue
            out._tighten(cap, bound)
            applied = True
        if applied:
            out.capped_by.append(tier_id)
    return out
