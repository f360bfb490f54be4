"""Which eGFR units are read, and how an unreadable newest eGFR is reported (never replaced).

An eGFR is read only in mL/min/1.73 m², in one of the spellings of :data:`EGFR_UNITS` (UCUM
``mL/min/{1.73_m2}`` and the common laboratory variants), or with no unit at all (a bare
number or a ``">60"`` string). Any other unit (mg/dL, µmol/L, mL/s …) makes the result
*unreadable*: the renal checks are then cannot-assess and the card names the result's date and
the problem. A result dated after the evaluation time is worded here too
(:data:`FUTURE_PROBLEM_TEXT`; :mod:`cds_engine.facts.renal` decides when it applies). An older,
readable result is never used in place of an unreadable one — that would band the patient
on kidney function they no longer have.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from cds_engine.facts.model import Renal, UnreadableResult

__all__ = [
    "EGFR_UNITS",
    "FUTURE_PROBLEM_TEXT",
    "egfr_unit_ok",
    "newest_unreadable_egfr",
    "unreadable_egfr_facts",
]

# Accepted spellings of mL/min/1.73 m² (compared case-insensitively, spaces removed).
EGFR_UNITS = (
    "mL/min/{1.73_m2}",
    "mL/min/1.73m2",
    "mL/min/1.73 m2",
    "mL/min/1.73 m²",
    "ml/min/1.73m^2",
    "mL/min per 1.73 m2",
    "mL/min/1.73_m2",
    # Synthea and some laboratories send an eGFR LOINC code (whose name already says "per 1.73 m²",
    # e.g. 33914-3) with plain mL/min: read as the eGFR the code defines, never as a failure
    "mL/min",
)


def _squeeze(unit: str) -> str:
    return "".join(unit.lower().split())


_ACCEPTED = frozenset(_squeeze(u) for u in EGFR_UNITS)

_PROBLEM_TEXT = {
    "no-value": "has no readable value",
    "unit": "is not reported in mL/min/1.73 m²",
}


# How a card says that the only eGFR is dated after the evaluation time (facts/renal.py): it is not
# a current value, and the renal checks are cannot-assess — the same tier as an unreadable result.
FUTURE_PROBLEM_TEXT = "is dated after the evaluation time"


def egfr_unit_ok(unit: str | None) -> bool:
    """True for an accepted spelling of mL/min/1.73 m², or no unit."""
    return unit is None or not unit.strip() or _squeeze(unit) in _ACCEPTED


def newest_unreadable_egfr(renal: Renal) -> UnreadableResult | None:
    """The unreadable newest eGFR: as the source reported it, or an ``egfr`` with a non-renal unit."""
    readable = renal.egfr if renal.egfr is not None and egfr_unit_ok(renal.egfr.unit) else None
    if renal.egfr_unreadable is not None and (
        readable is None or _day(renal.egfr_unreadable.date) >= _day(readable.date)
    ):
        return renal.egfr_unreadable
    if renal.egfr is not None and readable is None:
        return UnreadableResult(date=renal.egfr.date, problem="unit")
    return None


def _day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def unreadable_egfr_facts(renal: Renal) -> dict[str, Any]:
    """``egfr_unreadable`` with the result's date and problem, when the newest eGFR is unreadable."""
    result = newest_unreadable_egfr(renal)
    if result is None:
        return {}
    return {
        "egfr_unreadable": True,
        "egfr_unreadable_date": _day(result.date).isoformat(),
        "egfr_unreadable_problem": _PROBLEM_TEXT[result.problem],
    }
