"""Fixtures for issue #10 — products that are not marketed (BAC-F04) and D02's start limit per renal
band. Called by ``tools/make_fixtures.py`` with its helpers (passed in as a module).

Each fixture names the audit finding it answers (``../shared/audits/clinical-2026-12.md`` §2 item 4,
§3 D02). The one-click suggestions themselves are tested in ``tests/test_suggestions.py`` and, over
every fixture, by ``tests/test_suggestion_closure.py``.
"""

from __future__ import annotations

from types import ModuleType

AUDIT = "clinical audit 2026-12"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TAB25 = {"system": RXNORM, "code": "199280", "display": "Baclofen 25 MG Oral Tablet"}
KEMSTRO10 = {
    "system": RXNORM,
    "code": "666857",
    "display": "Baclofen 10 MG Disintegrating Oral Tablet [Kemstro]",
}
LIORESAL10 = {"system": RXNORM, "code": "202109", "display": "Baclofen 10 MG Oral Tablet [Lioresal]"}


def suggestion_fixtures(m: ModuleType) -> None:
    not_marketed(m)
    d02_start_limits(m)


def not_marketed(m: ModuleType) -> None:
    """BAC-F04: a new or modified order of a product the vocabulary marks not marketed."""
    fx = m.rule_fx
    note = f"{AUDIT} §2 item 4 (P50): a one-click suggestion created an order for the 25 mg tablet (199280)."
    fx(
        "R-BAC-F04-fire-25mg-tablet-new",
        "New start 25 mg tablet (RxNorm 199280, marketed: no), half a tablet twice daily in mg: 12.5 mg BID",
        m.new_start(12.5, 2, product=dict(TAB25)),
        {"BAC-F04": "warning", "BAC-D02": "warning"},
        [],
        note=note,
    )
    fx(
        "R-BAC-F04-fire-kemstro-modify",
        "Ongoing 10 mg TID tablets; modified to Kemstro 10 mg ODT TID (no longer marketed)",
        m.ongoing(30, 10, action="modify", order_kw={"product": dict(KEMSTRO10), "form": "odt"}),
        {"BAC-F04": "warning"},
        [],
        note=note + " Knowledge file 2.1: Kemstro ODT is no longer marketed.",
    )
    fx(
        "R-BAC-F04-silent-continue-25mg",
        "Continue half a 25 mg tablet twice daily (a continued order is not a new choice of product)",
        m.ongoing(25, 12.5, action="continue", home_product=dict(TAB25), order_kw={"product": dict(TAB25)}),
        {},
        ["BAC-F04"],
        note="Only new or modified orders are checked; documented therapy is not re-flagged.",
    )
    fx(
        "R-BAC-F04-silent-home-25mg-new-10mg",
        "On 25 mg tablets twice daily (documented); modified to 10 mg tablets 10 mg TID (marketed)",
        m.ongoing(50, 25, action="modify", home_product=dict(TAB25), dose=10, per_day=3),
        {},
        ["BAC-F04"],
        note="Documented home medications are not checked by BAC-F04 (issue #10 item 3).",
    )
    fx(
        "R-BAC-F04-silent-unverified-brand",
        "New start Lioresal 10 mg tablet (marketed: unverified) 5 mg TID",
        m.new_start(5, 3, product=dict(LIORESAL10)),
        {},
        ["BAC-F04"],
        note="Only products marked 'no' with a source are flagged; 'unverified' is never treated as no.",
    )


def d02_start_limits(m: ModuleType) -> None:
    """D02's summary names the lowest start limit of the patient's renal band (issue #10 item 5)."""
    fx = m.rule_fx
    note = (
        f"{AUDIT} §3 D02: 'Start at 5 mg three times daily' was shown to a dialysis patient (15 mg/day, "
        "3x the dialysis cap); the band tier states the band's limit."
    )
    fx(
        "R-BAC-D02-fire-dialysis-start-limit",
        "On haemodialysis; new start 10 mg TID (30 mg/day)",
        m.new_start(10, 3, renal={"dialysis": "HD"}),
        {"BAC-D02": "warning", "BAC-R03": "critical"},
        [],
        note=note,
    )
    fx(
        "R-BAC-D02-fire-moderate-start-limit",
        "eGFR 40 (band M); new start 10 mg TID (30 mg/day)",
        m.new_start(10, 3, renal={"dialysis": "none", "egfr": m.egfr(40)}),
        {"BAC-D02": "warning", "BAC-R01": "warning"},
        [],
        note=note,
    )
