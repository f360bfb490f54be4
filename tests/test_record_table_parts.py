"""Constant columns handed to the Parquet writers already dictionary-encoded (batch/parts.py):
the part files and the final tables must stay byte for byte what the plain tables give.

Why: the shortcut is taken only for a column with one value on every row and no null; a column
taken for constant that is not (a different value mid-way, a null) would lose rows' values, and a
stored Arrow schema naming the dictionary type would change what readers see.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from cds_engine.batch import parts as parts_module


def _frame(n: int, odd: dict[str, tuple[int, str | None]] | None = None) -> pl.DataFrame:
    """Alert-like rows; ``odd`` puts one other value (or a null) at a row of a constant column."""
    i = pl.int_range(n, eager=True)
    frame = pl.DataFrame(
        {
            "patient_id": "p" + i.cast(pl.String),
            "rule_id": pl.Series(["BAC-R01", "BAC-C02"]).gather(i % 2),
            "pack_id": pl.Series(["baclofen"] * n, dtype=pl.String),
            "pack_hash": pl.Series(["f" * 64] * n, dtype=pl.String),  # longer than a view's inline bytes
            "missing": pl.Series([""] * n, dtype=pl.String),
            "site_hash": pl.Series([None] * n, dtype=pl.String),
            "source": pl.Series(["/data/records.parquet"] * n, dtype=pl.String),
            "evidence": '{"x":' + i.cast(pl.String) + "}",
            "row": i.cast(pl.Int64),
        }
    )
    for name, (at, value) in (odd or {}).items():
        at_row = pl.int_range(pl.len()) == at
        frame = frame.with_columns(
            pl.when(at_row).then(pl.lit(value, pl.String)).otherwise(pl.col(name)).alias(name)
        )
    return frame


def _files(frame: pl.DataFrame, tmp_path: Path, shortcut: bool) -> list[bytes]:
    """The bytes of the final-table writer's file and the part writer's file."""
    table = parts_module._as_arrow(frame)
    if shortcut:
        table = parts_module._with_constant_dictionaries(frame, table)
    final, part = tmp_path / f"final{shortcut}.parquet", tmp_path / f"part{shortcut}.parquet"
    with parts_module._parquet_writer(final, table.schema) as writer:
        writer.write_table(table)
    parts_module._write_part(table, part)
    return [final.read_bytes(), part.read_bytes()]


@pytest.mark.parametrize(
    "n, odd",
    [
        (5000, None),
        (1, None),
        (0, None),
        (5000, {"pack_id": (2500, "other")}),  # the ends agree, the middle does not
        (5000, {"pack_hash": (1234, "f" * 63 + "e")}),
        (5000, {"source": (3, None)}),  # a null: not constant
        (5000, {"missing": (4999, "egfr")}),
    ],
)
def test_files_are_those_of_the_plain_table(tmp_path: Path, n: int, odd: dict | None) -> None:
    frame = _frame(n, odd)
    assert _files(frame, tmp_path, True) == _files(frame, tmp_path, False)
    back = pl.from_arrow(pq.read_table(tmp_path / "finalTrue.parquet"))
    assert back.equals(frame)


def test_a_table_stored_without_its_schema_gets_it(tmp_path: Path) -> None:
    """A column ``_as_arrow`` cannot pass as is (a categorical) makes it copy to ``to_arrow()``,
    which stores no schema of its own: the plain schema must be stored, not the dictionary one."""
    frame = _frame(3000).with_columns(pl.col("rule_id").cast(pl.Categorical).alias("kind"))
    assert parts_module._STORED not in (parts_module._as_arrow(frame).schema.metadata or {})
    assert _files(frame, tmp_path, True) == _files(frame, tmp_path, False)


def test_constant_columns_take_the_shortcut() -> None:
    """Not vacuous: the constant columns are the ones handed over encoded, the others are not."""
    frame = _frame(100, {"source": (50, "elsewhere")})
    table = parts_module._with_constant_dictionaries(frame, parts_module._as_arrow(frame))
    encoded = {f.name for f in table.schema if str(f.type).startswith("dictionary")}
    assert encoded == {"pack_id", "pack_hash", "missing"}


def _parts(tmp_path: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for k, n in enumerate(sizes):
        frame = _frame(n).with_columns(pl.col("row") + 10_000 * k)
        table = parts_module._with_constant_dictionaries(frame, parts_module._as_arrow(frame))
        paths.append(tmp_path / f"chunk{k}.parquet")
        with parts_module._parquet_writer(paths[-1], table.schema) as writer:
            writer.write_table(table)
    return paths


@pytest.mark.parametrize("kernel_copy", ["whole", "refused", "refused-half-way"])
def test_appended_one_by_one_is_the_concatenated_file(tmp_path: Path, monkeypatch, kernel_copy: str) -> None:
    """Parts appended as they come (the writer thread's way) give concat_parquet's bytes, whether
    the kernel copies (copy_file_range), refuses at once or refuses after a first block."""
    import os

    from cds_engine.batch import parquet_concat

    parts = _parts(tmp_path, [4000, 0, 2500, 1])
    whole = tmp_path / "whole.parquet"
    parquet_concat.concat_parquet(parts, whole)
    real, calls = os.copy_file_range, []

    def copy(src: int, dst: int, count: int, offset: int) -> int:
        calls.append(count)
        if kernel_copy == "refused" or (kernel_copy == "refused-half-way" and len(calls) > 1):
            raise OSError(18, "cross-device")
        return real(src, dst, min(count, 1000), offset)  # short copies: the loop must go on

    monkeypatch.setattr(parquet_concat.os, "copy_file_range", copy)
    appender = parquet_concat.ParquetAppender(tmp_path / "appended.parquet")
    for part in parts:
        appender.add(part)
    appender.finish()
    assert calls
    assert (tmp_path / "appended.parquet").read_bytes() == whole.read_bytes()


def test_final_tables_grow_as_chunks_are_written(tmp_path: Path) -> None:
    """The row groups are copied when a chunk's parts are written, not at the merge; a chunk of
    another schema drops the appended files (the merge then reads the parts)."""
    from cds_engine.batch.work import ChunkResult

    store = parts_module.PartStore(tmp_path / "out", "fingerprint", {})
    store.append_as_you_go()
    assert store.appended is not None
    patients = pl.DataFrame({"patient_id": ["a"], "source": ["s"], "row": [1]})
    errors = pl.DataFrame({"source": ["s"]}).clear()
    sizes = []
    for k in range(3):
        alerts = _frame(300).with_columns(pl.col("row") + 1000 * k)
        store.write(ChunkResult(f"c{k}", alerts, patients, errors))
        sizes.append(store.appended.path("alerts").stat().st_size)
    assert sizes[0] < sizes[1] < sizes[2]
    store.write(ChunkResult("c3", _frame(5).with_columns(pl.col("row").cast(pl.String)), patients, errors))
    assert store.appended.broken
    assert not store.appended.path("alerts").exists()


_STARTS = ["=", "+", "-", "@", "\t", "\r", "A", "a", "0", "/", "{", " ", "'", "é", "😀", "", "\x00", "~"]


def _texts(rng: random.Random, n: int) -> list[str | None]:
    return [
        None if rng.random() < 0.05
        else rng.choice(_STARTS) + "".join(rng.choices("=x1 +", k=rng.randrange(4)))
        for _ in range(n)
    ]


@pytest.mark.parametrize("seed", range(8))
def test_neutralised_in_memory_equals_the_lazy_sink(seed: int) -> None:
    """The chunk path's formula neutralisation gives the cells the merge's lazy path gives."""
    rng = random.Random(seed)
    frame = pl.DataFrame(
        {
            "mixed": _texts(rng, 400),
            "letters": [rng.choice(["Alpha", "beta", "", None]) for _ in range(400)],
            "one_formula": ["Zed"] * 399 + [rng.choice(["=1+1", "@SUM", "-2", "+x", "\tx", "\rx"])],
            "n": list(range(400)),
        },
        schema={"mixed": pl.String, "letters": pl.String, "one_formula": pl.String, "n": pl.Int64},
    )
    got = parts_module._neutralised_frame(frame)
    assert got.equals(parts_module._neutralised(frame.lazy()).collect())
    assert got["one_formula"][-1].startswith("'")
    assert got["letters"].equals(frame["letters"])


def _results(sizes: list[int]) -> list[Any]:
    from cds_engine.batch.work import ChunkResult

    out = []
    for k, n in enumerate(sizes):
        alerts = _frame(n).with_columns(pl.col("row") + 1000 * k)
        if n:  # a formula in a text column, and a null
            alerts = alerts.with_columns(
                pl.when(pl.col("row") % 7 == 0)
                .then(pl.lit("=cmd|' /C calc'!A0"))
                .otherwise(pl.col("missing"))
                .alias("missing")
            )
        patients = pl.DataFrame({"patient_id": [f"p{k}"], "source": ["s"], "row": [k]})
        errors = pl.DataFrame({"source": ["s"], "reason": ["x"]}).clear()
        out.append(ChunkResult(f"c{k}", alerts, patients, errors))
    return out


@pytest.mark.parametrize("sizes", [[300, 0, 250], [0, 120], [0, 0], [1]])
def test_csv_built_as_chunks_come_is_the_merged_csv(tmp_path: Path, sizes: list[int], monkeypatch) -> None:
    """alerts.csv appended chunk by chunk (serial runs) is byte for byte the csv the merge writes
    from alerts.parquet (pool and Dask runs, resumed runs) — header once, empty chunks included."""
    files = {}
    sunk: list[str] = []
    sink = parts_module.PartStore._sink

    def spy(self: Any, frame: pl.LazyFrame, name: str) -> None:
        sunk.append(name)
        sink(self, frame, name)

    monkeypatch.setattr(parts_module.PartStore, "_sink", spy)
    for appended in (True, False):
        out = tmp_path / f"out{appended}"
        store = parts_module.PartStore(out, "fingerprint", {}, ("parquet", "csv"))
        if appended:
            store.append_as_you_go()
        results = _results(sizes)
        for result in results:
            store.write(result)
        if appended:
            assert store.appended is not None and store.appended.csv_path.exists()
        store.merge([r.chunk_id for r in results], ("parquet", "csv"))
        if appended:  # the appended file became alerts.csv (the merge did not write another)
            assert store.appended is not None and not store.appended.csv_path.exists()
            assert "alerts.csv" not in sunk
        files[appended] = (out / "alerts.csv").read_bytes(), pl.read_parquet(out / "alerts.parquet")
    assert files[True][0] == files[False][0]  # the parquet files come from two writers: equal rows
    assert files[True][1].equals(files[False][1])
    formulas = sum(int(r.alerts["missing"].str.starts_with("=").sum()) for r in _results(sizes))
    assert files[True][0].count(b"'=cmd") == formulas


def test_a_chunk_is_written_when_write_returns(tmp_path: Path, monkeypatch) -> None:
    """alerts.csv's rows go on a thread beside the Parquet parts: write() returns only once both
    are on disk (the merge may come right after the last chunk)."""
    import time

    neutralised = parts_module._neutralised_frame

    def slow(frame: pl.DataFrame) -> pl.DataFrame:
        time.sleep(0.3)
        return neutralised(frame)

    monkeypatch.setattr(parts_module, "_neutralised_frame", slow)
    store = parts_module.PartStore(tmp_path / "out", "fingerprint", {}, ("csv",))
    store.append_as_you_go()
    assert store.appended is not None
    (result,) = _results([40])
    store.write(result)
    assert store.appended.chunks == ["c0"] and store.appended.csv
    assert store.appended.csv_path.read_bytes().count(b"\n") == 41  # the header and every row
