"""A "cannot assess" report's severity: the highest rank among the tiers it stands for on the row.

:func:`cds_engine.evaluators.vector._highest_rank` tests each distinct rank once (an OR of its
tiers' flags) instead of taking the max over one Int8 column per tier; it must give that max
exactly, null where no flag holds and with null flags counted as not holding.
"""

from __future__ import annotations

import random

import polars as pl

from cds_engine.evaluators import vector


def _reference(flags: list[tuple[int, pl.Expr]]) -> pl.Expr:
    """The expression _missing_rows used before: the max of "rank where the flag holds"."""
    return pl.max_horizontal([pl.when(f).then(pl.lit(r, pl.Int8)) for r, f in flags])


def test_highest_rank_is_the_max_of_the_ranks_whose_flag_holds():
    rng = random.Random(7)
    n, width = 400, 9
    frame = pl.DataFrame(
        {f"f{j}": [rng.choice([True, False, False, None]) for _ in range(n)] for j in range(width)},
        schema={f"f{j}": pl.Boolean for j in range(width)},
    )
    for _ in range(30):
        k = rng.randint(1, width)
        flags = [(rng.randint(1, 3), pl.col(f"f{j}")) for j in rng.sample(range(width), k)]
        got = frame.select(vector._highest_rank(flags).alias("r"))["r"]
        want = frame.select(_reference(flags).alias("r"))["r"]
        assert got.dtype == pl.Int8
        assert got.to_list() == want.to_list(), flags


def test_no_flag_holds_gives_null():
    frame = pl.DataFrame({"a": [False, None], "b": [False, False]})
    flags = [(3, pl.col("a")), (1, pl.col("b"))]
    assert frame.select(vector._highest_rank(flags).alias("r"))["r"].to_list() == [None, None]
    assert pl.select(vector._highest_rank([]).alias("r"))["r"].to_list() == [None]
