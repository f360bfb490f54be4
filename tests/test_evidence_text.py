"""The evidence and summary shortcuts against the plain texts, on frames made to break them.

:func:`cds_engine.evaluators.evidence.evidence_expr` with a group writes each row's text in one
flat concatenation (a nullable piece brings its own comma, conditional until an earlier piece is
never null) and, for few combinations, builds the text once per combination with booleans and
small whole-number floats coded by arithmetic instead of hashing. Each case here compares the
text character for character with the plain expression (no group), and checks the shortcut it
targets was taken, so a wrong comma, a -0.0 coded as 0.0 or a 0.5 coded as a whole number fails.
A summary whose one placeholder varies is taken whole per distinct value
(:func:`cds_engine.evaluators.summaries.summary_expr`): compared with the shared renderer.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest

from cds_engine.evaluators.evidence import evidence_expr, evidence_names
from cds_engine.evaluators.summaries import summary_expr
from cds_engine.evaluators.vector import VectorPack
from cds_engine.messages import render
from cds_engine.results import short_text
from cds_engine.rules.compile import placeholders
from cds_engine.rules.conditions import BOUND_SUFFIXES


@pytest.fixture(scope="module")
def vp(pack) -> VectorPack:
    return VectorPack.compile(pack)


def _frame(
    vp: VectorPack,
    names: list[str],
    pools: dict[Any, list[Any]],
    n: int,
    seed: int,
    vary: int | None = None,
) -> pl.DataFrame:
    """``n`` rows of ``names``, each value drawn from the pool of its dtype.

    With ``vary``, only the first ``vary`` floats and the first boolean vary (the others hold
    their pool's first value), so the combinations stay few enough to be shared.
    """
    rng = random.Random(seed)
    floats = [m for m in names if vp.columns[m] == pl.Float64()][: vary or len(names)]
    bools = [m for m in names if vp.columns[m] == pl.Boolean()][: 1 if vary else len(names)]
    data = {}
    for name in names:
        dtype = vp.columns[name]
        pool = pools[dtype.__class__]
        if vary and name not in floats and name not in bools:
            pool = pool[:1]
        data[name] = pl.Series(name, [rng.choice(pool) for _ in range(n)], dtype=dtype, strict=False)
    return pl.DataFrame(data)


def _texts(vp: VectorPack, tier: Any, frame: pl.DataFrame) -> tuple[list[str], list[str], str]:
    fast_expr = evidence_expr(tier, vp.columns, frame)
    plain = frame.select(evidence_expr(tier, vp.columns).alias("e"))["e"].to_list()
    fast = frame.select(fast_expr.alias("e"))["e"].to_list()
    return plain, fast, str(fast_expr)


def _tiers(vp: VectorPack, *dtypes: Any, least: int = 3) -> list[Any]:
    out = []
    for tier in vp.pack.tiers:
        names = evidence_names(tier, vp.columns)
        kinds = {vp.columns[n].__class__ for n in names}
        if len(names) >= least and all(d in kinds for d in dtypes):
            out.append(tier)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_nullable_leading_pieces_get_their_commas_right(vp, seed):
    """Every column null on some rows, floats spread (per-row path): the conditional commas."""
    pools = {
        pl.Float64: [None, None, 1.5, 2.25, 3.125, 7.0, 0.1, 12.5, 99.9, 0.0, -0.0],
        pl.Boolean: [None, True, False],
        pl.String: [None, "oral", 'say "hi"', "x"],
    }
    checked = 0
    for tier in _tiers(vp, least=2):
        names = evidence_names(tier, vp.columns)
        frame = _frame(vp, names, pools, 600, seed)
        plain, fast, _ = _texts(vp, tier, frame)
        assert fast == plain, tier.id
        assert "{}" in plain or any(t.startswith('{"') for t in plain)
        checked += 1
    assert checked > 10


def test_first_piece_absent_then_present_pieces(vp):
    """Rows whose leading pieces are all null: no comma may open the object."""
    tier = _tiers(vp, least=4)[0]
    names = evidence_names(tier, vp.columns)
    pools = {pl.Float64: [None, 4.5], pl.Boolean: [None, True], pl.String: [None, "a"]}
    frame = _frame(vp, names, pools, 300, 7)
    plain, fast, _ = _texts(vp, tier, frame)
    assert fast == plain
    assert all(not t.startswith("{,") and ",," not in t and not t.endswith(",}") for t in fast)


@pytest.mark.parametrize(
    ("floats", "coded"),
    [
        ([0.0, 1.0, 2.0, 3.0, None], True),  # counts: coded by arithmetic
        ([-0.0, 1.0, 2.0, None], False),  # -0.0 alone: its text is not 0.0's, so hashed
        ([0.0, 0.5, 3.0], False),  # whole ends, a half between: hashed
        ([1e9, 1e9 + 1.0], False),  # whole but far from the rest of the code: within range
    ],
)
def test_counts_per_combination_equal_the_plain_text(vp, floats, coded):
    tiers = [t for t in _tiers(vp, pl.Float64, least=2)]
    pools = {pl.Float64: floats, pl.Boolean: [True, False, None], pl.String: ["oral", "iv"]}
    shared = 0
    for tier in tiers:
        names = evidence_names(tier, vp.columns)
        frame = _frame(vp, names, pools, 2000, 3, vary=2)
        plain, fast, text = _texts(vp, tier, frame)
        assert fast == plain, tier.id
        shared += "gather" in text
    assert shared > 0  # the per-combination path was taken (and its text equals the plain one)
    if str(floats[0]) == "-0.0":
        assert any('":-0.0' in t for t in plain)


def test_whole_number_codes_are_exact_for_every_value(vp):
    """Each count value 0…5 and null, booleans and nulls: every combination through the table."""
    tier = next(
        t
        for t in _tiers(vp, pl.Float64, least=3)
        if sum(vp.columns[n] == pl.Float64() for n in evidence_names(t, vp.columns)) >= 3
    )
    names = evidence_names(tier, vp.columns)
    pools = {
        pl.Float64: [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, None],
        pl.Boolean: [True, False, None],
        pl.String: ["a"],
    }
    frame = _frame(vp, names, pools, 5000, 11, vary=3)
    plain, fast, text = _texts(vp, tier, frame)
    assert "gather" in text
    assert fast == plain


@pytest.mark.parametrize("seed", [1, 2])
def test_summary_with_one_varying_placeholder_is_the_renderer_text(vp, seed):
    """One placeholder varies (±0, absent, a bound, a coded string): whole texts per value."""
    pack = vp.pack
    rng = random.Random(seed)
    pools = {
        pl.Float64: [0.0, -0.0, 2.5, 60.0, None],
        pl.Boolean: [True, False, None],
        pl.String: [*list(pack.spec.labels)[:3], "other", None],
    }
    whole = 0
    for tier in pack.tiers:
        names = [n for n in dict.fromkeys(placeholders(tier.summary)) if not n.startswith("param.")]
        names = [n for n in names if n in vp.columns and n != "medication_lists_complete"]
        if not names:
            continue
        moving = rng.choice(names)
        data = {}
        for name in names:
            for column in (name, *(name + s for s in BOUND_SUFFIXES)):
                if column not in vp.columns:
                    continue
                dtype = vp.columns[column]
                pool = pools[dtype.__class__] if name == moving else pools[dtype.__class__][:1]
                if column != name:  # a bound only where the value is absent
                    pool = [None, None, 60.0] if name == moving else [None]
                data[column] = pl.Series(
                    column, [rng.choice(pool) for _ in range(300)], dtype=dtype, strict=False
                )
        group = pl.DataFrame(data)
        if moving in group.columns:  # a bound only where the value is absent
            group = group.with_columns(
                pl.when(pl.col(moving).is_not_null()).then(None).otherwise(pl.col(c)).alias(c)
                for c in group.columns
                if c.startswith(moving + "__")
            )
        extra = {"rule_id": tier.rule_id, "tier_id": tier.id, "severity": tier.severity}
        expr = summary_expr(group, tier.summary, pack.params, extra, pack.spec.labels)
        if expr is None:
            continue
        whole += "concat_horizontal" not in str(expr) and "when" in str(expr)
        got = group.select(expr.alias("s"))["s"].to_list()
        for row, text in zip(group.iter_rows(named=True), got, strict=True):
            flat = {k: v for k, v in row.items() if v is not None}
            assert text == short_text(render(tier.summary, flat, pack.params, extra, pack.spec.labels)), (
                tier.id
            )
    assert whole > 5  # the whole-text path was taken
