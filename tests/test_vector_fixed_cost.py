"""The per-call fixed costs of ``vector_alerts`` cut without changing a byte of the table.

A streamed screening calls :func:`vector_alerts` once per chunk, and on a 100,000-row chunk
about half of its CPU was planning and Python, not rows. Three shortcuts, each checked here
against the way it replaced:

* ``_distinct_masks``: every rule's distinct missing-root masks from two queries (a maximum of
  every mask column, then ``unique`` of the few that are not all 0) instead of two Series
  operations per rule — the masks must be the ones ``unique`` gave, in whatever order;
* ``_second_pass`` plans without expression simplification — the same frame as the default
  optimisations;
* ``_report_keys``: ``_missing_rows``' grouping and its conditions, built once per pack and
  kept on it — a second call, a second pack, the same pack's next chunk all give the table a
  freshly compiled pack gives.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest
from tests.vector_helpers import random_facts

from cds_engine.evaluators import summaries, vector
from cds_engine.evaluators.vector import VectorPack, vector_alerts


def _fresh_table(pack: Any, frame: pl.DataFrame) -> pl.DataFrame:
    summaries._FORMATTED.clear()
    summaries._FOLDED.clear()
    return vector_alerts(VectorPack.compile(pack), frame)


def _pack(engine: Any, pack_id: str) -> Any:
    return next(p for p in engine.packs if p.id == pack_id)


def test_distinct_masks_are_the_unique_values_of_each_mask_column():
    deep = pl.DataFrame(
        {
            vector._MISS + "zero": pl.Series([0, 0, 0, 0], dtype=pl.UInt8),
            vector._MISS + "spread": pl.Series([0, 5, 5, 2], dtype=pl.UInt16),
            vector._MISS + "one": pl.Series([1, 1, 1, 1], dtype=pl.UInt8),  # the lowest bit on every row
            vector._MISS + "nulls": pl.Series([None, None, None, None], dtype=pl.UInt32),
            vector._MISS + "some_null": pl.Series([None, 3, 0, None], dtype=pl.Int64),
        }
    )
    roots = {r: ["a", "b", "c"] for r in ("zero", "spread", "one", "nulls", "some_null", "absent")}
    got = vector._distinct_masks(deep, roots)
    assert set(got) == {"zero", "spread", "one", "nulls", "some_null"}  # no column, no entry
    for rule, masks in got.items():
        want = deep[vector._MISS + rule].unique().drop_nulls().to_list()
        assert sorted(masks) == sorted(want), rule
    assert vector._distinct_masks(deep.head(0), roots) == {r: [] for r in got}
    assert vector._distinct_masks(deep, {}) == {}


@pytest.mark.parametrize("pack_id", ["baclofen", "gabapentinoid"])
@pytest.mark.parametrize("missing", [0.05, 0.3, 1.0])
def test_masks_taken_together_give_the_per_rule_table(engine, pack_id, missing, monkeypatch):
    pack = _pack(engine, pack_id)
    frame = random_facts(VectorPack.compile(pack), 400, random.Random(17), missing)
    table = _fresh_table(pack, frame)
    if missing == 0.3:
        assert (table["missing"] != "").any()
    monkeypatch.setattr(vector, "_distinct_masks", lambda deep, roots: {})  # each rule's own unique
    assert _fresh_table(pack, frame).equals(table)


@pytest.mark.parametrize("pack_id", ["baclofen", "gabapentinoid"])
def test_second_pass_without_simplification_is_the_default_plans_frame(engine, pack_id):
    pack = _pack(engine, pack_id)
    vp = VectorPack.compile(pack)
    frame = random_facts(vp, 600, random.Random(3), 0.3)
    plan = vector._plan(vp)
    wide = vector._first_pass(vp, plan, frame, "patient_id", None, ["__patient", "__row"])
    deep = vector._second_pass(plan, wide, ["__row"])
    assert deep.height > 0
    default = (
        wide.lazy()
        .filter(pl.col("__any_open"))
        .with_columns(plan.node_exprs)
        .with_columns(plan.report_exprs)
        .with_columns(plan.miss_exprs)
        .select(["__row", *plan.chosen, *plan.bounds, *plan.deep_keep[1:]])
        .collect(engine="in-memory")
    )
    assert deep.equals(default)
    assert not vector._SECOND_PASS_OPTIMIZATIONS.simplify_expression


def test_report_keys_kept_per_pack_serve_every_chunk_and_no_other_pack(engine):
    packs = [_pack(engine, "baclofen"), _pack(engine, "gabapentinoid")]
    vps = [VectorPack.compile(p) for p in packs]
    rng = random.Random(11)
    for round_ in range(3):  # alternate packs and chunks on the same compiled packs
        for pack, vp in zip(packs, vps, strict=True):
            frame = random_facts(vp, 250 + 50 * round_, rng, 0.3)
            summaries._FORMATTED.clear()
            summaries._FOLDED.clear()
            kept = vector_alerts(vp, frame)
            assert vp._report_keys is not None
            assert (kept["kind"] == "cannot-assess").any()
            assert kept.equals(_fresh_table(pack, frame)), (pack.id, round_)


def test_empty_and_one_patient_frames_on_a_pack_that_has_kept_its_reports(engine):
    pack = _pack(engine, "baclofen")
    vp = VectorPack.compile(pack)
    frame = random_facts(vp, 300, random.Random(23), 0.3)
    vector_alerts(vp, frame)  # the plan and the report keys are built
    for sub in (frame.head(0), frame.head(1), frame.tail(1)):
        summaries._FORMATTED.clear()
        summaries._FOLDED.clear()
        assert vector_alerts(vp, sub).equals(_fresh_table(pack, sub))
