"""Therapy history of the pack's drug from the orders of every status (and home-medication statements).

The withdrawal, titration and new-start rules need: when continuous therapy started, the daily
dose before this order, when the dose last changed, and when the drug was last taken. FHIR has
no such summary, so it is reconstructed from the requests:

* an *episode* is one MedicationRequest (or MedicationStatement) of the drug that was not
  cancelled, entered in error or still a draft;
* the current episode is the latest active (or on-hold) one; the chain of therapy walks back from
  it (or from the latest episode when none is active) through ``priorPrescription`` links,
  episodes whose known end reaches the next start, and other active episodes;
* ``therapy_start`` is the start of the chain, or unknown when any start in it is unknown (the
  pack then treats the therapy as long-term, never as a new start);
* ``previous_daily_dose_mg`` is the dose of the *active* therapy only — after a stop, the next
  order is a (re)start, and the look-back rule decides with ``last_exposure``;
* ``last_dose_change`` / ``stable_dose_since``: the start of the latest run of equal daily doses;
* ``last_exposure``: today while an episode is active, else the latest known end (or, failing
  that, the start) of an episode or a documented administration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from cds_engine.facts.model import TherapyHistory

__all__ = ["ACTIVE_STATUSES", "Episode", "therapy_history"]

ACTIVE_STATUSES = frozenset({"active", "on-hold"})
_NOT_TAKEN = frozenset({"cancelled", "entered-in-error", "draft", "not-taken", "unknown", "intended"})


@dataclass(frozen=True, slots=True)
class Episode:
    """One order or statement of the pack's drug, as far as the record tells."""

    id: str | None
    status: str
    start: date | None
    end: date | None
    daily_mg: float | None
    single_mg: float | None
    route: str | None
    prior_id: str | None = None


def _continuous(earlier: Episode, later: Episode) -> bool:
    if later.prior_id is not None and later.prior_id == earlier.id:
        return True
    if earlier.status in ACTIVE_STATUSES:
        return True
    if earlier.end is not None and later.start is not None:
        return earlier.end >= later.start - timedelta(days=1)
    return False


def therapy_history(
    episodes: list[Episode], administrations: list[datetime], as_of: datetime
) -> tuple[TherapyHistory, Episode | None]:
    """The history, and the current (active) episode if there is one."""
    today = as_of.date()
    taken = [e for e in episodes if e.status not in _NOT_TAKEN and (e.start is None or e.start <= today)]
    given = [a for a in administrations if a <= as_of]
    last_dose_time = max(given) if given else None
    if not taken:
        return TherapyHistory(last_exposure=last_dose_time, last_dose_time=last_dose_time), None

    # Oldest first; an unknown start sorts first (it began before anything dated).
    ordered = sorted(taken, key=lambda e: (e.start is not None, e.start or date.min))
    active = [e for e in ordered if e.status in ACTIVE_STATUSES]
    head = active[-1] if active else ordered[-1]
    chain = [head]
    for earlier in reversed(ordered[: ordered.index(head)]):
        if _continuous(earlier, chain[-1]):
            chain.append(earlier)
        else:
            break
    chain.reverse()  # oldest first

    starts = [e.start for e in chain]
    therapy_start = None if None in starts else starts[0]
    level_start = head.start
    for earlier in reversed(chain[:-1]):
        if earlier.daily_mg is None or head.daily_mg is None or earlier.daily_mg != head.daily_mg:
            break
        level_start = earlier.start

    if active:
        last_exposure: datetime | date | None = as_of
    else:
        ends = [e.end or e.start for e in taken if (e.end or e.start) is not None]
        candidates: list[datetime | date] = [*ends, *given]
        last_exposure = max(candidates, key=_sort_key) if candidates else None
    history = TherapyHistory(
        therapy_start=therapy_start,
        previous_daily_dose_mg=head.daily_mg if active else None,
        previous_max_single_dose_mg=head.single_mg if active else None,
        last_dose_change=level_start,
        stable_dose_since=level_start,
        last_exposure=last_exposure,
        last_dose_time=last_dose_time,
    )
    return history, head if active else None


def _sort_key(value: datetime | date) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime(value.year, value.month, value.day, tzinfo=UTC)
