"""Fixtures for issue #11 — odd inputs are never silent (routes, forms, unreadable eGFR, taper
orders, several active orders, gestational age). Called by ``tools/make_fixtures.py``.

Built with the helpers of ``make_fixtures`` (passed in as a module, so running that script as
``__main__`` shares one fixture list). Each fixture names the audit finding it answers
(``../shared/audits/clinical-2026-12.md``) in its note.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

AUDIT = "clinical audit 2026-12"


def odd_inputs(m: ModuleType) -> None:
    routes(m)
    unreadable_renal(m)
    forms(m)
    several_orders(m)
    tapers(m)
    gestation(m)
    kept(m)


def gestation(m: ModuleType) -> None:
    """Issue #11 item 4: BAC-P01's 36-week tier at its threshold (GA read from FHIR: see the tests)."""
    note = "issue #11 item 4; GA from Observations / EDD advanced to as_of: tests/test_odd_inputs.py."
    for fid, weeks, fire in (
        ("R-BAC-P01-fire-critical-ga-36w", 36.0, "critical"),
        ("R-BAC-P01-fire-warning-ga-35w6d", 35 + 6 / 7, "warning"),
    ):
        facts = m.ongoing(
            30,
            10,
            reproductive={
                "pregnant": True,
                "gestational_age_weeks": round(weeks, 2),
                "taper_or_neonatal_plan_documented": False,
                "lactating": False,
            },
        )
        m.rule_fx(
            fid,
            f"Ongoing 30 mg/day, pregnant at {weeks:.2f} weeks, no taper or neonatal plan",
            facts,
            {"BAC-P01": fire},
            [] if fire == "critical" else ["BAC-P01.late"],
            [],
            note=note,
        )


def tapers(m: ModuleType) -> None:
    """Issue #11 item 5: a phased order is a taper to stop only when every phase is bounded."""
    note = "issue #11 item 5 (taper orders; FHIR shapes in tests/test_odd_inputs.py)."
    fx = m.rule_fx
    fx(
        "R-BAC-W01-silent-taper-to-stop-14d",
        "Ongoing 60 mg/day; discontinued with a 14-day taper (40, 20, 10 mg/day, every phase bounded)",
        m.stop(60, 20, taper={"duration_days": 14, "steps": [40, 20, 10]}),
        {},
        ["BAC-W01"],
        [],
        note=note,
    )
    fx(
        "R-BAC-W01-fire-critical-taper-to-stop-4d",
        "Ongoing 60 mg/day; discontinued with a 4-day taper (30, 15 mg/day): shorter than the minimum",
        m.stop(60, 20, taper={"duration_days": 4, "steps": [30, 15]}),
        {"BAC-W01": "critical"},
        [],
        [],
        note=note,
    )
    stepped = m.ongoing(60, 20, dose=5, per_day=3, action="modify")
    stepped["order"]["taper"] = {"duration_days": 14, "steps": [40, 30, 15]}
    fx(
        "R-BAC-W01-silent-taper-stepped-reduction",
        "Ongoing 60 mg/day; stepped reduction 40 → 30 → 15 mg/day continuing open-ended: a taper plan",
        stepped,
        {},
        ["BAC-W01"],
        [],
        note=note + " A stepped reduction ending in an open-ended lower dose is a taper plan for W01(b).",
    )


def _two_orders(m: ModuleType, prev_daily: float, prev_single: float, **order_kw: Any) -> dict[str, Any]:
    """Ongoing scheduled tablets (bac-1) and a draft the source did not link to it."""
    facts = m.ongoing(prev_daily, prev_single)
    draft = m.order(**{k: order_kw.pop(k) for k in ("dose", "per_day", "schedule") if k in order_kw})
    draft.update({"action": "modify", "replaces_presumed": True, **order_kw})
    facts["order"] = draft
    return facts


def several_orders(m: ModuleType) -> None:
    """Issue #11 item 6 / audit §3 D01 (P51), C07: several active oral orders."""
    fx = m.rule_fx
    note = f"{AUDIT} §3 BAC-D01/BAC-C07 (P51): combined_oral_daily_mg sums the active oral orders."
    prn = _two_orders(m, 80, 20, dose=10, per_day=None, prn=True, prn_max_doses_per_day=2)
    fx(
        "R-BAC-D01-fire-critical-combined-prn-addon",
        "Ongoing 20 mg QID (80 mg/day) + a PRN order 10 mg up to twice daily: 100 mg/day in total",
        prn,
        {"BAC-D01": "critical", "BAC-C07": "warning"},
        ["BAC-W01", "BAC-D02"],
        [],
        note=note + " A PRN order beside a scheduled one is additive.",
    )
    liquid = _two_orders(
        m, 60, 20, dose=10, per_day=3, form="solution", concentration_mg_per_ml=1,
        product=m.text("baclofen 1 mg/mL oral solution"),
    )
    fx(
        "R-BAC-D01-fire-critical-combined-tablet-liquid",
        "Ongoing tablets 20 mg TID (60 mg/day) + oral solution 10 mg TID: another form, 90 mg/day",
        liquid,
        {"BAC-D01": "critical", "BAC-C07": "warning", "BAC-D03": "warning"},
        ["BAC-W01"],
        [],
        note=note + " Another form is additive; the regimen rises by 30 mg/day in one step (D03).",
    )
    bedtime = _two_orders(m, 80, 20, dose=20, per_day=1)
    fx(
        "R-BAC-C07-fire-warning-if-additional-bedtime",
        "Ongoing 20 mg QID + a new 20 mg at bedtime (same tablets, not linked): presumed replacement",
        bedtime,
        {"BAC-C07": "warning", "BAC-W01": "warning"},
        ["BAC-D01"],
        [],
        note=note + " Same form and route, both scheduled: presumed to replace it; C07 gives the total "
        "if it is in addition (100 mg/day), W01(b) says 'if this replaces'.",
    )
    fx(
        "R-BAC-C07-silent-resigned",
        "Ongoing 20 mg QID re-signed as the same order (same id): one order, 80 mg/day",
        m.ongoing(80, 20),
        {},
        ["BAC-C07", "BAC-D01", "BAC-W01"],
        [],
        note=note + " A re-signed order replaces itself.",
    )
    switch = m.ongoing(80, 20, dose=20, per_day=3, action="modify")
    fx(
        "R-BAC-C07-silent-stop-old-new",
        "One request stops 20 mg QID and orders 20 mg TID: the new order replaces the old one",
        switch,
        {},
        ["BAC-C07", "BAC-D01", "BAC-W01"],
        [],
        note=note + " The same request stops the old order: an explicit replacement (FHIR test in "
        "tests/test_odd_inputs.py).",
    )
    unknown = m.base(
        medications=[
            m.med(m.TAB20, id="bac-1", route="oral", form="tablet", daily_dose_mg=80, start=m.ago(365)),
            m.med(m.TAB10, id="bac-2", route="oral", form="tablet", daily_dose_mg=10, start=m.ago(365)),
        ],
        history={"therapy_start": m.ago(365)},
    )
    unknown["order"] = m.order(
        5, None, product=m.text("baclofen oral solution"), form="solution", dose_unit="mL", prn=True,
        prn_max_doses_per_day=3,
    )
    fx(
        "R-BAC-D01-fire-critical-combined-known-parts",
        "Two active tablet orders (80 + 10 mg/day) + a PRN oral solution 5 mL without concentration",
        unknown,
        {"BAC-D01": "critical", "BAC-C07": "warning", "BAC-F03": "warning"},
        [],
        [],
        note=note + " The PRN dose is unknown, but the known parts alone (90 mg/day) exceed the maximum.",
    )


def forms(m: ModuleType) -> None:
    """Audit §3 F01 (P91): a text-only product is read for its form."""
    for name, display in (
        ("topical-solution", "baclofen 2% topical solution"),
        ("lotion", "baclofen 5% lotion"),
        ("foam", "baclofen 2% foam"),
        ("spray", "baclofen 2% spray"),
    ):
        facts = m.new_start(1, 3, product=m.text(display))
        facts["order"].update({"dose_unit": "mL"})
        for key in ("route", "form"):
            facts["order"].pop(key)
        m.rule_fx(
            f"R-BAC-F01-fire-critical-text-{name}",
            f"Text-only product '{display}', no form or route: read as a topical form",
            facts,
            {"BAC-F01": "critical"},
            ["BAC-F03", "BAC-F05"],
            [],
            note=f"{AUDIT} §3 BAC-F01 (P91): a topical solution is not an oral liquid; lotion, foam, "
            "spray are topical forms.",
        )
    liquid = m.new_start(5, 3, product=m.text("baclofen oral solution"))
    liquid["order"].update({"dose_unit": "mL"})
    for key in ("route", "form"):
        liquid["order"].pop(key)
    m.rule_fx(
        "R-BAC-F03-fire-warning-text-oral-solution-ml",
        "Text-only 'baclofen oral solution' 5 mL TID, no concentration, no form or route",
        liquid,
        {"BAC-F03": "warning"},
        ["BAC-F01", "BAC-F05"],
        [],
        note=f"{AUDIT} §3 BAC-F01/F03: the form is read from the text (oral liquid), the route is "
        "checked as oral, the mL dose without a concentration raises F03 (no guessed mg dose).",
    )


EGFR_SPELLINGS = (
    ("ucum", "mL/min/{1.73_m2}"),
    ("compact", "mL/min/1.73m2"),
    ("spaced", "mL/min/1.73 m2"),
    ("caret", "ml/min/1.73m^2"),
    ("per", "mL/min per 1.73 m2"),
)


def unreadable_renal(m: ModuleType) -> None:
    """Audit/newcomer: an unreadable eGFR must not become 'no eGFR' or an older value."""
    ca = m.fx
    for name, unit in EGFR_SPELLINGS:
        facts = m.new_start(5, 3, renal={"egfr": {**m.egfr(25), "unit": unit}, "dialysis": "none"})
        m.rule_fx(
            f"R-BAC-R02-fire-critical-egfr-unit-{name}",
            f"New start 5 mg TID; eGFR 25 reported in '{unit}': read as mL/min/1.73 m2",
            facts,
            {"BAC-R02": "critical"},
            ["BAC-R00"],
            [],
            note=f"{AUDIT} newcomer run: every accepted spelling of mL/min/1.73 m2 is read.",
        )
    mgdl = m.new_start(
        5, 3, renal={"egfr": {**m.egfr(25), "value": 1.2, "unit": "mg/dL"}, "dialysis": "none"}
    )
    ca(
        "CA-egfr-unreadable-unit-mgdl",
        "New start 5 mg TID; the newest eGFR is reported in mg/dL (a creatinine, not an eGFR)",
        mgdl,
        {"BAC-R00": "warning"},
        ["BAC-R01", "BAC-R02", "BAC-R04"],
        [],
        scenario="cannot-assess",
        source="issue #11 item 3 (unreadable renal results)",
        note="R00.unreadable names the date and the problem; renal checks are not done.",
    )
    text_value = m.ongoing(
        30,
        10,
        renal={
            "egfr": m.egfr(95, days_old=200),
            "egfr_unreadable": {"date": m.ago(5), "problem": "no-value"},
            "dialysis": "none",
        },
    )
    ca(
        "CA-egfr-unreadable-text-older-value-not-used",
        "Ongoing 30 mg/day; newest eGFR (5 d ago) is text ('abc'); an older eGFR 95 (200 d) is on file",
        text_value,
        {"BAC-R00": "warning", "BAC-M02": "info"},
        ["BAC-R01", "BAC-R02", "BAC-R04"],
        [],
        scenario="cannot-assess",
        source="issue #11 item 3 (unreadable renal results)",
        note="The older eGFR is never used in place of the unreadable newest one.",
    )
    ca(
        "CA-egfr-unreadable-dialysis-bands",
        "New start 5 mg TID on haemodialysis; newest eGFR unreadable: band D still applies",
        m.with_(mgdl, **{"renal.dialysis": "HD"}),
        {"BAC-R03": "critical"},
        ["BAC-R00", "BAC-R02"],
        [],
        scenario="cannot-assess",
        source="issue #11 item 3 (unreadable renal results)",
    )
    ca(
        "CA-egfr-unreadable-current-crcl-bands",
        "New start 5 mg TID; newest eGFR in mg/dL but a current CrCl 25 mL/min: the CrCl bands",
        m.with_(mgdl, **{"renal.crcl": {"value": 25, "unit": "mL/min", "date": m.ago(3)}}),
        {"BAC-R02": "critical"},
        ["BAC-R00"],
        [],
        scenario="cannot-assess",
        source="issue #11 item 3 (unreadable renal results)",
    )


def kept(m: ModuleType) -> None:
    """A committed hand-written fixture, now generated so that regenerating keeps it."""
    facts = m.stop(60, 20, therapy_days=14)
    facts["order"].update({"action": "modify", "dose_amount": 0, "dose_unit": "mg", "doses_per_day": 3})
    m.rule_fx(
        "R-BAC-W01-fire-modify-to-zero",
        "Ongoing 60 mg/day for 14 days; order written as 'modify' to 0 mg with no taper "
        "— the same abrupt stop",
        facts,
        {"BAC-W01": "critical"},
        ["BAC-W01.monitored"],
        [],
        note="Gap noted by the fixture review: a stop written as modify-to-0.",
    )


def _elderly_ckd(m: ModuleType, route: Any, **order_kw: Any) -> dict[str, Any]:
    """The audit's H4/H5 patient: 71 years, eGFR 20, new start 30 mg QID (120 mg/day)."""
    facts = m.new_start(30, 4, birth_date=m.born(71, 30), renal={"egfr": m.egfr(20), "dialysis": "none"})
    order = facts["order"]
    if route is m._DELETE:
        order.pop("route", None)
    else:
        order["route"] = route
    order.update(order_kw)
    return facts


_ELDERLY_CKD_FIRE = {
    "BAC-D01": "critical",
    "BAC-D02": "warning",
    "BAC-R02": "critical",
    "BAC-R04": "critical",
}


def routes(m: ModuleType) -> None:
    fx = m.rule_fx
    for fid, route, what in (
        ("snomed-nasogastric", "127492001", "SNOMED 127492001 Nasogastric route"),
        ("snomed-gastrostomy", "127490009", "SNOMED 127490009 Gastrostomy route"),
        ("text-per-g-tube", "per G tube", "text 'per G tube'"),
        ("text-feeding-tube", "feeding tube", "text 'feeding tube'"),
        ("text-po-ng", "PO/NG", "text 'PO/NG'"),
        ("text-j-tube", "J-tube", "text 'J-tube'"),
        ("text-nasojejunal", "nasojejunal", "text 'nasojejunal'"),
    ):
        fx(
            f"R-BAC-F05-silent-enteral-{fid}",
            f"Age 71, eGFR 20, new 30 mg QID (120 mg/day) by {what}: checked like oral",
            _elderly_ckd(m, route),
            dict(_ELDERLY_CKD_FIRE),
            ["BAC-F05", "BAC-F02"],
            note=f"{AUDIT} §2 #1 (H4/H5, P95-P101): enteral routes read as enteral, checked like oral.",
        )
    fx(
        "R-BAC-F05-silent-route-missing-tablet",
        "Age 71, eGFR 20, new 30 mg QID, tablet, no route: checked as oral, no route card",
        _elderly_ckd(m, m._DELETE),
        dict(_ELDERLY_CKD_FIRE),
        ["BAC-F05"],
        [],
        note=f"{AUDIT} §2 #1/#5: an oral-form product with no route is checked as oral; the "
        "alert details say 'route not stated — checked as oral'.",
    )
    fx(
        "R-BAC-F05-fire-warning-route-unrecognised",
        "Age 71, eGFR 20, new 30 mg QID by an unrecognised route 'via banana': checked as oral + F05",
        _elderly_ckd(m, "via banana"),
        {**_ELDERLY_CKD_FIRE, "BAC-F05": "warning"},
        ["BAC-F01", "BAC-F02"],
        note=f"{AUDIT} §2 #1: an unrecognised route is evaluated conservatively (as oral) and reported.",
    )
    fx(
        "R-BAC-F05-fire-warning-route-unrecognised-markup",
        "New 5 mg TID by a route written with markup characters: reported, escaped",
        m.new_start(5, 3, route="<b>per *os*</b>"),
        {"BAC-F05": "warning"},
        ["BAC-F01", "BAC-F02"],
        note=f"{AUDIT} §2 #1: the route as written is shown escaped.",
    )
    for fid, route in (("rectal", "rectal"), ("sublingual-snomed", "37839007"), ("buccal", "buccal")):
        fx(
            f"R-BAC-F05-fire-warning-no-product-{fid}",
            f"Age 71, eGFR 20, new 30 mg QID by {route}: no product for the route, checked as systemic",
            _elderly_ckd(m, route),
            {**_ELDERLY_CKD_FIRE, "BAC-F05": "warning"},
            ["BAC-F01", "BAC-F02"],
            note=f"{AUDIT} §2 #1 (P95-P101): a recognised route with no baclofen product is checked "
            "as systemic (dose, renal, withdrawal) and reported.",
        )
    fx(
        "R-BAC-F05-silent-intrathecal",
        "Intrathecal refill 400 mcg/day: a product exists for the route",
        m.it_facts(400),
        {},
        ["BAC-F05"],
    )
    fx(
        "R-BAC-F05-silent-transdermal",
        "Transdermal order: BAC-F01 already flags it, F05 stays silent",
        m.new_start(5, 3, route="transdermal", form="patch"),
        {"BAC-F01": "critical"},
        ["BAC-F05"],
    )
    # W01 / W03 with the route missing (audit §2 #5, P88, P79)
    stop_no_route = m.stop(60, 20)
    stop_no_route["order"].pop("route")
    stop_no_route["order"].pop("form")
    stop_no_route["order"]["product"] = m.text("baclofen")
    fx(
        "R-BAC-W01-fire-critical-route-missing",
        "Stopping long-term baclofen (365 d, 60 mg/day), no route, form or coded product, no taper",
        stop_no_route,
        {"BAC-W01": "critical"},
        ["BAC-F05"],
        [],
        note=f"{AUDIT} §2 #5 (P88): W01 fires when the route is missing unless intrathecal "
        "therapy or a pump is documented.",
    )
    fx(
        "R-BAC-W01-silent-route-missing-pump",
        "Stopping baclofen with no route, form or product while an intrathecal pump is documented",
        m.with_(stop_no_route, pump={"present": True, "next_refill_date": m.ahead(30)}),
        {},
        ["BAC-W01", "BAC-W02"],
        ["route"],
        note=f"{AUDIT} §2 #5: with a pump documented the stop may be intrathecal: W01 undecided, "
        "the route is asked for.",
    )
    home = m.base(
        medications=[m.med(m.text("baclofen"), id="home-1", setting="home", start=m.ago(400))],
        history={"therapy_start": m.ago(400)},
        encounter={"inpatient": True, "admission_time": m.hours_ago(30)},
    )
    fx(
        "R-BAC-W03-fire-warning-home-route-missing",
        "Inpatient 30 h; home baclofen (text only, no route) with no inpatient order",
        home,
        {"BAC-W03": "warning"},
        [],
        note=f"{AUDIT} §2 #5 (P79): a home baclofen without route counts as oral for W03.",
    )
    fx(
        "R-BAC-W02-silent-no-pump-no-refill-item",
        "Intrathecal screening bolus 50 mcg with no pump documented: no pump-refill item",
        m.base(
            order={
                "id": "order-1",
                "product": dict(m.IT_1MG_ML),
                "form": "injection",
                "route": "intrathecal",
                "dose_amount": 50,
                "dose_unit": "mcg",
                "doses_per_day": 1,
                "indication": dict(m.MS),
                "action": "new",
                "date": m.TODAY.isoformat(),
            }
        ),
        {},
        ["BAC-W02"],
        [],
        note=f"{AUDIT} §3 BAC-W02 (P25): the refill date is asked for only when a pump is documented.",
    )
