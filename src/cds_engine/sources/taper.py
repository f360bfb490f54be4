"""Is a phased MedicationRequest a taper — and does it end the drug?

Threshold-free reading of sequenced ``dosageInstruction`` phases (the pack judges the length):

* **Taper to stop** (a discontinuation with a taper): at least two sequenced phases, the daily
  dose never rises and falls at least once, and every phase is bounded — the last one too, so
  nothing follows it. The taper length is the sum of the phase durations.
* **Stepped reduction**: the same falling phases, but the last one is open-ended (a lower dose
  continues). A taper plan for a dose reduction, never a discontinuation.
* Anything else is no taper: a single bounded phase ("10 mg TID for 7 days"), rising or flat
  phases (a titration), a dose that cannot be converted to mg, or ``dispenseRequest`` durations
  (a supply, not a plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

__all__ = ["TaperReading", "read_taper"]


@dataclass(frozen=True, slots=True)
class TaperReading:
    kind: Literal["taper-to-stop", "stepped-reduction"]
    steps: list[float]  # daily dose of each phase, mg
    days: float | None  # taper length: the sum of the bounded phases (None when one is unknown)


def read_taper(
    daily: list[float | None], days: list[float | None], bounded: list[bool] | None = None
) -> TaperReading | None:
    """Classify phases from each phase's daily dose (mg), duration in days, and whether it is bounded
    (a duration or an end date; by default: a duration is known)."""
    bounded = bounded if bounded is not None else [d is not None for d in days]
    if len(daily) < 2 or not len(daily) == len(days) == len(bounded) or any(d is None for d in daily):
        return None
    steps = [float(d) for d in daily if d is not None]
    if not all(b <= a for a, b in pairwise(steps)) or steps[-1] >= steps[0]:
        return None  # rising or flat: a titration plan, not a taper
    known = None if None in days else float(sum(d or 0.0 for d in days))
    if all(bounded):
        return TaperReading("taper-to-stop", steps, known)
    before_last = None if None in days[:-1] else float(sum(d or 0.0 for d in days[:-1]))
    return TaperReading("stepped-reduction", steps, before_last if all(bounded[:-1]) else None)
