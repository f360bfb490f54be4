"""The final tables' encoding options (batch/parts.py, issue 20 item 2): which columns carry
min/max statistics, and that the cheaper options change no value.

Why: the alert table's wording columns (kind, rule_id, tier_id, category, severity, title) hold
nearly every value in every chunk, so their statistics let no reader skip a row group; they are
no longer written, and the encoders are handed 8,192 rows at a time. The columns a filter can skip
on (pack, source, ``row``, the patients' counts) keep theirs, the tables read back equal to the
tables written with pyarrow's defaults, and a serial run still builds its final tables by copying
the parts' row groups (one row group per chunk) — after a resume too, from the parts.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from cds_engine.batch import parts as parts_module
from cds_engine.batch import runner as runner_module
from cds_engine.batch.runner import ScreenOptions, run_screen
from cds_engine.engine import Engine
from conftest import RULES
from record_rows import record_rows, write_csv

AS_OF = "2026-01-15T12:00:00+00:00"
WORDING = {"kind", "rule_id", "tier_id", "category", "severity", "title"}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocab = Engine.from_dir(RULES).packs[0].vocabulary
    rows = record_rows(vocab, 600, seed=31)
    return write_csv(tmp_path_factory.mktemp("records") / "records.csv", rows)


def _columns(path: Path, group: int = 0) -> dict[str, object]:
    meta = pq.ParquetFile(path).metadata
    rg = meta.row_group(group)
    return {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}


#: the frames each chunk produced (ChunkResult), in the order the serial run wrote them
_PRODUCED: dict[str, list[pl.DataFrame]] = {"alerts": [], "patients": []}


@pytest.fixture(scope="module")
def serial_run(records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    opts = ScreenOptions(
        inputs=[records], out=out, rules=RULES, as_of=AS_OF, progress=False, rows_per_chunk=150,
        keep_parts=True,
    )
    real = parts_module.PartStore.write

    def write(self, result) -> None:  # the chunk's frames as produced, before any encoding
        _PRODUCED["alerts"].append(result.alerts.clone())
        _PRODUCED["patients"].append(result.patients.clone())
        real(self, result)

    for frames in _PRODUCED.values():
        frames.clear()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(parts_module.PartStore, "write", write)
        run_screen(opts)
    return out


def test_statistics_only_where_a_row_group_can_be_skipped(serial_run: Path) -> None:
    columns = _columns(serial_run / "alerts.parquet")
    assert set(columns) >= WORDING
    for name in WORDING:
        assert columns[name].statistics is None, name  # every chunk holds (nearly) every value
        assert "DICTIONARY" in str(columns[name].encodings), name  # still dictionary-encoded
    for name in ("pack_id", "pack_version", "pack_hash", "source", "row", "missing", "not_assessed"):
        assert columns[name].statistics is not None, name
        assert columns[name].statistics.has_min_max, name
    for name in ("patient_id", "summary", "evidence"):
        assert columns[name].statistics is None, name
    patients = _columns(serial_run / "patients.parquet")
    for name in ("row", "status", "alerts", "critical", "warning", "info", "cannot_assess", "source"):
        assert patients[name].statistics is not None, name


def test_row_statistics_are_each_chunks_range(serial_run: Path) -> None:
    """The statistics kept are right: each row group's ``row`` min/max are its rows' own."""
    meta = pq.ParquetFile(serial_run / "alerts.parquet").metadata
    table = pl.read_parquet(serial_run / "alerts.parquet")
    assert meta.num_row_groups == 4  # 600 records, 150 a chunk: the parts' row groups, copied
    start = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        rows = table["row"].slice(start, rg.num_rows)
        stats = _columns(serial_run / "alerts.parquet", g)["row"].statistics
        assert (stats.min, stats.max) == (rows.min(), rows.max())
        start += rg.num_rows
    assert start == table.height


def test_the_tables_read_back_as_the_chunks_produced_them(serial_run: Path, tmp_path: Path) -> None:
    """The options change the encoding only: alerts.parquet and patients.parquet read back (polars
    and pyarrow alike) equal the frames the chunks produced, before any encoding — and the same
    frames written with pyarrow's defaults (statistics on every column, 1,024 rows a batch) read
    back equal too."""
    assert len(_PRODUCED["alerts"]) == 4  # 600 records, 150 a chunk
    for name in ("alerts", "patients"):
        want = pl.concat(_PRODUCED[name], how="vertical")
        assert want.height > 0
        got = pl.read_parquet(serial_run / f"{name}.parquet")
        assert got.schema == want.schema
        assert got.equals(want), name
        table = pq.read_table(serial_run / f"{name}.parquet")
        assert pl.from_arrow(table).equals(want), name
        assert str(table.schema.field("patient_id").type) == "large_string"
        plain = tmp_path / f"{name}.parquet"
        pq.write_table(want.to_arrow(), plain)
        assert pl.read_parquet(plain).equals(got)
        assert pq.read_table(plain).equals(table)
    alerts = pl.concat(_PRODUCED["alerts"], how="vertical")
    assert alerts["severity"].n_unique() >= 2 and alerts["rule_id"].n_unique() >= 5  # a real table


def test_a_resumed_run_gives_the_same_tables(records: Path, serial_run: Path, tmp_path: Path) -> None:
    """Parts of the final encoding resumed: the merge reads them back into the same tables."""
    out = tmp_path / "out"
    opts = ScreenOptions(
        inputs=[records], out=out, rules=RULES, as_of=AS_OF, progress=False, rows_per_chunk=150,
        keep_parts=True,
    )
    run_screen(opts)
    for done in sorted((out / ".parts").glob("*.done"))[2:]:  # as if killed after two chunks
        done.unlink()
    for name in parts_module.OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    run_screen(opts)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks_resumed"] == 2
    for name in ("alerts.parquet", "patients.parquet"):
        assert pl.read_parquet(out / name).equals(pl.read_parquet(serial_run / name))
    for name in ("alerts.csv", "errors.csv"):
        assert (out / name).read_bytes() == (serial_run / name).read_bytes()


def test_parts_format_names_this_encoding(records: Path, tmp_path: Path, monkeypatch) -> None:
    """Parts of the previous layout (wording statistics written) are never resumed beside these:
    the format is in the run's fingerprint, so finished chunks of a v3 run are redone."""
    assert parts_module.PARTS_FORMAT == "parquet-lz4-dict-v4"
    out = tmp_path / "out"
    opts = ScreenOptions(
        inputs=[records], out=out, rules=RULES, as_of=AS_OF, progress=False, rows_per_chunk=150,
        keep_parts=True,
    )
    with monkeypatch.context() as m:  # a run of the previous layout, killed after two chunks
        m.setattr(runner_module, "PARTS_FORMAT", "parquet-lz4-dict-v3")
        run_screen(opts)
    old = json.loads((out / ".parts" / "run.json").read_text())["fingerprint"]
    for done in sorted((out / ".parts").glob("*.done"))[2:]:
        done.unlink()
    run_screen(opts)
    assert json.loads((out / ".parts" / "run.json").read_text())["fingerprint"] != old
    assert json.loads((out / "summary.json").read_text())["chunks_resumed"] == 0
