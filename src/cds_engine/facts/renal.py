"""Kidney-function facts: which result bands the patient, and how the cards say it.

Threshold-free choices the rule pack's renal bands rely on (the windows come from the pack
through :class:`RenalWindows`; the cut-offs stay in the pack):

* **Race-stratified pairs.** Among the eGFR results taken at the newest result's time (same
  specimen, or within ``pair_window_minutes``), a race-free equation wins, then the "among
  non-blacks" value; an "among blacks" value only when it is the only one; ties take the lower
  value. An older time never wins over the newest.
* **eGFR or CrCl.** A current eGFR (at most ``current_days`` old) bands the patient; without
  one, a current creatinine clearance does (same cut-offs, the card names the measure); when
  neither is current the newer of the two does (ties: eGFR), and the card says so.
* **Dated after the evaluation time.** A result dated after ``as_of`` is not a current value (a
  batch screen with a past ``as_of`` must not see later results; the FHIR mapping drops them
  too): an eGFR or CrCl dated later is never used, an older result still counts. When a
  later-dated eGFR leaves no usable eGFR at all, the card says so (the cannot-assess tier of an
  unreadable newest eGFR, with the problem "is dated after the evaluation time") — never the
  silence of a normal value, never a plain "no eGFR".
* **Units.** eGFR in mL/min/1.73 m² (or no unit); CrCl in mL/min (mL/s converted) — a
  clearance reported per 1.73 m² is not a Cockcroft–Gault CrCl and is not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from cds_engine.facts.lab_units import (
    FUTURE_PROBLEM_TEXT,
    egfr_unit_ok,
    newest_unreadable_egfr,
    unreadable_egfr_facts,
)
from cds_engine.facts.model import LabResult, Renal

__all__ = ["RenalWindows", "age_text", "renal_facts", "select_egfr"]

_STRATUM_RANK = {None: 0, "non-black": 1, "black": 2}


@dataclass(frozen=True, slots=True)
class RenalWindows:
    """The pack's windows the choice of result needs (parameters, never constants here)."""

    current_days: float = 90.0
    pair_window_minutes: float = 60.0


def _instant(value: date | datetime, as_of: datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=as_of.tzinfo or UTC)
    return datetime.combine(value, time(0), tzinfo=as_of.tzinfo or UTC)


def _after(value: date | datetime, as_of: datetime) -> bool:
    """True for a result dated after the evaluation moment (a date-only result: its midnight).

    A date's midnight is after ``as_of`` exactly when the date is after ``as_of``'s own date:
    compared as dates (this runs for every result of every patient).
    """
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=as_of.tzinfo or UTC)) > as_of
    return value > as_of.date()


def _until(renal: Renal, as_of: datetime) -> Renal:
    """``renal`` as known at ``as_of``: results dated after it left out.

    Why a copy and not a filter in each reader: the eGFR choice, the unreadable-newest rule and
    the CrCl all read ``Renal``; leaving the later results out once keeps them consistent (the
    newest *eligible* eGFR is the one an unreadable result competes with).
    """
    later = (
        renal.egfr is not None and _after(renal.egfr.date, as_of),
        renal.crcl is not None and _after(renal.crcl.date, as_of),
        renal.egfr_unreadable is not None and _after(renal.egfr_unreadable.date, as_of),
    )
    if not any(later) and not any(_after(r.date, as_of) for r in renal.egfr_results):
        return renal
    results = [r for r in renal.egfr_results if not _after(r.date, as_of)]
    egfr = renal.egfr
    if later[0]:
        # the newest eligible readable result stands in for `egfr` (results are newest first, but
        # a caller's list need not be sorted)
        readable = [r for r in results if egfr_unit_ok(r.unit)]
        egfr = max(readable, key=lambda r: _instant(r.date, as_of)) if readable else None
    return renal.model_copy(
        update={
            "egfr": egfr,
            "egfr_results": results,
            "crcl": None if later[1] else renal.crcl,
            "egfr_unreadable": None if later[2] else renal.egfr_unreadable,
        }
    )


def _later_egfr_facts(renal: Renal, known: Renal, as_of: datetime) -> dict[str, Any]:
    """The cannot-assess facts of an eGFR dated after ``as_of`` that left no eGFR to use."""
    if known.egfr is not None or known.egfr_unreadable is not None:
        return {}  # an eligible eGFR (readable or not) speaks for itself
    later = [
        r.date
        for r in (renal.egfr, renal.egfr_unreadable, *renal.egfr_results)
        if r is not None and _after(r.date, as_of)
    ]
    if not later:
        return {}
    first = min(later, key=lambda d: _instant(d, as_of))  # the one nearest the evaluation time
    day = first.date() if isinstance(first, datetime) else first  # as lab_units shows a date
    return {
        "egfr_unreadable": True,
        "egfr_unreadable_date": day.isoformat(),
        "egfr_unreadable_problem": FUTURE_PROBLEM_TEXT,
    }


def _days(value: date | datetime, as_of: datetime) -> int:
    when = value
    if isinstance(when, datetime):
        if when.tzinfo is not None and as_of.tzinfo is not None:
            when = when.astimezone(as_of.tzinfo)
        when = when.date()
    return (as_of.date() - when).days


def _egfr_unit_ok(unit: str | None) -> bool:
    return egfr_unit_ok(unit)  # the accepted spellings of mL/min/1.73 m2: facts/lab_units.py


def _crcl_value(result: LabResult) -> float | None:
    """CrCl in mL/min, or None when the unit is not a plain clearance."""
    if result.unit is None:
        return result.value
    unit = result.unit.lower().replace(" ", "")
    if "1.73" in unit or "/m2" in unit or "{" in unit:
        return None
    if unit in ("ml/min", "ml/minute"):
        return result.value
    if unit in ("ml/s", "ml/sec"):
        return result.value * 60.0
    return None


def select_egfr(renal: Renal, as_of: datetime, pair_window_minutes: float) -> LabResult | None:
    """The eGFR that counts: the newest result, with race-stratified pairs resolved.

    Only results dated on or before ``as_of`` count (a later one is not a current value).
    """
    return _select(_until(renal, as_of), as_of, pair_window_minutes)


def _select(renal: Renal, as_of: datetime, pair_window_minutes: float) -> LabResult | None:
    """:func:`select_egfr` of a ``Renal`` already cut at ``as_of`` (renal_facts cuts it once)."""
    newest = renal.egfr
    if newest is None or newest_unreadable_egfr(renal) is not None:
        return None  # an unreadable newest result is never replaced by an older one
    results = [r for r in renal.egfr_results if _egfr_unit_ok(r.unit)]
    if not results:
        return newest
    t0 = max(_instant(r.date, as_of) for r in [newest, *results])  # the newest time always wins
    window = pair_window_minutes * 60.0
    specimens = {r.specimen for r in [newest, *results] if r.specimen and _instant(r.date, as_of) == t0}
    same_time = [
        r
        for r in results
        if abs((t0 - _instant(r.date, as_of)).total_seconds()) <= window
        or (r.specimen is not None and r.specimen in specimens)
    ]
    listed = any(
        r.value == newest.value and r.method == newest.method and r.date == newest.date for r in same_time
    )
    if not listed and abs((t0 - _instant(newest.date, as_of)).total_seconds()) <= window:
        same_time.append(newest)  # `egfr` given without its entry in `egfr_results`
    return min(same_time, key=lambda r: (_STRATUM_RANK.get(r.race_stratum, 0), r.value))


def _num(value: float) -> str:
    """A number as shown on a card: never rounded across a threshold (59.99 is not '60')."""
    if abs(value - round(value, 1)) < 1e-9:
        return f"{round(value, 1):g}"
    return f"{math.trunc(value * 100 + (1e-9 if value >= 0 else -1e-9)) / 100:g}"


def age_text(days: int) -> str:
    """How old a result is, as a clinician reads it: 'today', '12 days ago', '19 months ago'."""
    if days < 0:
        return "dated after today"
    if days == 0:
        return "today"
    if days < 60:
        return f"{days} day{'s' if days != 1 else ''} ago"
    months = int(days / 30.4375)
    if months < 24:
        return f"{months} months ago"
    return f"{int(days / 365.25)} years ago"


def _shown(result: LabResult, value: float) -> str:
    return (result.comparator or "") + _num(value)


def _bounded(out: dict[str, Any], name: str, value: float, comparator: str | None) -> None:
    suffix = {None: "", ">": "__gt", ">=": "__ge", "<": "__lt", "<=": "__le"}[comparator]
    out[name + suffix] = value


def renal_facts(renal: Renal, as_of: datetime, windows: RenalWindows) -> dict[str, Any]:
    """eGFR, CrCl and the banding result (``renal_fn``) with their ages and card text.

    Results dated after ``as_of`` are left out first (module docstring); the facts of an
    unreadable newest eGFR are included here as :mod:`cds_engine.facts.lab_units` words them, for
    the results known at ``as_of``.
    """
    known = _until(renal, as_of)
    out: dict[str, Any] = {}
    if known is not renal:
        out.update(unreadable_egfr_facts(known) or _later_egfr_facts(renal, known, as_of))
    renal = known
    egfr = _select(renal, as_of, windows.pair_window_minutes)
    measured: list[tuple[str, LabResult, float, int]] = []
    if egfr is not None:
        days = _days(egfr.date, as_of)
        _bounded(out, "egfr", egfr.value, egfr.comparator)
        out["egfr_days_old"] = days
        out["egfr_method"] = egfr.method
        out["egfr_age"] = age_text(days)
        measured.append(("eGFR", egfr, egfr.value, days))
    crcl = renal.crcl
    crcl_value = _crcl_value(crcl) if crcl is not None else None
    if crcl is not None and crcl_value is not None:
        days = _days(crcl.date, as_of)
        _bounded(out, "crcl", crcl_value, crcl.comparator)
        out["crcl_days_old"] = days
        out["crcl_age"] = age_text(days)
        measured.append(("CrCl", crcl, crcl_value, days))
    if not measured:
        return out

    current = [m for m in measured if m[3] <= windows.current_days]
    # eGFR first in `measured`: a current eGFR wins; else a current CrCl; else the newer (ties: eGFR)
    chosen = current[0] if current else min(measured, key=lambda m: m[3])
    name, result, value, days = chosen
    _bounded(out, "renal_fn", value, result.comparator)
    out["renal_fn_measure"] = name
    out["renal_fn_days_old"] = days
    out["renal_fn_age"] = age_text(days)
    out["renal_fn_current"] = bool(current)

    def said(m: tuple[str, LabResult, float, int]) -> str:
        unit = " mL/min" if m[0] == "CrCl" else ""
        return f"{m[0]} {_shown(m[1], m[2])}{unit} ({age_text(m[3])})"

    others = [m for m in measured if m is not chosen]
    text = said(chosen)
    if current and others and others[0] in current:
        text += f"; also {said(others[0])}"
    elif current and name == "CrCl":
        text += f"; no current eGFR (last {said(others[0])})" if others else "; no usable eGFR"
    elif not current:
        text += "; not current"
        if others:
            text += f" — the newer result; also {said(others[0])}"
    out["renal_fn_text"] = text
    return out
