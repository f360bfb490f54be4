"""The record-table reader keeps the rest of a row group for the next chunk (batch/work.py): never
rows of a file that has since been replaced, and nothing kept between runs."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cds_engine.batch import work


def _write(path: Path, value: float) -> None:
    table = pa.table({"egfr": pa.array([value] * 300)})
    pq.write_table(table, path, row_group_size=150, compression="none", use_dictionary=False,
                   write_statistics=False)


def test_a_file_replaced_with_the_same_size_and_mtime_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "records.parquet"
    _write(path, 30.0)
    before = os.stat(path)
    work.forget_decoded()
    assert work._parquet_rows(str(path), 0, 100)["egfr"].unique().to_list() == [30.0]
    assert work._LAST_DECODED, "the rest of the first row group is kept for the next chunk"
    replacement = tmp_path / "new.parquet"
    _write(replacement, 90.0)
    os.replace(replacement, path)  # as cp -p / rsync -t / tar would leave it: same size, same mtime
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    assert work._parquet_rows(str(path), 100, 200)["egfr"].unique().to_list() == [90.0]
    work.forget_decoded()


def test_consecutive_chunks_equal_the_slices_and_a_run_keeps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "records.parquet"
    frame = pl.DataFrame({"i": range(1000), "s": [f"p{i}" for i in range(1000)]})
    frame.write_parquet(path, row_group_size=125)
    work.forget_decoded()
    got = [work._parquet_rows(str(path), a, min(a + 100, 1000)) for a in range(0, 1000, 100)]
    assert pl.concat(got).equals(frame)
    work.forget_decoded()
    assert not work._LAST_DECODED and not work._GROUP_BOUNDS
