"""The missing-root and open-tier bit masks in the narrowest unsigned type (``vector._mask``).

The masks were a sum of one Int64 column per flag; ``_mask`` ORs one column per flag of the
narrowest type that holds every bit. The numbers must be the same at every width boundary.
"""

from __future__ import annotations

import random

import polars as pl
import pytest

from cds_engine.evaluators import vector


def _sum_of_bits(flags: list[pl.Expr]) -> pl.Expr:
    """The masks' former expression."""
    zero = pl.lit(0, pl.Int64)
    return pl.sum_horizontal(
        [pl.when(f).then(pl.lit(1 << j, pl.Int64)).otherwise(zero) for j, f in enumerate(flags)]
    )


@pytest.mark.parametrize(
    ("count", "dtype"),
    [(1, pl.UInt8), (8, pl.UInt8), (9, pl.UInt16), (16, pl.UInt16), (17, pl.UInt32), (32, pl.UInt32),
     (33, pl.Int64), (vector._MASK_BITS, pl.Int64)],
)  # fmt: skip
def test_mask_values_and_type(count: int, dtype: pl.DataType) -> None:
    rng = random.Random(count)
    rows = 300
    frame = pl.DataFrame({f"f{j}": [rng.random() < 0.4 for _ in range(rows)] for j in range(count)})
    frame = frame.with_columns(pl.lit(True).alias(f"f{count - 1}").head(1).append(frame[f"f{count - 1}"][1:]))
    everything = pl.DataFrame({f"f{j}": [True] for j in range(count)})  # every bit set: the top value
    flags = [pl.col(f"f{j}") for j in range(count)]
    for data in (frame, everything):
        got = data.select(vector._mask(flags).alias("m"))["m"]
        want = data.select(_sum_of_bits(flags).alias("m"))["m"]
        assert got.dtype == dtype
        assert got.cast(pl.Int64).to_list() == want.to_list()
    assert everything.select(vector._mask(flags))[0, 0] == (1 << count) - 1


def test_bits_of_no_flags_is_zero() -> None:
    assert pl.select(vector._bits([]).alias("m")).item() == 0
