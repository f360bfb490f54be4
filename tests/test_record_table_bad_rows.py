"""A bad record-table row is reported with its row while the rest is screened (never an abort).

Why a test of its own: two rows aborted whole screens.
* A date polars parses or holds but Python's date (the fact model's) cannot — ``0000-01-01`` in a
  CSV, a Parquet Date of Int32 -2**31 or far before year 1 — raised "year 0 is out of range" (or
  a panic) in the per-patient path, and the column-wise path took the patient to be 2,024 years
  old. Such a date is now an invalid date: its row is rejected with the reason an unreadable
  date (``2000-02-30``) gets, in errors.csv, and every other row is screened as before.
* A chunk whose rows were all rejected (``--chunk-rows 1`` on a bad row) derived a table of no
  row, which failed with a SchemaError. Any chunk size now gives the same output files.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from cds_engine.batch.columnar_facts import columnar_facts
from cds_engine.batch.runner import ScreenOptions, run_screen
from cds_engine.engine import Engine
from cds_engine.evaluators.vector import VectorPack
from cds_engine.sources.table import clean_table, frame_from_cells
from conftest import RULES
from record_rows import record_rows, write_csv

AS_OF = datetime(2024, 2, 29, 12, 0, tzinfo=UTC)
TEXTS = ("alerts.csv", "errors.csv")  # byte-identical whatever the chunks
TABLES = ("alerts.parquet", "patients.parquet")  # one row group per chunk: equal frames, not bytes


@pytest.fixture(scope="module")
def pack():
    return next(p for p in Engine.from_dir(RULES).running_packs if p.id == "baclofen")


# the review's adversarial rows (/tmp/review1/harness.py), smaller: leap-day and edge births,
# invalid and out-of-range dates, duplicate and empty list entries, several orders of one class
_BIRTHS = ["2000-02-29", "1900-02-28", "0001-01-01", "0000-01-01", "9999-12-31", "2000-02-30", "",
           "2025-03-01", " 1950-07-04 ", "1950-07-04T23:59:59Z", "1896-02-29", "2026-01-16"]  # fmt: skip


def _adversarial(vocab, n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    drugs = sorted({f"{s}|{c}" for (k, s, c), _ in vocab.codes.items() if k == "drug_class"})
    bac = "rxnorm|197391"
    meds = ["", ";", f"{bac};{bac}", f"{bac};;{bac}; ;{bac}", f"{drugs[0]};{drugs[0]};{drugs[1]}",
            ";".join(drugs[:5]), "baclofen;Baclofen", "unknown thing"]  # fmt: skip
    rows = record_rows(vocab, n, seed=seed)
    for i, r in enumerate(rows):
        r["birth_date"] = _BIRTHS[i % len(_BIRTHS)] if rng.random() < 0.7 else r["birth_date"]
        if rng.random() < 0.5:
            r["medications"] = rng.choice(meds)
        if rng.random() < 0.2:
            r["home_medications"] = rng.choice(meds)
        if rng.random() < 0.2:
            r["allergies"] = rng.choice(["", ";", "peanut;peanut", "baclofen;rxnorm|1292", " "])
    return rows


def _screen(path: Path, out: Path, **kw) -> dict[str, str]:
    """sha256 of each text output of a screen of ``path`` (the run must finish)."""
    result = run_screen(
        ScreenOptions(inputs=[path], out=out, rules=RULES, as_of=AS_OF.isoformat(), progress=False, **kw)
    )
    assert result.summary["counts"]["read"] > 0
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in TEXTS}


def _errors(out: Path) -> pl.DataFrame:
    return pl.read_csv(out / "errors.csv", infer_schema=False)


def _typed_and_rejected(cells: dict[str, list[str]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    header = list(cells)
    n = len(cells[header[0]])
    frame = frame_from_cells(header, [(i + 2, [cells[h][i] for h in header]) for i in range(n)])
    typed, rejected, _ = clean_table(frame, AS_OF)
    return typed, rejected


# ── dates Python cannot hold: rejected like an unreadable date ─────────────────────────────


@pytest.mark.parametrize(
    ("column", "text"),
    [
        ("birth_date", "0000-01-01"),
        ("last_dose_change", "0000-12-31"),
        ("egfr_date", "0000-06-01T10:00:00Z"),
        ("egfr_date", "0001-01-01T00:00:00+05:00"),  # year 0 in UTC
        ("egfr_date", "9999-12-31T23:00:00-05:00"),  # year 10000 in UTC
    ],
)
def test_a_date_python_cannot_hold_is_not_a_valid_date(column: str, text: str) -> None:
    cells = {
        "patient_id": ["p1", "p2", "p3"],
        "egfr": ["40", "40", "40"],
        column: [text, "2000-02-30", "2001-02-03"],
    }
    cells.setdefault("egfr_date", ["2024-01-01"] * 3)
    typed, rejected = _typed_and_rejected(cells)
    assert typed["patient_id"].to_list() == ["p3"]
    kind = "datetime" if column.endswith("_date") and column != "birth_date" else "date"
    assert rejected["__error"].to_list() == [
        f"column {column}: {text} is not a valid {kind}",
        f"column {column}: 2000-02-30 is not a valid {kind}",  # the existing invalid-date reason
    ]


def test_edge_dates_python_holds_are_kept() -> None:
    cells = {
        "patient_id": ["p1", "p2"],
        "birth_date": ["0001-01-01", "2000-02-29"],
        "egfr": ["40", "40"],
        "egfr_date": ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"],
    }
    typed, rejected = _typed_and_rejected(cells)
    assert rejected.height == 0
    assert typed["birth_date"].to_list() == [date(1, 1, 1), date(2000, 2, 29)]


def test_typed_dates_beyond_range_are_rejected_without_a_panic() -> None:
    """A Parquet Date beyond chrono's range panicked on any conversion; beyond 1..9999 it crashed."""
    days = pl.Series([-(2**31), -(10**7), 2**31 - 1, 0, 2_932_897], dtype=pl.Int32).cast(pl.Date)
    frame = pl.DataFrame(
        {
            "__line": pl.Series(range(1, 6), dtype=pl.Int64),
            "patient_id": [f"p{i}" for i in range(5)],
            "birth_date": days,
            "last_dose_change": days.reverse(),
        }
    )
    typed, rejected, _ = clean_table(frame, AS_OF)
    assert typed.height == 0
    assert rejected["__error"].to_list() == [
        "column birth_date: -2147483648 (out of range) is not a valid date; "
        "column last_dose_change: +10000-01-01 is not a valid date",
        "column birth_date: -25410-12-06 is not a valid date",
        "column birth_date: 2147483647 (out of range) is not a valid date; "
        "column last_dose_change: 2147483647 (out of range) is not a valid date",
        "column last_dose_change: -25410-12-06 is not a valid date",
        "column birth_date: +10000-01-01 is not a valid date; "
        "column last_dose_change: -2147483648 (out of range) is not a valid date",
    ]


def test_screen_reports_a_year_zero_row_and_screens_the_rest(pack, tmp_path: Path) -> None:
    rows = _adversarial(pack.vocabulary, 30, seed=5)
    rows[4]["birth_date"] = "0000-01-01"
    bad_dir, invalid_dir = tmp_path / "bad", tmp_path / "invalid"
    bad_dir.mkdir()
    invalid_dir.mkdir()
    bad = write_csv(bad_dir / "records.csv", rows)
    # the same rows with that birth date unreadable instead: the existing invalid-date path
    invalid = write_csv(
        invalid_dir / "records.csv", [*rows[:4], {**rows[4], "birth_date": "2000-02-30"}, *rows[5:]]
    )
    for path in (bad, invalid):
        _screen(path, path.parent / "out")
    errors = [_errors(p.parent / "out") for p in (bad, invalid)]
    line = errors[0].filter(pl.col("patient_id") == rows[4]["patient_id"])
    assert line["row"].to_list() == ["6"]
    assert line["reason"].to_list() == ["column birth_date: 0000-01-01 is not a valid date"]
    # the other rows' errors, alerts and patient rows: the same as when that row is unreadable
    reason = pl.col("reason")
    same = errors[1].with_columns(
        pl.when(pl.col("row") == "6").then(reason.str.replace("2000-02-30", "0000-01-01")).otherwise(reason)
    )
    assert errors[0].drop("source").equals(same.drop("source"))
    for name in ("alerts.parquet", "patients.parquet"):
        a, b = (pl.read_parquet(p.parent / "out" / name).drop("source") for p in (bad, invalid))
        assert a.height > 0 and a.equals(b), name
        assert rows[4]["patient_id"] not in a["patient_id"].to_list()


def test_screen_of_a_parquet_date_beyond_range(pack, tmp_path: Path) -> None:
    """The review's i32clean.parquet: 30 rows, one birth date an Int32 -2**31 cast to Date."""
    rows = record_rows(pack.vocabulary, 30, seed=4)
    for r in rows:
        for k in ("previous_daily_dose_mg", "last_dose_time", "egfr", "order_excipient_groups", "deceased"):
            r[k] = ""
    days = [-(2**31) if i == 5 else 10_000 + i * 300 for i in range(len(rows))]
    frame = pl.DataFrame(rows).with_columns(pl.Series("birth_date", days, dtype=pl.Int32).cast(pl.Date))
    frame.write_parquet(tmp_path / "records.parquet")
    _screen(tmp_path / "records.parquet", tmp_path / "out", assume_order="baclofen 5 mg PO TID")
    errors = _errors(tmp_path / "out")
    assert errors.select("row", "patient_id", "reason").rows() == [
        ("6", "p5", "column birth_date: -2147483648 (out of range) is not a valid date")
    ]
    patients = pl.read_parquet(tmp_path / "out" / "patients.parquet")
    assert patients.height == 29 and (patients["status"] == "screened").all()


# ── chunks whose every row is rejected ─────────────────────────────────────────────────────


def test_columnar_facts_of_no_row(pack) -> None:
    """A table of no row derives no fact (an empty order mapping typed order_present as Int64)."""
    cells = {"patient_id": ["p1"], "birth_date": ["2000-02-30"]}
    typed, rejected = _typed_and_rejected(cells)
    assert typed.height == 0 and rejected.height == 1
    vp = VectorPack.compile(pack)
    got = columnar_facts(
        typed, vp.columns, pack.vocabulary, pack.context, AS_OF, pack.spec.pack.triggers, None
    )
    assert got.facts.height == 0 and got.fallback.len() == 0


def test_any_chunk_size_gives_the_same_outputs(pack, tmp_path: Path) -> None:
    rows = _adversarial(pack.vocabulary, 24, seed=11)
    path = write_csv(tmp_path / "records.csv", rows)
    runs = {size: _screen(path, tmp_path / f"c{size}", rows_per_chunk=size) for size in (100_000, 7, 3, 1)}
    errors = _errors(tmp_path / "c100000")
    assert errors.height >= 3  # rejected rows, among them a one-row chunk of its own at size 1
    assert "column birth_date: 0000-01-01 is not a valid date" in errors["reason"].to_list()
    assert pl.read_parquet(tmp_path / "c100000" / "alerts.parquet").height > 0
    for size, digests in runs.items():
        assert digests == runs[100_000], size
        for name in TABLES:
            a, b = (pl.read_parquet(tmp_path / f"c{n}" / name) for n in (size, 100_000))
            assert a.schema == b.schema and a.equals(b), (size, name)


@pytest.mark.parametrize(
    "dtype", [pl.Datetime("us", "UTC"), pl.Datetime("ms"), pl.Datetime("us", "America/New_York")]
)
def test_typed_date_times_beyond_range_are_rejected_without_a_panic(dtype: pl.Datetime) -> None:
    per_ms = 1 if dtype.time_unit == "ms" else 1000
    first = -62_135_596_800_000 * per_ms  # 0001-01-01T00:00 UTC
    stored = [-(2**63) + 1, first - 1, first, 0, 253_402_300_800_000 * per_ms]  # the last: year 10000
    frame = pl.DataFrame(
        {
            "__line": pl.Series(range(1, 6), dtype=pl.Int64),
            "patient_id": [f"p{i}" for i in range(5)],
            "egfr": [40.0] * 5,
            "egfr_date": pl.Series(stored, dtype=pl.Int64).cast(
                pl.Datetime(dtype.time_unit, dtype.time_zone)
            ),
        }
    )
    typed, rejected, _ = clean_table(frame, AS_OF)
    # 0001-01-01T00:00 local in New York is year 1 in UTC too; at UTC itself it is the first instant
    assert typed["patient_id"].to_list() == ["p2", "p3"]
    assert rejected["patient_id"].to_list() == ["p0", "p1", "p4"]
    assert all(r.startswith("column egfr_date: ") for r in rejected["__error"])
    assert all(r.endswith(" is not a valid datetime") for r in rejected["__error"])
    assert typed["egfr_date"].dt.year().to_list() == [1, 1970]


@pytest.mark.parametrize(
    ("zone", "instant"), [("America/New_York", "0001-01-01T03:00:00"), ("Asia/Tokyo", "9999-12-31T23:00:00")]
)
def test_a_local_day_outside_python_is_not_a_valid_date(zone: str, instant: str) -> None:
    """A zoned date-time within Python's range in UTC whose local day (a birth date's) is not."""
    stamp = pl.Series([instant, "2000-01-01T12:00:00"]).str.to_datetime(time_unit="us", time_zone="UTC")
    frame = pl.DataFrame(
        {
            "__line": pl.Series([1, 2], dtype=pl.Int64),
            "patient_id": ["p0", "p1"],
            "birth_date": stamp.dt.convert_time_zone(zone),
        }
    )
    typed, rejected, _ = clean_table(frame, AS_OF)
    assert typed["patient_id"].to_list() == ["p1"]
    assert rejected["patient_id"].to_list() == ["p0"]
    assert rejected["__error"].str.ends_with(" is not a valid date").all()
