"""``report.html``'s rule counts come in one order for one screening (no tie left to the pivot).

A recordtable engineer found two runs of the same screening giving the same rule's two missing-data
rows (equal counts, different titles) in either order: the sort stopped at ``rule_id``.
"""

from __future__ import annotations

import random
from pathlib import Path

from cds_engine.batch.report import rule_counts


def test_tied_rows_of_one_rule_are_ordered_by_title(tmp_path: Path) -> None:
    rows = [
        ["BAC-X01", "Cannot assess: no weight", "info", 3],
        ["BAC-X01", "Cannot assess: no eGFR", "info", 3],
        ["BAC-X01", "Cannot assess: no age", "info", 3],
        ["BAC-X02", "Dose above the maximum", "warning", 1],
        ["BAC-X00", "Cannot assess: no route", "info", 3],
    ]
    orders = set()
    for seed in range(20):  # the tallies arrive in any chunk order
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        counts = rule_counts(tmp_path / "unused.parquet", shuffled)
        orders.add(tuple(zip(counts["rule_id"], counts["title"], strict=True)))
    assert orders == {
        (
            ("BAC-X02", "Dose above the maximum"),
            ("BAC-X00", "Cannot assess: no route"),
            ("BAC-X01", "Cannot assess: no age"),
            ("BAC-X01", "Cannot assess: no eGFR"),
            ("BAC-X01", "Cannot assess: no weight"),
        )
    }
