"""Row groups copied as bytes (batch/parquet_concat.py) and Arrow tables written without copying their
strings (batch/parts.py ``_as_arrow``): the files must be byte for byte what the ordinary writers give.

Why byte for byte: the final ``alerts.parquet`` of a serial screening is now made this way, and
"the same file" is the strongest statement of "nothing changed" for every reader (pyarrow, polars,
pandas, and whatever an analyst uses).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from cds_engine.batch import parts as parts_module
from cds_engine.batch.parquet_concat import NotConcatenable, concat_parquet


def _frame(n: int, seed: int = 0) -> pl.DataFrame:
    """Alert-like rows: repetitive texts (dictionary columns), long unique texts, nulls, integers."""
    i = pl.int_range(n, eager=True) + seed
    text = i.cast(pl.String)
    return pl.DataFrame(
        {
            "patient_id": "p" + text,
            "rule_id": "BAC-R0" + (i % 7).cast(pl.String),
            "severity": pl.Series(["critical", "warning", "info"]).gather(i % 3),
            "summary": pl.Series(["long text " * k for k in range(13)]).gather(i % 13) + text,
            "evidence": '{"egfr":' + (i % 97).cast(pl.String) + ',"x":"' + "y" * 40 + text + '"}',
            "site_hash": pl.Series([None] * n, dtype=pl.String),
            "notes": pl.select(pl.when(i % 4 == 0).then("note " + text)).to_series(),
            "alerts": (i % 5).cast(pl.UInt32),
            "row": i.cast(pl.Int64),
        }
    )


def _write(frame: pl.DataFrame, path: Path) -> None:
    table = parts_module._as_arrow(frame)
    with parts_module._parquet_writer(path, table.schema) as writer:
        writer.write_table(table)


@pytest.mark.parametrize("sizes", [[1000, 2500, 7], [3000], [0, 5, 0], [70_000, 1]])
def test_concatenated_parts_are_the_appended_file(tmp_path: Path, sizes: list[int]) -> None:
    frames = [_frame(n, seed=k * 100_000) for k, n in enumerate(sizes)]
    appended = tmp_path / "appended.parquet"
    tables = [parts_module._as_arrow(f) for f in frames]
    with parts_module._parquet_writer(appended, tables[0].schema) as writer:
        for table in tables:
            writer.write_table(table)
    parts = []
    for k, frame in enumerate(frames):
        parts.append(tmp_path / f"part{k}.parquet")
        _write(frame, parts[-1])
    merged = tmp_path / "merged.parquet"
    concat_parquet(parts, merged)
    assert merged.read_bytes() == appended.read_bytes()
    back = pl.read_parquet(merged)
    assert back.equals(pl.concat(frames), null_equal=True)
    assert pq.ParquetFile(merged).metadata.num_row_groups == pq.ParquetFile(appended).metadata.num_row_groups


def test_views_are_written_as_to_arrow_writes_them(tmp_path: Path) -> None:
    """Polars' string views written as such store the schema ``to_arrow()`` gives: same bytes."""
    frame = _frame(5000)
    plain, views = tmp_path / "plain.parquet", tmp_path / "views.parquet"
    table = frame.to_arrow()
    with parts_module._parquet_writer(plain, table.schema) as writer:
        writer.write_table(table)
    _write(frame, views)
    assert str(parts_module._as_arrow(frame).schema.field("summary").type) == "string_view"
    assert views.read_bytes() == plain.read_bytes()
    assert pq.read_schema(views).field("summary").type == table.schema.field("summary").type
    part_plain, part_views = tmp_path / "pp.parquet", tmp_path / "pv.parquet"
    parts_module._write_part(table, part_plain)
    parts_module._write_part(parts_module._as_arrow(frame), part_views)
    assert part_views.read_bytes() == part_plain.read_bytes()


def test_different_schemas_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    _write(pl.DataFrame({"x": [1, 2]}), a)
    _write(pl.DataFrame({"x": ["1", "2"]}), b)
    with pytest.raises(NotConcatenable):
        concat_parquet([a, b], tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_unknown_features_are_refused(tmp_path: Path) -> None:
    """A page index holds absolute offsets this module does not shift: refused, never mis-merged."""
    a = tmp_path / "a.parquet"
    pq.write_table(_frame(100).to_arrow(), a, write_page_index=True)
    with pytest.raises(NotConcatenable):
        concat_parquet([a, a], tmp_path / "out.parquet")
    not_parquet = tmp_path / "n.parquet"
    not_parquet.write_bytes(b"PAR1 not really PAR1")
    with pytest.raises(NotConcatenable):
        concat_parquet([not_parquet], tmp_path / "out.parquet")
