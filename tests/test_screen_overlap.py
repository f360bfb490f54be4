"""The first record-table chunk is read while the engine is built (issue 20 item 2).

``runner._run_screen`` plans the inputs and reads and cleans the first Parquet chunk on a thread
while the rules load and compile. The outputs must be the ones of a run that reads every chunk
where it is reached, rejected rows of that first chunk included; the early read must be the one
used (not read twice); and a usage error must still fail before any output, with the same message
and no thread left running.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cds_engine.batch import runner
from cds_engine.batch import work as work_module
from cds_engine.batch.runner import ScreenError, ScreenOptions, run_screen
from cds_engine.engine import Engine
from conftest import RULES
from record_rows import record_rows

AS_OF = "2026-01-15T12:00:00+00:00"


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Parquet record table of three chunks (250 rows each), with unreadable rows in the first."""
    vocab = Engine.from_dir(RULES).packs[0].vocabulary
    rows = record_rows(vocab, 700, seed=31)
    for i in (3, 40, 260):  # two rejected rows in chunk 1, one in chunk 2
        rows[i]["egfr"] = "not a number"
    path = tmp_path_factory.mktemp("overlap") / "records.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


def _screen(table: Path, out: Path, **kw: object) -> tuple[int, dict[str, pl.DataFrame], dict]:
    opts = ScreenOptions(
        inputs=[table], out=out, rules=RULES, as_of=AS_OF, progress=False, rows_per_chunk=250, **kw
    )
    code = run_screen(opts).exit_code
    frames = {n: pl.read_parquet(out / n) for n in ("alerts.parquet", "patients.parquet")}
    frames["errors.csv"] = pl.read_csv(out / "errors.csv", infer_schema=False)
    summary = json.loads((out / "summary.json").read_text())
    for k in ("seconds", "rate", "finished"):
        summary.pop(k)
    return code, frames, summary


@pytest.mark.parametrize("prefetch", ["1", "0"])
def test_early_read_gives_the_outputs_of_a_late_read(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefetch: str
) -> None:
    monkeypatch.setenv("CDS_SCREEN_PREFETCH", prefetch)
    reads: list[str] = []
    real = work_module._table_frame

    def counted(chunk: Any, out: Any) -> Any:  # a spy on the reader
        reads.append(chunk.id)
        return real(chunk, out)

    monkeypatch.setattr(work_module, "_table_frame", counted)
    early = _screen(table, tmp_path / "early")
    assert sorted(reads) == ["parquet000-000000", "parquet000-000001", "parquet000-000002"]  # each read once
    reads.clear()
    monkeypatch.setattr(runner, "_first_read", lambda *a: None)  # every chunk read where it is reached
    late = _screen(table, tmp_path / "late")
    assert len(reads) == 3
    assert early[0] == late[0] == runner.EXIT_REJECTED
    assert early[2] == late[2]
    lines = early[1]["errors.csv"]["row"].cast(pl.Int64)
    assert {4, 41, 261} <= set(lines.to_list())  # the rows made unreadable above, two in the first chunk
    for name, frame in early[1].items():
        other = late[1][name]
        assert frame.schema == other.schema and frame.equals(other, null_equal=True), name


def test_a_resumed_first_chunk_is_not_screened_again(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    first = _screen(table, out, keep_parts=True)
    again = _screen(table, out, keep_parts=True)  # every chunk done: the early read goes unused
    assert again[2]["chunks_resumed"] == 3
    again[2].pop("chunks_resumed")
    first[2].pop("chunks_resumed")
    assert first[2] == again[2]
    for name, frame in first[1].items():
        assert frame.equals(again[1][name], null_equal=True), name


def test_bad_rules_fail_before_any_output_with_no_thread_left(
    table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner.plan_inputs

    def slow(paths: Any) -> Any:  # the planning thread still busy when the rules have failed
        time.sleep(0.5)
        return real(paths)

    monkeypatch.setattr(runner, "plan_inputs", slow)
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    pack = next(rules.glob("*/pack.yaml"))
    pack.write_text(pack.read_text(encoding="utf-8") + "\n  : [unclosed\n", encoding="utf-8")
    with pytest.raises(Exception) as expected:  # the message the engine gives, wrapped as before
        Engine.from_dir(rules)
    out = tmp_path / "o"
    with pytest.raises(ScreenError) as got:
        run_screen(
            ScreenOptions(
                inputs=[table], out=out, rules=rules, as_of=AS_OF, progress=False, rows_per_chunk=250
            )
        )
    assert str(got.value) == str(expected.value)
    assert not out.exists()
    # the screen's own threads (other tests' pools, e.g. cds-argon2_*, may still be alive in a full run)
    screen_threads = ("cds-plan", "cds-read", "cds-parts", "cds-csv")
    assert not [t for t in threading.enumerate() if t.name.startswith(screen_threads)]


def test_an_unreadable_first_chunk_is_reported_as_before(tmp_path: Path) -> None:
    bad = tmp_path / "records.parquet"
    good = pl.DataFrame({"patient_id": ["p1"], "egfr": ["20"]})
    good.write_parquet(bad)
    data = bad.read_bytes()
    bad.write_bytes(data[:8] + b"\0" * 64 + data[72:])  # the footer intact, the first page damaged
    out = tmp_path / "o"
    result = run_screen(ScreenOptions(inputs=[bad], out=out, rules=RULES, as_of=AS_OF, progress=False))
    errors = pl.read_csv(out / "errors.csv", infer_schema=False)
    assert result.exit_code == runner.EXIT_REJECTED
    assert errors.height == 1 and errors["reason"][0].startswith("Parquet file cannot be read")
