"""condition_facts' shortcut for chunks where no row has two active conditions equals the general path.

Why a test of its own: the generated record rows of ``tests/test_columnar_facts.py`` give some
rows several conditions, so their chunks never take the shortcut (``_single_condition_columns``),
while the bench population (at most one condition a row) always does. Here the same rows are cut
to at most one active condition and run both ways — frames equal in values, nulls, dtypes and
the order of the cond columns: rows with none (null list, empty list), codes of several groups
or of none, resolved conditions beside, rows not numbered from 0 (the columnar path drops
fallback rows first).
"""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from cds_engine.batch import columnar_lists
from cds_engine.engine import Engine
from cds_engine.sources.table import clean_table, frame_from_cells
from conftest import RULES
from record_rows import record_rows
from test_columnar_facts import AS_OF

_SHORTCUT = columnar_lists._single_condition_columns


@pytest.fixture(scope="module")
def vocab():
    return Engine.from_dir(RULES).packs[0].vocabulary


def _frame(vocab, n: int, seed: int) -> pl.DataFrame:
    rows = record_rows(vocab, n, seed=seed)
    header = list(rows[0])
    frame = frame_from_cells(header, [(i + 2, [r[h] for h in header]) for i, r in enumerate(rows)])
    typed = clean_table(frame, AS_OF)[0]
    assert (typed["conditions"].list.len().max() or 0) > 1  # cut below: the shortcut's case
    typed = typed.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0)
        .then(pl.lit([], pl.List(pl.String)))
        .otherwise(pl.col("conditions").list.head(1))
        .alias("conditions")
    )
    return typed.with_columns(pl.int_range(typed.height, dtype=pl.Int64).alias(columnar_lists.ROW))


def _both(vocab, frame: pl.DataFrame, monkeypatch) -> pl.DataFrame:
    taken = []
    shortcut = _SHORTCUT

    def spy(frame: pl.DataFrame, active: pl.DataFrame):
        got = shortcut(frame, active)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(columnar_lists, "_single_condition_columns", spy)
    fast = columnar_lists.condition_facts(frame, vocab)
    monkeypatch.setattr(columnar_lists, "_single_condition_columns", lambda frame, active: None)
    general = columnar_lists.condition_facts(frame, vocab)
    assert taken == [True]
    # cond_history.* come in no fixed order either way (``unique()`` before their pivot)
    assert_frame_equal(fast, general, check_column_order=False)
    cond = [c for c in general.columns if c.startswith(("cond.", "cond_named."))]
    assert [c for c in fast.columns if c in cond] == cond
    return fast


@pytest.mark.parametrize("seed", [2, 19, 40])
def test_single_conditions_equal_the_general_path(vocab, seed: int, monkeypatch) -> None:
    frame = _frame(vocab, 3_000, seed)
    got = _both(vocab, frame, monkeypatch)
    flags = [c for c in got.columns if c.startswith("cond.")]
    assert flags and any(got[c].null_count() < got.height for c in flags)
    assert any((got[c] == False).any() for c in flags)  # noqa: E712  (false beside null and true)
    # rows not numbered from 0, some left out (the fallback rows)
    _both(vocab, frame.filter(pl.int_range(pl.len()) % 3 != 1), monkeypatch)


def test_several_active_conditions_take_the_general_path(vocab) -> None:
    frame = _frame(vocab, 500, 7).with_columns(
        pl.concat_list(pl.col("conditions"), pl.col("conditions")).alias("conditions")
    )
    active = pl.DataFrame({columnar_lists.ROW: [0], "groups": ["x"], "name": ["y"]})
    assert columnar_lists._single_condition_columns(frame, active) is None
