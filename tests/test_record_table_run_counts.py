"""patient_counts' run-length path (batch/table_screen.py ``_run_counts``, issue 20 item 2).

Why: a chunk's patient rows are consecutive lines, and their alert counts are now the run lengths
of the sorted alert positions that count towards each column, scattered into zeros (they were
running totals read at each patient's run). A slip there — a run's length taken as 1, a count put
at the wrong patient, a null severity counted, a column's dtype changed — gives a patient the
wrong counts in patients.parquet; these tests compare the counts with the group-by that defines
them, on tables shaped the way the screener makes them and on a whole ``cds-engine screen``.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

from cds_engine.alerts import SEVERITY_ORDER
from cds_engine.batch import table_screen
from cds_engine.batch.runner import ScreenOptions, run_screen
from cds_engine.batch.table_screen import _runs, patient_counts
from cds_engine.engine import Engine
from conftest import REPO, RULES
from record_rows import record_rows, write_csv

_COUNTED = ("alerts", *SEVERITY_ORDER, "cannot_assess")
_TYPES = dict(zip(_COUNTED, [pl.UInt32, *[pl.Int64] * (len(_COUNTED) - 1)], strict=True))


def _reference(patients: pl.DataFrame, alerts: pl.DataFrame, key: str = "__unit") -> pl.DataFrame:
    """The counts' definition: a group-by of the alerts, left-joined to the patient rows."""
    counts = alerts.group_by(key).agg(
        pl.len().alias("alerts"),
        *[(pl.col("severity") == s).sum().cast(pl.Int64).alias(s) for s in SEVERITY_ORDER],
        (pl.col("kind") == "cannot-assess").sum().cast(pl.Int64).alias("cannot_assess"),
    )
    out = patients.join(counts, on=key, how="left", maintain_order="left")
    return out.with_columns(pl.col(c).cast(t).fill_null(0) for c, t in _TYPES.items())


def _tables(seed: int, n: int, first: int, per_row: list[int]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n`` consecutive lines from ``first``; each with a number of alerts drawn from ``per_row``."""
    rng = random.Random(seed)
    lines = list(range(first, first + n))
    patients = pl.DataFrame({"__unit": lines, "patient_id": [f"p{i}" for i in lines]})
    rows = [
        {
            "__unit": line,
            "severity": rng.choice([*SEVERITY_ORDER, None]),
            "kind": rng.choice(["finding", "cannot-assess", None]),
        }
        for line in lines
        for _ in range(rng.choice(per_row))
    ]
    alerts = pl.DataFrame(rows, schema={"__unit": pl.Int64, "severity": pl.String, "kind": pl.String})
    return patients, alerts


@pytest.mark.parametrize("seed", range(8))
def test_run_counts_equal_the_group_by(seed: int) -> None:
    # runs of 0 to 12 alerts (several of one severity in a row: a run's length, not its presence)
    patients, alerts = _tables(seed, 500, [1, 0, 7, 150_001][seed % 4], [0, 1, 2, 3, 5, 12])
    assert _runs(alerts["__unit"], patients["__unit"]) is not None  # the run-length path is taken
    got, want = patient_counts(patients, alerts), _reference(patients, alerts)
    assert got.schema == want.schema
    assert got.equals(want)
    assert int(got["alerts"].sum()) == alerts.height
    assert (got.select(list(SEVERITY_ORDER)).max_horizontal() > 1).any()  # the case is not vacuous


def test_run_counts_ends_and_missing_columns() -> None:
    """Alerts on the first and last lines only, none critical, none cannot-assess; alerts read from
    several chunks (concatenated per pack, as table_alerts does)."""
    patients = pl.DataFrame({"__unit": [5, 6, 7, 8]}, schema={"__unit": pl.Int64})
    alerts = pl.concat(
        [
            pl.DataFrame(
                {"__unit": [5, 5, 5], "severity": ["warning", "warning", None], "kind": ["finding"] * 3},
                schema={"__unit": pl.Int64, "severity": pl.String, "kind": pl.String},
            ),
            pl.DataFrame(
                {"__unit": [8, 8], "severity": ["info", "warning"], "kind": ["finding", None]},
                schema={"__unit": pl.Int64, "severity": pl.String, "kind": pl.String},
            ),
        ],
        rechunk=False,
    )
    assert _runs(alerts["__unit"], patients["__unit"]) == 5
    got = patient_counts(patients, alerts)
    assert got["alerts"].to_list() == [3, 0, 0, 2]
    assert got["warning"].to_list() == [2, 0, 0, 1]
    assert got["info"].to_list() == [0, 0, 0, 1]
    assert got["critical"].to_list() == got["cannot_assess"].to_list() == [0, 0, 0, 0]
    assert got.equals(_reference(patients, alerts))


def test_run_across_chunks_is_one_run() -> None:
    """A patient's run split between two chunks of the alert table counts once, in full."""
    patients = pl.DataFrame({"__unit": [1, 2, 3]}, schema={"__unit": pl.Int64})
    schema = {"__unit": pl.Int64, "severity": pl.String, "kind": pl.String}
    alerts = pl.concat(
        [
            pl.DataFrame(
                {"__unit": [1, 2, 2], "severity": ["info"] * 3, "kind": ["finding"] * 3}, schema=schema
            ),
            pl.DataFrame(
                {"__unit": [2, 2, 3], "severity": ["info"] * 3, "kind": ["cannot-assess"] * 3}, schema=schema
            ),
        ],
        rechunk=False,
    )
    assert alerts["__unit"].n_chunks() == 2
    got = patient_counts(patients, alerts)
    assert got["alerts"].to_list() == [1, 4, 1]
    assert got["info"].to_list() == [1, 4, 1]
    assert got["cannot_assess"].to_list() == [0, 2, 1]
    assert got.equals(_reference(patients, alerts))


def test_unsorted_alerts_and_declined_shapes() -> None:
    """Alerts out of order are sorted first; keys with a gap take the binary-search path: the same counts."""
    patients, alerts = _tables(11, 200, 40, [0, 1, 4])
    shuffled = alerts.sample(fraction=1.0, shuffle=True, seed=3)
    assert patient_counts(patients, shuffled).equals(_reference(patients, alerts))
    gap = patients.filter(pl.col("__unit") != 90)
    assert _runs(alerts["__unit"], gap["__unit"]) is None
    assert patient_counts(gap, alerts.filter(pl.col("__unit") != 90)).equals(_reference(gap, alerts))


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocab = Engine.from_dir(RULES).packs[0].vocabulary
    records = write_csv(tmp_path_factory.mktemp("records") / "records.csv", record_rows(vocab, 700, seed=43))
    out = tmp_path_factory.mktemp("run") / "out"
    opts = ScreenOptions(
        inputs=[records], out=out, rules=RULES, as_of="2026-01-15T12:00:00+00:00", progress=False,
        rows_per_chunk=200, formats=("parquet",),
    )
    run_screen(opts)
    return out


def test_screen_patient_counts_equal_its_alert_table(screened: Path) -> None:
    _assert_counts_equal_alert_table(screened)


def _assert_counts_equal_alert_table(screened: Path) -> None:
    """End to end: each patient row's counts are the group-by of alerts.parquet on (source, row)."""
    alerts = pl.read_parquet(screened / "alerts.parquet")
    patients = pl.read_parquet(screened / "patients.parquet")
    assert alerts.height > 0 and patients.height > 0
    keyed = patients.with_columns(pl.concat_str("source", pl.col("row").cast(pl.String)).alias("__k"))
    want = _reference(
        keyed.drop(_COUNTED),
        alerts.with_columns(pl.concat_str("source", pl.col("row").cast(pl.String)).alias("__k")),
        key="__k",
    )
    got = keyed.select(want.columns)
    assert got.select(_COUNTED).equals(want.select(_COUNTED).cast(got.select(_COUNTED).schema))
    assert int(got["alerts"].sum()) == alerts.height


def test_screen_of_column_wise_rows_takes_the_run_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixture above leaves some rows to the per-patient path (its chunks' lines have gaps, so
    they take the binary search); the bench's population with an assumed order is screened column by
    column, so every chunk's counts come from :func:`_run_counts` — and still equal the alert table's."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from screen import record_population  # the (g) bench's generator: every row screened by column

    calls: list[int] = []
    run_counts = table_screen._run_counts

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return run_counts(*args, **kwargs)

    monkeypatch.setattr(table_screen, "_run_counts", counted)
    vocab = Engine.from_dir(RULES).packs[0].vocabulary
    records = tmp_path / "records.parquet"
    record_population(vocab, 700, seed=5).write_parquet(records)
    out = tmp_path / "out"
    run_screen(ScreenOptions(
        inputs=[records], out=out, rules=RULES, as_of="2026-01-15T12:00:00+00:00", progress=False,
        rows_per_chunk=200, formats=("parquet",), assume_order="baclofen 5 mg PO TID",
    ))
    assert len(calls) == 4  # 700 rows, 200 a chunk: every chunk
    _assert_counts_equal_alert_table(out)


def test_a_wrong_sorted_flag_is_refused_not_undercounted() -> None:
    """Alerts flagged sorted that are not (nothing in src sets the flag; a future change might):
    the run counts refuse instead of keeping one of a patient's two runs."""
    patients, alerts = _tables(5, 50, 20, [0, 1, 4])
    reordered = pl.concat([alerts.slice(alerts.height // 2), alerts.slice(0, alerts.height // 2)])
    flagged = reordered.with_columns(reordered["__unit"].rechunk().set_sorted())
    assert flagged["__unit"].flags["SORTED_ASC"]  # the wrong flag is really there
    with pytest.raises(RuntimeError, match="not sorted"):
        patient_counts(patients, flagged)
