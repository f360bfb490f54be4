"""Write the issue #23 fixtures of the gabapentinoid pack (fixtures/gabapentinoid/G-*.json).

Each fixture is the base new-start patient (``G-base-new-start.json``) with one change, and an
expectation written by hand from docs/clinical/gabapentinoid.md — never a snapshot of engine
output. Thresholds are tested on both sides: at the ceiling (silent) and just above it (fires).
Run: ``.venv/bin/python tools/fixtures_gabapentinoid.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "gabapentinoid"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
SOURCE = "docs/clinical/gabapentinoid.md (label numbers unverified [R])"

GABAPENTIN = {"system": RXNORM, "code": "310431", "display": "gabapentin 300 MG Oral Capsule"}
GABAPENTIN_ER = {"system": RXNORM, "code": "1806382", "display": "Once-Daily gabapentin 600 MG Oral Tablet"}
ENACARBIL = {
    "system": RXNORM,
    "code": "1101338",
    "display": "gabapentin enacarbil 600 MG Extended Release Oral Tablet",
}
PREGABALIN = {"system": RXNORM, "code": "483450", "display": "pregabalin 75 MG Oral Capsule"}
PREGABALIN_CR = {
    "system": RXNORM,
    "code": "1988974",
    "display": "24 HR pregabalin 165 MG Extended Release Oral Tablet",
}
EPILEPSY = {"system": SNOMED, "code": "84757009", "display": "Epilepsy (disorder)"}
ALL_RULES = (
    "GAB-D00", "GAB-D01", "GAB-R00", "GAB-R01", "GAB-R02", "GAB-R03", "GAB-R04",
    "GAB-W01", "GAB-A01", "GAB-C01", "GAB-C02", "GAB-C03", "GAB-S01",
)  # fmt: skip


def base() -> dict[str, Any]:
    return copy.deepcopy(json.loads((OUT / "G-base-new-start.json").read_text(encoding="utf-8"))["facts"])


def with_order(
    product: dict[str, str],
    dose: float,
    per_day: float,
    *,
    form: str = "capsule",
    action: str = "new",
    **facts: Any,
) -> dict[str, Any]:
    f = base()
    f["order"].update(product=product, form=form, dose_amount=dose, doses_per_day=per_day, action=action)
    if action != "new":  # ongoing therapy at the same dose for a year
        f["medications"] = [
            {
                "id": "gaba-1",
                "product": product,
                "status": "active",
                "route": "oral",
                "form": form,
                "daily_dose_mg": dose * per_day,
                "start": "2025-01-15",
            }
        ]
        f["order"]["replaces"] = "gaba-1"
        f["history"] = {
            "therapy_start": "2025-01-15",
            "previous_daily_dose_mg": dose * per_day,
            "stable_dose_since": "2025-07-19",
            "last_dose_change": "2025-07-19",
        }
    f.update(facts)
    return f


def crcl(value: float) -> dict[str, Any]:
    """Kidney function as a Cockcroft-Gault CrCl only (the labels' measure)."""
    return {"crcl": {"value": value, "unit": "mL/min", "date": "2026-01-05"}, "dialysis": "none"}


def dialysis() -> dict[str, Any]:
    return {
        "egfr": {"value": 8, "unit": "mL/min/{1.73_m2}", "date": "2026-01-05", "method": "CKD-EPI 2021"},
        "dialysis": "HD",
    }


def stop(product: dict[str, str], daily: float, *, days: int = 1095, **order: Any) -> dict[str, Any]:
    f = with_order(product, daily / 3, 3, action="continue")
    start = {1095: "2023-01-15", 5: "2026-01-10"}[days]
    f["medications"][0]["start"] = start
    f["history"]["therapy_start"] = start
    f["order"].update(action="discontinue", dose_amount=None, doses_per_day=None, **order)
    return f


def write(
    fid: str, description: str, facts: dict[str, Any], fire: dict[str, str], silent: tuple[str, ...] = ()
) -> None:
    silent_rules = [r for r in ALL_RULES if r not in fire and not any(s.startswith(r + ".") for s in silent)]
    doc = {
        "id": fid,
        "scenario": fid.split("-")[1],
        "description": description,
        "source": SOURCE,
        "facts": facts,
        "expect": {"fire": fire, "silent": sorted({*silent_rules, *silent}), "cannot_assess": []},
    }
    (OUT / f"{fid}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    # D01: per-product daily maxima, at the ceiling and above it (audit probes G1, G4)
    write(
        "G-D01-fire-pregabalin-1200",
        "New pregabalin 600 mg BID (1200 mg/day; maximum 600)",
        with_order(PREGABALIN, 600, 2),
        {"GAB-D01": "critical"},
    )
    write(
        "G-D01-silent-pregabalin-600",
        "New pregabalin 300 mg BID: at the 600 mg/day maximum",
        with_order(PREGABALIN, 300, 2),
        {},
    )
    write(
        "G-D01-fire-pregabalin-cr-680",
        "New pregabalin CR 680 mg once daily (maximum 660)",
        with_order(PREGABALIN_CR, 680, 1, form="tablet"),
        {"GAB-D01": "critical"},
    )
    write(
        "G-D01-silent-pregabalin-cr-660",
        "New pregabalin CR 660 mg once daily: at the maximum",
        with_order(PREGABALIN_CR, 660, 1, form="tablet"),
        {},
    )
    write(
        "G-D01-fire-enacarbil-2400",
        "New gabapentin enacarbil 1200 mg BID (2400 mg/day; maximum 1200)",
        with_order(ENACARBIL, 1200, 2, form="tablet"),
        {"GAB-D01": "critical"},
    )
    write(
        "G-D01-silent-enacarbil-1200",
        "New gabapentin enacarbil 600 mg BID: at the 1200 mg/day maximum",
        with_order(ENACARBIL, 600, 2, form="tablet"),
        {},
    )
    write(
        "G-D01-fire-gabapentin-er-2400",
        "New once-daily gabapentin 2400 mg (maximum 1800)",
        with_order(GABAPENTIN_ER, 2400, 1, form="tablet"),
        {"GAB-D01": "critical"},
    )
    write(
        "G-D01-silent-gabapentin-er-1800",
        "New once-daily gabapentin 1800 mg: at the maximum",
        with_order(GABAPENTIN_ER, 1800, 1, form="tablet"),
        {},
    )
    write(
        "G-D01-silent-pregabalin-1200-tier-gabapentin",
        "Pregabalin 1200 mg/day fires the pregabalin tier, never the gabapentin one",
        with_order(PREGABALIN, 600, 2),
        {"GAB-D01": "critical"},
        ("GAB-D01.gabapentin",),
    )
    # R01: per-product renal ceilings by CrCl band (probes G2, G8); ongoing therapy (no R02 start card)
    cases = (
        (
            "pregabalin",
            PREGABALIN,
            "capsule",
            ((10, 75, 150, "critical"), (20, 150, 200, "warning"), (45, 300, 600, "warning")),
        ),
        (
            "enacarbil",
            ENACARBIL,
            "tablet",
            ((10, 150, 300, "critical"), (20, 300, 600, "warning"), (45, 600, 1200, "warning")),
        ),
    )
    for name, product, form, bands in cases:
        for value, ceiling, over, severity in bands:
            tag = {10: "below15", 20: "15to29", 45: "30to59"}[value]
            write(
                f"G-R01-silent-{name}-crcl{value}-{ceiling}",
                f"{name} {ceiling} mg/day at CrCl {value}: at the ceiling",
                with_order(product, ceiling, 1, form=form, action="continue", renal=crcl(value)),
                {},
            )
            write(
                f"G-R01-fire-{name}-crcl{value}-{over}",
                f"{name} {over} mg/day at CrCl {value}: above the ceiling",
                with_order(product, over, 1, form=form, action="continue", renal=crcl(value)),
                {"GAB-R01": severity},
                (f"GAB-R01.gabapentin_{tag}",),
            )
    write(
        "G-R01-silent-pregabalin-crcl15-150",
        "Pregabalin 150 mg/day at CrCl exactly 15 (band 15-29)",
        with_order(PREGABALIN, 150, 1, action="continue", renal=crcl(15)),
        {},
    )
    write(
        "G-R01-fire-pregabalin-cr-crcl45-495",
        "Pregabalin CR 495 mg/day at CrCl 45 (ceiling 330)",
        with_order(PREGABALIN_CR, 495, 1, form="tablet", action="continue", renal=crcl(45)),
        {"GAB-R01": "warning"},
    )
    write(
        "G-R01-silent-pregabalin-cr-crcl45-330",
        "Pregabalin CR 330 mg/day at CrCl 45: at the ceiling",
        with_order(PREGABALIN_CR, 330, 1, form="tablet", action="continue", renal=crcl(45)),
        {},
    )
    write(
        "G-R01-fire-pregabalin-start-crcl10",
        "New pregabalin 150 mg BID at CrCl 10 (audit G2: 300 vs 75)",
        with_order(PREGABALIN, 150, 2, renal=crcl(10)),
        {"GAB-R01": "critical", "GAB-R02": "info"},
    )
    # R03: dialysis dose checks (probe G3)
    write(
        "G-R03-fire-gabapentin-1800-hd",
        "Gabapentin 600 mg TID on haemodialysis (maintenance maximum 300)",
        with_order(GABAPENTIN, 600, 3, action="continue", renal=dialysis()),
        {"GAB-R03": "critical"},
    )
    write(
        "G-R03-fire-pregabalin-150-hd",
        "Pregabalin 150 mg/day on haemodialysis (maintenance maximum 75)",
        with_order(PREGABALIN, 150, 1, action="continue", renal=dialysis()),
        {"GAB-R03": "critical"},
    )
    write(
        "G-R03-silent-pregabalin-75-hd",
        "Pregabalin 75 mg/day on haemodialysis: dialysis reminder only",
        with_order(PREGABALIN, 75, 1, action="continue", renal=dialysis()),
        {"GAB-R03": "warning"},
        ("GAB-R03.pregabalin_dose",),
    )
    # R04: extended-release products where not recommended
    write(
        "G-R04-fire-pregabalin-cr-crcl20",
        "Pregabalin CR 165 mg/day at CrCl 20: not recommended below 30",
        with_order(PREGABALIN_CR, 165, 1, form="tablet", action="continue", renal=crcl(20)),
        {"GAB-R04": "warning"},
    )
    write(
        "G-R04-silent-pregabalin-cr-crcl30",
        "Pregabalin CR 165 mg/day at CrCl 30: allowed",
        with_order(PREGABALIN_CR, 165, 1, form="tablet", action="continue", renal=crcl(30)),
        {},
    )
    write(
        "G-R04-fire-enacarbil-hd",
        "Gabapentin enacarbil 600 mg/day on haemodialysis: not recommended",
        with_order(ENACARBIL, 600, 1, form="tablet", action="continue", renal=dialysis()),
        {"GAB-R03": "warning", "GAB-R04": "warning"},
    )
    # W01: taper on stopping (probe G5)
    write(
        "G-W01-fire-stop-no-taper",
        "Gabapentin 1800 mg/day for 3 years, discontinued without a taper",
        stop(GABAPENTIN, 1800),
        {"GAB-W01": "warning"},
    )
    epileptic = stop(GABAPENTIN, 1800)
    epileptic["conditions"].append({"code": EPILEPSY})
    write(
        "G-W01-fire-stop-epilepsy",
        "Gabapentin stopped without a taper in epilepsy",
        epileptic,
        {"GAB-W01": "critical"},
    )
    write(
        "G-W01-silent-taper-7d",
        "Pregabalin stopped with a 7-day taper",
        stop(PREGABALIN, 300, taper={"duration_days": 7}),
        {},
    )
    write(
        "G-W01-fire-taper-6d",
        "Pregabalin stopped with a 6-day taper (minimum 7)",
        stop(PREGABALIN, 300, taper={"duration_days": 6}),
        {"GAB-W01": "warning"},
    )
    write(
        "G-W01-silent-short-therapy",
        "Gabapentin stopped after 5 days of therapy",
        stop(GABAPENTIN, 900, days=5),
        {},
    )
    # A01: hypersensitivity (probe G6)
    allergic = with_order(GABAPENTIN, 300, 3)
    allergic["allergies"] = [{"substance": {"system": RXNORM, "code": "25480", "display": "gabapentin"}}]
    write(
        "G-A01-fire-gabapentin-allergy",
        "New gabapentin with a documented gabapentin allergy",
        allergic,
        {"GAB-A01": "critical"},
    )
    related = with_order(PREGABALIN, 75, 2)
    related["allergies"] = [{"substance": {"system": RXNORM, "code": "25480", "display": "gabapentin"}}]
    write(
        "G-A01-fire-related-allergy",
        "New pregabalin with a documented gabapentin allergy",
        related,
        {"GAB-A01": "warning"},
    )
    refuted = copy.deepcopy(allergic)
    refuted["allergies"][0]["verification_status"] = "refuted"
    write("G-A01-silent-refuted", "Gabapentin allergy entry refuted", refuted, {})
    # D00: a gabapentinoid the vocabulary cannot place in a product class (reported, never guessed)
    topical = with_order({"display": "gabapentin 6% topical cream (compounded)"}, 100, 3, form="cream")
    topical["order"]["route"] = "topical"
    write(
        "G-D00-fire-unidentified",
        "Compounded topical gabapentin cream: product class not identified",
        topical,
        {"GAB-D00": "warning"},
    )


if __name__ == "__main__":
    main()
