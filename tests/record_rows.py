"""Generated record-table rows (CSV cells) covering the never-silent and renal cases (issue 20).

Seeded and sampled from the shipped vocabulary: drug and condition codes (incl. AKI, ESRD, dialysis,
pregnancy), baclofen products of every form (tablet, solution, intrathecal), free-text entries,
routes (written, unknown, enteral tube, none), eGFR/CrCl in readable and unreadable units and
bounds, several active baclofen orders, tapers, previous doses and stray values.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ROUTES = [
    None,
    "oral",
    "PO",
    "by mouth",
    "NG tube",
    "enteral",
    "gastrostomy",
    "intrathecal",
    "IT",
    "iv",
    "sc",
    "rectal",
    "through the nose somehow",
    "  ",
]
UNITS = [None, "mg", "mcg", "g", "mL", "tablet", "capsule", "drop"]
EGFR_UNITS = [None, "mL/min/{1.73_m2}", "mL/min/1.73 m2", "mL/min", "mg/dL", "umol/L", ""]
CRCL_UNITS = [None, "mL/min", "mL/s", "mL/min/1.73m2", "mg/dL"]


def _pick(rng: random.Random, items: list[Any], p_none: float = 0.0) -> Any:
    return None if rng.random() < p_none else rng.choice(items)


def _date(rng: random.Random, lo: int = 2024, hi: int = 2026) -> str:
    return f"{rng.randint(lo, hi)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def record_rows(vocab: Any, n: int, seed: int = 20) -> list[dict[str, str]]:
    """``n`` rows as CSV cells (empty string = unknown)."""
    rng = random.Random(seed)
    drugs = sorted({f"{s}|{c}" for (k, s, c), _ in vocab.codes.items() if k == "drug_class"})
    conds = sorted({f"{s}|{c}" for (k, s, c), _ in vocab.codes.items() if k == "condition_group"})
    by_group: dict[str, list[str]] = {}
    for (kind, system, code), groups in sorted(vocab.codes.items()):
        for group in groups if kind == "condition_group" else ():
            by_group.setdefault(group, []).append(f"{system}|{code}")
    renal = [
        by_group[g]
        for g in ("aki", "esrd", "ckd_stage5", "dialysis", "pregnancy", "lactation")
        if g in by_group
    ]
    baclofen = [f"rxnorm|{c}" for c in ("197391", "197392", "1300890", "1666613", "617298")]
    baclofen += [
        "baclofen 5 mg/5 mL oral solution",
        "Baclofen 10 MG Oral Tablet",
        f"{RXNORM}|999999|Baclofen liquid",
    ]
    allergies = ["baclofen", "rxnorm|1292", "peanut", "sorbitol", "methylparaben"]
    rows = []
    for i in range(n):
        meds = [_pick(rng, drugs) for _ in range(rng.choice([0, 0, 1, 2, 3]))]
        meds += [rng.choice(baclofen) for _ in range(rng.choice([0, 0, 0, 1, 2]))]  # several active orders
        home = [rng.choice(baclofen + drugs[:50]) for _ in range(rng.choice([0, 0, 0, 1]))]
        inp = [rng.choice(baclofen + drugs[:50]) for _ in range(rng.choice([0, 0, 0, 1]))]
        cl = [
            rng.choice(rng.choice(renal) if rng.random() < 0.5 else conds)
            for _ in range(rng.choice([0, 0, 1, 2]))
        ]
        if rng.random() < 0.05:
            cl.append("history of peptic ulcer")
        row: dict[str, Any] = {
            "patient_id": f"p{i}",
            "birth_date": _pick(rng, [_date(rng, 1925, 2025)], 0.1),
            "age_years": _pick(rng, [str(rng.randint(0, 99)), "0.5", "45.9"], 0.8),
            "sex": _pick(rng, ["female", "male", "other", "unknown", "alien"], 0.1),
            "weight_kg": _pick(rng, [str(rng.randint(3, 150)), "0"], 0.5),
            "deceased": _pick(rng, ["false", "true", "no"], 0.7) if rng.random() < 0.3 else "",
            "egfr": _pick(
                rng, [str(rng.randint(3, 130)), f"{rng.uniform(5, 120):.2f}", "59.99", "60", "90"], 0.2
            ),
            "egfr_comparator": _pick(rng, [">", ">=", "<"], 0.9),
            "egfr_unit": _pick(rng, EGFR_UNITS, 0.5),
            "egfr_date": _pick(
                rng, [_date(rng, 2023), f"{_date(rng, 2025)}T10:30:00Z", f"{_date(rng)}T23:30:00-05:00"], 0.1
            ),
            "crcl": _pick(rng, [str(rng.randint(5, 140)), "0.5"], 0.6),
            "crcl_comparator": _pick(rng, [">", "<"], 0.9),
            "crcl_unit": _pick(rng, CRCL_UNITS, 0.3),
            "crcl_date": _pick(rng, [_date(rng, 2023)], 0.2),
            "dialysis": _pick(rng, ["none", "HD", "PD", "CRRT", "unspecified"], 0.8),
            "dialysis_dependent": _pick(rng, ["true", "false"], 0.85),
            "last_dialysis_procedure": _pick(rng, [_date(rng, 2025, 2026)], 0.85),
            "aki": _pick(rng, ["true", "false"], 0.8),
            "pregnant": _pick(rng, ["true", "false"], 0.85),
            "lactating": _pick(rng, ["true", "false"], 0.9),
            "maternal_exposure_at_delivery": _pick(rng, ["true", "false"], 0.95),
            "alcohol_use_current": _pick(rng, ["yes", "no"], 0.7),
            "medications": ";".join(m for m in meds if m),
            "home_medications": ";".join(home),
            "inpatient_medications": ";".join(inp),
            "conditions": ";".join(cl),
            "resolved_conditions": ";".join(rng.choice(conds) for _ in range(rng.choice([0, 0, 0, 1]))),
            "allergies": ";".join(rng.choice(allergies) for _ in range(rng.choice([0, 0, 0, 1]))),
            "order_product": _pick(rng, baclofen + drugs[:30] + ["baclofen"], 0.15),
            "order_form": _pick(rng, ["tablet", "solution", "suspension", "injection", "granules"], 0.6),
            "order_route": _pick(rng, ROUTES),
            "order_dose_amount": _pick(rng, ["5", "10", "2.5", "20", "0.05", "7.5"], 0.1),
            "order_dose_unit": _pick(rng, UNITS),
            "order_doses_per_day": _pick(rng, ["1", "2", "3", "4"], 0.15),
            "order_schedule": _pick(rng, ["5;10;5", "10;10"], 0.9),
            "order_prn": _pick(rng, ["true", "false"], 0.8),
            "order_prn_max_doses_per_day": _pick(rng, ["3", "4"], 0.9),
            "order_concentration_mg_per_ml": _pick(rng, ["1", "2", "0.5"], 0.85),
            "order_excipient_groups": _pick(rng, ["sorbitol", "parabens"], 0.95),
            "order_indication": _pick(rng, ["spasticity", "hiccups", "alcohol use disorder"], 0.7),
            "order_action": _pick(
                rng, ["new", "new", "new", "modify", "continue", "discontinue", "hold"], 0.4
            ),
            "order_taper_days": _pick(rng, ["7", "14", "0"], 0.85),
            "order_taper_steps": _pick(rng, ["30;20;10", "15;5"], 0.9),
            "therapy_start": _pick(rng, [_date(rng, 2020)], 0.7),
            "previous_daily_dose_mg": _pick(rng, ["15", "30", "60", "0"], 0.9),
            "last_dose_change": _pick(rng, [_date(rng, 2025)], 0.8),
            "stable_dose_since": _pick(rng, [_date(rng, 2025)], 0.8),
            "monitoring.efficacy_assessment": _pick(rng, [_date(rng, 2025)], 0.8),
            "monitoring.lft": _pick(rng, [_date(rng, 2024)], 0.7),
            "last_exposure": _pick(rng, [_date(rng, 2025), f"{_date(rng, 2025)}T08:00:00"], 0.8),
            "last_dose_time": _pick(rng, [f"{_date(rng, 2026, 2026)}T08:00:00Z"], 0.95),
            "pump_present": _pick(rng, ["true", "false"], 0.9),
            "pump_next_refill_date": _pick(rng, [_date(rng, 2026, 2026)], 0.95),
            "inpatient": _pick(rng, ["true", "false"], 0.5),
            "npo": _pick(rng, ["true", "false"], 0.9),
        }
        if rng.random() < 0.02:
            row["egfr"] = "nan"
        rows.append({k: ("" if v is None else str(v)) for k, v in row.items()})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """``rows`` as a record-table CSV (header from the first row) at ``path``; returns ``path``."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
