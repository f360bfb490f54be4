"""Evidence texts of float facts coded by arithmetic, and the sampled table-size bound (issue 20).

:func:`cds_engine.evaluators.evidence.evidence_expr` on a group now takes a float fact of whole
numbers, tenths or hundredths from a table of its ``,"key":value`` texts by ``round(x × scale)``
(``_decimal_pieces``) instead of a when/then and a cast per row, and gives up on a shared
per-combination table as soon as the distinct values among the first rows already pass its
limit (``_too_many``). Each case compares every row's text with the plain per-row expression
(no group, unchanged since before both shortcuts), and checks whether the coded path was taken:
values the scale does not give back exactly (a hundredth after the sampled rows, a third),
zeros, NaN and huge values must stay on the per-row path and still match.
"""

from __future__ import annotations

import math
import random
from typing import Any

import polars as pl
import pytest

from cds_engine.evaluators import evidence
from cds_engine.evaluators.evidence import evidence_expr, evidence_names
from cds_engine.evaluators.vector import VectorPack


@pytest.fixture(scope="module")
def vp(pack) -> VectorPack:
    return VectorPack.compile(pack)


def _float_tiers(vp: VectorPack, at_least: int = 1) -> list[Any]:
    """Tiers whose evidence reads at least ``at_least`` float facts."""
    out = []
    for tier in vp.pack.tiers:
        names = evidence_names(tier, vp.columns)
        if sum(vp.columns[n] == pl.Float64() for n in names) >= at_least:
            out.append(tier)
    return out


def _frame(vp: VectorPack, tier: Any, n: int, draw: Any, rng: random.Random) -> pl.DataFrame:
    """``n`` rows of the tier's evidence columns: floats from ``draw``, others random, some nulls.

    The first column has no null (as the order's facts, first in the shipped tiers): a piece's
    comma is then fixed, which the coded path needs.
    """
    cols = []
    for i, name in enumerate(evidence_names(tier, vp.columns)):
        dtype = vp.columns[name]
        null = 0.0 if i == 0 else 0.1
        if dtype == pl.Float64():
            values = [None if rng.random() < null else draw(rng) for _ in range(n)]
        elif dtype == pl.Boolean():
            values = [None if rng.random() < null else rng.choice([True, False]) for _ in range(n)]
        else:
            values = [
                None if rng.random() < null else rng.choice(["oral", "enteral", 'a "q"']) for _ in range(n)
            ]
        cols.append(pl.Series(name, values, dtype=dtype, strict=False))
    return pl.DataFrame(cols)


def _coded(monkeypatch) -> list[int]:
    """Counts the expressions built with at least one coded float piece."""
    calls: list[int] = []
    real = evidence._assemble_with

    def spy(parts: Any, tables: Any) -> pl.Expr:
        if tables:
            calls.append(len(tables))
        return real(parts, tables)

    monkeypatch.setattr(evidence, "_assemble_with", spy)
    return calls


def _same_as_plain(vp: VectorPack, tier: Any, frame: pl.DataFrame) -> None:
    fast = frame.select(evidence_expr(tier, vp.columns, frame).alias("e"))["e"]
    plain = frame.select(evidence_expr(tier, vp.columns).alias("e"))["e"]
    assert fast.to_list() == plain.to_list(), tier.id
    assert fast.dtype == pl.String


@pytest.mark.parametrize(
    ("draw", "digits"),
    [
        (lambda rng: rng.randint(1, 365) * 1.0, 0),  # days: whole numbers
        (lambda rng: round(rng.uniform(7.1, 120.0), 1), 1),  # tenths, as the flat population
        (lambda rng: round(rng.uniform(0.01, 9.99), 2), 2),  # hundredths
        (lambda rng: round(rng.uniform(-50.0, -0.1), 1), 1),  # negative tenths
    ],
)
def test_decimal_floats_coded_and_identical(vp, monkeypatch, draw, digits) -> None:
    calls = _coded(monkeypatch)
    rng = random.Random(digits)
    for tier in _float_tiers(vp, at_least=2):
        _same_as_plain(vp, tier, _frame(vp, tier, 6000, draw, rng))
    assert calls, "no tier took the coded float pieces"


def test_scale_checked_on_every_row_not_only_the_sample(vp, monkeypatch) -> None:
    """Tenths on the sampled first rows, then 15.55 beside 15.5 and 15.6: its code is theirs, the
    check on every row refuses the column (per row), and the texts stay those of the cast."""
    rng = random.Random(7)
    tiers = _float_tiers(vp, at_least=2)
    calls = _coded(monkeypatch)
    late = {5000: 15.55, 5001: 15.5, 5002: 15.6, 5003: 15.55}
    for tier in tiers:
        frame = _frame(vp, tier, 6000, lambda r: round(r.uniform(1.0, 99.0), 1), rng)
        floats = [n for n in frame.columns if frame.schema[n] == pl.Float64()]
        row = pl.int_range(pl.len())
        frame = frame.with_columns(
            row.replace_strict(list(late), list(late.values()), default=pl.col(n)).alias(n) for n in floats
        )
        _same_as_plain(vp, tier, frame)
    assert not calls


@pytest.mark.parametrize(
    "special",
    [0.0, -0.0, math.nan, 1e12, 1.0 / 3.0, math.inf],
)
def test_values_left_to_the_per_row_path(vp, monkeypatch, special) -> None:
    """Zero, -0.0, NaN, a huge value, a third, infinity among tenths: those columns are not coded."""
    rng = random.Random(11)
    calls = _coded(monkeypatch)
    for tier in _float_tiers(vp, at_least=2):
        frame = _frame(vp, tier, 6000, lambda r: round(r.uniform(1.0, 99.0), 1), rng)
        floats = [n for n in frame.columns if frame.schema[n] == pl.Float64()]
        odd = pl.int_range(pl.len()) % 97 == 3
        frame = frame.with_columns(
            pl.when(odd).then(pl.lit(special)).otherwise(pl.col(n)).alias(n) for n in floats
        )
        _same_as_plain(vp, tier, frame)
    assert not calls


def test_too_many_is_a_lower_bound() -> None:
    """Spread values among the first rows: past the limit; repetitive first rows: undecided."""
    rng = random.Random(5)
    n = 10_000
    spread = [round(rng.uniform(0.0, 500.0), 1) for _ in range(n)]
    columns = {"x": pl.Float64(), "y": pl.Float64(), "b": pl.Boolean()}
    frame = pl.DataFrame(
        {"x": spread, "y": spread[::-1], "b": [i % 2 == 0 for i in range(n)]}, schema=columns
    )
    stats = {"n:b": 0}
    limit = n // 4
    assert evidence._too_many(frame, ["x", "y", "b"], columns, stats, {}, limit)
    # the first rows repeat one value: their bound (2 × 1 × 1) says nothing about the rest
    k = evidence._SAMPLE
    head = pl.DataFrame({"x": [1.0] * k, "y": [2.0] * k, "b": [True, False] * (k // 2)}, schema=columns)
    late = pl.concat([head, frame])
    assert not evidence._too_many(late, ["x", "y", "b"], columns, stats, {}, limit)
    # a small group is never judged on a sample (it is the whole group)
    assert not evidence._too_many(frame.head(100), ["x", "y", "b"], columns, stats, {}, 10)
    # a string's known distinct values count exactly
    strings = {"s": pl.String(), "x": pl.Float64()}
    uniq = {"s": pl.Series(["a", "b", "c"])}
    small = pl.DataFrame({"s": ["a"] * n, "x": [1.0, 2.0] * (n // 2)}, schema=strings)
    assert not evidence._too_many(small, ["s", "x"], strings, {}, uniq, 6)
    assert evidence._too_many(small, ["s", "x"], strings, {}, uniq, 5)


def test_spread_floats_identical(vp) -> None:
    """Spread values (no shared table, no scale): the per-row path, unchanged."""
    rng = random.Random(3)
    for tier in _float_tiers(vp, at_least=1):
        _same_as_plain(vp, tier, _frame(vp, tier, 5000, lambda r: r.uniform(-1e6, 1e6), rng))


def test_both_signed_zeros_not_coded(vp, monkeypatch) -> None:
    """0.0 and -0.0 in one column: one code, two texts, and equal to the row check: not coded."""
    rng = random.Random(13)
    calls = _coded(monkeypatch)
    for tier in _float_tiers(vp, at_least=2):
        frame = _frame(vp, tier, 6000, lambda r: round(r.uniform(1.0, 99.0), 1), rng)
        floats = [n for n in frame.columns if frame.schema[n] == pl.Float64()]
        row = pl.int_range(pl.len())
        frame = frame.with_columns(
            pl.when(row % 97 == 3).then(0.0).when(row % 89 == 5).then(-0.0).otherwise(pl.col(n)).alias(n)
            for n in floats
        )
        _same_as_plain(vp, tier, frame)
    assert not calls


def test_whole_counts_with_zeros_coded_and_identical(vp, monkeypatch) -> None:
    """Counts of medicines hold 0.0 on most rows: whole numbers with zeros (no -0.0) are coded
    by arithmetic, and every text is the cast's."""
    rng = random.Random(17)
    calls = _coded(monkeypatch)
    for tier in _float_tiers(vp, at_least=2):
        frame = _frame(vp, tier, 6000, lambda r: float(r.randint(0, 3)), rng)
        _same_as_plain(vp, tier, frame)
    assert calls, "no column of whole numbers with zeros was coded"


@pytest.mark.parametrize("both", [False, True])
@pytest.mark.parametrize("late", [False, True])
def test_whole_counts_with_both_signed_zeros_not_coded(vp, monkeypatch, late, both) -> None:
    """Whole numbers with 0.0 and -0.0 (first among the sampled rows, or only after them), or
    -0.0 alone: one code for two texts, or a table float (``lo + k``) that is not the rows' —
    the -0.0 check refuses them."""
    rng = random.Random(19)
    calls = _coded(monkeypatch)
    for tier in _float_tiers(vp, at_least=2):
        frame = _frame(vp, tier, 6000, lambda r: float(r.randint(1, 3)), rng)
        floats = [n for n in frame.columns if frame.schema[n] == pl.Float64()]
        row = pl.int_range(pl.len())
        start = 5000 if late else 0
        frame = frame.with_columns(
            pl.when((row >= start) & (row % 7 == 3))
            .then(-0.0)
            .when((row % 5 == 1) & both)
            .then(0.0)
            .otherwise(pl.col(n))
            .alias(n)
            for n in floats
        )
        _same_as_plain(vp, tier, frame)
    assert not calls


def test_whole_numbers_take_arithmetic_codes(vp) -> None:
    """Whole numbers are coded by ``x - lo`` in the text query, their tables cast in one query;
    the checks refuse a value that is not whole after the sampled rows, and -0.0."""
    rng = random.Random(23)
    tier = _float_tiers(vp, at_least=2)[0]
    frame = _frame(vp, tier, 6000, lambda r: float(r.randint(0, 4)), rng)
    names = [n for n in frame.columns if frame.schema[n] == pl.Float64()]
    checks = evidence._probe_exprs(tuple(names), tuple(names))
    probe = frame.select(checks).row(0, named=True)
    assert all(probe["w:" + n] and not probe["m:" + n] and probe["1:" + n] for n in names)
    tables = evidence._whole_tables([(n, 0.0, 4.0) for n in names])
    assert set(tables) == set(names)
    for n, (code, texts) in tables.items():
        assert texts.to_list() == [f"{k}.0" for k in range(5)]
        assert frame.select(code.alias("c"))["c"].to_list() == [
            None if v is None else int(v) for v in frame[n].to_list()
        ]
    last = pl.int_range(pl.len()) == 5999
    odd = frame.with_columns(pl.when(last).then(2.5).otherwise(pl.col(names[0])).alias(names[0]))
    negative = frame.with_columns(pl.when(last).then(-0.0).otherwise(pl.col(names[0])).alias(names[0]))
    assert not odd.select(checks).row(0, named=True)["w:" + names[0]]
    assert negative.select(checks).row(0, named=True)["m:" + names[0]]
