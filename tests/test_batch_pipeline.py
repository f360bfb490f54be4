"""The serial record-table run as a pipeline, and the cheaper steps under it (issue 20 item 2).

``runner._run_serial`` reads and derives the next chunk on a thread while the current one is
evaluated; the two halves (``prepare_chunk`` / ``finish_chunk``) must give exactly what
``process_chunk`` gives, in chunk order, and a failure in either half must fail the run. The
final Parquet tables keep their schema while dictionaries and statistics are written only for the
repetitive columns. The helpers that replaced joins and per-chunk lookups must equal what they
replaced.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from cds_engine.batch import columnar_lists, runner
from cds_engine.batch import work as work_module
from cds_engine.batch.columnar_facts import _beside
from cds_engine.batch.inputs import csv_chunks
from cds_engine.batch.runner import ScreenOptions, run_screen
from cds_engine.batch.work import RunConfig, finish_chunk, prepare_chunk, process_chunk
from cds_engine.engine import Engine
from conftest import REPO, RULES
from record_rows import record_rows, write_csv

AS_OF = "2026-01-15T12:00:00+00:00"


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocab = Engine.from_dir(RULES).packs[0].vocabulary
    rows = record_rows(vocab, 700, seed=23)
    return write_csv(tmp_path_factory.mktemp("records") / "records.csv", rows)


def _cfg() -> RunConfig:
    return RunConfig(rules=str(RULES.resolve()), engine="vector", as_of=AS_OF)


def test_two_halves_equal_process_chunk(records: Path) -> None:
    cfg = _cfg()
    for chunk in csv_chunks(records, 250, 0):
        whole = process_chunk(chunk, cfg)
        halves = finish_chunk(prepare_chunk(chunk, cfg))
        assert whole.counts == halves.counts
        assert whole.rules == halves.rules
        for name in ("alerts", "patients", "errors"):
            left, right = getattr(whole, name), getattr(halves, name)
            assert left.schema == right.schema and left.equals(right, null_equal=True), name


def test_serial_run_prepares_the_next_chunk_before_finishing_this_one(
    records: Path, tmp_path: Path, monkeypatch
) -> None:
    import threading

    chunk_ids = [c.id for c in csv_chunks(records, 200, 0)]
    entered = {c: threading.Event() for c in chunk_ids}
    finished: list[str] = []
    overlapped: list[bool] = []

    def prepare(chunk: Any, cfg: RunConfig) -> Any:
        entered[chunk.id].set()
        return prepare_chunk(chunk, cfg)

    def finish(prepared: Any) -> Any:
        k = chunk_ids.index(prepared.chunk.id)
        if k + 1 < len(chunk_ids):  # a sequential loop would never start the next read before this returns
            overlapped.append(entered[chunk_ids[k + 1]].wait(timeout=20))
        finished.append(prepared.chunk.id)
        return finish_chunk(prepared)

    monkeypatch.setattr(runner, "prepare_chunk", prepare)
    monkeypatch.setattr(runner, "finish_chunk", finish)
    opts = ScreenOptions(
        inputs=[records], out=tmp_path / "out", rules=RULES, as_of=AS_OF, progress=False, rows_per_chunk=200
    )
    summary = run_screen(opts).summary
    assert finished == chunk_ids and summary["chunks"] == 4  # every chunk once, in order
    assert overlapped == [True, True, True]
    monkeypatch.undo()
    plain = tmp_path / "plain"
    monkeypatch.setenv("CDS_SCREEN_PREFETCH", "0")  # the switch: each chunk read when reached
    calls: list[str] = []
    monkeypatch.setattr(runner, "prepare_chunk", lambda c, cfg: calls.append(c.id))  # must not be used
    run_screen(
        ScreenOptions(
            inputs=[records], out=plain, rules=RULES, as_of=AS_OF, progress=False, rows_per_chunk=200
        )
    )
    for name in ("alerts.parquet", "patients.parquet"):
        left, right = pl.read_parquet(tmp_path / "out" / name), pl.read_parquet(plain / name)
        assert left.schema == right.schema and left.equals(right, null_equal=True), name
    assert calls == []


def test_a_failed_read_fails_the_serial_run(records: Path, tmp_path: Path, monkeypatch) -> None:
    calls = []

    def prepare(chunk: Any, cfg: RunConfig) -> Any:
        calls.append(chunk.id)
        if len(calls) == 3:
            raise OSError("disk gone")
        return prepare_chunk(chunk, cfg)

    monkeypatch.setattr(runner, "prepare_chunk", prepare)
    opts = ScreenOptions(
        inputs=[records], out=tmp_path / "out", rules=RULES, as_of=AS_OF, progress=False, rows_per_chunk=200
    )
    with pytest.raises(OSError, match="disk gone"):
        run_screen(opts)
    assert len(list((tmp_path / "out" / ".parts").glob("*.done"))) == 2  # the finished chunks are kept


def test_final_parquet_keeps_its_schema_with_fewer_dictionaries(records: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_screen(ScreenOptions(inputs=[records], out=out, rules=RULES, as_of=AS_OF, progress=False))
    meta = pq.ParquetFile(out / "alerts.parquet").metadata
    columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i) for i in range(17)}
    assert columns["pack_id"].statistics is not None and columns["row"].statistics is not None
    assert columns["rule_id"].statistics is None  # wording columns: every chunk holds nearly every value
    assert columns["evidence"].statistics is None  # min/max of JSON text: not written
    assert "PLAIN_DICTIONARY" not in str(columns["evidence"].encodings)
    assert "DICTIONARY" in str(columns["rule_id"].encodings)
    schema = pq.read_schema(out / "alerts.parquet")
    assert {str(schema.field(n).type) for n in schema.names if n != "row"} == {"large_string"}
    assert str(schema.field("row").type) == "int64"


def test_beside_equals_the_join() -> None:
    out = pl.DataFrame({"__r": [0, 2, 5], "a": [1, 2, 3]})
    aligned = pl.DataFrame({"__r": [0, 2, 5], "b": ["x", None, "z"]})
    shuffled = pl.DataFrame({"__r": [5, 0], "b": ["z", "x"]})
    for extra in (aligned, shuffled):
        joined = out.join(extra, on="__r", how="left", maintain_order="left")
        assert _beside(out, extra).equals(joined, null_equal=True)


def test_code_table_asks_once_per_code_and_owner() -> None:
    asked: list[str] = []

    def info(code: str) -> dict[str, Any]:
        asked.append(code)
        return {"n": len(code)}

    owner, other = object(), object()
    schema = {"n": pl.Int64}
    first = columnar_lists._code_table(pl.Series(["a", "bb", None, "a"]), info, schema, ("t", owner))
    again = columnar_lists._code_table(pl.Series(["bb", "ccc"]), info, schema, ("t", owner))
    assert sorted(asked) == ["a", "bb", "ccc"]  # "bb" was not asked twice
    assert dict(first.iter_rows()) == {"a": 1, "bb": 2} and dict(again.iter_rows()) == {"bb": 2, "ccc": 3}
    columnar_lists._code_table(pl.Series(["a"]), info, schema, ("t", other))  # another vocabulary
    assert asked.count("a") == 2


def test_bench_screen_only_names_items() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import screen  # bench/screen.py
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert screen._items("a, g") == frozenset({"a", "g"})
    want = screen._wanted(screen._items("a"))
    assert want("a") and not want("g")
    assert screen._wanted(None)("f")
    with pytest.raises(Exception, match="unknown item"):
        screen._items("a,x")


def test_work_module_keeps_process_chunk_for_workers() -> None:
    """Pool and Dask workers still run the whole chunk in one call (picklable, one function)."""
    assert work_module.process_chunk is process_chunk
    assert runner.process_chunk is process_chunk
