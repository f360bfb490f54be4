"""The final tables of a serial run, appended chunk by chunk, equal the ones merged from the parts.

``batch/parts.py`` writes a serial run's alerts and patients tables as the chunks finish and only
renames them at the end; any doubt (a resumed chunk, a schema that changes, a failed write) and
the tables are built from the parts instead. Both ways must give the same files, cell for cell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cds_engine.batch import parts as parts_module
from cds_engine.batch.report import rule_counts
from cds_engine.batch.runner import ScreenOptions, run_screen
from cds_engine.engine import Engine
from conftest import RULES
from record_rows import record_rows, write_csv

AS_OF = "2026-01-15T12:00:00+00:00"
TABLES = ("alerts.parquet", "patients.parquet", "errors.csv")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocab = Engine.from_dir(RULES).packs[0].vocabulary
    rows = record_rows(vocab, 900, seed=11)
    return write_csv(tmp_path_factory.mktemp("records") / "records.csv", rows)


def _screen(path: Path, out: Path, **kw: object) -> dict:
    opts = ScreenOptions(
        inputs=[path], out=out, rules=RULES, as_of=AS_OF, progress=False, rows_per_chunk=200, **kw
    )
    return run_screen(opts).summary


def _same_tables(a: Path, b: Path) -> None:
    for name in TABLES:
        if name.endswith(".parquet"):
            left, right = pl.read_parquet(a / name), pl.read_parquet(b / name)
        else:
            left, right = (pl.read_csv(p / name, infer_schema=False) for p in (a, b))
        assert left.schema == right.schema, name
        assert left.height > 0 or name == "errors.csv", name
        assert left.equals(right, null_equal=True), name


def _spy_finish(monkeypatch) -> list[bool]:
    used: list[bool] = []
    finish = parts_module._Appended.finish

    def spy(self, chunk_ids: list[str]) -> bool:
        used.append(finish(self, chunk_ids))
        return used[-1]

    monkeypatch.setattr(parts_module._Appended, "finish", spy)
    return used


def test_appended_tables_equal_merged_tables(records: Path, tmp_path: Path, monkeypatch) -> None:
    used = _spy_finish(monkeypatch)
    appended = _screen(records, tmp_path / "appended")
    assert used == [True]  # the serial run's tables were the appended ones
    with monkeypatch.context() as m:  # the merge-from-parts path, as pool and Dask runs take it
        m.setattr(parts_module.PartStore, "append_as_you_go", lambda self: None)
        merged = _screen(records, tmp_path / "merged")
    assert appended["chunks"] == merged["chunks"] == 5
    assert appended["counts"] == merged["counts"]
    _same_tables(tmp_path / "appended", tmp_path / "merged")


def test_resumed_run_merges_from_the_parts(records: Path, tmp_path: Path, monkeypatch) -> None:
    """A chunk redone after a kill: the appended file lacks the resumed chunks, so it is not used."""
    _screen(records, tmp_path / "fresh")
    out = tmp_path / "resumed"
    _screen(records, out, keep_parts=True)
    done = sorted((out / ".parts").glob("*.done"))
    assert len(done) == 5
    done[2].unlink()  # as if the run had been killed while writing the third chunk
    used = _spy_finish(monkeypatch)
    summary = _screen(records, out)
    assert used == [False]  # the resumed chunks are not in the appended file: merged from the parts
    assert summary["chunks_resumed"] == 4
    assert not (out / ".parts").exists()
    _same_tables(tmp_path / "fresh", out)


def _tables(
    alerts: dict[str, list[Any]], patients: dict[str, list[Any]], folder: Path, chunk: str
) -> dict[str, Any]:
    """What PartStore.write hands the appended files: each chunk's part files, in the final encoding."""
    files = {}
    for name, data in (("alerts", alerts), ("patients", patients)):
        table = parts_module._as_arrow(pl.DataFrame(data))
        files[name] = folder / f"{chunk}.{name}.parquet"
        with parts_module._parquet_writer(files[name], table.schema) as writer:
            writer.write_table(table)
    return files


def test_schema_change_drops_the_appended_file(tmp_path: Path) -> None:
    appended = parts_module._Appended(tmp_path)
    appended.add("c1", _tables({"a": [1]}, {"p": ["x"]}, tmp_path, "c1"))
    assert appended.chunks == ["c1"]  # the first chunk was appended
    appended.add("c2", _tables({"a": ["1"]}, {"p": ["y"]}, tmp_path, "c2"))
    assert not appended.finish(["c1", "c2"])
    assert not list(tmp_path.glob("final.*"))


def test_missing_chunk_drops_the_appended_file(tmp_path: Path) -> None:
    appended = parts_module._Appended(tmp_path)
    appended.add("c1", _tables({"a": [1]}, {"p": ["x"]}, tmp_path, "c1"))
    assert appended.chunks == ["c1"]
    assert not appended.finish(["c0", "c1"])
    assert not list(tmp_path.glob("final.*"))


def test_report_counts_from_chunk_tallies_equal_the_alert_table(records: Path, tmp_path: Path) -> None:
    """The report's alerts per rule and severity, added up from the chunks, equal a count of the file."""
    out = tmp_path / "tallied"
    _screen(records, out, keep_parts=True)
    tallies = [t for m in (out / ".parts").glob("*.done") for t in json.loads(m.read_text())["rules"]]
    columns = ["rule_id", "title", "critical", "warning", "info", "total"]
    from_file = rule_counts(out / "alerts.parquet").select(columns).sort("rule_id", "title")
    from_chunks = rule_counts(out / "alerts.parquet", tallies).select(columns).sort("rule_id", "title")
    assert from_file.height > 3
    assert from_file.equals(from_chunks)
    assert int(from_chunks["total"].sum()) == pl.read_parquet(out / "alerts.parquet").height
