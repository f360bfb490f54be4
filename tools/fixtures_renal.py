"""Fixtures for issue #12 — renal function as the knowledge file §4.2 specifies: CrCl, AKI,
ESRD without a current eGFR, race-stratified eGFR pairs. Called by ``tools/make_fixtures.py``.

Built with the helpers of ``make_fixtures`` (passed in as a module). Each fixture names the
audit finding it answers (``../shared/audits/clinical-2026-12.md`` §2 items 6–7).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

AUDIT = "clinical audit 2026-12 §2"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
AKI = {"system": ICD10, "code": "N17.9", "display": "Acute kidney failure, unspecified"}
ESRD = {"system": ICD10, "code": "N18.6", "display": "End stage renal disease"}
CKD5 = {"system": ICD10, "code": "N18.5", "display": "Chronic kidney disease, stage 5"}
BLACK_MDRD = "48643-1"
NON_BLACK_MDRD = "48642-3"


def renal_function(m: ModuleType) -> None:
    crcl(m)
    aki(m)
    esrd(m)
    race_pairs(m)


def _crcl(m: ModuleType, value: float, days_old: int, unit: str = "mL/min") -> dict[str, Any]:
    return {"value": value, "unit": unit, "date": m.ago(days_old), "method": "35591-7"}


def _renal(m: ModuleType, egfr: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"dialysis": "none", **kw}
    if egfr is not None:
        out["egfr"] = egfr
    return out


def crcl(m: ModuleType) -> None:
    """Item 1: CrCl bands the patient when no eGFR is current (audit #6, P20)."""
    fx = m.rule_fx
    note = f"{AUDIT} item 6: a CrCl of 25 mL/min alone gave 'No eGFR' instead of severe CKD."
    fx(
        "R-BAC-R02-fire-crcl-only-25",
        "New start 5 mg TID; no eGFR; Cockcroft-Gault CrCl 25 mL/min 5 days ago",
        m.new_start(5, 3, renal=_renal(m, crcl=_crcl(m, 25, 5))),
        {"BAC-R02": "critical"},
        ["BAC-R00", "BAC-R01"],
        [],
        note=note + " The new-start tier (avoid starting) fires; a current CrCl satisfies BAC-R00.",
    )
    fx(
        "R-BAC-R01-fire-stale-egfr-fresh-crcl",
        "New start 5 mg TID; eGFR 95 of 200 days ago (stale); CrCl 40 mL/min 5 days ago",
        m.new_start(5, 3, renal=_renal(m, m.egfr(95, 200), crcl=_crcl(m, 40, 5))),
        {"BAC-R01": "warning"},
        ["BAC-R00", "BAC-R02"],
        [],
        note=note + " No current eGFR: the current CrCl bands the patient (M), start cap 7.5 mg/day.",
    )
    fx(
        "R-BAC-R01-silent-fresh-egfr-fresh-crcl",
        "New start 5 mg TID; eGFR 95 and CrCl 40 mL/min both current: the eGFR wins (band N)",
        m.new_start(5, 3, renal=_renal(m, m.egfr(95, 10), crcl=_crcl(m, 40, 5))),
        {},
        ["BAC-R00", "BAC-R01", "BAC-R02"],
        [],
        note=note + " With both current the eGFR bands; the card shows both.",
    )
    fx(
        "R-BAC-R02-fire-both-stale-crcl-newer",
        "New start 5 mg TID; eGFR 95 of 400 days and CrCl 25 mL/min of 120 days: the newer CrCl bands",
        m.new_start(5, 3, renal=_renal(m, m.egfr(95, 400), crcl=_crcl(m, 25, 120))),
        {"BAC-R00": "warning", "BAC-R02": "critical"},
        ["BAC-R01"],
        [],
        note=note + " Neither is current: the newer result bands and R00 asks for a current one.",
    )
    fx(
        "R-BAC-R02-silent-both-stale-egfr-newer",
        "New start 5 mg TID; eGFR 95 of 120 days and CrCl 25 mL/min of 400 days: the newer eGFR bands",
        m.new_start(5, 3, renal=_renal(m, m.egfr(95, 120), crcl=_crcl(m, 25, 400))),
        {"BAC-R00": "warning"},
        ["BAC-R01", "BAC-R02"],
        [],
        note=note,
    )
    fx(
        "R-BAC-R00-silent-current-crcl-only",
        "Ongoing 30 mg/day raised to 45 mg/day; no eGFR; CrCl 90 mL/min 10 days ago",
        m.ongoing(30, 10, dose=15, per_day=3, action="modify", renal=_renal(m, crcl=_crcl(m, 90, 10))),
        {},
        ["BAC-R00", "BAC-R01", "BAC-R02"],
        [],
        note=note + " A current CrCl satisfies the renal-function check before an increase.",
    )
    fx(
        "R-BAC-M02-silent-current-crcl-stale-egfr",
        "Ongoing 30 mg/day, age 70; eGFR 65 of 400 days; CrCl 70 mL/min 20 days ago",
        m.ongoing(30, 10, birth_date=m.born(70, 30), renal=_renal(m, m.egfr(65, 400), crcl=_crcl(m, 70, 20))),
        {},
        ["BAC-M02", "BAC-R04"],
        [],
        note=note + " A current CrCl satisfies the re-check (BAC-M02).",
    )
    m.fx(
        "CA-crcl-per-1.73m2-not-used",
        "New start 5 mg TID; no eGFR; a 'CrCl' of 25 reported per 1.73 m² (not a Cockcroft-Gault CrCl)",
        m.new_start(5, 3, renal=_renal(m, crcl=_crcl(m, 25, 5, unit="mL/min/{1.73_m2}"))),
        {"BAC-R00": "warning"},
        ["BAC-R01", "BAC-R02"],
        [],
        scenario="cannot-assess",
        source="issue #12 item 1 (CrCl in mL/min only)",
        note="A clearance normalised to body surface is not used as CrCl: BAC-R00 asks for a current "
        "result (it covers the missing eGFR item).",
    )


def _aki(m: ModuleType, onset_days: int | None, **kw: Any) -> dict[str, Any]:
    entry = m.cond(AKI, **kw)
    if onset_days is not None:
        entry["onset"] = m.ago(onset_days)
    return entry


def aki(m: ModuleType) -> None:
    """Item 2: AKI lifts the band to at least M within aki_window_days (audit #6, P21)."""
    fx = m.rule_fx
    note = f"{AUDIT} item 6: an AKI did not change the band (knowledge file §4.2: at least M)."

    def start(*conditions: dict[str, Any], egfr: float = 95) -> dict[str, Any]:
        return m.new_start(5, 3, conditions=[m.cond(m.MS), *conditions], renal=_renal(m, m.egfr(egfr)))

    fx(
        "R-BAC-R01-fire-aki-90d",
        "New start 5 mg TID; eGFR 95; AKI (N17.9) onset 90 days ago (window 90, inclusive)",
        start(_aki(m, 90)),
        {"BAC-R01": "warning"},
        ["BAC-R02"],
        [],
        note=note + " The AKI tier names the start cap.",
    )
    fx(
        "R-BAC-R01-silent-aki-91d",
        "New start 5 mg TID; eGFR 95; active AKI onset 91 days ago, never resolved",
        start(_aki(m, 91)),
        {},
        ["BAC-R01", "BAC-R02"],
        [],
        note=note + " An old unresolved AKI code does not band a patient for life.",
    )
    fx(
        "R-BAC-R01-fire-aki-recorded-recently",
        "New start 5 mg TID; eGFR 95; AKI onset 200 days ago but recorded 10 days ago",
        start(_aki(m, 200, recorded=m.ago(10))),
        {"BAC-R01": "warning"},
        ["BAC-R02"],
        [],
        note=note + " Onset or recording within the window counts.",
    )
    fx(
        "R-BAC-R01-fire-aki-encounter-diagnosis",
        "New start 5 mg TID; eGFR 95; AKI onset 400 days ago, a diagnosis of the current encounter",
        start(_aki(m, 400, encounter_diagnosis=True)),
        {"BAC-R01": "warning"},
        ["BAC-R02"],
        [],
        note=note,
    )
    fx(
        "R-BAC-R01-silent-aki-resolved",
        "New start 5 mg TID; eGFR 95; AKI onset 20 days ago, resolved",
        start(_aki(m, 20, clinical_status="resolved")),
        {},
        ["BAC-R01"],
        [],
        note=note + " Only an active (or status-less) AKI counts.",
    )
    fx(
        "R-BAC-R01-fire-aki-undated",
        "New start 5 mg TID; eGFR 95; active AKI with no onset or recording date",
        start(_aki(m, None)),
        {"BAC-R01": "warning"},
        ["BAC-R02"],
        [],
        note=note + " Design choice: an undated AKI is not known to be old, so it counts (fail safe).",
    )
    fx(
        "R-BAC-R01-fire-aki-ceiling-ongoing-45",
        "Ongoing 45 mg/day (15 mg TID); eGFR 95; AKI onset 5 days ago",
        m.ongoing(45, 15, conditions=[m.cond(m.MS), _aki(m, 5)]),
        {"BAC-R01": "warning"},
        ["BAC-R02"],
        [],
        note=note + " Above the band-M daily ceiling of 40 mg.",
    )
    fx(
        "R-BAC-R02-fire-aki-never-lowers-s",
        "New start 5 mg TID; eGFR 20; AKI onset 5 days ago",
        start(_aki(m, 5), egfr=20),
        {"BAC-R02": "critical"},
        ["BAC-R01"],
        [],
        note=note + " AKI is a floor: band S stays S.",
    )


def esrd(m: ModuleType) -> None:
    """Item 3: ESRD / CKD 5 without a current eGFR is at least band S (audit #6, P19)."""
    fx = m.rule_fx
    note = f"{AUDIT} item 6: ESRD without an eGFR got only an info re-check (P19)."
    conditions = [m.cond(m.MS), m.cond(ESRD)]
    fx(
        "R-BAC-R02-fire-esrd-no-egfr-new-start",
        "New start 5 mg TID; ESRD (N18.6) on the problem list; no eGFR; no dialysis status",
        m.new_start(5, 3, conditions=conditions, renal={"dialysis": None}),
        {"BAC-R00": "warning", "BAC-R02": "critical"},
        ["BAC-R01", "BAC-R03"],
        [],
        note=note + " Floor S is a design choice awaiting sign-off (the knowledge file says UNKNOWN).",
    )
    fx(
        "R-BAC-R02-fire-esrd-stale-egfr-ongoing",
        "Ongoing 20 mg/day; ESRD; eGFR 40 of 200 days (not current)",
        m.ongoing(20, 10, conditions=conditions, renal=_renal(m, m.egfr(40, 200))),
        {"BAC-R02": "warning", "BAC-M02": "info"},
        ["BAC-R01"],
        [],
        note=note + " The ESRD tier says why severe CKD is assumed and names the dialysis limit.",
    )
    fx(
        "R-BAC-R02-fire-ckd5-no-egfr",
        "Ongoing 20 mg/day; CKD stage 5 (N18.5); no eGFR",
        m.ongoing(20, 10, conditions=[m.cond(m.MS), m.cond(CKD5)], renal={"dialysis": "none"}),
        {"BAC-R02": "warning", "BAC-M02": "info"},
        ["BAC-R01"],
        [],
        note=note,
    )
    fx(
        "R-BAC-R02-silent-esrd-current-egfr",
        "Ongoing 20 mg/day; ESRD coded but eGFR 40 from 10 days ago: the current eGFR bands (M)",
        m.ongoing(20, 10, conditions=conditions, renal=_renal(m, m.egfr(40))),
        {},
        ["BAC-R02", "BAC-R01"],
        [],
        note=note + " The floor applies only without a current eGFR.",
    )
    fx(
        "R-BAC-R03-fire-esrd-on-dialysis",
        "Ongoing 10 mg/day; ESRD; haemodialysis; no eGFR",
        m.ongoing(10, 5, conditions=conditions, renal={"dialysis": "HD"}),
        {"BAC-R03": "critical"},
        ["BAC-R02"],
        [],
        note=note + " The ESRD floor never lowers band D.",
    )


def _pair(m: ModuleType, code: str, value: float, *, minutes: int = 0, stratum: str | None) -> dict:
    out = {**m.egfr(value), "method": code}
    out["date"] = f"{m.ago(10)}T08:{minutes:02d}:00+00:00"
    if stratum:
        out["race_stratum"] = stratum
    return out


def race_pairs(m: ModuleType) -> None:
    """Item 4: race-stratified pairs never depend on resource order (audit #7, H3)."""
    fx = m.rule_fx
    note = f"{AUDIT} item 7: MDRD 'among blacks' 70 and 'among non-blacks' 58 at the same time."
    black = _pair(m, BLACK_MDRD, 70, stratum="black")
    non_black = _pair(m, NON_BLACK_MDRD, 58, minutes=30, stratum="non-black")
    older = dict(birth_date=m.born(71, 30))
    for order_name, results in (("black-first", [black, non_black]), ("non-black-first", [non_black, black])):
        fx(
            f"R-BAC-R04-fire-race-pair-{order_name}",
            f"Age 71; ongoing 10 mg/day; MDRD pair at one draw ({order_name}): non-black 58 is used",
            m.ongoing(10, 5, renal=_renal(m, results[0], egfr_results=results), **older),
            {"BAC-R04": "warning"},
            ["BAC-R01"],
            [],
            note=note + " The non-black value is preferred; resource order does not matter.",
        )
    fx(
        "R-BAC-R04-silent-black-value-alone",
        "Age 71; ongoing 10 mg/day; only an MDRD 'among blacks' 70 on file",
        m.ongoing(10, 5, renal=_renal(m, black, egfr_results=[black]), **older),
        {},
        ["BAC-R04"],
        [],
        note=note + " An 'among blacks' value is used when it is the only one at that time.",
    )
