"""How the vector path builds its alert rows: the order, and the text shortcuts, checked exactly.

``test_vector_parity`` compares each patient's alerts as a set with the per-patient evaluators.
The alert table is also *ordered* (patients in frame order, each patient's alerts in
:meth:`cds_engine.alerts.Alert.sort_key` order), and its summary and evidence texts are built with
shortcuts that must never change a character: a fact constant on a tier's rows written once,
texts built once per combination of a few values and shared, the whitespace fold and the cut
left out when they cannot matter. Each shortcut is compared here with the plain expression on
frames made to break it (0.0 next to -0.0, NaN, quotes and newlines in strings, nulls).
"""

from __future__ import annotations

import math
import random
from typing import Any

import polars as pl
import pytest

from cds_engine.alerts import SEVERITY_ORDER
from cds_engine.engine import OracleEvaluator, project
from cds_engine.evaluators import summaries, vector
from cds_engine.evaluators.evidence import evidence_expr, evidence_names
from cds_engine.evaluators.summaries import summary_expr
from cds_engine.evaluators.vector import VectorPack, frame_from_flats, vector_alerts
from cds_engine.facts.derive import derive
from cds_engine.facts.model import PatientFacts
from cds_engine.messages import render
from cds_engine.results import build_alerts, short_text
from cds_engine.rules.compile import placeholders
from cds_engine.rules.conditions import BOUND_SUFFIXES, facts_of
from cds_engine.synthetic import PatientGenerator


@pytest.fixture(scope="module")
def vp(pack) -> VectorPack:
    return VectorPack.compile(pack)


@pytest.fixture(scope="module")
def flats(pack) -> list[dict[str, Any]]:
    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    rng = random.Random(11)
    return [
        derive(PatientFacts.model_validate(gen.patient(rng)), pack.vocabulary, pack.context)
        for _ in range(600)
    ]


def _order(kind: str, severity: str, rule_id: str) -> tuple[int, int, str]:
    return (-SEVERITY_ORDER[severity], 0 if kind == "finding" else 1, rule_id)


def test_rows_are_grouped_by_patient_in_frame_order_and_sorted_like_build_alerts(pack, vp, flats):
    ids = [f"p{len(flats) - i:04d}" for i in range(len(flats))]  # descending: frame order, not id order
    table = vector_alerts(vp, frame_from_flats(vp, flats, {"patient_id": ids}))
    seen = list(dict.fromkeys(table["patient_id"].to_list()))
    assert seen == [p for p in ids if p in set(seen)]
    runs = table.select(pl.col("patient_id").ne_missing(pl.col("patient_id").shift()).sum()).item()
    assert runs == len(seen)  # each patient's rows are one run
    oracle = OracleEvaluator(pack)
    referenced = pack.referenced_facts()
    rows = table.partition_by("patient_id", as_dict=True, maintain_order=True)
    checked = 0
    for pid, flat in zip(ids, flats, strict=True):
        expected = build_alerts(pack, flat, oracle.outcomes(project(flat, referenced)))
        got = rows.get((pid,))
        got_keys = (
            [] if got is None else [_order(*r) for r in got.select("kind", "severity", "rule_id").rows()]
        )
        assert got_keys == [_order(a.kind, a.severity, a.rule_id) for a in expected]
        assert got_keys == sorted(got_keys)
        checked += len(got_keys)
    assert checked > len(flats)


def _breaking_frame(vp: VectorPack, n: int, seed: int) -> pl.DataFrame:
    """Values chosen to trip the shortcuts: few distinct values, ±0, NaN, escapes, nulls."""
    rng = random.Random(seed)
    pools: dict[str, list[Any]] = {}
    for name, dtype in vp.columns.items():
        if dtype == pl.Float64():
            pools[name] = rng.choice(
                [
                    [0.0],
                    [-0.0],
                    [0.0, -0.0],
                    [1.0, 2.5, None],
                    [0.0, -0.0, 3.0, None],
                    [float("nan"), 1.0],
                    [7.25],
                ]
            )
        elif dtype == pl.Boolean():
            pools[name] = rng.choice([[True], [False, None], [True, False], [None]])
        else:
            pools[name] = rng.choice(
                [["oral"], ['say "hi"', "a\\b", None], ["line\nbreak", "tab\there"], [None]]
            )
    data = {name: [rng.choice(pool) for _ in range(n)] for name, pool in pools.items()}
    return pl.DataFrame({k: pl.Series(k, v, dtype=vp.columns[k], strict=False) for k, v in data.items()})


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_evidence_shortcuts_give_the_plain_text(vp, seed):
    frame = _breaking_frame(vp, 400, seed)
    for tier in vp.pack.tiers:
        if not evidence_names(tier, vp.columns):
            continue
        plain = frame.with_columns(evidence_expr(tier, vp.columns).alias("e"))["e"]
        fast = frame.with_columns(evidence_expr(tier, vp.columns, frame).alias("e"))["e"]
        assert fast.to_list() == plain.to_list(), tier.id


def test_evidence_shares_text_per_combination_and_keeps_signed_zeros_apart(vp):
    tier = next(t for t in vp.pack.tiers if any(n.startswith("meds.") for n in evidence_names(t, vp.columns)))
    names = evidence_names(tier, vp.columns)
    counts = [n for n in names if vp.columns[n] == pl.Float64()]
    rows = 200
    frame = pl.DataFrame(
        {n: pl.Series(n, [None] * rows, dtype=vp.columns[n]) for n in names}
        | {n: pl.Series(n, [float(i % 3) for i in range(rows)]) for n in counts}
    )
    plain = frame.with_columns(evidence_expr(tier, vp.columns).alias("e"))["e"].to_list()
    assert frame.with_columns(evidence_expr(tier, vp.columns, frame).alias("e"))["e"].to_list() == plain
    signed = frame.with_columns(
        pl.when(pl.int_range(rows) % 2 == 0).then(-0.0).otherwise(0.0).alias(counts[0])
    )
    plain = signed.with_columns(evidence_expr(tier, vp.columns).alias("e"))["e"].to_list()
    assert any('":-0.0' in t for t in plain)
    assert signed.with_columns(evidence_expr(tier, vp.columns, signed).alias("e"))["e"].to_list() == plain


@pytest.mark.parametrize("seed", [5, 6])
def test_summary_shortcuts_give_the_shared_renderer_text(vp, seed):
    pack = vp.pack
    frame = _breaking_frame(vp, 150, seed).with_columns(
        pl.col(pl.Float64).fill_nan(None)  # the renderer sees NaN as a number; polars prints it apart
    )
    tried = 0
    for tier in pack.tiers:
        names = [n for n in dict.fromkeys(placeholders(tier.summary)) if not n.startswith("param.")]
        cols = [c for n in names for c in (n, *(n + s for s in BOUND_SUFFIXES)) if c in frame.columns]
        extra = {"rule_id": tier.rule_id, "tier_id": tier.id, "severity": tier.severity}
        group = frame.select(list(dict.fromkeys(cols)))
        expr = summary_expr(group, tier.summary, pack.params, extra, pack.spec.labels)
        if expr is None:
            continue
        got = group.with_columns(expr.alias("s"))["s"].to_list()
        for row, text in zip(group.iter_rows(named=True), got, strict=True):
            flat = {
                k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and math.isnan(v))
            }
            assert text == short_text(render(tier.summary, flat, pack.params, extra, pack.spec.labels)), (
                tier.id
            )
        tried += 1
    assert tried > 10


def _pack_frame(vp: VectorPack, n: int, rng: random.Random, missing: float = 0.2) -> pl.DataFrame:
    """Random patients around the values the pack's conditions test (any pack), a fifth missing."""
    tested: dict[str, list[Any]] = {}
    for tier in vp.pack.tiers:
        for leaf in facts_of(tier.node):
            values = leaf.value if isinstance(leaf.value, tuple | list) else (leaf.value,)
            tested.setdefault(leaf.fact, []).extend(v for v in values if v is not None)
    data: dict[str, pl.Series] = {"patient_id": pl.Series([f"p{i}" for i in range(n)])}
    for name, dtype in vp.columns.items():
        if dtype == pl.Float64():
            cuts = [float(v) for v in tested.get(name, []) if isinstance(v, int | float)] or [1.0]
            pool = [0.0, *cuts, *(c + 1 for c in cuts), *(c / 2 for c in cuts), 3.0]
        elif dtype == pl.Boolean():
            pool = [True, False]
        else:
            pool = [v for v in tested.get(name, []) if isinstance(v, str)] + ["other"]
        values = [None if rng.random() < missing else rng.choice(pool) for _ in range(n)]
        data[name] = pl.Series(name, values, dtype=dtype, strict=False)
    return pl.DataFrame(data)


def _fresh_caches(vp: VectorPack) -> None:
    summaries._FORMATTED.clear()
    summaries._FOLDED.clear()
    vp._summaries.clear()


@pytest.mark.parametrize("pack_id", ["baclofen", "gabapentinoid"])
def test_alert_table_is_the_same_in_any_batch_size_with_or_without_masks(engine, pack_id, monkeypatch):
    """The parallel batches, the missing-facts bit masks and the warm caches change no cell.

    One tier per batch (``_BATCH_CELLS`` 1) and the per-row text of the missing facts
    (``_MASK_BITS`` 0) are the plainest forms of what ``vector_alerts`` does; a second call
    runs with the caches the first one filled.
    """
    pack = next(p for p in engine.packs if p.id == pack_id)
    vp = VectorPack.compile(pack)
    frame = _pack_frame(vp, 600, random.Random(23))
    _fresh_caches(vp)
    table = vector_alerts(vp, frame)
    assert (table["missing"] != "").any() and (table["kind"] == "finding").any()
    assert vector_alerts(vp, frame).equals(table)  # warm caches
    monkeypatch.setattr(vector, "_BATCH_CELLS", 1)
    monkeypatch.setattr(vector, "_MASK_BITS", 0)
    plain = VectorPack.compile(pack)  # the plan (and its masks) is built on first use
    _fresh_caches(plain)
    assert vector_alerts(plain, frame).equals(table)


def test_missing_facts_mask_spells_the_roots_in_order(vp):
    """The bit mask of a rule's missing roots reads back as its sorted roots, ";"-joined."""
    frame = _pack_frame(vp, 50, random.Random(3))
    vector_alerts(vp, frame)  # builds the plan
    plan = vp._plan
    rng = random.Random(4)
    report_names = [c for cols in plan.report_cols.values() for _, c in cols]
    flags = pl.DataFrame({c: [rng.random() < 0.3 for _ in range(64)] for c in report_names})
    masks = flags.select(plan.miss_exprs)
    roots_of = {c: root for cols in plan.report_cols.values() for root, c in cols}
    multi = 0
    for rule_id, roots in plan.miss_roots.items():
        cols = [
            c for t in next(r for r in vp.rules if r.id == rule_id).ranked for _, c in plan.report_cols[t.id]
        ]
        column = masks[vector._MISS + rule_id]
        position = pl.int_range(pl.len()).cast(pl.Int64)
        got = flags.select(vector._missing_text(column, position, roots).alias("m"))["m"].to_list()
        for row, text in zip(flags.select(cols).iter_rows(named=True), got, strict=True):
            want = sorted({roots_of[c] for c, on in row.items() if on})
            assert text == ";".join(want), rule_id
            multi += len(want) > 1
    assert multi
