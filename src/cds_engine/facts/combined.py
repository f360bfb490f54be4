"""Several active oral orders of the pack's drug: which one the draft replaces, and the combined dose.

Threshold-free arithmetic (the pack decides what the numbers mean):

* A draft **replaces** an active order when the source says so (``priorPrescription``, the same
  id re-signed, or the same request stops it): ``Order.replaces`` without ``replaces_presumed``.
* Otherwise, when an active order has the same form and route and both are scheduled, the
  replacement is **presumed** (any strength). A PRN order beside a scheduled one, or another
  form, is **additive**: both are taken.
* ``combined_oral_daily_mg`` = the draft + every active oral/enteral order it does not replace.
  An unknown part makes the sum unknown; the known parts are then kept as a lower bound
  (``combined_oral_daily_mg__ge``), so a ceiling the known parts already exceed still fires.
* ``order_request_daily_mg`` = the draft + the other *draft* orders of the drug in the same request
  (oral/enteral or route unknown): the regimen the request starts if it is signed. Two new drafts
  of 10 mg BID start 40 mg/day, not 20; the start caps read this sum. Same unknown-part rule
  (``order_request_daily_mg__ge``). Drafts are never exposure: they are summed, not "already taken".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["ORAL_FAMILY", "combined_facts", "compare_regimen", "request_facts", "same_regimen_kind"]

ORAL_FAMILY = frozenset({"oral", "enteral"})


def same_regimen_kind(
    form_a: str | None, route_a: str | None, prn_a: bool | None,
    form_b: str | None, route_b: str | None, prn_b: bool | None,
) -> bool:
    """Same form and route (unknown matches), both scheduled: one presumably replaces the other."""
    same_form = form_a is None or form_b is None or form_a == form_b
    same_route = route_a is None or route_b is None or route_a == route_b
    return same_form and same_route and not prn_a and not prn_b


def _sum(parts: list[float | None]) -> tuple[float | None, float | None]:
    """(exact sum, lower bound): exact when every part is known, else the known parts as a bound."""
    known = [p for p in parts if p is not None]
    if len(known) == len(parts):
        return round(sum(known), 6), None
    return None, (round(sum(known), 6) if known else None)


def combined_facts(
    draft_daily: float | None,
    others: Iterable[float | None],
    *,
    sum_orders: bool,
    presumed: tuple[str, float | None] | None,
    additive_beside: str | None,
) -> dict[str, Any]:
    """The combined-dose facts of the draft (``others``: the other active oral/enteral orders' doses)."""
    parts = [draft_daily, *others] if sum_orders else [draft_daily]
    out: dict[str, Any] = {"active_oral_orders": len(parts)}
    exact, bound = _sum(parts)
    if exact is not None:
        out["combined_oral_daily_mg"] = exact
    elif bound is not None and len(parts) > 1:
        out["combined_oral_daily_mg__ge"] = bound
    if presumed is not None:
        label, dose = presumed
        out["presumed_replaced_order"] = label
        if exact is not None and dose is not None:
            out["total_if_additional_mg"] = round(exact + dose, 6)
    if additive_beside is not None:
        out["order_additive_to"] = additive_beside
    return out


def request_facts(
    draft_daily: float | None, sibling_drafts: Iterable[float | None], *, sum_orders: bool
) -> dict[str, Any]:
    """The daily dose the request starts: the draft plus its sibling drafts' doses (oral family).

    ``sum_orders`` is the pack's ``sum_active_oral_orders``: false judges each order alone (the
    knowledge file's per-order daily dose), for the start caps as for the ceilings.
    """
    parts = [draft_daily, *sibling_drafts] if sum_orders else [draft_daily]
    out: dict[str, Any] = {}
    exact, bound = _sum(parts)
    if exact is not None:
        out["order_request_daily_mg"] = exact
    elif bound is not None and len(parts) > 1:
        out["order_request_daily_mg__ge"] = bound
    return out


def compare_regimen(out: dict[str, Any]) -> None:
    """An additive order changes the regimen by its own amount: compare the combined dose with the
    previous one, never the draft alone with the order beside it (no false 'reduction')."""
    combined, previous = out.get("combined_oral_daily_mg"), out.get("previous_daily_dose_mg")
    for key in ("daily_dose_change_mg", "daily_dose_reduction_pct", "dose_increase"):
        out.pop(key, None)
    if combined is None or previous is None:
        return
    out["daily_dose_change_mg"] = round(combined - previous, 6)
    if previous > 0:
        out["daily_dose_reduction_pct"] = round((previous - combined) / previous * 100.0, 6)
    out["dose_increase"] = combined > previous
