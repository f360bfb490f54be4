"""Gestational age at ``as_of`` from FHIR Observations (issue #11 item 4: late-pregnancy checks).

Which codes count is the vocabulary's business (observation groups ``gestational_age`` and
``delivery_date_estimated``, LOINC listed in rules/vocabulary/README.md); this module reads the
values. Obstetric definitions, not pack thresholds:

* A gestational age is advanced to ``as_of``: GA at as_of = GA observed + time since observed.
* An estimated delivery date (EDD) gives GA = 40 weeks − time until the EDD.
* A term pregnancy lasts at most 42 weeks: an observation older than 42 weeks, or a result that
  would put the pregnancy beyond 42 weeks at ``as_of``, no longer describes a current pregnancy.
* Values in weeks (``wk``), days (``d``) or weeks+days (``"36+2"``, ``"36w 2d"``) are read.
* An ICD-10-CM ``Z3A.NN`` diagnosis ("NN weeks gestation of pregnancy", in the VSAC Pregnancy set)
  states the weeks as a code (:func:`~cds_engine.facts.coded_gestation.weeks_from_conditions`, in ``facts``
  so the JSON facts path reads it too): a pregnancy coded only that way must
  not read as "gestational age unknown" when the code says 37 weeks (audit reaudit-clin #7).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from cds_engine.facts.coded_gestation import MAX_PREGNANCY_WEEKS, coded_weeks, weeks_from_conditions
from cds_engine.sources.fhir_read import parse_datetime, quantity

__all__ = [
    "EDD_GROUP",
    "GA_GROUP",
    "coded_weeks",
    "gestational_age_weeks",
    "read_weeks",
    "weeks_from_conditions",
]

GA_GROUP = "gestational_age"
EDD_GROUP = "delivery_date_estimated"
_TERM_WEEKS = 40.0
_MAX_WEEKS = MAX_PREGNANCY_WEEKS
_WEEK_UNITS = frozenset({"wk", "wks", "week", "weeks", "{weeks}", "w", "a_w"})
_DAY_UNITS = frozenset({"d", "day", "days", "{days}"})
_WEEKS_DAYS = re.compile(
    r"^\s*(\d{1,2})\s*(?:w|wk|wks|weeks?)?\s*(?:\+|,|\s)\s*(\d)\s*(?:d|days?)?\s*$", re.IGNORECASE
)
_WEEKS_ONLY = re.compile(r"^\s*(\d{1,2}(?:\.\d+)?)\s*(?:w|wk|wks|weeks?)\s*$", re.IGNORECASE)


def read_weeks(resource: dict[str, Any]) -> float | None:
    """A gestational age in weeks from valueQuantity (weeks or days) or valueString ("36+2")."""
    if "dataAbsentReason" in resource:
        return None
    if isinstance(resource.get("valueQuantity"), dict):
        value, unit, comparator = quantity(resource["valueQuantity"])
        if value is None or comparator is not None:
            return None
        key = (unit or "").strip().lower()
        if key in _WEEK_UNITS:
            return value
        if key in _DAY_UNITS:
            return value / 7.0
        return None
    text = resource.get("valueString")
    if isinstance(text, str):
        both = _WEEKS_DAYS.match(text)
        if both:
            return int(both.group(1)) + int(both.group(2)) / 7.0
        weeks = _WEEKS_ONLY.match(text)
        if weeks:
            return float(weeks.group(1))
    return None


def _edd_weeks(resource: dict[str, Any], as_of: datetime) -> float | None:
    edd = parse_datetime(resource.get("valueDateTime"))
    if edd is None and isinstance(resource.get("valueString"), str):
        edd = parse_datetime(resource["valueString"])
    if edd is None:
        return None
    return _TERM_WEEKS - (edd.date() - as_of.date()).days / 7.0  # whole days, as obstetrics counts


def gestational_age_weeks(
    observations: Iterable[tuple[set[str], dict[str, Any], datetime, bool]], as_of: datetime
) -> float | None:
    """GA at ``as_of`` from the newest readable GA or EDD observation (newest first), or None."""
    for groups, resource, when, coded in observations:
        if not coded or not groups & {GA_GROUP, EDD_GROUP}:
            continue
        elapsed = (as_of.date() - when.date()).days / 7.0  # whole days, as obstetrics counts
        if elapsed > _MAX_WEEKS:
            return None  # older than any current pregnancy (the list is newest first)
        if GA_GROUP in groups:
            observed = read_weeks(resource)
            weeks = None if observed is None else observed + max(elapsed, 0.0)
        else:
            weeks = _edd_weeks(resource, as_of)
        if weeks is None:
            continue
        if weeks < 0 or weeks > _MAX_WEEKS:
            return None  # the newest reading says the pregnancy is over (or not yet dated sensibly)
        return round(weeks, 2)
    return None
