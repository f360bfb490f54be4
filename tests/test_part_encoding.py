"""The final tables' page format and codec (batch/parts.py ``_parquet_writer``, issue 20 item 2).

Why these are pinned: both were measured as levers and kept as they are (bench/RESULTS.md,
session "partwrite"), for reasons a speed test would not show.

* Data pages **V1**. V2 pages took ~4-6 % of ``PartStore.write``'s CPU (~1 % of the whole
  screening) — but fastparquet (pandas' other engine, 2026.9) fails on V2 files whose integer
  columns hold a null past 20,000 rows, or whose non-dictionary text columns hold many nulls:
  the patients' ``notes`` (usually null) and ``row`` of bundle sources (None) are such columns.
  An output file some reader cannot open is not worth 1 %.
* Codec **zstd**. lz4_raw / snappy cut the writer's CPU but not the whole command's by the
  4 % required, and the files grew 77-300 %.

Each page's type is read from its own header (parquet.thrift ``PageHeader.type``; pyarrow's
metadata and the footer's ``encoding_stats`` say DATA_PAGE for V2 pages too), with the Thrift
reader of batch/parquet_concat.py, which the merge relies on anyway.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from cds_engine.batch import parts as parts_module
from cds_engine.batch.parquet_concat import _footer, _Reader

#: parquet.thrift PageType
DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3
#: field ids: FileMetaData.row_groups, RowGroup.columns, ColumnChunk.meta_data; ColumnMetaData's
#: total_compressed_size, data_page_offset, dictionary_page_offset; PageHeader's type and
#: compressed_page_size
_ROW_GROUPS, _COLUMNS, _META = 4, 1, 3
_TOTAL_COMPRESSED, _DATA_OFFSET, _DICTIONARY_OFFSET = 7, 9, 11
_PAGE_TYPE, _PAGE_COMPRESSED = 1, 3


def _frame(n: int) -> pl.DataFrame:
    """Alert- and patient-like columns, nulls in the integer and the no-dictionary text columns."""
    i = pl.int_range(n, eager=True)
    return pl.DataFrame(
        {
            "patient_id": "p" + i.cast(pl.String),
            "severity": pl.Series(["critical", "warning", "info"]).gather(i % 3),
            "summary": "text " + (i % 101).cast(pl.String),
            "notes": pl.select(pl.when(i % 50_000 == 7).then(pl.lit("note"))).to_series(),
            "alerts": (i % 5).cast(pl.Int64),
            "row": pl.select(pl.when(i % 3 != 0).then(i)).to_series().cast(pl.Int64),
        }
    )


def _write(frame: pl.DataFrame, path: Path) -> None:
    table = parts_module._as_arrow(frame)
    with parts_module._parquet_writer(path, table.schema) as writer:
        writer.write_table(table)


def _page_types(path: Path) -> set[int]:
    """The type of every page of every column chunk, from the page headers."""
    meta, _ = _footer(path)
    data = path.read_bytes()
    types: set[int] = set()
    for group in meta.get(_ROW_GROUPS)[1]:
        for chunk in group.get(_COLUMNS)[1]:
            column = chunk.get(_META)
            start = column.get(_DICTIONARY_OFFSET) or column.get(_DATA_OFFSET)
            end = start + column.get(_TOTAL_COMPRESSED)
            while start < end:
                reader = _Reader(data[start:end])
                header = reader.struct()
                types.add(header.get(_PAGE_TYPE))
                start += reader.pos + header.get(_PAGE_COMPRESSED)
            assert start == end  # every byte of the chunk is a page: none was missed
    return types


def test_final_tables_write_data_pages_v1(tmp_path: Path) -> None:
    """Every data page V1 (none V2): the files stay readable by fastparquet too (see the module)."""
    path = tmp_path / "t.parquet"
    frame = _frame(60_000)
    _write(frame, path)
    types = _page_types(path)
    assert DATA_PAGE_V2 not in types
    assert types == {DATA_PAGE, DICTIONARY_PAGE}
    assert pl.read_parquet(path).equals(frame, null_equal=True)


def test_final_tables_are_zstd(tmp_path: Path) -> None:
    """zstd on every column: the faster codecs measured grew the files by 77-300 %."""
    path = tmp_path / "t.parquet"
    _write(_frame(1000), path)
    group = pq.ParquetFile(path).metadata.row_group(0)
    assert {group.column(k).compression for k in range(group.num_columns)} == {"ZSTD"}
