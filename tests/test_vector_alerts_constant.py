"""Fact columns with one value on every row: the fired tiers' rows take a literal, not a copy.

``vector._constant_facts`` finds the fact columns of ``wide`` that hold one value (all null, or
no null and all equal; a float not zero and not NaN, whose texts a min == max test cannot vouch
for), and ``_finding_parts`` gives the fired tiers' rows those columns as literals. The alert
table must be the same as with every column taken row by row (``_constant_facts`` returning
nothing): compared exactly here on frames whose constant columns are made to break it.
"""

from __future__ import annotations

import math
import random

import polars as pl
import pytest
from tests.vector_helpers import random_facts

from cds_engine.evaluators import vector
from cds_engine.evaluators.vector import VectorPack, vector_alerts


@pytest.fixture(scope="module")
def vp(pack) -> VectorPack:
    return VectorPack.compile(pack)


def _kinds(vp: VectorPack, kind: pl.DataType) -> list[str]:
    return [n for n, t in vp.columns.items() if t == kind]


def test_constant_facts_finds_exactly_the_one_value_columns() -> None:
    columns = {
        "a": pl.Float64(),
        "b": pl.Float64(),
        "c": pl.Float64(),
        "d": pl.Float64(),
        "e": pl.String(),
        "f": pl.String(),
        "g": pl.Boolean(),
        "h": pl.Float64(),
        "i": pl.Float64(),
        "j": pl.Boolean(),
    }
    wide = pl.DataFrame(
        {
            "a": [5.0, 5.0, 5.0],  # one value
            "b": [None, None, None],  # all null: one value
            "c": [0.0, -0.0, 0.0],  # equal to min/max, printed apart: not taken as one
            "d": [math.nan, math.nan, math.nan],  # NaN: left to the per-row path
            "e": ['say "hi"', 'say "hi"', 'say "hi"'],
            "f": ["x", "x", None],  # a null among values: two values
            "g": [True, True, True],
            "h": [1.0, 2.0, 1.0],
            "i": [0.0, 0.0, 0.0],  # zero: left to the per-row path too
            "j": [True, False, True],
        },
        schema=columns,
    )
    found = vector._constant_facts(wide, {**columns, "absent": pl.String()})
    assert sorted(found) == ["a", "b", "e", "g"]
    values = pl.select(found[n].alias(n) for n in sorted(found))
    assert values.row(0) == (5.0, None, 'say "hi"', True)
    assert values.schema == pl.Schema({"a": pl.Float64, "b": pl.Float64, "e": pl.String, "g": pl.Boolean})
    assert vector._constant_facts(wide.head(0), columns) == {}


@pytest.mark.parametrize("seed", [3, 8])
def test_alert_table_same_with_and_without_literal_columns(vp: VectorPack, monkeypatch, seed: int) -> None:
    rng = random.Random(seed)
    frame = random_facts(vp, 700, rng, missing=0.2)
    floats, strings, bools = (_kinds(vp, t) for t in (pl.Float64(), pl.String(), pl.Boolean()))
    # some facts one value on every row (positive, negative, all null, an escaped string) …
    values = {
        pl.Float64: [30.0, -2.5, None, 1e20],
        pl.String: ["oral", 'a "q"\n', None],
        pl.Boolean: [True, None],
    }
    picked = {pl.Float64: floats[::5], pl.String: strings[::3], pl.Boolean: bools[::4]}
    fixed = {
        n: pl.lit(values[t][k % len(values[t])], t)
        for t, names in picked.items()
        for k, n in enumerate(names)
    }
    # … and some made to look constant to min/max but not to the texts: ±0 and NaN
    zeros = [n for n in floats[1::2] if n not in fixed]
    mixed = {n: pl.when(pl.int_range(pl.len()) % 2 == 0).then(0.0).otherwise(-0.0) for n in zeros}
    nans = {n: pl.lit(math.nan, pl.Float64) for n in floats[2::9] if n not in zeros}
    frame = frame.with_columns(e.alias(n) for n, e in {**fixed, **mixed, **nans}.items())
    new = vector_alerts(vp, frame)
    literal = vector._constant_facts
    assert literal(vp.prepare(frame).collect(), vp.columns)  # the shortcut is taken on this frame
    monkeypatch.setattr(vector, "_constant_facts", lambda wide, columns: {})
    old = vector_alerts(vp, frame)
    assert new.height > 0
    assert new.equals(old), "the alert table changed with constant columns taken as literals"
    assert new.schema == old.schema
