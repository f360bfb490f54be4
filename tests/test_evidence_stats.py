"""The evidence texts after the cheaper per-tier statistics (issue 20), on every fact type.

:func:`cds_engine.evaluators.evidence.evidence_expr` with a group now takes a constant fact's
text from the first value in Python (a string's escapes by ``str.replace``, anything else cast
by polars on a one-value slice) instead of one polars expression per fact, asks polars for its
statistics in a few multi-column expressions, takes a hashed column's codes from the distinct
values it already had (a string's, from the escape check) and caches the assembled expression.
Each case compares every row's text with the plain per-row expression (no group, unchanged),
on populations with booleans, whole and fractional floats, -0.0, NaN, 1e20 and 1e-7 (printed
apart by Python and polars), nulls and strings that need each JSON escape; a constant case is
also checked against :func:`cds_engine.evaluators.vector.canonical_evidence` where Python's JSON
and polars agree. Each regime checks that the shortcut it targets was taken.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import polars as pl
import pytest

from cds_engine.evaluators.evidence import evidence_expr, evidence_names
from cds_engine.evaluators.vector import VectorPack, canonical_evidence

_FLOATS = [0.0, -0.0, 1.0, 3.0, 2.25, 0.1, 0.1 + 0.2, 187.70000000000002, 1e20, 1e-7, math.nan, None]
_BOOLS = [True, False, None]
_STRINGS = ["oral", 'say "hi"', "back\\slash", "tab\there", "new\nline", "cr\rx", "é ü", "", None]


@pytest.fixture(scope="module")
def vp(pack) -> VectorPack:
    return VectorPack.compile(pack)


def _pool(dtype: pl.DataType) -> list[Any]:
    return {pl.Float64: _FLOATS, pl.Boolean: _BOOLS, pl.String: _STRINGS}[dtype.__class__]


def _column(name: str, dtype: pl.DataType, values: list[Any]) -> pl.Series:
    return pl.Series(name, values, dtype=dtype, strict=False)


def _compare(vp: VectorPack, tier: Any, frame: pl.DataFrame) -> tuple[list[str], str]:
    """The group's texts, after asserting they equal the plain per-row expression's; its expression."""
    fast_expr = evidence_expr(tier, vp.columns, frame)
    # with_columns: a text that is one literal for the whole group is broadcast to every row
    plain = frame.with_columns(evidence_expr(tier, vp.columns).alias("__e"))["__e"].to_list()
    fast = frame.with_columns(fast_expr.alias("__e"))["__e"].to_list()
    assert fast == plain, tier.id
    return fast, str(fast_expr)


def _tiers(vp: VectorPack) -> list[Any]:
    return [t for t in vp.pack.tiers if evidence_names(t, vp.columns)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spread_values_every_type(vp, seed):
    """Every column draws from its whole pool (per-row path, escapes, NaN, ±0, nulls)."""
    rng = random.Random(seed)
    for tier in _tiers(vp):
        names = evidence_names(tier, vp.columns)
        frame = pl.DataFrame(
            [_column(n, vp.columns[n], [rng.choice(_pool(vp.columns[n])) for _ in range(400)]) for n in names]
        )
        _compare(vp, tier, frame)


@pytest.mark.parametrize("seed", range(6))
def test_constant_values_every_type(vp, seed):
    """Each column one value on every row: the first-row texts (a literal when all are constant)."""
    rng = random.Random(seed)
    literal = 0
    for tier in _tiers(vp):
        names = evidence_names(tier, vp.columns)
        values = {n: rng.choice(_pool(vp.columns[n])) for n in names}
        frame = pl.DataFrame([_column(n, vp.columns[n], [values[n]] * 50) for n in names])
        texts, text = _compare(vp, tier, frame)
        literal += "col(" not in text
        if not any(isinstance(v, float) and (math.isnan(v) or v in (1e20, 1e-7)) for v in values.values()):
            present = {n: v for n, v in values.items() if v is not None}
            assert texts[0] == canonical_evidence(present), tier.id  # Python's JSON agrees here
    assert literal > 10  # the all-constant path (the first-row texts only) was taken


def test_constant_strings_with_each_escape(vp):
    """A constant string holding each character JSON escapes, and both kinds of quote."""
    tiers = [
        t for t in _tiers(vp) if any(vp.columns[n] == pl.String() for n in evidence_names(t, vp.columns))
    ]
    assert tiers
    for raw in ['a "b" c', "x\\y\\\\z", "t\tn\nr\r", '\\"', "plain"]:
        for tier in tiers:
            names = evidence_names(tier, vp.columns)
            frame = pl.DataFrame(
                [
                    _column(
                        n,
                        vp.columns[n],
                        [raw if vp.columns[n] == pl.String() else _pool(vp.columns[n])[2]] * 20,
                    )
                    for n in names
                ]
            )
            texts, _ = _compare(vp, tier, frame)
            assert json.loads(texts[0])[next(n for n in names if vp.columns[n] == pl.String())] == raw


@pytest.mark.parametrize(
    ("floats", "strings"),
    [
        ([0.5, 2.25, None], ["oral", 'say "hi"', None]),  # fractional floats and escaped strings: hashed
        ([1e20, 1e-7, 3.0], ["a\tb", "c"]),  # far apart: hashed, not coded by arithmetic
        ([0.0, 1.0, 2.0, None], ["x", "y", "z"]),  # counts: arithmetic; plain strings hashed
        ([-0.0, 4.0], ["x\\", None]),  # -0.0 alone: hashed (its text is not 0.0's)
    ],
)
def test_few_combinations_share_texts(vp, floats, strings):
    """Two floats, a string and a boolean vary in small pools, the rest constant: a shared table."""
    rng = random.Random(5)
    shared = 0
    for tier in _tiers(vp):
        names = evidence_names(tier, vp.columns)
        moving = [n for n in names if vp.columns[n] == pl.Float64()][:2]
        moving += [n for n in names if vp.columns[n] == pl.String()][:1]
        moving += [n for n in names if vp.columns[n] == pl.Boolean()][:1]
        pools = {pl.Float64: floats, pl.String: strings, pl.Boolean: _BOOLS}
        columns = []
        for n in names:
            pool = pools[vp.columns[n].__class__]
            columns.append(
                _column(n, vp.columns[n], [rng.choice(pool) if n in moving else pool[0] for _ in range(3000)])
            )
        _, text = _compare(vp, tier, pl.DataFrame(columns))
        shared += "gather" in text
    assert shared > 5  # the per-combination path was taken (and its text equals the plain one)


def test_same_tier_other_chunk_other_text(vp):
    """The cached expression of one chunk is not reused for another whose facts differ."""
    tier = max(_tiers(vp), key=lambda t: len(evidence_names(t, vp.columns)))
    names = evidence_names(tier, vp.columns)
    seen = set()
    for k in range(3):
        frame = pl.DataFrame(
            [
                _column(n, vp.columns[n], [_pool(vp.columns[n])[k], _pool(vp.columns[n])[(k + 1) % 3]] * 30)
                for n in names
            ]
        )
        texts, _ = _compare(vp, tier, frame)
        seen.add(texts[0])
    assert len(seen) == 3
