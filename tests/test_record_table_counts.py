"""patient_counts (batch/table_screen.py): per-row alert counts equal the group-by they replaced.

Why: the counts are now running totals read at each patient's run of alerts (binary search on the
sorted ``__unit``); a slip there (an off-by-one end, a null severity counted, an unsorted table
read as sorted) would give a patient too few or too many alerts in patients.parquet.
"""

from __future__ import annotations

import random

import polars as pl
import pytest

from cds_engine.alerts import SEVERITY_ORDER
from cds_engine.batch.table_screen import patient_counts

_COUNTED = ("alerts", *SEVERITY_ORDER, "cannot_assess")


def _reference(patients: pl.DataFrame, alerts: pl.DataFrame) -> pl.DataFrame:
    """The group-by and left join patient_counts used before (the definition of the counts)."""
    if alerts.height == 0:
        counts = pl.DataFrame(schema={"__unit": pl.Int64})
    else:
        counts = alerts.group_by("__unit").agg(
            pl.len().alias("alerts"),
            *[(pl.col("severity") == s).sum().cast(pl.Int64).alias(s) for s in SEVERITY_ORDER],
            (pl.col("kind") == "cannot-assess").sum().cast(pl.Int64).alias("cannot_assess"),
        )
    out = patients.join(counts, on="__unit", how="left", maintain_order="left")
    return out.with_columns(
        *[
            (pl.col(c) if c in out.columns else pl.lit(None)).cast(t).fill_null(0).alias(c)
            for c, t in zip(_COUNTED, [pl.UInt32, *[pl.Int64] * (len(_COUNTED) - 1)], strict=True)
        ],
    )


def _tables(seed: int, n: int, shuffled: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = random.Random(seed)
    lines = sorted(rng.sample(range(1, 10 * n + 2), n))  # source lines, gaps between them
    patients = pl.DataFrame(
        {"__unit": lines, "patient_id": [f"p{i}" for i in lines], "status": ["screened"] * n},
        schema={"__unit": pl.Int64, "patient_id": pl.String, "status": pl.String},
    )
    rows = []
    for line in lines:
        for _ in range(rng.choice([0, 0, 1, 2, 3, 5])):
            rows.append(
                {
                    "__unit": line,
                    "severity": rng.choice([*SEVERITY_ORDER, None]),
                    "kind": rng.choice(["finding", "cannot-assess", None]),
                }
            )
    if shuffled:
        rng.shuffle(rows)
    alerts = pl.DataFrame(rows, schema={"__unit": pl.Int64, "severity": pl.String, "kind": pl.String})
    return patients, alerts


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_counts_equal_the_group_by(seed: int, shuffled: bool) -> None:
    patients, alerts = _tables(seed, 300, shuffled)
    got, want = patient_counts(patients, alerts), _reference(patients, alerts)
    assert got.schema == want.schema
    assert got.equals(want)
    assert got.select(_COUNTED).sum().row(0) != (0,) * len(_COUNTED)  # the case is not vacuous


def test_no_alerts_and_patients_in_any_order() -> None:
    patients, alerts = _tables(7, 50, False)
    patients = patients.reverse()  # the counts follow the patient rows, whatever their order
    assert patient_counts(patients, alerts).equals(_reference(patients, alerts))
    empty = alerts.clear()
    got = patient_counts(patients, empty)
    assert got.equals(_reference(patients, empty))
    assert got.select(_COUNTED).sum().row(0) == (0,) * len(_COUNTED)


def test_first_and_last_patient_runs() -> None:
    """Alerts only on the first and on the last patient: both ends of the running totals."""
    patients = pl.DataFrame({"__unit": [3, 4, 9]}, schema={"__unit": pl.Int64})
    alerts = pl.DataFrame(
        {"__unit": [3, 3, 9], "severity": ["critical", "info", "critical"], "kind": ["finding"] * 3},
        schema={"__unit": pl.Int64, "severity": pl.String, "kind": pl.String},
    )
    got = patient_counts(patients, alerts)
    assert got["alerts"].to_list() == [2, 0, 1]
    assert got["critical"].to_list() == [1, 0, 1]
    assert got.equals(_reference(patients, alerts))
