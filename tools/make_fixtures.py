"""Write the baclofen fixtures (``fixtures/baclofen/*.json``) from one readable table.

Each fixture is a self-contained JSON file: ``facts`` (a PatientFacts document) and
``expect`` (``fire``: the complete {rule id: severity} set; ``silent``: key "must not fire"
checks, rule ids or tier ids; ``cannot_assess``: the complete set of missing-data items).

* ``T..`` files are the 25 hand-made scenarios of shared/clinical/baclofen-knowledge.md §5
  with every variant; ``R-<RULE>-..`` files are per-rule threshold checks (fire / silent at
  the threshold of each rule and tier); ``CA-..`` files are cannot-assess checks.
* Dates are relative to a fixed ``as_of`` (2026-01-15T12:00:00+00:00).
* §5 defaults: 45-year-old, not pregnant / not lactating, no allergies, problem list = MS,
  indication = MS spasticity, oral tablets, eGFR 95 dated 10 days before, no dialysis, no other
  medicines, outpatient. Ongoing therapy: started 365 d ago, last change and stable dose
  180 d ago, efficacy assessment 30 d ago.

The JSON files are the committed data; this script only regenerates them:
``python tools/make_fixtures.py`` (``--check`` exits 1 if a file would change).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "fixtures" / "baclofen"
SOURCE = "baclofen-knowledge.md"

AS_OF = "2026-01-15T12:00:00+00:00"
TODAY = date(2026, 1, 15)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
EGFR_UNIT = "mL/min/{1.73_m2}"

TAB10 = {"system": RXNORM, "code": "197391", "display": "Baclofen 10 MG Oral Tablet"}
TAB20 = {"system": RXNORM, "code": "197392", "display": "Baclofen 20 MG Oral Tablet"}
ODT10 = {"system": RXNORM, "code": "617299", "display": "Baclofen 10 MG Disintegrating Oral Tablet"}
IT_1MG_ML = {"system": RXNORM, "code": "1300890", "display": "20 ML baclofen 1 MG/ML Injection"}
IT_2MG_ML = {"system": RXNORM, "code": "1666613", "display": "20 ML baclofen 2 MG/ML Injection"}

MS = {"system": SNOMED, "code": "24700007", "display": "Multiple sclerosis (disorder)"}
AUD = {"system": SNOMED, "code": "7200002", "display": "Alcoholism (disorder)"}
EPILEPSY = {"system": SNOMED, "code": "84757009", "display": "Epilepsy (disorder)"}
STROKE = {"system": SNOMED, "code": "230690007", "display": "Cerebrovascular accident (disorder)"}
TBI = {"system": SNOMED, "code": "127295002", "display": "Traumatic brain injury (disorder)"}
RA = {"system": SNOMED, "code": "69896004", "display": "Rheumatoid arthritis"}

# Other medicines: RxNorm code where the vocabulary lists it, display-only (ingredient fallback) otherwise.
OXYCODONE = {"system": RXNORM, "code": "1049621", "display": "oxycodone hydrochloride 5 MG Oral Tablet"}
LORAZEPAM = {"system": RXNORM, "code": "197901", "display": "lorazepam 1 MG Oral Tablet"}
GABAPENTIN = {"system": RXNORM, "code": "310431", "display": "gabapentin 300 MG Oral Capsule"}
PREGABALIN = {"system": RXNORM, "code": "483450", "display": "pregabalin 75 MG Oral Capsule"}
TRAMADOL = {"system": RXNORM, "code": "835603", "display": "tramadol hydrochloride 50 MG Oral Tablet"}
NALTREXONE = {"display": "naltrexone hydrochloride 50 MG Oral Tablet"}
ZOLPIDEM = {"system": RXNORM, "code": "854873", "display": "zolpidem tartrate 10 MG Oral Tablet"}
PHENOBARBITAL = {"system": RXNORM, "code": "312362", "display": "phenobarbital 30 MG Oral Tablet"}
LITHIUM = {"system": RXNORM, "code": "197889", "display": "lithium carbonate 300 MG Oral Capsule"}
QUETIAPINE = {"system": RXNORM, "code": "312744", "display": "quetiapine 25 MG Oral Tablet"}
DIPHENHYDRAMINE = {
    "system": RXNORM,
    "code": "1049909",
    "display": "diphenhydramine hydrochloride 25 MG Oral Capsule",
}
AMITRIPTYLINE = {"display": "amitriptyline hydrochloride 25 MG Oral Tablet"}
TIZANIDINE = {"display": "tizanidine 4 MG Oral Tablet"}
LEVODOPA = {"display": "carbidopa 25 MG / levodopa 100 MG Oral Tablet"}
METOPROLOL = {"display": "metoprolol tartrate 50 MG Oral Tablet"}
SIMVASTATIN = {"display": "simvastatin 20 MG Oral Tablet"}
TRAZODONE = {"display": "trazodone hydrochloride 50 MG Oral Tablet"}
LOPERAMIDE = {"display": "loperamide hydrochloride 2 MG Oral Capsule"}

D_RULES = ["BAC-D01", "BAC-D02", "BAC-D03", "BAC-D04"]
C_RULES = ["BAC-C01", "BAC-C02", "BAC-C03", "BAC-C04", "BAC-C05", "BAC-C06", "BAC-C07"]


# ───────────────────────── builders ─────────────────────────


def ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def ahead(days: int) -> str:
    return (TODAY + timedelta(days=days)).isoformat()


def hours_ago(hours: float) -> str:
    moment = datetime.fromisoformat(AS_OF) - timedelta(hours=hours)
    return moment.isoformat()


def born(years: int, extra_days: int = 0) -> str:
    """Birth date of someone exactly ``years`` old today (birthday today), ``extra_days`` older."""
    return (TODAY.replace(year=TODAY.year - years) - timedelta(days=extra_days)).isoformat()


def cond(coding: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"code": dict(coding), **kw}


def text(display: str) -> dict[str, Any]:
    return {"display": display}


def med(product: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"product": dict(product), "status": "active", **kw}


def egfr(value: float, days_old: int = 10, comparator: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value, "unit": EGFR_UNIT, "date": ago(days_old), "method": "CKD-EPI 2021"}
    if comparator:
        out["comparator"] = comparator
    return out


def base(**over: Any) -> dict[str, Any]:
    """§5 defaults, without an order."""
    facts: dict[str, Any] = {
        "as_of": AS_OF,
        "patient_id": "fixture",
        "birth_date": born(45, 30),
        "sex": "female",
        "renal": {"egfr": egfr(95), "dialysis": "none"},
        "reproductive": {"pregnant": False, "lactating": False},
        "allergies": [],
        "conditions": [cond(MS)],
        "medications": [],
    }
    facts.update(over)
    return facts


def tablet(dose_mg: float) -> dict[str, Any]:
    return TAB20 if dose_mg % 20 == 0 else TAB10


def order(
    dose: float | None = None,
    per_day: float | None = None,
    *,
    action: str = "new",
    schedule: list[float] | None = None,
    product: dict[str, Any] | None = None,
    indication: dict[str, Any] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    largest = max(schedule) if schedule else (dose or 10)
    out: dict[str, Any] = {
        "id": "order-1",
        "product": dict(product or tablet(largest)),
        "form": "tablet",
        "route": "oral",
    }
    if schedule is not None:
        out["schedule"] = schedule
        out["dose_unit"] = "mg"
    elif dose is not None:
        out["dose_amount"] = dose
        out["dose_unit"] = "mg"
        if per_day is not None:
            out["doses_per_day"] = per_day
    out["indication"] = dict(indication or MS)
    out["action"] = action
    out["date"] = TODAY.isoformat()
    out.update(kw)
    return out


def new_start(dose: float | None = None, per_day: float | None = None, **kw: Any) -> dict[str, Any]:
    """Base facts with a new-start order (no baclofen history)."""
    over = {k: kw.pop(k) for k in list(kw) if k in _FACT_KEYS}
    return base(order=order(dose, per_day, **kw), **over)


_FACT_KEYS = {
    "birth_date",
    "age_years",
    "sex",
    "renal",
    "reproductive",
    "allergies",
    "conditions",
    "medications",
    "alcohol_use_current",
    "history",
    "monitoring",
    "pump",
    "encounter",
}


def ongoing(
    prev_daily: float,
    prev_single: float,
    *,
    dose: float | None = None,
    per_day: float | None = None,
    schedule: list[float] | None = None,
    action: str = "continue",
    since: int = 180,
    therapy_days: int = 365,
    assessed: int | None = 30,
    home_product: dict[str, Any] | None = None,
    order_kw: dict[str, Any] | None = None,
    **over: Any,
) -> dict[str, Any]:
    """Ongoing oral therapy at ``prev_daily`` mg/day; the order continues or modifies it.

    ``since``: days since the last dose change (= stable-dose date). ``dose``/``schedule`` default
    to the previous regimen (continue).
    """
    product = home_product or tablet(prev_single)
    home = med(
        product, id="bac-1", route="oral", form="tablet", daily_dose_mg=prev_daily, start=ago(therapy_days)
    )
    history = {
        "therapy_start": ago(therapy_days),
        "previous_daily_dose_mg": prev_daily,
        "previous_max_single_dose_mg": prev_single,
        "last_dose_change": ago(since),
        "stable_dose_since": ago(since),
    }
    facts = base(medications=[home], history=history)
    if assessed is not None:
        facts["monitoring"] = {"efficacy_assessment": ago(assessed)}
    if dose is None and schedule is None and action in ("continue", "modify"):
        dose, per_day = prev_single, prev_daily / prev_single
    okw = dict(order_kw or {})
    okw.setdefault("product", tablet(max(schedule) if schedule else (dose or prev_single)))
    facts["order"] = order(dose, per_day, action=action, schedule=schedule, replaces="bac-1", **okw)
    for key, value in over.items():
        if key == "extra_meds":
            facts["medications"] = facts["medications"] + value
        else:
            facts[key] = value
    return facts


def stop(
    prev_daily: float,
    prev_single: float,
    *,
    action: str = "discontinue",
    reason: str | None = None,
    taper: dict[str, Any] | None = None,
    therapy_days: int = 365,
    **over: Any,
) -> dict[str, Any]:
    facts = ongoing(
        prev_daily,
        prev_single,
        therapy_days=therapy_days,
        since=min(180, therapy_days),
        assessed=30 if therapy_days > 30 else None,
        **over,
    )
    o: dict[str, Any] = {
        "id": "order-1",
        "product": dict(tablet(prev_single)),
        "form": "tablet",
        "route": "oral",
        "indication": dict(MS),
        "action": action,
        "replaces": "bac-1",
        "date": TODAY.isoformat(),
    }
    if reason:
        o["reason"] = reason
    if taper:
        o["taper"] = taper
    facts["order"] = o
    return facts


def it_facts(
    dose_mcg: float = 400,
    *,
    action: str = "continue",
    refill_in: int | None = 30,
    alarm: bool | None = False,
    product: dict[str, Any] | None = None,
    order_kw: dict[str, Any] | None = None,
    **over: Any,
) -> dict[str, Any]:
    """Intrathecal baclofen via an implanted pump; the order continues (refills) it."""
    product = product or IT_1MG_ML
    facts = base(
        medications=[
            med(
                product,
                id="bac-it",
                route="intrathecal",
                form="injection",
                daily_dose_mg=dose_mcg / 1000,
                start=ago(365),
            )
        ],
        history={
            "therapy_start": ago(365),
            "previous_daily_dose_mg": dose_mcg / 1000,
            "last_dose_change": ago(180),
            "stable_dose_since": ago(180),
        },
        pump={"present": True, "alarm_active": alarm},
    )
    if refill_in is not None:
        facts["pump"]["next_refill_date"] = ahead(refill_in)
    o: dict[str, Any] = {
        "id": "order-1",
        "product": dict(product),
        "form": "injection",
        "route": "intrathecal",
        "dose_amount": dose_mcg,
        "dose_unit": "mcg",
        "doses_per_day": 1,
        "indication": dict(MS),
        "action": action,
        "replaces": "bac-it",
        "date": TODAY.isoformat(),
    }
    if action in ("discontinue", "hold"):
        for key in ("dose_amount", "dose_unit", "doses_per_day"):
            o.pop(key)
    o.update(order_kw or {})
    facts["order"] = o
    for key, value in over.items():
        facts[key] = value
    return facts


def it_new_start(dose_mcg: float, **over: Any) -> dict[str, Any]:
    facts = base(pump={"present": True, "alarm_active": False, "next_refill_date": ahead(60)})
    facts["order"] = {
        "id": "order-1",
        "product": dict(IT_2MG_ML),
        "form": "injection",
        "route": "intrathecal",
        "dose_amount": dose_mcg,
        "dose_unit": "mcg",
        "doses_per_day": 1,
        "indication": dict(MS),
        "action": "new",
        "date": TODAY.isoformat(),
    }
    for key, value in over.items():
        if key == "order_kw":
            facts["order"].update(value)
        else:
            facts[key] = value
    return facts


def with_(facts: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy with dotted-path changes: ``with_(f, **{"renal.egfr.value": 80})``."""
    out = copy.deepcopy(facts)
    for path, value in changes.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


_DELETE = object()

FIXTURES: list[dict[str, Any]] = []


def fx(
    fid: str,
    description: str,
    facts: dict[str, Any],
    fire: dict[str, str] | None = None,
    silent: list[str] | None = None,
    cannot_assess: list[str] | None = None,
    *,
    scenario: str | None = None,
    source: str | None = None,
    note: str | None = None,
) -> None:
    if scenario is None:
        scenario = fid.split("-")[0] if fid.startswith("T") else fid.rsplit("-", 1)[0]
    entry: dict[str, Any] = {
        "id": fid,
        "scenario": scenario,
        "description": description,
        "source": source or f"{SOURCE} §5 {scenario}",
    }
    if note:
        entry["note"] = note
    entry["facts"] = facts
    entry["expect"] = {
        "fire": dict(fire or {}),
        "silent": list(silent or []),
        "cannot_assess": sorted(cannot_assess or []),
    }
    FIXTURES.append(entry)


def rule_fx(
    fid: str,
    description: str,
    facts: dict[str, Any],
    fire: dict[str, str] | None = None,
    silent: list[str] | None = None,
    cannot_assess: list[str] | None = None,
    *,
    rule: str | None = None,
    note: str | None = None,
) -> None:
    rule = rule or "-".join(fid.split("-")[1:3])
    fx(
        fid,
        description,
        facts,
        fire,
        silent,
        cannot_assess,
        scenario=rule,
        source=f"{SOURCE} §4.3 {rule}",
        note=note,
    )


# ───────────────────────── §5 scenarios ─────────────────────────


def scenarios() -> None:
    # T01
    fx("T01-base", "New start 5 mg TID (15 mg/day)", new_start(5, 3), {}, ["BAC-D02", "BAC-R00", "BAC-R01"])
    fx(
        "T01-A",
        "New start 10 mg TID (variant A)",
        new_start(10, 3),
        {"BAC-D02": "warning"},
        ["BAC-R00", "BAC-R01"],
    )
    fx(
        "T01-B",
        "New start 5 mg TID, eGFR dated today - 91 d (variant B)",
        new_start(5, 3, renal={"egfr": egfr(95, 91), "dialysis": "none"}),
        {"BAC-R00": "warning"},
        ["BAC-D02", "BAC-R01"],
    )
    fx(
        "T01-C",
        "New start 5 mg TID, eGFR dated today - 90 d (variant C)",
        new_start(5, 3, renal={"egfr": egfr(95, 90), "dialysis": "none"}),
        {},
        ["BAC-R00", "BAC-D02", "BAC-R01"],
    )
    # T02
    fx(
        "T02",
        "New start 5 mg TID; problems epilepsy and schizophrenia",
        new_start(
            5,
            3,
            conditions=[
                cond(MS),
                cond(EPILEPSY),
                cond({"system": SNOMED, "code": "58214004", "display": "Schizophrenia (disorder)"}),
            ],
        ),
        {"BAC-S01": "warning", "BAC-S02": "warning"},
        ["BAC-D02", *C_RULES, "BAC-M03"],
    )
    # T03
    fx(
        "T03",
        "Ongoing 20 mg TID (60 mg/day) since today - 3 d; new order 20 mg QID (80 mg/day)",
        ongoing(60, 20, dose=20, per_day=4, action="modify", since=3),
        {},
        ["BAC-D01", "BAC-D03", "BAC-R00"],
    )
    # T04
    fx(
        "T04",
        "Ongoing 20 mg QID since today - 10 d; new order adds 5 mg at night (85 mg/day)",
        ongoing(80, 20, schedule=[20, 20, 20, 20, 5], action="modify", since=10),
        {"BAC-D01": "critical"},
        ["BAC-D01.single", "BAC-D03"],
    )
    # T05: the therapy started 2 (3) days ago at 5 mg TID; no assessment yet
    t05 = ongoing(15, 5, dose=10, per_day=3, action="modify", since=2, therapy_days=2, assessed=None)
    fx(
        "T05-base",
        "Started 5 mg TID on today - 2 d; new order 10 mg TID",
        t05,
        {"BAC-D03": "warning"},
        ["BAC-D02", "BAC-R00"],
    )
    fx(
        "T05-V",
        "Started 5 mg TID on today - 3 d; new order 10 mg TID (variant)",
        ongoing(15, 5, dose=10, per_day=3, action="modify", since=3, therapy_days=3, assessed=None),
        {},
        ["BAC-D03", "BAC-D02", "BAC-R00"],
    )
    # T06
    fx(
        "T06",
        "eGFR exactly 80; age 50; new start 5 mg TID",
        new_start(5, 3, birth_date=born(50, 30), renal={"egfr": egfr(80), "dialysis": "none"}),
        {"BAC-R01": "info"},
        ["BAC-R02", "BAC-R04", "BAC-D02"],
    )
    # T07
    t07 = dict(birth_date=born(60, 30), renal={"egfr": egfr(50), "dialysis": "none"})
    fx(
        "T07-base",
        "eGFR exactly 50; age 60; ongoing 15+20+20 mg (55 mg/day), stable 60 d",
        ongoing(55, 20, schedule=[15, 20, 20], since=60, **t07),
        {"BAC-R01": "info"},
        ["BAC-R01.moderate", "BAC-R02", "BAC-R04"],
    )
    fx(
        "T07-V",
        "eGFR exactly 50; age 60; ongoing 15+15+20 mg (50 mg/day), stable 60 d (variant)",
        ongoing(50, 20, schedule=[15, 15, 20], since=60, **t07),
        {},
        ["BAC-R01", "BAC-R02", "BAC-R04"],
    )
    # T08
    t08 = dict(birth_date=born(55, 30), renal={"egfr": egfr(30), "dialysis": "none"})
    fx(
        "T08-base",
        "eGFR exactly 30; age 55; ongoing 40 mg/day (20 mg BID)",
        ongoing(40, 20, **t08),
        {},
        ["BAC-R01", "BAC-R02"],
    )
    fx(
        "T08-V",
        "eGFR exactly 30; age 55; ongoing 45 mg/day (15 mg TID) (variant)",
        ongoing(45, 15, **t08),
        {"BAC-R01": "warning"},
        ["BAC-R02"],
    )
    # T09
    fx(
        "T09",
        "eGFR 29; age 55; new start 5 mg once daily",
        new_start(5, 1, birth_date=born(55, 30), renal={"egfr": egfr(29), "dialysis": "none"}),
        {"BAC-R02": "critical"},
        ["BAC-D02", "BAC-R01", "BAC-R03"],
    )
    # T10
    fx(
        "T10",
        "Haemodialysis (eGFR 8 recorded); new start 5 mg TID",
        new_start(5, 3, renal={"egfr": egfr(8), "dialysis": "HD"}),
        {"BAC-R03": "critical"},
        ["BAC-R02", "BAC-R00", "BAC-D02"],
    )
    # T11
    fx(
        "T11",
        "Age exactly 65; eGFR 59; new start 10 mg BID (20 mg/day)",
        new_start(10, 2, birth_date=born(65), renal={"egfr": egfr(59), "dialysis": "none"}),
        {"BAC-R04": "critical", "BAC-R01": "info", "BAC-D02": "warning"},
        ["BAC-R02"],
    )
    # T12
    fx(
        "T12-base",
        "Ongoing 60 mg/day, therapy started today - 14 d; discontinue now, no taper, reason ineffective",
        stop(60, 20, reason="ineffective", therapy_days=14),
        {"BAC-W01": "critical"},
        [],
    )
    fx(
        "T12-A",
        "As T12, therapy started today - 13 d (variant A)",
        stop(60, 20, reason="ineffective", therapy_days=13),
        {},
        ["BAC-W01"],
    )
    fx(
        "T12-B",
        "As T12, reason serious adverse reaction (marked sedation) (variant B)",
        stop(60, 20, reason="serious-adverse-reaction", therapy_days=14),
        {"BAC-W01": "warning"},
        ["BAC-W01.abrupt"],
        note="The reason is coded as the pack's exempt reason 'serious-adverse-reaction'.",
    )
    # T13
    fx(
        "T13-base",
        "Ongoing 80 mg/day for 365 d; taper to zero over 6 days",
        stop(80, 20, taper={"duration_days": 6, "steps": [60, 40, 20, 0]}),
        {"BAC-W01": "critical"},
        [],
    )
    fx(
        "T13-V",
        "Ongoing 80 mg/day for 365 d; taper to zero over 7 days (variant)",
        stop(80, 20, taper={"duration_days": 7, "steps": [60, 40, 20, 0]}),
        {},
        ["BAC-W01"],
    )
    # T14
    it_silent = [*D_RULES, "BAC-F03"]
    fx(
        "T14-base",
        "Intrathecal baclofen 400 mcg/day via pump; next refill date = today",
        it_facts(400, refill_in=0),
        {"BAC-W02": "critical"},
        it_silent,
    )
    fx(
        "T14-A",
        "Intrathecal 400 mcg/day; refill in 7 d (variant A)",
        it_facts(400, refill_in=7),
        {"BAC-W02": "warning"},
        [*it_silent, "BAC-W02.interruption"],
    )
    fx(
        "T14-B",
        "Intrathecal 400 mcg/day; refill in 8 d (variant B)",
        it_facts(400, refill_in=8),
        {},
        [*it_silent, "BAC-W02"],
    )
    # T15
    patch = order(
        8,
        1,
        product=text("baclofen 8 MG/24HR transdermal patch"),
        form="transdermal patch",
        route="transdermal",
        indication=text("neuropathic pain"),
    )
    fx(
        "T15",
        "Order baclofen transdermal patch 8 mg/24 h for neuropathic pain; simvastatin and metoprolol",
        base(order=patch, medications=[med(SIMVASTATIN, route="oral"), med(METOPROLOL, route="oral")]),
        {"BAC-F01": "critical", "BAC-I01": "info", "BAC-C05": "info"},
        D_RULES,
        note="No CYP3A4/CYP2D6 rule exists in the pack (rejected seed rule); "
        "'fire' being complete checks it.",
    )
    # T16
    fx(
        "T16",
        "Ongoing 30 mg/day; active oxycodone and lorazepam",
        ongoing(30, 10, extra_meds=[med(OXYCODONE, route="oral"), med(LORAZEPAM, route="oral")]),
        {"BAC-C01": "critical", "BAC-C02": "warning"},
        ["BAC-C03", "BAC-S03"],
    )
    # T17
    t17 = ongoing(30, 10, extra_meds=[med(GABAPENTIN, route="oral", daily_dose_mg=900)])
    t17["order"] = order(
        5,
        product=text("baclofen oral solution"),
        form="oral solution",
        dose_unit="mL",
        prn=True,
        prn_max_doses_per_day=3,
    )
    fx(
        "T17",
        "Ongoing tablets 10 mg TID; new order baclofen oral solution 5 mL PRN up to TID, no "
        "concentration; gabapentin 900 mg/day",
        t17,
        {"BAC-C03": "warning", "BAC-C07": "warning", "BAC-F03": "warning"},
        ["BAC-D01", "BAC-C01", "BAC-C02"],
    )
    # T18
    fx(
        "T18",
        "Age 40; eGFR 100; indication AUD; new start 30 mg BID (seed dose)",
        new_start(
            30, 2, indication=AUD, birth_date=born(40, 30), renal={"egfr": egfr(100), "dialysis": "none"}
        ),
        {"BAC-D02": "warning", "BAC-I01": "info"},
        ["BAC-D01", "BAC-D04"],
    )
    # T19
    fx(
        "T19-base",
        "Indication AUD; continuing 60 mg TID (180 mg/day), no change",
        ongoing(180, 60, order_kw={"indication": AUD}),
        {"BAC-D04": "warning", "BAC-I01": "info"},
        ["BAC-D04.mortality", "BAC-D01"],
    )
    fx(
        "T19-V",
        "Indication AUD; continuing 50 mg QID (200 mg/day), no change (variant)",
        ongoing(200, 50, order_kw={"indication": AUD}),
        {"BAC-D04": "critical", "BAC-I01": "info"},
        ["BAC-D01"],
    )
    # T20
    fx(
        "T20",
        "Indication AUD; ongoing 30 mg/day; active naltrexone 50 mg and tramadol",
        ongoing(
            30,
            10,
            order_kw={"indication": AUD},
            extra_meds=[med(NALTREXONE, route="oral"), med(TRAMADOL, route="oral")],
        ),
        {"BAC-C06": "critical", "BAC-C01": "warning", "BAC-I01": "info"},
        D_RULES,
    )
    # T21
    preg = {
        "pregnant": True,
        "gestational_age_weeks": 36,
        "lactating": False,
        "taper_or_neonatal_plan_documented": False,
    }
    fx(
        "T21-base",
        "Pregnant, 36 weeks; ongoing 30 mg/day; no taper/neonatal plan",
        ongoing(30, 10, reproductive=preg),
        {"BAC-P01": "critical"},
        [],
    )
    fx(
        "T21-V",
        "Pregnant, 35 weeks; ongoing 30 mg/day; no taper/neonatal plan (variant)",
        ongoing(30, 10, reproductive={**preg, "gestational_age_weeks": 35}),
        {"BAC-P01": "warning"},
        ["BAC-P01.late"],
    )
    # T22
    fx(
        "T22-base",
        "Ongoing 30 mg/day; stable since today - 42 d; last assessment today - 60 d",
        ongoing(30, 10, since=42, assessed=60),
        {"BAC-M01": "info"},
        [],
    )
    fx(
        "T22-V",
        "Ongoing 30 mg/day; stable since today - 41 d; last assessment today - 60 d (variant)",
        ongoing(30, 10, since=41, assessed=60),
        {},
        ["BAC-M01"],
    )
    # T23
    t23 = dict(birth_date=born(70, 30))
    fx(
        "T23-base",
        "Age 70; eGFR 65 dated today - 91 d; ongoing 30 mg/day",
        ongoing(30, 10, renal={"egfr": egfr(65, 91), "dialysis": "none"}, **t23),
        {"BAC-M02": "info"},
        ["BAC-R04", "BAC-R01"],
    )
    fx(
        "T23-V",
        "Age 70; eGFR 65 dated today - 90 d; ongoing 30 mg/day (variant)",
        ongoing(30, 10, renal={"egfr": egfr(65, 90), "dialysis": "none"}, **t23),
        {},
        ["BAC-M02", "BAC-R04", "BAC-R01"],
    )

    # T24
    def t24(hours: float) -> dict[str, Any]:
        return base(
            medications=[
                med(
                    TAB20,
                    id="bac-home",
                    route="oral",
                    form="tablet",
                    daily_dose_mg=60,
                    setting="home",
                    start=ago(730),
                )
            ],
            history={
                "therapy_start": ago(730),
                "previous_daily_dose_mg": 60,
                "previous_max_single_dose_mg": 20,
                "last_dose_change": ago(180),
                "stable_dose_since": ago(180),
            },
            monitoring={"efficacy_assessment": ago(30)},
            encounter={"inpatient": True, "admission_time": hours_ago(hours), "npo": True},
        )

    fx(
        "T24-base",
        "Inpatient, admitted 24 h ago, NPO; home baclofen 60 mg/day for 2 years; no inpatient order",
        t24(24),
        {"BAC-W03": "warning"},
        [],
    )
    fx("T24-V", "As T24, admitted 23 h ago (variant)", t24(23), {}, ["BAC-W03"])
    # T25
    inj = order(50, 1, product=IT_1MG_ML, form="injection", route="IV", dose_unit="mcg")
    fx(
        "T25",
        "Documented baclofen hypersensitivity; order baclofen injection 50 mcg IV",
        base(
            order=inj,
            allergies=[
                {
                    "substance": {"system": RXNORM, "code": "1292", "display": "Baclofen"},
                    "category": "medication",
                    "reaction": "hypersensitivity",
                    "verification_status": "confirmed",
                }
            ],
        ),
        {"BAC-A01": "critical", "BAC-F02": "critical"},
        D_RULES,
    )


# ───────────────────────── per-rule threshold fixtures ─────────────────────────


def rules() -> None:
    ns = new_start

    # F01
    rule_fx(
        "R-BAC-F01-fire-topical-cream",
        "Compounded baclofen 2% topical cream ordered",
        base(
            order=order(
                1,
                3,
                product=text("baclofen 2 % topical cream"),
                form="topical cream",
                route="topical",
                dose_unit="g",
            )
        ),
        {"BAC-F01": "critical"},
        D_RULES,
    )
    rule_fx(
        "R-BAC-F01-fire-capsule",
        "New start baclofen 5 mg oral capsule TID",
        ns(5, 3, product=text("baclofen 5 MG oral capsule"), form="capsule"),
        {"BAC-F01": "warning"},
        ["BAC-F01.transdermal", "BAC-D02"],
    )
    rule_fx(
        "R-BAC-F01-silent-odt",
        "New start 10 mg ODT half-tablet 5 mg TID (an approved oral form)",
        ns(5, 3, product=ODT10, form="orally disintegrating tablet"),
        {},
        ["BAC-F01"],
    )

    # F02
    rule_fx(
        "R-BAC-F02-fire-epidural",
        "Intrathecal baclofen product ordered epidural 100 mcg",
        it_new_start(100, order_kw={"route": "epidural"}),
        {"BAC-F02": "critical"},
        ["BAC-W02"],
    )
    rule_fx(
        "R-BAC-F02-fire-oral-product-intrathecal",
        "Oral tablet product ordered by the intrathecal route, 50 mcg",
        it_new_start(50, order_kw={"product": dict(TAB10), "form": "tablet"}),
        {"BAC-F02": "critical"},
        ["BAC-F03"],
    )
    rule_fx(
        "R-BAC-F02-silent-intrathecal",
        "Intrathecal product by the intrathecal route, 400 mcg/day",
        it_facts(400),
        {},
        ["BAC-F02", "BAC-W02"],
    )

    # F03
    rule_fx(
        "R-BAC-F03-fire-oral-mcg",
        "New start oral 5000 mcg TID (oral dose in mcg)",
        ns(5000, 3, dose_unit="mcg"),
        {"BAC-F03": "critical"},
        ["BAC-D02"],
    )
    rule_fx(
        "R-BAC-F03-fire-it-1mg",
        "Intrathecal dose written as 1 mg/day (amount >= 1 in mg)",
        it_facts(400, order_kw={"dose_amount": 1, "dose_unit": "mg"}),
        {"BAC-F03": "critical"},
        ["BAC-W02"],
    )
    rule_fx(
        "R-BAC-F03-silent-it-0.4mg",
        "Intrathecal dose written as 0.4 mg/day (below the 1 mg amount)",
        it_facts(400, order_kw={"dose_amount": 0.4, "dose_unit": "mg"}),
        {},
        ["BAC-F03", "BAC-W02"],
    )
    rule_fx(
        "R-BAC-F03-fire-it-1001mcg",
        "Intrathecal 1001 mcg/day (> 1000)",
        it_facts(1001),
        {"BAC-F03": "warning"},
        ["BAC-F03.unit"],
    )
    rule_fx(
        "R-BAC-F03-silent-it-1000mcg",
        "Intrathecal 1000 mcg/day (not > 1000)",
        it_facts(1000),
        {},
        ["BAC-F03"],
    )
    rule_fx(
        "R-BAC-F03-fire-liquid-no-concentration",
        "New start oral solution 5 mL TID without concentration",
        ns(5, 3, product=text("baclofen oral solution"), form="oral solution", dose_unit="mL"),
        {"BAC-F03": "warning"},
        ["BAC-D02", "BAC-D01"],
    )
    rule_fx(
        "R-BAC-F03-silent-liquid-with-concentration",
        "New start oral solution 5 mL TID at 1 mg/mL",
        ns(
            5,
            3,
            product=text("baclofen 1 MG/ML oral solution"),
            form="oral solution",
            dose_unit="mL",
            concentration_mg_per_ml=1,
        ),
        {},
        ["BAC-F03", "BAC-D02"],
    )
    two_liquids = ongoing(15, 5, home_product=text("baclofen 5 MG/ML oral suspension"))
    two_liquids["medications"][0].update(form="suspension", concentration_mg_per_ml=5)
    two_liquids["order"] = order(
        5,
        3,
        product=text("baclofen 1 MG/ML oral solution"),
        form="oral solution",
        dose_unit="mL",
        concentration_mg_per_ml=1,
    )
    rule_fx(
        "R-BAC-F03-fire-two-concentrations",
        "On 5 mg/mL suspension; new order 1 mg/mL solution (two liquid strengths on file)",
        two_liquids,
        {"BAC-F03": "warning", "BAC-C07": "warning"},
        ["BAC-F03.unit", "BAC-D02"],
    )

    # D01
    rule_fx(
        "R-BAC-D01-fire-single-25",
        "Ongoing 20 mg QID; modify to 25 mg TID (75 mg/day, single 25 > 20)",
        ongoing(80, 20, dose=25, per_day=3, action="modify"),
        {"BAC-D01": "warning"},
        ["BAC-D01.daily", "BAC-D03", "BAC-W01"],
    )
    rule_fx(
        "R-BAC-D01-silent-80-single-20",
        "Continuing 20 mg QID (80 mg/day, single 20)",
        ongoing(80, 20),
        {},
        ["BAC-D01"],
    )
    rule_fx(
        "R-BAC-D01-fire-daily-81",
        "Ongoing 20 mg QID; modify to 20+20+20+21 (81 mg/day)",
        ongoing(80, 20, schedule=[20, 20, 20, 21], action="modify"),
        {"BAC-D01": "critical"},
        ["BAC-D03"],
        note="Single dose 21 > 20 also matches the lower tier.",
    )

    # D02
    rule_fx(
        "R-BAC-D02-fire-daily-16",
        "New start 4 mg QID (16 mg/day > 15, single 4)",
        ns(4, 4),
        {"BAC-D02": "warning"},
        ["BAC-R01"],
    )
    rule_fx(
        "R-BAC-D02-fire-single-6",
        "New start 6 mg BID (12 mg/day, single 6 > 5)",
        ns(6, 2),
        {"BAC-D02": "warning"},
        [],
    )
    rule_fx("R-BAC-D02-silent-5-tid", "New start 5 mg TID (at both limits)", ns(5, 3), {}, ["BAC-D02"])
    rule_fx(
        "R-BAC-D02-fire-lookback-8d",
        "Restart 10 mg TID; last baclofen 8 days ago (new start)",
        ns(10, 3, history={"last_exposure": ago(8)}),
        {"BAC-D02": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-D02-silent-lookback-7d",
        "Restart 10 mg TID; last baclofen 7 days ago (not a new start)",
        ns(10, 3, history={"last_exposure": ago(7)}),
        {},
        ["BAC-D02", "BAC-R00"],
    )

    # D03
    rule_fx(
        "R-BAC-D03-fire-single-step-6",
        "10 mg TID -> 16 mg TID (single +6 > 5, daily +18)",
        ongoing(30, 10, dose=16, per_day=3, action="modify"),
        {"BAC-D03": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-D03-fire-daily-step-25",
        "5 mg TID -> 10 mg QID (single +5, daily +25 > 20)",
        ongoing(15, 5, dose=10, per_day=4, action="modify"),
        {"BAC-D03": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-D03-silent-steps-at-limit",
        "10 mg QID -> 15 mg QID (single +5, daily +20, 180 d)",
        ongoing(40, 10, dose=15, per_day=4, action="modify"),
        {},
        ["BAC-D03"],
    )

    # D04
    rule_fx(
        "R-BAC-D04-fire-warning-90",
        "AUD, continuing 30 mg TID (90 mg/day > 80)",
        ongoing(90, 30, order_kw={"indication": AUD}),
        {"BAC-D04": "warning", "BAC-I01": "info"},
        ["BAC-D01", "BAC-D04.mortality"],
    )
    rule_fx(
        "R-BAC-D04-silent-80",
        "AUD, continuing 20 mg QID (80 mg/day)",
        ongoing(80, 20, order_kw={"indication": AUD}),
        {"BAC-I01": "info"},
        ["BAC-D04", "BAC-D01"],
    )
    rule_fx(
        "R-BAC-D04-fire-critical-181",
        "AUD, continuing 60+60+61 mg (181 mg/day > 180)",
        ongoing(181, 61, schedule=[60, 60, 61], order_kw={"indication": AUD}),
        {"BAC-D04": "critical", "BAC-I01": "info"},
        ["BAC-D01"],
    )

    # I01
    rule_fx(
        "R-BAC-I01-fire-rheumatic",
        "New start 5 mg TID for rheumatoid arthritis muscle spasm",
        ns(5, 3, indication=RA, conditions=[cond(RA)]),
        {"BAC-I01": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-I01-fire-stroke-oral",
        "New start 5 mg TID for post-stroke spasticity (US: not established)",
        ns(5, 3, indication=STROKE, conditions=[cond(STROKE)]),
        {"BAC-I01": "info", "BAC-S04": "info"},
        ["BAC-I01.rheumatic"],
    )
    rule_fx(
        "R-BAC-I01-fire-offlabel-hiccups",
        "New start 5 mg TID for intractable hiccups",
        ns(5, 3, indication=text("Intractable hiccups")),
        {"BAC-I01": "info"},
        [],
    )
    tbi_cond = [cond(TBI, onset=ago(364))]
    rule_fx(
        "R-BAC-I01-fire-it-tbi-364d",
        "Intrathecal start for TBI spasticity, injury 364 days ago",
        it_new_start(100, conditions=tbi_cond, order_kw={"indication": dict(TBI)}),
        {"BAC-I01": "warning"},
        ["BAC-F02"],
    )
    rule_fx(
        "R-BAC-I01-silent-it-tbi-365d",
        "Intrathecal start for TBI spasticity, injury 365 days ago",
        it_new_start(100, conditions=[cond(TBI, onset=ago(365))], order_kw={"indication": dict(TBI)}),
        {},
        ["BAC-I01"],
    )
    rule_fx(
        "R-BAC-I01-silent-ms", "New start 5 mg TID for MS spasticity (labeled)", ns(5, 3), {}, ["BAC-I01"]
    )

    # I02
    rule_fx(
        "R-BAC-I02-fire-age11",
        "Oral new start 5 mg TID, age 11 (12th birthday tomorrow)",
        ns(5, 3, birth_date=born(12, -1)),
        {"BAC-I02": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-I02-silent-age12",
        "Oral new start 5 mg TID, age 12 today",
        ns(5, 3, birth_date=born(12)),
        {},
        ["BAC-I02"],
    )
    rule_fx(
        "R-BAC-I02-fire-it-age3",
        "Intrathecal start 50 mcg/day, age 3 (4th birthday tomorrow)",
        it_new_start(50, birth_date=born(4, -1)),
        {"BAC-I02": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-I02-silent-it-age4",
        "Intrathecal start 50 mcg/day, age 4 today",
        it_new_start(50, birth_date=born(4)),
        {},
        ["BAC-I02"],
    )

    # R00
    rule_fx(
        "R-BAC-R00-fire-increase-egfr-91d",
        "Increase 10 -> 15 mg TID; eGFR 91 days old",
        ongoing(
            30, 10, dose=15, per_day=3, action="modify", renal={"egfr": egfr(95, 91), "dialysis": "none"}
        ),
        {"BAC-R00": "warning"},
        ["BAC-D03", "BAC-M02"],
    )
    rule_fx(
        "R-BAC-R00-silent-increase-egfr-90d",
        "Increase 10 -> 15 mg TID; eGFR 90 days old",
        ongoing(
            30, 10, dose=15, per_day=3, action="modify", renal={"egfr": egfr(95, 90), "dialysis": "none"}
        ),
        {},
        ["BAC-R00"],
    )
    rule_fx(
        "R-BAC-R00-silent-continue-egfr-200d",
        "Dose unchanged; eGFR 200 days old (no start, no increase)",
        ongoing(30, 10, renal={"egfr": egfr(95, 200), "dialysis": "none"}),
        {},
        ["BAC-R00", "BAC-M02"],
    )

    # R01
    def renal(value: float, days: int = 10) -> dict[str, Any]:
        return {"egfr": egfr(value, days), "dialysis": "none"}

    rule_fx(
        "R-BAC-R01-silent-mild-start-10",
        "eGFR 80; new start 5 mg BID (10 mg/day, not > 10)",
        ns(5, 2, renal=renal(80)),
        {},
        ["BAC-R01"],
    )
    rule_fx(
        "R-BAC-R01-silent-egfr81-start-15",
        "eGFR 81 (band N); new start 5 mg TID",
        ns(5, 3, renal=renal(81)),
        {},
        ["BAC-R01"],
    )
    rule_fx(
        "R-BAC-R01-fire-moderate-start-10",
        "eGFR 49; new start 5 mg BID (10 > 7.5)",
        ns(5, 2, renal=renal(49)),
        {"BAC-R01": "warning"},
        ["BAC-R02"],
    )
    rule_fx(
        "R-BAC-R01-silent-moderate-start-7.5",
        "eGFR 49; new start 2.5 mg TID (7.5, not > 7.5)",
        ns(2.5, 3, renal=renal(49)),
        {},
        ["BAC-R01"],
    )
    rule_fx(
        "R-BAC-R01-fire-mild-ongoing-55",
        "eGFR 65; ongoing 15+20+20 mg (55 > 53.3)",
        ongoing(55, 20, schedule=[15, 20, 20], renal=renal(65)),
        {"BAC-R01": "info"},
        ["BAC-R01.moderate"],
    )

    # R02
    rule_fx(
        "R-BAC-R02-fire-warning-ongoing-26.7",
        "eGFR 25; ongoing 10+10+6.7 mg (26.7 mg/day, at the cap)",
        ongoing(26.7, 10, schedule=[10, 10, 6.7], renal=renal(25)),
        {"BAC-R02": "warning"},
        ["BAC-R02.avoid", "BAC-R01"],
    )
    rule_fx(
        "R-BAC-R02-fire-critical-ongoing-27",
        "eGFR 25; ongoing 10+10+7 mg (27 > 26.7)",
        ongoing(27, 10, schedule=[10, 10, 7], renal=renal(25)),
        {"BAC-R02": "critical"},
        ["BAC-R03"],
    )
    rule_fx(
        "R-BAC-R02-silent-egfr30-ongoing-20",
        "eGFR 30; ongoing 10 mg BID",
        ongoing(20, 10, renal=renal(30)),
        {},
        ["BAC-R02", "BAC-R01"],
    )

    # R03
    rule_fx(
        "R-BAC-R03-fire-warning-pd-5mg",
        "Peritoneal dialysis; ongoing 5 mg once daily (not > 5)",
        ongoing(5, 5, renal={"egfr": egfr(7), "dialysis": "PD"}),
        {"BAC-R03": "warning"},
        ["BAC-R03.avoid", "BAC-R02", "BAC-M02"],
    )
    rule_fx(
        "R-BAC-R03-fire-critical-hd-10mg",
        "Haemodialysis; ongoing 5 mg BID (10 > 5)",
        ongoing(10, 5, renal={"egfr": egfr(7), "dialysis": "HD"}),
        {"BAC-R03": "critical"},
        ["BAC-R02"],
    )
    rule_fx(
        "R-BAC-R03-fire-procedure-30d",
        "eGFR 12, dialysis procedure 30 days ago; ongoing 5 mg once daily",
        ongoing(5, 5, renal={"egfr": egfr(12), "dialysis": "none", "last_dialysis_procedure": ago(30)}),
        {"BAC-R03": "warning"},
        ["BAC-R02"],
    )
    rule_fx(
        "R-BAC-R03-silent-procedure-31d",
        "eGFR 12, dialysis procedure 31 days ago; ongoing 5 mg once daily",
        ongoing(5, 5, renal={"egfr": egfr(12), "dialysis": "none", "last_dialysis_procedure": ago(31)}),
        {"BAC-R02": "warning"},
        ["BAC-R03"],
    )
    rule_fx(
        "R-BAC-R03-silent-esrd-not-dialysed",
        "ESRD on the problem list, not on dialysis, eGFR 12; ongoing 5 mg",
        ongoing(
            5,
            5,
            renal=renal(12),
            conditions=[
                cond(MS),
                cond({"system": SNOMED, "code": "46177005", "display": "End-stage renal disease (disorder)"}),
            ],
        ),
        {"BAC-R02": "warning"},
        ["BAC-R03"],
    )

    # R04
    rule_fx(
        "R-BAC-R04-fire-warning-ongoing",
        "Age 65, eGFR 59; ongoing 30 mg/day",
        ongoing(30, 10, birth_date=born(65), renal=renal(59)),
        {"BAC-R04": "warning"},
        ["BAC-R04.high_start", "BAC-R01"],
    )
    rule_fx(
        "R-BAC-R04-fire-warning-start-15",
        "Age 65, eGFR 59; new start 5 mg TID (15 < 20 mg/day)",
        ns(5, 3, birth_date=born(65), renal=renal(59)),
        {"BAC-R04": "warning", "BAC-R01": "info"},
        ["BAC-R04.high_start"],
    )
    rule_fx(
        "R-BAC-R04-silent-age64",
        "Age 64 (65th birthday tomorrow), eGFR 59; ongoing 30 mg/day",
        ongoing(30, 10, birth_date=born(65, -1), renal=renal(59)),
        {},
        ["BAC-R04"],
    )
    rule_fx(
        "R-BAC-R04-silent-egfr60",
        "Age 70, eGFR 60; ongoing 30 mg/day",
        ongoing(30, 10, birth_date=born(70), renal=renal(60)),
        {},
        ["BAC-R04"],
    )

    # W01
    rule_fx(
        "R-BAC-W01-fire-reduction-67pct",
        "On 60 mg/day for 365 d; modify to 20 mg/day, no taper (-67%)",
        ongoing(60, 20, dose=10, per_day=2, action="modify"),
        {"BAC-W01": "warning"},
        ["BAC-W01.abrupt"],
    )
    rule_fx(
        "R-BAC-W01-silent-reduction-50pct",
        "On 60 mg/day for 365 d; modify to 30 mg/day, no taper (-50%)",
        ongoing(60, 20, dose=10, per_day=3, action="modify"),
        {},
        ["BAC-W01"],
    )
    rule_fx(
        "R-BAC-W01-fire-hold-no-taper",
        "On 60 mg/day for 365 d; hold, no taper, no reason",
        stop(60, 20, action="hold"),
        {"BAC-W01": "critical"},
        [],
    )
    rule_fx(
        "R-BAC-W01-fire-taper-end-date-6d",
        "On 80 mg/day; discontinue with taper ending in 6 days",
        stop(80, 20, reason="ineffective", taper={"end_date": ahead(6)}),
        {"BAC-W01": "critical"},
        [],
    )
    rule_fx(
        "R-BAC-W01-silent-taper-14d",
        "On 80 mg/day; discontinue with a 14-day taper",
        stop(80, 20, reason="ineffective", taper={"duration_days": 14, "steps": [60, 40, 20, 10, 0]}),
        {},
        ["BAC-W01"],
    )

    # W02
    rule_fx(
        "R-BAC-W02-fire-alarm",
        "Intrathecal 400 mcg/day; pump alarm active; refill in 30 d",
        it_facts(400, alarm=True),
        {"BAC-W02": "critical"},
        [],
    )
    rule_fx(
        "R-BAC-W02-fire-hold-it",
        "Intrathecal therapy: order to hold intrathecal baclofen",
        it_facts(400, action="hold"),
        {"BAC-W02": "critical"},
        ["BAC-W01"],
    )
    rule_fx(
        "R-BAC-W02-fire-overdue-refill",
        "Intrathecal 400 mcg/day; refill date passed 2 days ago",
        it_facts(400, refill_in=-2),
        {"BAC-W02": "critical"},
        [],
    )
    batch_it = it_facts(400, refill_in=0)
    del batch_it["order"]
    rule_fx(
        "R-BAC-W02-fire-no-order-refill-today",
        "Batch screen (no order): intrathecal 400 mcg/day, refill due today",
        batch_it,
        {"BAC-W02": "critical"},
        ["BAC-F03"],
    )
    rule_fx(
        "R-BAC-W02-silent-refill-30d",
        "Intrathecal 400 mcg/day; refill in 30 d, no alarm",
        it_facts(400, refill_in=30),
        {},
        ["BAC-W02"],
    )

    # W03
    def inpatient(
        hours_admitted: float,
        therapy_days: int = 730,
        last_dose_h: float | None = None,
        inpatient_order: bool = False,
    ) -> dict[str, Any]:
        meds = [
            med(
                TAB20,
                id="bac-home",
                route="oral",
                form="tablet",
                daily_dose_mg=60,
                setting="home",
                start=ago(therapy_days),
            )
        ]
        if inpatient_order:
            meds.append(
                med(
                    TAB20,
                    id="bac-inp",
                    route="oral",
                    form="tablet",
                    daily_dose_mg=60,
                    setting="inpatient",
                    start=TODAY.isoformat(),
                )
            )
        history: dict[str, Any] = {
            "therapy_start": ago(therapy_days),
            "previous_daily_dose_mg": 60,
            "previous_max_single_dose_mg": 20,
        }
        if last_dose_h is not None:
            history["last_dose_time"] = hours_ago(last_dose_h)
        return base(
            medications=meds,
            history=history,
            encounter={"inpatient": True, "admission_time": hours_ago(hours_admitted), "npo": False},
        )

    rule_fx(
        "R-BAC-W03-fire-last-dose-24h",
        "Inpatient 12 h; home baclofen, last dose 24 h ago; no inpatient order",
        inpatient(12, last_dose_h=24),
        {"BAC-W03": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-W03-silent-last-dose-23h",
        "Inpatient 30 h; home baclofen, last dose 23 h ago (given on the ward)",
        inpatient(30, last_dose_h=23),
        {},
        ["BAC-W03"],
    )
    rule_fx(
        "R-BAC-W03-silent-therapy-13d",
        "Inpatient 48 h; home baclofen started 13 days ago",
        inpatient(48, therapy_days=13),
        {},
        ["BAC-W03"],
    )
    rule_fx(
        "R-BAC-W03-fire-therapy-14d",
        "Inpatient 48 h; home baclofen started 14 days ago",
        inpatient(48, therapy_days=14),
        {"BAC-W03": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-W03-silent-inpatient-order",
        "Inpatient 48 h; home baclofen continued as an inpatient order",
        inpatient(48, inpatient_order=True),
        {},
        ["BAC-W03", "BAC-C07"],
        note="Medication reconciliation, not duplicate therapy: the home-list entry is what the inpatient "
        "order continues (BAC-C07 counts active orders, §4.3).",
    )

    # C01
    rule_fx(
        "R-BAC-C01-fire-warning-opioid",
        "Ongoing 30 mg/day; oxycodone (display only: ingredient fallback)",
        ongoing(30, 10, extra_meds=[med(text("oxycodone 5 mg tablet"), route="oral")]),
        {"BAC-C01": "warning"},
        ["BAC-C01.triple", "BAC-C02", "BAC-C03"],
    )
    rule_fx(
        "R-BAC-C01-fire-critical-respiratory",
        "Ongoing 30 mg/day; oxycodone; COPD",
        ongoing(
            30,
            10,
            extra_meds=[med(OXYCODONE, route="oral")],
            conditions=[
                cond(MS),
                cond(
                    {
                        "system": SNOMED,
                        "code": "13645005",
                        "display": "Chronic obstructive lung disease (disorder)",
                    }
                ),
            ],
        ),
        {"BAC-C01": "critical", "BAC-S03": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-C01-fire-critical-gabapentinoid",
        "Ongoing 30 mg/day; oxycodone and pregabalin",
        ongoing(30, 10, extra_meds=[med(OXYCODONE, route="oral"), med(PREGABALIN, route="oral")]),
        {"BAC-C01": "critical", "BAC-C03": "warning"},
        ["BAC-C02"],
    )
    partner = base(
        medications=[med(TAB10, id="bac-1", route="oral", form="tablet", daily_dose_mg=30, start=ago(365))],
        history={"therapy_start": ago(365), "previous_daily_dose_mg": 30, "previous_max_single_dose_mg": 10},
        order={
            "id": "order-1",
            "product": dict(OXYCODONE),
            "form": "tablet",
            "route": "oral",
            "dose_amount": 5,
            "dose_unit": "mg",
            "doses_per_day": 4,
            "action": "new",
            "date": TODAY.isoformat(),
        },
    )
    rule_fx(
        "R-BAC-C01-fire-partner-order",
        "On baclofen 30 mg/day; new order oxycodone 5 mg QID",
        partner,
        {"BAC-C01": "warning"},
        ["BAC-D02", "BAC-C07"],
        note="Pack triggered by a partner-class order while baclofen is active.",
    )
    rule_fx(
        "R-BAC-C01-silent-loperamide",
        "Ongoing 30 mg/day; loperamide (not an opioid agonist class member)",
        ongoing(30, 10, extra_meds=[med(LOPERAMIDE, route="oral")]),
        {},
        ["BAC-C01"],
    )

    # C02
    rule_fx(
        "R-BAC-C02-fire-zolpidem",
        "Ongoing 30 mg/day; zolpidem",
        ongoing(30, 10, extra_meds=[med(ZOLPIDEM)]),
        {"BAC-C02": "warning"},
        ["BAC-C01"],
    )
    rule_fx(
        "R-BAC-C02-fire-phenobarbital",
        "Ongoing 30 mg/day; phenobarbital",
        ongoing(30, 10, extra_meds=[med(PHENOBARBITAL)]),
        {"BAC-C02": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-C02-silent-lorazepam-stopped",
        "Ongoing 30 mg/day; lorazepam stopped",
        ongoing(30, 10, extra_meds=[med(LORAZEPAM, status="stopped")]),
        {},
        ["BAC-C02"],
    )

    # C03
    rule_fx(
        "R-BAC-C03-fire-pregabalin",
        "Ongoing 30 mg/day; pregabalin",
        ongoing(30, 10, extra_meds=[med(PREGABALIN)]),
        {"BAC-C03": "warning"},
        ["BAC-C01"],
    )
    rule_fx(
        "R-BAC-C03-silent-gabapentin-stopped",
        "Ongoing 30 mg/day; gabapentin stopped",
        ongoing(30, 10, extra_meds=[med(GABAPENTIN, status="stopped")]),
        {},
        ["BAC-C03"],
    )

    # C04
    rule_fx(
        "R-BAC-C04-fire-info-tca",
        "Ongoing 30 mg/day; amitriptyline",
        ongoing(30, 10, extra_meds=[med(AMITRIPTYLINE)]),
        {"BAC-C04": "info"},
        ["BAC-C04.several"],
    )
    rule_fx(
        "R-BAC-C04-fire-warning-tca-tizanidine",
        "Ongoing 30 mg/day; amitriptyline and tizanidine",
        ongoing(30, 10, extra_meds=[med(AMITRIPTYLINE), med(TIZANIDINE)]),
        {"BAC-C04": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-C04-fire-info-alcohol",
        "Ongoing 30 mg/day; current alcohol use",
        ongoing(30, 10, alcohol_use_current=True),
        {"BAC-C04": "info"},
        ["BAC-C04.several"],
    )
    rule_fx(
        "R-BAC-C04-fire-warning-antipsychotic-alcohol",
        "Ongoing 30 mg/day; quetiapine and current alcohol use",
        ongoing(30, 10, alcohol_use_current=True, extra_meds=[med(QUETIAPINE)]),
        {"BAC-C04": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-C04-fire-info-antihistamine",
        "Ongoing 30 mg/day; diphenhydramine",
        ongoing(30, 10, alcohol_use_current=False, extra_meds=[med(DIPHENHYDRAMINE)]),
        {"BAC-C04": "info"},
        [],
    )
    rule_fx(
        "R-BAC-C04-silent-none",
        "Ongoing 30 mg/day; no CNS depressant, no alcohol; trazodone (no class)",
        ongoing(30, 10, alcohol_use_current=False, extra_meds=[med(TRAZODONE)]),
        {},
        ["BAC-C04"],
    )

    # issue #16: what the vocabulary means changes when these rules fire
    icd10 = "http://hl7.org/fhir/sid/icd-10-cm"
    rule_fx(
        "R-BAC-C04-fire-info-oxybate",
        "Ongoing 30 mg/day; sodium oxybate (strong_cns_depressant class, sign-off pending)",
        ongoing(
            30,
            10,
            alcohol_use_current=False,
            extra_meds=[
                med({"system": RXNORM, "code": "349482", "display": "sodium oxybate 500 MG/ML Oral Solution"})
            ],
        ),
        {"BAC-C04": "info"},
        ["BAC-C04.several"],
    )
    rule_fx(
        "R-BAC-C04-fire-info-brand-xyrem-text",
        "Ongoing 30 mg/day; home medication written as the brand 'Xyrem 4.5 g at bedtime' (no code)",
        ongoing(30, 10, alcohol_use_current=False, extra_meds=[med(text("Xyrem 4.5 g at bedtime"))]),
        {"BAC-C04": "info"},
        ["BAC-C04.several"],
    )
    rule_fx(
        "R-BAC-C02-fire-brand-xanax-text",
        "Ongoing 30 mg/day; home medication written as the brand 'Xanax 0.5 mg' (no code)",
        ongoing(30, 10, extra_meds=[med(text("Xanax 0.5 mg tablet"))]),
        {"BAC-C02": "warning"},
        ["BAC-C01"],
    )
    rule_fx(
        "R-BAC-C02-silent-lamotrigine-kit",
        "Ongoing 30 mg/day; lamotrigine kit named 'for patients not taking ... phenobarbital'",
        ongoing(
            30,
            10,
            extra_meds=[
                med(
                    {
                        "system": RXNORM,
                        "code": "795774",
                        "display": "{7 (lamotrigine 100 MG Oral Tablet [Lamictal]) / 42 (lamotrigine 25 MG "
                        "Oral Tablet [Lamictal]) } Pack [Lamictal Orange (For Patients Not Taking "
                        "Carbamazepine, Phenytoin, Phenobarbital, Primidone, or Rifampin)]",
                    }
                )
            ],
        ),
        {},
        ["BAC-C02", "BAC-C01"],
    )
    rule_fx(
        "R-BAC-C04-silent-topical-diphenhydramine-text",
        "Ongoing 30 mg/day; 'diphenhydramine 2% topical cream' (local-only form, no code)",
        ongoing(
            30, 10, alcohol_use_current=False, extra_meds=[med(text("diphenhydramine 2% topical cream"))]
        ),
        {},
        ["BAC-C04"],
    )
    rule_fx(
        "R-BAC-S01-fire-epilepsy-negated-status",
        "New start 5 mg TID; 'Epilepsy; no history of status epilepticus' (negation reaches only its clause)",
        ns(5, 3, conditions=[cond(MS), cond(text("Epilepsy; no history of status epilepticus"))]),
        {"BAC-S01": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-S01-silent-provoked-seizure",
        "New start 5 mg TID; seizure due to drug withdrawal (provoked, not epilepsy)",
        ns(
            5,
            3,
            conditions=[
                cond(MS),
                cond(
                    {
                        "system": SNOMED,
                        "code": "735235000",
                        "display": "Seizure co-occurrent and due to drug withdrawal (disorder)",
                    }
                ),
            ],
        ),
        {},
        ["BAC-S01"],
    )
    rule_fx(
        "R-BAC-S02-silent-without-psychotic-features",
        "New start 5 mg TID; 'Major depressive disorder, single episode, severe without psychotic features'",
        ns(
            5,
            3,
            conditions=[
                cond(MS),
                cond(text("Major depressive disorder, single episode, severe without psychotic features")),
            ],
        ),
        {},
        ["BAC-S02"],
    )
    rule_fx(
        "R-BAC-S02-silent-no-history-suicidal",
        "New start 5 mg TID; 'No history of suicidal ideation'",
        ns(5, 3, conditions=[cond(MS), cond(text("No history of suicidal ideation"))]),
        {},
        ["BAC-S02"],
    )
    rule_fx(
        "R-BAC-S02-fire-warning-schizophrenia-display",
        "New start 5 mg TID; schizophrenia SNOMED 58214004 with display 'Schizophrenia' (the code is a known "
        "gap until the VSAC set is in shared/: the term fallback decides)",
        ns(
            5,
            3,
            conditions=[cond(MS), cond({"system": SNOMED, "code": "58214004", "display": "Schizophrenia"})],
        ),
        {"BAC-S02": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-S03-silent-high-altitude-breathing",
        "New start 5 mg TID; G47.32 high altitude periodic breathing (not respiratory impairment)",
        ns(
            5,
            3,
            conditions=[
                cond(MS),
                cond({"system": icd10, "code": "G47.32", "display": "High altitude periodic breathing"}),
            ],
        ),
        {},
        ["BAC-S03"],
    )
    rule_fx(
        "R-BAC-S04-fire-info-ulcer-history-z8711",
        "New start 5 mg TID; active problem-list entry Z87.11 'Personal history of peptic ulcer disease'",
        ns(
            5,
            3,
            conditions=[
                cond(MS),
                cond(
                    {"system": icd10, "code": "Z87.11", "display": "Personal history of peptic ulcer disease"}
                ),
            ],
        ),
        {"BAC-S04": "info"},
        ["BAC-S04.ulcer"],
    )
    rule_fx(
        "R-BAC-S04-fire-info-haemorrhagic-stroke-display",
        "MS spasticity, new start 5 mg TID; I61.9 with display 'Intracerebral haemorrhage' (the code is a "
        "known gap until the VSAC set is in shared/: the term fallback decides)",
        ns(
            5,
            3,
            conditions=[
                cond(MS),
                cond({"system": icd10, "code": "I61.9", "display": "Intracerebral haemorrhage"}),
            ],
        ),
        {"BAC-S04": "info"},
        ["BAC-I01"],
    )
    rule_fx(
        "R-BAC-S04-silent-heat-stroke",
        "New start 5 mg TID; 'Heat stroke' (not a stroke)",
        ns(5, 3, conditions=[cond(MS), cond(text("Heat stroke"))]),
        {},
        ["BAC-S04"],
    )

    # C05
    rule_fx(
        "R-BAC-C05-fire-levodopa",
        "Ongoing 30 mg/day; carbidopa/levodopa",
        ongoing(30, 10, extra_meds=[med(LEVODOPA)]),
        {"BAC-C05": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-C05-fire-lithium",
        "Ongoing 30 mg/day; lithium and metoprolol",
        ongoing(30, 10, extra_meds=[med(LITHIUM), med(METOPROLOL)]),
        {"BAC-C05": "warning"},
        ["BAC-C05.bp"],
    )
    rule_fx(
        "R-BAC-C05-fire-info-antihypertensive",
        "Ongoing 30 mg/day; metoprolol",
        ongoing(30, 10, extra_meds=[med(METOPROLOL)]),
        {"BAC-C05": "info"},
        ["BAC-C05.neuro"],
    )
    rule_fx(
        "R-BAC-C05-silent-simvastatin",
        "Ongoing 30 mg/day; simvastatin only",
        ongoing(30, 10, extra_meds=[med(SIMVASTATIN)]),
        {},
        ["BAC-C05"],
    )

    # C06
    rule_fx(
        "R-BAC-C06-fire-naltrexone-oxycodone",
        "Ongoing 30 mg/day; naltrexone and oxycodone",
        ongoing(30, 10, extra_meds=[med(NALTREXONE), med(OXYCODONE)]),
        {"BAC-C06": "critical", "BAC-C01": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-C06-silent-naltrexone-only",
        "Ongoing 30 mg/day; naltrexone injection only",
        ongoing(
            30,
            10,
            extra_meds=[med({"system": RXNORM, "code": "637213", "display": "naltrexone 380 MG Injection"})],
        ),
        {},
        ["BAC-C06", "BAC-C01"],
    )

    # C07
    oral_it = ongoing(30, 10)
    oral_it["medications"].append(
        med(IT_1MG_ML, id="bac-it", route="intrathecal", form="injection", daily_dose_mg=0.2, start=ago(10))
    )
    oral_it["pump"] = {"present": True, "alarm_active": False, "next_refill_date": ahead(60)}
    rule_fx(
        "R-BAC-C07-fire-info-oral-plus-it",
        "Oral 10 mg TID continued while on intrathecal 200 mcg/day",
        oral_it,
        {"BAC-C07": "info"},
        ["BAC-C07.oral", "BAC-W02"],
    )
    no_replaces = ongoing(30, 10, dose=15, per_day=3, action="modify")
    no_replaces["order"].pop("replaces")
    rule_fx(
        "R-BAC-C07-silent-modify-replaces",
        "Ongoing tablets; modify order (no replaces id) replaces them",
        no_replaces,
        {},
        ["BAC-C07"],
    )
    rule_fx(
        "R-BAC-C07-fire-two-tablet-orders",
        "Ongoing 10 mg TID; a second new tablet order 5 mg TID",
        with_(
            ongoing(30, 10),
            **{
                "order.action": "new",
                "order.replaces": _DELETE,
                "order.dose_amount": 5,
                "order.doses_per_day": 3,
            },
        ),
        {"BAC-C07": "warning"},
        ["BAC-D02"],
    )

    # S01
    rule_fx(
        "R-BAC-S01-fire-seizure-disorder",
        "New start 5 mg TID; seizure disorder",
        ns(
            5,
            3,
            conditions=[
                cond(MS),
                cond({"system": SNOMED, "code": "128613002", "display": "Seizure disorder (disorder)"}),
            ],
        ),
        {"BAC-S01": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-S01-silent-epilepsy-resolved",
        "New start 5 mg TID; epilepsy resolved",
        ns(5, 3, conditions=[cond(MS), cond(EPILEPSY, clinical_status="resolved")]),
        {},
        ["BAC-S01"],
    )
    rule_fx(
        "R-BAC-S01-silent-epilepsy-refuted",
        "New start 5 mg TID; epilepsy refuted",
        ns(5, 3, conditions=[cond(MS), cond(EPILEPSY, verification_status="refuted")]),
        {},
        ["BAC-S01"],
    )

    # S02
    rule_fx(
        "R-BAC-S02-fire-warning-delirium",
        "New start 5 mg TID; delirium",
        ns(5, 3, conditions=[cond(MS), cond(text("Delirium"))]),
        {"BAC-S02": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-S02-fire-info-suicidal",
        "New start 5 mg TID; depression with suicidal ideation",
        ns(5, 3, conditions=[cond(MS), cond(text("Major depressive disorder with suicidal ideation"))]),
        {"BAC-S02": "info"},
        ["BAC-S02.psychosis"],
    )
    rule_fx(
        "R-BAC-S02-fire-info-aud-problem",
        "AUD new start 5 mg TID; alcoholism on the problem list",
        ns(5, 3, indication=AUD, conditions=[cond(AUD)]),
        {"BAC-S02": "info", "BAC-I01": "info"},
        [],
        note="Alcoholism is in the substance_use_disorder condition group.",
    )
    rule_fx(
        "R-BAC-S02-silent-depression",
        "New start 5 mg TID; major depression without suicidality",
        ns(5, 3, conditions=[cond(MS), cond(text("Major depressive disorder"))]),
        {},
        ["BAC-S02"],
    )

    # S03
    rule_fx(
        "R-BAC-S03-fire-osa",
        "New start 5 mg TID; obstructive sleep apnoea",
        ns(
            5,
            3,
            conditions=[
                cond(MS),
                cond(
                    {
                        "system": SNOMED,
                        "code": "1101000119103",
                        "display": "Obstructive sleep apnea of adult (disorder)",
                    }
                ),
            ],
        ),
        {"BAC-S03": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-S03-silent-asthma",
        "New start 5 mg TID; asthma (not in the respiratory-impairment group)",
        ns(
            5,
            3,
            conditions=[
                cond(MS),
                cond({"system": SNOMED, "code": "195967001", "display": "Asthma (disorder)"}),
            ],
        ),
        {},
        ["BAC-S03"],
    )

    # S04
    rule_fx(
        "R-BAC-S04-fire-warning-active-ulcer",
        "New start 5 mg TID; active gastric ulcer",
        ns(5, 3, conditions=[cond(MS), cond(text("Gastric ulcer"))]),
        {"BAC-S04": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-S04-fire-info-ulcer-history",
        "New start 5 mg TID; peptic ulcer resolved (history)",
        ns(5, 3, conditions=[cond(MS), cond(text("Peptic ulcer"), clinical_status="resolved")]),
        {"BAC-S04": "info"},
        ["BAC-S04.ulcer"],
    )
    rule_fx(
        "R-BAC-S04-fire-info-urinary-retention",
        "New start 5 mg TID; urinary retention",
        ns(5, 3, conditions=[cond(MS), cond(text("Urinary retention"))]),
        {"BAC-S04": "info"},
        [],
    )
    rule_fx(
        "R-BAC-S04-fire-info-dysreflexia",
        "Intrathecal start; autonomic dysreflexia (any route)",
        it_new_start(100, conditions=[cond(MS), cond(text("Autonomic dysreflexia"))]),
        {"BAC-S04": "info"},
        [],
    )
    # S04: spinal cord injury at T6 or above (knowledge file §4.3), coded only (issue #17 item 5)
    rule_fx(
        "R-BAC-S04-fire-info-sci-c5-c7-icd10",
        "New start 5 mg TID; 'Quadriplegia, C5-C7 complete' (ICD-10-CM G82.53) as a bare code",
        ns(
            5,
            3,
            conditions=[cond(MS), cond({"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G82.53"})],
        ),
        {"BAC-S04": "info"},
        [],
    )
    rule_fx(
        "R-BAC-S04-fire-info-sci-c1-c4-snomed",
        "New start 5 mg TID; SNOMED 441705005 complete quadriplegia, cord lesion C1-C4, as a bare code",
        ns(5, 3, conditions=[cond(MS), cond({"system": SNOMED, "code": "441705005"})]),
        {"BAC-S04": "info"},
        [],
    )
    rule_fx(
        "R-BAC-S04-silent-quadriplegia-unspecified",
        "New start 5 mg TID; 'Quadriplegia, unspecified' (G82.50): level and cause unknown, not SCI >= T6",
        ns(
            5,
            3,
            conditions=[cond(MS), cond({"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G82.50"})],
        ),
        {},
        ["BAC-S04"],
    )
    rule_fx(
        "R-BAC-S04-fire-info-stroke-oral",
        "MS spasticity, new start 5 mg TID; stroke history on problem list",
        ns(5, 3, conditions=[cond(MS), cond(STROKE)]),
        {"BAC-S04": "info"},
        ["BAC-I01"],
    )
    rule_fx(
        "R-BAC-S04-silent-stroke-intrathecal",
        "Intrathecal start; stroke on the problem list (oral-only caution)",
        it_new_start(100, conditions=[cond(MS), cond(STROKE)]),
        {},
        ["BAC-S04"],
    )

    # P01
    rule_fx(
        "R-BAC-P01-fire-warning-plan-documented",
        "Pregnant 37 weeks, taper plan documented; ongoing 30 mg/day",
        ongoing(
            30,
            10,
            reproductive={
                "pregnant": True,
                "gestational_age_weeks": 37,
                "lactating": False,
                "taper_or_neonatal_plan_documented": True,
            },
        ),
        {"BAC-P01": "warning"},
        ["BAC-P01.late"],
    )
    rule_fx(
        "R-BAC-P01-fire-critical-plan-unknown",
        "Pregnant 38 weeks, plan not documented (unknown); ongoing",
        ongoing(30, 10, reproductive={"pregnant": True, "gestational_age_weeks": 38}),
        {"BAC-P01": "critical"},
        [],
    )
    rule_fx(
        "R-BAC-P01-silent-not-pregnant", "Not pregnant; ongoing 30 mg/day", ongoing(30, 10), {}, ["BAC-P01"]
    )
    rule_fx(
        "R-BAC-P01-silent-pregnancy-unknown",
        "Pregnancy status not documented; ongoing 30 mg/day",
        ongoing(30, 10, reproductive={}),
        {},
        ["BAC-P01"],
    )

    # P02
    rule_fx(
        "R-BAC-P02-fire-lactating",
        "Breastfeeding; ongoing 30 mg/day",
        ongoing(30, 10, reproductive={"pregnant": False, "lactating": True}),
        {"BAC-P02": "info"},
        [],
    )
    rule_fx(
        "R-BAC-P02-silent-not-lactating",
        "Not breastfeeding; ongoing 30 mg/day",
        ongoing(30, 10),
        {},
        ["BAC-P02"],
    )

    # P03
    def neonate(days: int, on_baclofen: bool) -> dict[str, Any]:
        facts = base(
            birth_date=ago(days), conditions=[], reproductive={"maternal_exposure_at_delivery": True}
        )
        if on_baclofen:
            facts["order"] = order(
                0.3,
                3,
                product=text("baclofen 1 MG/ML oral solution"),
                form="oral solution",
                concentration_mg_per_ml=1,
                indication=text("Neonatal withdrawal from maternal baclofen"),
            )
        return facts

    rule_fx(
        "R-BAC-P03-fire-neonate-27d",
        "Neonate 27 days, maternal oral baclofen through delivery; neonatal baclofen wean 0.3 mg TID ordered",
        neonate(27, True),
        {"BAC-P03": "warning", "BAC-I02": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-P03-silent-neonate-28d",
        "Infant 28 days, maternal baclofen through delivery; baclofen wean ordered",
        neonate(28, True),
        {"BAC-I02": "warning"},
        ["BAC-P03"],
    )
    rule_fx(
        "R-BAC-P03-fire-neonate-27d-no-baclofen",
        "Neonate 27 days, maternal oral baclofen through delivery; "
        "the neonate has no baclofen order or medication",
        neonate(27, False),
        {"BAC-P03": "warning"},
        [],
        note="§4.3 BAC-P03 has no order condition: the exposed neonate is the typical case.",
    )

    # A01
    rule_fx(
        "R-BAC-A01-fire-critical-brand",
        "Allergy to 'Lioresal' (brand name, no code); new start 5 mg TID",
        ns(5, 3, allergies=[{"substance": text("Lioresal"), "category": "medication"}]),
        {"BAC-A01": "critical"},
        [],
    )
    rule_fx(
        "R-BAC-A01-fire-warning-excipient",
        "Wheat allergy; product with wheat starch excipient",
        ns(
            5,
            3,
            excipient_groups=["wheat"],
            allergies=[
                {
                    "substance": {"system": SNOMED, "code": "412071004", "display": "Wheat (substance)"},
                    "category": "food",
                }
            ],
        ),
        {"BAC-A01": "warning"},
        ["BAC-A01.baclofen"],
    )
    rule_fx(
        "R-BAC-A01-silent-refuted",
        "Baclofen allergy entry refuted",
        ns(
            5,
            3,
            allergies=[
                {
                    "substance": {"system": RXNORM, "code": "1292", "display": "Baclofen"},
                    "verification_status": "refuted",
                }
            ],
        ),
        {},
        ["BAC-A01"],
    )
    rule_fx(
        "R-BAC-A01-silent-wheat-no-excipient",
        "Wheat allergy; product without wheat excipient",
        ns(
            5,
            3,
            allergies=[
                {
                    "substance": {"system": SNOMED, "code": "412071004", "display": "Wheat (substance)"},
                    "category": "food",
                }
            ],
        ),
        {},
        ["BAC-A01"],
    )

    # M01
    rule_fx(
        "R-BAC-M01-silent-assessed-on-stable-date",
        "Stable 100 d; assessment on the stable-dose date",
        ongoing(30, 10, since=100, assessed=100),
        {},
        ["BAC-M01"],
    )
    rule_fx(
        "R-BAC-M01-fire-assessed-day-before",
        "Stable 100 d; assessment the day before the stable-dose date",
        ongoing(30, 10, since=100, assessed=101),
        {"BAC-M01": "info"},
        [],
    )
    rule_fx(
        "R-BAC-M01-fire-never-assessed",
        "Stable 100 d; no efficacy assessment on record",
        ongoing(30, 10, since=100, assessed=None),
        {"BAC-M01": "info"},
        [],
    )
    rule_fx(
        "R-BAC-M01-silent-aud",
        "AUD indication; stable 100 d, never assessed (spasticity-only rule)",
        ongoing(30, 10, since=100, assessed=None, order_kw={"indication": AUD}),
        {"BAC-I01": "info"},
        ["BAC-M01"],
    )

    # M02
    rule_fx(
        "R-BAC-M02-fire-366d",
        "Age 45, eGFR 95 dated 366 d ago; dose unchanged",
        ongoing(30, 10, renal=renal(95, 366)),
        {"BAC-M02": "info"},
        [],
    )
    rule_fx(
        "R-BAC-M02-silent-365d",
        "Age 45, eGFR 95 dated 365 d ago; dose unchanged",
        ongoing(30, 10, renal=renal(95, 365)),
        {},
        ["BAC-M02"],
    )
    rule_fx(
        "R-BAC-M02-fire-band-m-91d",
        "Age 45, eGFR 45 dated 91 d ago; ongoing 30 mg/day",
        ongoing(30, 10, renal=renal(45, 91)),
        {"BAC-M02": "info"},
        ["BAC-R01"],
    )
    rule_fx(
        "R-BAC-M02-silent-band-m-90d",
        "Age 45, eGFR 45 dated 90 d ago; ongoing 30 mg/day",
        ongoing(30, 10, renal=renal(45, 90)),
        {},
        ["BAC-M02", "BAC-R01"],
    )
    rule_fx(
        "R-BAC-M02-silent-dialysis",
        "Haemodialysis, eGFR 400 d old; ongoing 5 mg/day (dialysis exempt)",
        ongoing(5, 5, renal={"egfr": egfr(7, 400), "dialysis": "HD"}),
        {"BAC-R03": "warning"},
        ["BAC-M02"],
    )

    # M03
    epi = [cond(MS), cond(EPILEPSY)]
    rule_fx(
        "R-BAC-M03-fire-epilepsy-review-366d",
        "Epilepsy; last neurology review 366 d ago; ongoing",
        ongoing(
            30, 10, conditions=epi, monitoring={"efficacy_assessment": ago(30), "neurology_review": ago(366)}
        ),
        {"BAC-M03": "info", "BAC-S01": "warning"},
        [],
    )
    rule_fx(
        "R-BAC-M03-silent-epilepsy-review-365d",
        "Epilepsy; last neurology review 365 d ago; ongoing",
        ongoing(
            30, 10, conditions=epi, monitoring={"efficacy_assessment": ago(30), "neurology_review": ago(365)}
        ),
        {"BAC-S01": "warning"},
        ["BAC-M03"],
    )
    rule_fx(
        "R-BAC-M03-fire-diabetes-no-glucose",
        "Type 2 diabetes; no glucose/HbA1c on record; ongoing",
        ongoing(
            30,
            10,
            conditions=[
                cond(MS),
                cond(
                    {"system": SNOMED, "code": "44054006", "display": "Diabetes mellitus type 2 (disorder)"}
                ),
            ],
        ),
        {"BAC-M03": "info"},
        [],
    )
    rule_fx(
        "R-BAC-M03-silent-liver-lft-30d",
        "Liver cirrhosis; LFT 30 d ago; ongoing",
        ongoing(
            30,
            10,
            conditions=[cond(MS), cond(text("Cirrhosis of liver"))],
            monitoring={"efficacy_assessment": ago(30), "lft": ago(30)},
        ),
        {},
        ["BAC-M03"],
    )


# ───────────────────────── cannot-assess fixtures ─────────────────────────


def cannot_assess() -> None:
    def ca(
        fid: str,
        description: str,
        facts: dict[str, Any],
        fire: dict[str, str],
        silent: list[str],
        items: list[str],
        note: str | None = None,
    ) -> None:
        fx(
            fid,
            description,
            facts,
            fire,
            silent,
            items,
            scenario="cannot-assess",
            source=f"{SOURCE} §4.2 (missing data is reported, never guessed)",
            note=note,
        )

    ca(
        "CA-no-egfr-new-start",
        "New start 5 mg TID; no eGFR on record",
        new_start(5, 3, renal={"dialysis": "none"}),
        {"BAC-R00": "warning"},
        ["BAC-R01", "BAC-M02"],
        [],
        note="BAC-R00 fires for the missing eGFR, so no separate 'egfr' cannot-assess item.",
    )
    ca(
        "CA-no-egfr-ongoing",
        "Ongoing 30 mg/day, dose unchanged; no eGFR on record",
        ongoing(30, 10, renal={"dialysis": "none"}),
        {"BAC-M02": "info"},
        ["BAC-R00", "BAC-R01"],
        [],
        note="BAC-M02 fires for the missing eGFR and covers the renal gap.",
    )
    ca(
        "CA-no-birth-date",
        "New start 5 mg TID; no birth date or age",
        with_(new_start(5, 3), birth_date=_DELETE),
        {},
        ["BAC-I02", "BAC-R04"],
        ["age"],
    )
    ca(
        "CA-liquid-no-concentration",
        "Oral solution 10 mL TID ordered without a concentration (new start)",
        new_start(10, 3, product=text("baclofen oral solution"), form="oral solution", dose_unit="mL"),
        {"BAC-F03": "warning"},
        ["BAC-D01", "BAC-D02"],
        [],
        note="The 'dose' item is covered by BAC-F03, which fired.",
    )
    ca(
        "CA-egfr-gt60-new-start",
        "New start 5 mg TID; eGFR reported as '>60' (a bound) 10 days ago",
        new_start(5, 3, renal={"egfr": egfr(60, comparator=">"), "dialysis": "none"}),
        {},
        ["BAC-R00", "BAC-R02", "BAC-R04", "BAC-R01.moderate"],
        ["egfr"],
        note=">60 rules out bands S and M and Beers (<60), but not band L (50-80) vs N (>80): the mild-CKD "
        "start cap (15 > 10 mg/day) cannot be decided, so the engine reports it as not assessed.",
    )
    ca(
        "CA-no-route",
        "New start 10 mg TID; route and form not stated, product code not in the vocabulary",
        with_(
            new_start(10, 3, product=text("baclofen 10 mg")),
            **{"order.route": _DELETE, "order.form": _DELETE},
        ),
        {},
        ["BAC-D02"],
        ["route"],
        note="The start-dose check (10 mg TID > 5 mg TID) applies to oral orders only: "
        "undecided without a route. "
        "A 5 mg TID order would raise nothing: no route-dependent rule could fire.",
    )
    ca(
        "CA-it-no-refill-date",
        "Intrathecal 400 mcg/day; pump refill date not recorded",
        it_facts(400, refill_in=None),
        {},
        ["BAC-W02"],
        ["pump_refill"],
    )
    ca(
        "CA-pregnant-no-gestational-age",
        "Pregnant, gestational age unknown, no plan; ongoing 30 mg/day",
        ongoing(30, 10, reproductive={"pregnant": True, "taper_or_neonatal_plan_documented": False}),
        {"BAC-P01": "warning"},
        ["BAC-P01.late"],
        ["gestational_age"],
    )

    tbi_it = it_new_start(100, conditions=[cond(MS), cond(TBI)], order_kw={"indication": dict(TBI)})
    ca(
        "CA-it-tbi-no-onset",
        "Intrathecal start for TBI spasticity; date of the brain injury not recorded",
        tbi_it,
        {},
        ["BAC-I01"],
        ["tbi_onset"],
    )
    no_admission = base(
        medications=[
            med(
                TAB20,
                id="bac-home",
                route="oral",
                form="tablet",
                daily_dose_mg=60,
                setting="home",
                start=ago(730),
            )
        ],
        history={"therapy_start": ago(730)},
        encounter={"inpatient": True},
    )
    ca(
        "CA-inpatient-no-admission-time",
        "Inpatient, admission time and last dose unknown; home baclofen 2 years, no inpatient order",
        no_admission,
        {},
        ["BAC-W03"],
        ["admission"],
    )
    ca(
        "CA-taper-duration-unknown",
        "On 80 mg/day; discontinue with taper steps but no duration or end date",
        stop(80, 20, reason="ineffective", taper={"steps": [60, 40, 20, 0]}),
        {},
        ["BAC-W01"],
        ["taper"],
    )
    prev_unknown = ongoing(30, 10, dose=15, per_day=3, action="modify")
    prev_unknown["medications"][0].pop("daily_dose_mg")
    prev_unknown["history"] = {"therapy_start": ago(365), "stable_dose_since": ago(180)}
    ca(
        "CA-previous-dose-unknown",
        "Ongoing baclofen (dose and last change not recorded); modify to 15 mg TID",
        prev_unknown,
        {},
        ["BAC-D03", "BAC-R00", "BAC-W01"],
        ["dose_history"],
        note="The new dose is known (15 mg TID in mg); only the previous dose and date of last "
        "change are not.",
    )
    to_liquid = ongoing(
        30, 10, action="modify", order_kw={"product": text("baclofen oral solution"), "form": "oral solution"}
    )
    to_liquid["order"].update(dose_amount=5, doses_per_day=3, dose_unit="mL")
    ca(
        "CA-modify-to-liquid-no-concentration",
        "Ongoing 10 mg TID tablets; modify to oral solution 5 mL TID "
        "without a concentration (no taper involved)",
        to_liquid,
        {"BAC-F03": "warning"},
        ["BAC-D01", "BAC-W01"],
        [],
        note="The only missing fact is the mg dose, which BAC-F03 reports; previous dose, "
        "last change date and "
        "'no taper plan' are all on record.",
    )


def _odd_inputs() -> None:
    """Issue #11 fixtures (routes, forms, unreadable eGFR, tapers, several orders)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixtures_odd_inputs import odd_inputs

    odd_inputs(sys.modules[__name__])


def _renal_function() -> None:
    """Issue #12 fixtures (CrCl, AKI, ESRD without a current eGFR, race-stratified pairs)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixtures_renal import renal_function

    renal_function(sys.modules[__name__])


def _suggestions() -> None:
    """Issue #10 fixtures (products not marketed: BAC-F04; D02's start limit per renal band)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixtures_suggestions import suggestion_fixtures

    suggestion_fixtures(sys.modules[__name__])


def build() -> list[dict[str, Any]]:
    FIXTURES.clear()
    scenarios()
    rules()
    cannot_assess()
    _odd_inputs()
    _renal_function()
    _suggestions()
    ids = [f["id"] for f in FIXTURES]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise SystemExit(f"duplicate fixture ids: {sorted(dupes)}")
    return list(FIXTURES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any file would change")
    args = parser.parse_args(argv)
    fixtures = build()
    OUT.mkdir(parents=True, exist_ok=True)
    changed = []
    wanted = set()
    for fixture in fixtures:
        path = OUT / f"{fixture['id']}.json"
        wanted.add(path.name)
        body = json.dumps(fixture, indent=2, ensure_ascii=False) + "\n"
        if not path.exists() or path.read_text(encoding="utf-8") != body:
            changed.append(path.name)
            if not args.check:
                path.write_text(body, encoding="utf-8")
    stale = sorted(p.name for p in OUT.glob("*.json") if p.name not in wanted)
    if args.check:
        if changed or stale:
            print("out of date:", ", ".join(changed + stale), file=sys.stderr)
            return 1
        return 0
    for name in stale:
        (OUT / name).unlink()
    print(
        f"{len(fixtures)} fixtures in {OUT.relative_to(REPO)} ({len(changed)} written, {len(stale)} removed)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
