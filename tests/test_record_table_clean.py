"""clean_table (sources/table.py) in two passes equals the one-pass cleaning it replaced.

Why: the reasons a row is rejected and the notes of dropped values are now built only for the
columns where a check fired; a slip (a reason left out, a note of the wrong column, a value not
dropped, another order of the texts) would reject, keep or annotate a patient's row differently.
The one-pass cleaning is kept here as the definition.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime

import polars as pl
import pytest

from cds_engine.sources import table as table_module
from cds_engine.sources.table import COLUMNS, clean_table, column_spec

AS_OF = datetime(2026, 1, 15, tzinfo=UTC)


def _reference(frame: pl.DataFrame, as_of: datetime) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """The one-pass clean_table: every reason and note built on every row."""
    t = table_module
    ignored = [c for c in frame.columns if c != "__line" and column_spec(c) is None]
    exprs, bad_exprs, note_exprs = [], [], []
    schema = frame.schema
    for name in frame.columns:
        spec = column_spec(name)
        if spec is None:
            continue
        col, dtype = pl.col(name), schema[name]
        if spec.type in ("string", "code"):
            text = col.cast(pl.String).str.strip_chars()
            value = pl.when(text != "").then(text)
            bad = pl.lit(False)
        elif spec.type == "number":
            value, bad = t._parse_number(col, dtype)
        elif spec.type == "bool":
            value, bad = t._parse_bool(col) if dtype != pl.Boolean() else (col, pl.lit(False))
        elif spec.type == "date":
            value, bad = t._parse_date(col, dtype)
        elif spec.type == "datetime":
            value, bad = t._parse_datetime(col, dtype)
        else:
            value, bad = t._parse_list(col, dtype, numbers=spec.type == "numbers")
        bad_exprs.append(
            pl.when(bad).then(
                pl.lit(f"column {name}: ")
                + col.cast(pl.String).str.slice(0, 40)
                + pl.lit(f" is not a valid {spec.type}")
            )
        )
        odd = t._impossible(spec, value, name, as_of)
        if odd is not None:
            note = pl.lit(f"{name} dropped (") + value.cast(pl.String) + pl.lit(")")
            note_exprs.append(pl.when(odd).then(note))
            value = pl.when(odd).then(pl.lit(None)).otherwise(value)
        exprs.append(value.alias(name))
    typed = frame.select(
        pl.col("__line"),
        *exprs,
        t._joined_or_null(bad_exprs).alias("__error"),
        t._joined_or_null(note_exprs).alias("__notes"),
    )
    if "patient_id" not in typed.columns:
        typed = typed.with_columns(pl.lit(None, pl.String).alias("patient_id"))
    typed = typed.with_columns(
        pl.when(pl.col("patient_id").is_null())
        .then(pl.lit("no patient_id: the row names no patient"))
        .otherwise(pl.col("__error"))
        .alias("__error")
    )
    rejected = typed.filter(pl.col("__error").is_not_null()).select("__line", "patient_id", "__error")
    return typed.filter(pl.col("__error").is_null()).drop("__error"), rejected, ignored


_CELLS = {
    "string": ["", "  ", "female", " male ", "HD", "xyz", "<", ">=", "new", "hold", None],
    "code": ["", "http://loinc.org|62238-1|eGFR", " 123 ", None],
    "number": ["", "12", " -3 ", "0", "131", "800", "abc", "nan", "inf", "4.5", None],
    "bool": ["", "yes", "N", "1.0", "maybe", " true ", None],
    "date": ["", "2020-02-30", "1950-06-01", "2030-01-01", "yesterday", " 1990-01-01 ", None],
    "datetime": ["", "2025-12-01T10:00:00Z", "2025-12-01 10:00", "2025-12-01", "2025-13-01", None],
    "codes": ["", "a;b", " ; x ;", "rxnorm|1292|baclofen;;", None],
    "strings": ["", "a;b", " ", None],
    "numbers": ["", "1;2", "1;-2", "x;1", " 3 ; 4 ", None],
}


def _text_frame(seed: int, n: int, columns: list[str]) -> pl.DataFrame:
    rng = random.Random(seed)
    data: dict[str, list[object]] = {"__line": list(range(1, n + 1))}
    for name in columns:
        kind = COLUMNS[name].type
        data[name] = [rng.choice(_CELLS[kind]) if rng.random() < 0.4 else _CELLS[kind][2] for _ in range(n)]
    data["patient_id"] = [None if rng.random() < 0.03 else f"p{i}" for i in range(n)]
    data["unknown_column"] = ["x"] * n
    return pl.DataFrame(data, schema={"__line": pl.Int64, **{k: pl.String for k in data if k != "__line"}})


def _equal(frame: pl.DataFrame) -> None:
    got, want = clean_table(frame, AS_OF), _reference(frame, AS_OF)
    assert got[0].equals(want[0])
    assert got[0].schema == want[0].schema
    assert got[1].equals(want[1])
    assert got[2] == want[2]


@pytest.mark.parametrize("seed", range(6))
def test_text_cells_clean_as_before(seed: int) -> None:
    """CSV cells of every column type: valid, blank, unparseable, out of range, missing."""
    # not the lists of numbers: the one-pass cleaning raised for any table with such a column
    columns = sorted(c for c in COLUMNS if c != "patient_id" and COLUMNS[c].type != "numbers")
    frame = _text_frame(seed, 300, columns)
    _equal(frame)
    typed, rejected, _ = clean_table(frame, AS_OF)
    assert rejected.height and typed["__notes"].drop_nulls().len()  # reasons and notes were made


def test_typed_columns_clean_as_before() -> None:
    """A Parquet table's typed columns (numbers, dates, lists, booleans) with impossible values."""
    rng = random.Random(3)
    n = 400
    frame = pl.DataFrame(
        {
            "__line": list(range(1, n + 1)),
            "patient_id": [f"p{i}" if i % 50 else None for i in range(n)],
            "age_years": [rng.choice([None, -1.0, 40.0, 131.0, float("nan")]) for _ in range(n)],
            "weight_kg": [rng.choice([0, 70, 701, None]) for _ in range(n)],
            "birth_date": [rng.choice([date(1950, 1, 1), date(2027, 1, 1), None]) for _ in range(n)],
            "egfr_date": [rng.choice([datetime(2025, 1, 1), None]) for _ in range(n)],
            "sex": [rng.choice(["female", "robot", "", None]) for _ in range(n)],
            "deceased": [rng.choice([True, False, None]) for _ in range(n)],
            "medications": [rng.choice([["a", " "], [], None, ["rxnorm|1292"]]) for _ in range(n)],
        }
    )
    _equal(frame)
    _equal(frame.head(0))
    _equal(frame.select("__line", "sex"))  # no patient_id column at all


def test_lists_of_numbers_are_cleaned() -> None:
    """A negative dose in a schedule is dropped with a note; the one-pass cleaning raised for
    every table with such a column (a list was cast to a string for the note of every row)."""
    frame = pl.DataFrame(
        {
            "__line": [1, 2, 3, 4],
            "patient_id": ["a", "b", "c", "d"],
            "order_schedule": ["1;2", "1;-2", "", "x"],
        }
    )
    with pytest.raises(pl.exceptions.InvalidOperationError):
        _reference(frame, AS_OF)
    typed, rejected, _ = clean_table(frame, AS_OF)
    assert rejected.rows() == [(4, "d", "column order_schedule: x is not a valid numbers")]
    assert typed["order_schedule"].to_list() == [[1.0, 2.0], None, []]
    assert typed["__notes"].to_list() == [None, "order_schedule dropped (1.0;-2.0)", None]
    valid = frame.head(1)
    assert clean_table(valid, AS_OF)[0]["order_schedule"].to_list() == [[1.0, 2.0]]
