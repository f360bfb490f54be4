"""FHIR ``Dosage`` → amount, unit, administrations per day, PRN limit, route and phases.

What is read (R4 ``dosageInstruction``):

* amount: ``doseAndRate[].doseQuantity`` (or the *high* end of ``doseRange``: dose checks are
  about the most that may be given). The unit is kept as written; conversion to mg happens with
  the product's strength later, never here.
* administrations per day: ``timing.repeat`` ``frequency`` (``frequencyMax`` when given) per
  ``period``/``periodUnit``; else the number of ``timeOfDay``/``when`` entries; else the HL7
  timing abbreviation in ``timing.code`` (BID, TID, QID, QD, Q6H …). ``dayOfWeek`` restrictions
  are ignored: the daily dose is the dose *on a dosing day*.
* PRN: ``asNeededBoolean``/``asNeededCodeableConcept``; the daily maximum comes from
  ``maxDosePerPeriod`` (a count of doses or an amount in the dose unit), else from the timing.
* route: the coded route (SNOMED code, display) or its text.
* phases: instructions with different ``sequence`` numbers (or, without sequence numbers,
  with distinct ``timing.repeat.bounds``) follow one another — a taper or a titration plan.
  Instructions sharing a sequence number run concurrently (10 mg morning + 20 mg night).

Nothing here knows a drug or a threshold; missing data stays ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from cds_engine.facts.normalize import FREQUENCY_CODES, KNOWN_ROUTES, normalize_route, normalize_unit
from cds_engine.sources.fhir_read import as_list, codings, concept_text, parse_date, quantity

__all__ = ["Dosage", "DosePhase", "read_dosage"]

# Days per UCUM time unit used by Timing.repeat.periodUnit / boundsDuration.
_UNIT_DAYS = {
    "s": 1 / 86400,
    "min": 1 / 1440,
    "h": 1 / 24,
    "d": 1.0,
    "wk": 7.0,
    "mo": 30.0,
    "a": 365.0,
    "sec": 1 / 86400,
    "hour": 1 / 24,
    "hours": 1 / 24,
    "day": 1.0,
    "days": 1.0,
    "week": 7.0,
    "weeks": 7.0,
    "month": 30.0,
    "months": 30.0,
    "year": 365.0,
}

_TIMING_CODES = FREQUENCY_CODES

_COUNT_UNITS = frozenset(
    {
        "",
        "1",
        "{dose}",
        "dose",
        "doses",
        "{doses}",
        "{administration}",
        "administration",
        "administrations",
        "times",
    }
)

_KNOWN_ROUTES = KNOWN_ROUTES


@dataclass(slots=True)
class DosePhase:
    """One period of a sequential plan (or the only one): what is given per day during it."""

    amount: float | None = None  # largest single administration
    unit: str | None = None
    doses_per_day: float | None = None
    schedule: list[float] | None = None  # unequal amounts within a day (concurrent instructions)
    days: float | None = None  # duration, when bounded
    start: date | None = None
    end: date | None = None


@dataclass(slots=True)
class Dosage:
    """The dose of an order as written: the current phase plus any later phases."""

    amount: float | None = None
    unit: str | None = None
    doses_per_day: float | None = None
    schedule: list[float] | None = None
    prn: bool = False
    prn_max_doses_per_day: float | None = None
    route: str | None = None
    phases: list[DosePhase] = field(default_factory=list)


@dataclass(slots=True)
class _Instruction:
    sequence: int | None
    amount: float | None
    unit: str | None
    per_day: float | None
    prn: bool
    prn_max: float | None
    route: str | None
    days: float | None
    start: date | None
    end: date | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _days(amount: Any, unit: Any) -> float | None:
    value = _number(amount)
    factor = _UNIT_DAYS.get(str(unit).strip().lower()) if unit else None
    if value is None or factor is None:
        return None
    return value * factor


def _per_day(timing: Any) -> float | None:
    if not isinstance(timing, dict):
        return None
    repeat = timing.get("repeat") if isinstance(timing.get("repeat"), dict) else {}
    frequency = _number(repeat.get("frequencyMax")) or _number(repeat.get("frequency"))
    period = _number(repeat.get("period"))
    unit = repeat.get("periodUnit")
    if frequency is not None and period:
        days = _days(period, unit or "d")
        if days:
            return frequency / days
    count = len(as_list(repeat.get("timeOfDay"))) or len(as_list(repeat.get("when")))
    if count:
        return float(count)
    code = timing.get("code")
    for c in codings(code):
        per_day = _TIMING_CODES.get(str(c.get("code", "")).strip().upper())
        if per_day is not None:
            return per_day
    text = concept_text(code)
    if text:
        return _TIMING_CODES.get(text.strip().upper().replace(" ", ""))
    return None


def _bounds(timing: Any) -> tuple[float | None, date | None, date | None]:
    repeat = (
        timing.get("repeat") if isinstance(timing, dict) and isinstance(timing.get("repeat"), dict) else {}
    )
    period = repeat.get("boundsPeriod")
    duration = repeat.get("boundsDuration")
    start = end = None
    days = None
    if isinstance(period, dict):
        start, end = parse_date(period.get("start")), parse_date(period.get("end"))
        if start and end:
            days = float((end - start).days)
    if isinstance(duration, dict):
        days = _days(duration.get("value"), duration.get("code") or duration.get("unit"))
    return days, start, end


def _route(concept: Any) -> str | None:
    """The route as the engine spells it: a recognised code or name first, else the text as written."""
    candidates = [str(c["code"]) for c in codings(concept) if c.get("code")]
    candidates += [str(c["display"]) for c in codings(concept) if c.get("display")]
    text = concept_text(concept)
    if text:
        candidates.append(text)
    for candidate in candidates:
        if normalize_route(candidate) in _KNOWN_ROUTES:
            return candidate
    return text or (candidates[0] if candidates else None)


def _amount(instruction: dict[str, Any]) -> tuple[float | None, str | None]:
    for dose_rate in as_list(instruction.get("doseAndRate")):
        if not isinstance(dose_rate, dict):
            continue
        if "doseQuantity" in dose_rate:
            value, unit, _ = quantity(dose_rate["doseQuantity"])
            return value, normalize_unit(unit)
        dose_range = dose_rate.get("doseRange")
        if isinstance(dose_range, dict):
            value, unit, _ = quantity(dose_range.get("high") or dose_range.get("low"))
            return value, normalize_unit(unit)
    if "doseQuantity" in instruction:  # STU3 shape
        value, unit, _ = quantity(instruction["doseQuantity"])
        return value, normalize_unit(unit)
    return None, None


def _prn_max(instruction: dict[str, Any], amount: float | None, unit: str | None) -> float | None:
    ratio = instruction.get("maxDosePerPeriod")
    if isinstance(ratio, list):  # R5 made it repeating
        ratio = ratio[0] if ratio else None
    if not isinstance(ratio, dict):
        return None
    top, top_unit, _ = quantity(ratio.get("numerator"))
    bottom, bottom_unit, _ = quantity(ratio.get("denominator"))
    days = _days(bottom if bottom is not None else 1, bottom_unit or "d")
    if top is None or not days:
        return None
    normalized = normalize_unit(top_unit) if top_unit else ""
    if (top_unit or "").strip().lower() in _COUNT_UNITS:
        count = top
    elif amount and normalized == unit:
        count = top / amount
    else:
        return None
    return count / days


def _instruction(raw: dict[str, Any]) -> _Instruction:
    amount, unit = _amount(raw)
    timing = raw.get("timing")
    days, start, end = _bounds(timing)
    prn = bool(raw.get("asNeededBoolean")) or isinstance(raw.get("asNeededCodeableConcept"), dict)
    sequence = raw.get("sequence")
    return _Instruction(
        sequence=sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else None,
        amount=amount,
        unit=unit,
        per_day=_per_day(timing),
        prn=prn,
        prn_max=_prn_max(raw, amount, unit) if prn else None,
        route=_route(raw.get("route")),
        days=days,
        start=start,
        end=end,
    )


def _phase(group: list[_Instruction]) -> DosePhase:
    first = group[0]
    if len(group) == 1:
        return DosePhase(
            amount=first.amount,
            unit=first.unit,
            doses_per_day=first.per_day,
            days=first.days,
            start=first.start,
            end=first.end,
        )
    units = {i.unit for i in group}
    amounts = [i.amount for i in group]
    per_days = [i.per_day for i in group]
    days = max((i.days for i in group if i.days is not None), default=None)
    start = min((i.start for i in group if i.start), default=None)
    end = max((i.end for i in group if i.end), default=None)
    if len(units) != 1 or None in amounts or None in per_days:
        # Concurrent instructions that cannot be added up: the dose stays unknown.
        return DosePhase(unit=first.unit if len(units) == 1 else None, days=days, start=start, end=end)
    schedule: list[float] = []
    for instruction in group:
        count = instruction.per_day or 0.0
        if count != int(count):
            return DosePhase(unit=first.unit, days=days, start=start, end=end)
        schedule.extend([instruction.amount or 0.0] * int(count))
    return DosePhase(
        amount=max(schedule) if schedule else None,
        unit=first.unit,
        doses_per_day=float(len(schedule)) or None,
        schedule=schedule,
        days=days,
        start=start,
        end=end,
    )


def _groups(instructions: list[_Instruction]) -> list[list[_Instruction]]:
    if len(instructions) <= 1:
        return [instructions] if instructions else []
    if any(i.sequence is not None for i in instructions):
        by_sequence: dict[int, list[_Instruction]] = {}
        for i in instructions:
            by_sequence.setdefault(i.sequence if i.sequence is not None else 0, []).append(i)
        return [by_sequence[k] for k in sorted(by_sequence)]
    starts = [i.start for i in instructions]
    if all(starts) and len(set(starts)) == len(starts):
        return [[i] for i in sorted(instructions, key=lambda i: i.start or date.min)]
    return [instructions]


def read_dosage(instructions: Any) -> Dosage:
    """Read ``dosageInstruction`` (a list of Dosage) into one :class:`Dosage`."""
    parsed = [_instruction(raw) for raw in as_list(instructions) if isinstance(raw, dict)]
    if not parsed:
        return Dosage()
    groups = _groups(parsed)
    phases = [_phase(group) for group in groups]
    current = phases[0]
    first_group = groups[0]
    prn = any(i.prn for i in first_group)
    prn_max = None
    if prn:
        maxima = [i.prn_max for i in first_group if i.prn_max is not None]
        prn_max = sum(maxima) if maxima else current.doses_per_day
    route = next((i.route for i in parsed if i.route), None)
    return Dosage(
        amount=current.amount,
        unit=current.unit,
        doses_per_day=current.doses_per_day,
        schedule=current.schedule if current.schedule and len(set(current.schedule)) > 1 else None,
        prn=prn,
        prn_max_doses_per_day=prn_max,
        route=route,
        phases=phases if len(phases) > 1 else [],
    )
