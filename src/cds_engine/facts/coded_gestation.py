"""Gestational age stated by a diagnosis code (ICD-10-CM ``Z3A.NN``): for the FHIR and the JSON facts paths.

Why here (``facts``, not ``sources``): a pregnancy sent as ``Z3A.37`` with no gestational-age
observation must not read as "gestational age unknown" on either path — the FHIR mapping
(:mod:`cds_engine.sources.gestation`) and :func:`cds_engine.facts.derive.derive` for a JSON
``PatientFacts`` body both call :func:`weeks_from_conditions`. Obstetric definitions, not pack
thresholds: a term pregnancy lasts at most 42 weeks (:data:`MAX_PREGNANCY_WEEKS`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from cds_engine.facts.model import Condition

__all__ = ["MAX_PREGNANCY_WEEKS", "coded_weeks", "weeks_from_conditions"]

#: a reading that puts a pregnancy beyond this many weeks no longer describes a current one
MAX_PREGNANCY_WEEKS = 42.0
_MAX_WEEKS = MAX_PREGNANCY_WEEKS
_ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
# ICD-10-CM category Z3A "Weeks of gestation": Z3A.08 ... Z3A.42 state that many completed weeks;
# Z3A.49 is "greater than 42 weeks"; Z3A.00 (unspecified) and Z3A.01 (less than 8 weeks) give none.
_Z3A = re.compile(r"^Z3A\.?(\d{2})$", re.IGNORECASE)
_Z3A_FIRST, _Z3A_LAST, _Z3A_BEYOND = 8, 42, 49
_CURRENT = frozenset({"active", "recurrence", "relapse"})
_NOT_TRUE = frozenset({"refuted", "entered-in-error"})


def coded_weeks(system: str | None, code: str | None) -> float | None:
    """The completed weeks an ICD-10-CM ``Z3A`` code states, or None (another code, or no number).

    ``Z3A.49`` ("greater than 42 weeks") is read as 42: a floor, so a check for late pregnancy
    (``gte`` a number of weeks) still fires; ``Z3A.00``/``Z3A.01`` state no usable number.
    """
    if system != _ICD10CM or not code:
        return None
    match = _Z3A.match(code.strip())
    if match is None:
        return None
    weeks = int(match.group(1))
    if weeks == _Z3A_BEYOND:
        return float(_MAX_WEEKS)
    if _Z3A_FIRST <= weeks <= _Z3A_LAST:
        return float(weeks)
    return None


def weeks_from_conditions(conditions: Iterable[Condition], as_of: datetime) -> float | None:
    """GA at ``as_of`` from the newest current ``Z3A`` diagnosis, or None.

    Why: a pregnancy documented only as "Z3A.37" had a stated gestational age that the engine
    ignored, so the late-pregnancy check reported "gestational age unknown" instead of firing.
    The same obstetric rules as the observations apply: a dated code (onset, else recorded date)
    is advanced to ``as_of``, and one older than 42 weeks, or advanced beyond 42 weeks, no longer
    describes this pregnancy. An undated code is taken as stated: the diagnosis is current (it is
    what makes the patient pregnant here), so its weeks are a floor of today's gestational age.
    Refuted, entered-in-error and no-longer-active entries are not read.
    """
    best: tuple[int, float] | None = None  # (date ordinal, or -1 when undated; weeks at as_of)
    for condition in conditions:
        stated = coded_weeks(condition.code.system, condition.code.code)
        if stated is None:
            continue
        if (condition.clinical_status or "active") not in _CURRENT:
            continue
        if condition.verification_status in _NOT_TRUE:
            continue
        dated = condition.onset or condition.recorded
        if dated is None:
            candidate = (-1, stated)
        else:
            elapsed = (as_of.date() - dated).days / 7.0  # whole days, as obstetrics counts
            if elapsed > _MAX_WEEKS:
                continue  # older than any current pregnancy
            candidate = (dated.toordinal(), stated + max(elapsed, 0.0))
        if best is None or candidate[0] > best[0]:
            best = candidate
    if best is None:
        return None
    weeks = best[1]
    if weeks > _MAX_WEEKS:
        return None  # the newest coded week count says the pregnancy is over
    return round(weeks, 2)
