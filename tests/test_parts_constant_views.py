"""Constant columns found from their Arrow string views (batch/parts.py ``_same_views``) and the
sampled row check (``_constant``): the shortcut must be taken exactly for one-value columns.

Why: ``_with_constant_dictionaries`` hands a constant column to the Parquet writer as one value and
an index of zeros; a column taken for constant that is not would lose rows' values. The views only
prove a column constant (one view repeated), never the opposite, and chunks whose views repeat
each hold one string of their own — which must still be compared with each other.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from cds_engine.batch import parts as parts_module

_LONG = "f" * 64  # longer than a view's 12 inline bytes: the view points into a data buffer


def _alerts(n: int) -> pl.DataFrame:
    """Alert-like rows with the pack columns as polars literals, as ``vector_alerts`` leaves them."""
    i = pl.int_range(n, eager=True)
    return pl.DataFrame(
        {
            "patient_id": "p" + i.cast(pl.String),
            "kind": pl.Series(["alert", "missing"]).gather(i % 2),
            "evidence": '{"x":' + i.cast(pl.String) + "}",
            "row": i.cast(pl.Int64),
        }
    ).with_columns(
        pl.lit("baclofen").alias("pack_id"),
        pl.lit(_LONG).alias("pack_hash"),
        pl.lit("/data/records.parquet").alias("source"),
    )


def _encoded(frame: pl.DataFrame) -> set[str]:
    table = parts_module._with_constant_dictionaries(frame, parts_module._as_arrow(frame))
    return {f.name for f in table.schema if str(f.type).startswith("dictionary")}


def _bytes(frame: pl.DataFrame, tmp_path: Path, shortcut: bool) -> bytes:
    table = parts_module._as_arrow(frame)
    if shortcut:
        table = parts_module._with_constant_dictionaries(frame, table)
    path = tmp_path / f"final{shortcut}.parquet"
    with parts_module._parquet_writer(path, table.schema) as writer:
        writer.write_table(table)
    return path.read_bytes()


def test_literal_columns_are_proven_by_their_views(monkeypatch: pytest.MonkeyPatch) -> None:
    """The literals are found without comparing a row (the row-by-row check is not called)."""
    frame = _alerts(5000)
    table = parts_module._as_arrow(frame)
    assert all(parts_module._same_views(table.column(n)) for n in ("pack_id", "pack_hash", "source"))
    assert not parts_module._same_views(table.column("kind"))
    monkeypatch.setattr(parts_module, "_constant", lambda series: False)
    assert _encoded(frame) == {"pack_id", "pack_hash", "source"}


def test_literal_shortcut_gives_the_plain_file(tmp_path: Path) -> None:
    frame = _alerts(5000)
    assert _bytes(frame, tmp_path, True) == _bytes(frame, tmp_path, False)
    assert pl.from_arrow(pq.read_table(tmp_path / "finalTrue.parquet")).equals(frame)


def test_chunks_of_different_literals_are_not_one_value(tmp_path: Path) -> None:
    """Two chunks, each one view repeated, but of two strings: not constant (every file the same)."""
    first = _alerts(3000)
    second = _alerts(3000).with_columns(pl.lit("e" * 64).alias("pack_hash"), pl.lit("other").alias("pack_id"))
    frame = pl.concat([first, second], rechunk=False)
    table = parts_module._as_arrow(frame)
    assert table.column("pack_hash").num_chunks == 2  # else the test proves nothing
    assert not parts_module._same_views(table.column("pack_hash"))
    assert not parts_module._same_views(table.column("pack_id"))
    assert _encoded(frame) == {"source"}
    assert _bytes(frame, tmp_path, True) == _bytes(frame, tmp_path, False)
    assert pl.from_arrow(pq.read_table(tmp_path / "finalTrue.parquet")).equals(frame)


@pytest.mark.parametrize("at", [1, 2, 4, 1024, 4095])
def test_one_other_value_anywhere_is_seen(tmp_path: Path, at: int) -> None:
    """One row of a literal column changed (sampled rows or not: n // 1024 = 4 rows apart)."""
    frame = _alerts(5000)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == at)
        .then(pl.lit(_LONG[:-1] + "e"))
        .otherwise(pl.col("pack_hash"))
        .alias("pack_hash"),
        pl.when(pl.int_range(pl.len()) == at)
        .then(pl.lit(None, pl.String))
        .otherwise(pl.col("source"))
        .alias("source"),
    )
    assert _encoded(frame) == {"pack_id"}
    assert _bytes(frame, tmp_path, True) == _bytes(frame, tmp_path, False)
    assert pl.from_arrow(pq.read_table(tmp_path / "finalTrue.parquet")).equals(frame)


def test_equal_strings_in_different_views_are_still_constant() -> None:
    """Unequal views prove nothing: the same long text stored row by row is still one value."""
    frame = pl.DataFrame({"pack_hash": pl.Series([_LONG] * 3000, dtype=pl.String)})
    table = parts_module._as_arrow(frame)
    assert not parts_module._same_views(table.column("pack_hash"))  # a copy of the text per row
    assert _encoded(frame) == {"pack_hash"}
