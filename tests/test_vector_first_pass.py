"""The first pass's per-call plan work kept on the pack, without changing a value of ``wide``.

A streamed screening calls :func:`vector_alerts` once per chunk, and each call built
:meth:`VectorPack.prepare`'s ~150 column expressions and the first pass's ~500 selected names
again. Now ``prepare`` keeps its expressions per input schema (and casts only a column not
already of its type) and the plan keeps the selected columns as expressions. Checked here
against the way they replaced: every column cast, frames of other schemas in between, the
columns of ``wide`` in their order, and the alert table of a freshly compiled pack.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest
from tests.vector_helpers import random_facts

from cds_engine.evaluators import summaries, vector
from cds_engine.evaluators.vector import VectorPack, vector_alerts


def _pack(engine: Any, pack_id: str) -> Any:
    return next(p for p in engine.packs if p.id == pack_id)


def _cast_every_column(vp: VectorPack, frame: pl.DataFrame) -> pl.DataFrame:
    """``prepare`` as it was: every present column cast, every absent one a typed null."""
    exprs = []
    for name, dtype in vp.columns.items():
        col = pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype)
        if name in vp.defaults:
            col = col.fill_null(pl.lit(vp.defaults[name], dtype))
        exprs.append(col.alias(name))
    return frame.lazy().with_columns(exprs).collect()


def _variants(vp: VectorPack, frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The same patients in frames of different schemas: names alike, types or columns not."""
    floats = [n for n, t in vp.columns.items() if t == pl.Float64()]
    bools = [n for n, t in vp.columns.items() if t == pl.Boolean()]
    strings = [n for n, t in vp.columns.items() if t == pl.String()]
    assert floats and bools and strings
    defaulted = [n for n in vp.defaults if n in frame.columns]
    return {
        "catalog types": frame,
        # the same names as "catalog types", other types: a cache keyed by names would skip the casts
        "float32 and int8": frame.with_columns(pl.col(floats).cast(pl.Float32), pl.col(bools).cast(pl.Int8)),
        "categorical": frame.with_columns(pl.col(strings).cast(pl.Categorical)),
        "all null": frame.select(
            pl.col("patient_id"), *(pl.lit(None, vp.columns[n]).alias(n) for n in vp.columns)
        ),
        "null typed": frame.select(pl.col("patient_id"), *(pl.lit(None).alias(n) for n in vp.columns)),
        "no defaulted column": frame.drop(defaulted),
        "no fact": frame.select("patient_id"),
    }


@pytest.mark.parametrize("pack_id", ["baclofen", "gabapentinoid"])
def test_prepare_kept_per_schema_is_every_column_cast(engine, pack_id):
    vp = VectorPack.compile(_pack(engine, pack_id))
    frame = random_facts(vp, 120, random.Random(5), 0.3)
    variants = _variants(vp, frame)
    for _ in range(2):  # the second round takes every schema's expressions from the pack
        for name in [*variants, *reversed(variants)]:
            got = vp.prepare(variants[name]).collect()
            want = _cast_every_column(vp, variants[name])
            assert got.schema == want.schema, name
            assert got.equals(want), name
    assert 0 < len(vp._prepared) <= vector._PREPARED_SCHEMAS


def test_prepare_keeps_a_bounded_number_of_schemas(engine):
    vp = VectorPack.compile(_pack(engine, "baclofen"))
    frame = random_facts(vp, 30, random.Random(9), 0.2)
    names = [n for n in vp.columns if n in frame.columns]
    for k in range(vector._PREPARED_SCHEMAS + 5):  # each drops one more column: a new schema
        sub = frame.drop(names[:k])
        assert vp.prepare(sub).collect().equals(_cast_every_column(vp, sub)), k
        assert len(vp._prepared) <= vector._PREPARED_SCHEMAS


@pytest.mark.parametrize("carry", [(), ("order_ref",)])
def test_first_pass_keeps_the_columns_it_named(engine, carry):
    vp = VectorPack.compile(_pack(engine, "baclofen"))
    frame = random_facts(vp, 200, random.Random(13), 0.3)
    if carry:
        frame = frame.with_columns(pl.format("o{}", pl.int_range(pl.len())).alias("order_ref"))
    plan = vector._plan(vp)
    ids = ["__patient", "__row", *carry]
    wide = vector._first_pass(vp, plan, frame, "patient_id", None, ids)
    want = [*ids, *vp.columns, *plan.flags, *plan.clause_names, "__any_open", "__deep"]
    assert wide.columns == want
    by_name = (
        _cast_every_column(vp, frame)
        .lazy()
        .with_columns(pl.col("patient_id").cast(pl.String).alias("__patient"))
        .with_columns(pl.int_range(pl.len(), dtype=pl.get_index_type()).alias("__row"))
        .with_columns(plan.clause_exprs)
        .with_columns(plan.outcome_exprs)
        .with_columns(plan.flag_exprs)
        .select([*ids, *vp.columns, *plan.flags, *plan.clause_names, plan.any_open])
        .collect()
    )
    assert wide.drop("__deep").equals(by_name)


@pytest.mark.parametrize("pack_id", ["baclofen", "gabapentinoid"])
def test_alert_tables_of_alternating_schemas_are_a_fresh_packs(engine, pack_id):
    pack = _pack(engine, pack_id)
    vp = VectorPack.compile(pack)
    frame = random_facts(vp, 250, random.Random(29), 0.3)
    variants = _variants(vp, frame)
    variants |= {
        "one row": frame.head(1),
        "empty": frame.head(0),
        "empty float32": variants["float32 and int8"].head(0),
    }
    for _ in range(2):
        for name, sub in variants.items():
            summaries._FORMATTED.clear()
            summaries._FOLDED.clear()
            kept = vector_alerts(vp, sub)
            summaries._FORMATTED.clear()
            summaries._FOLDED.clear()
            fresh = vector_alerts(VectorPack.compile(pack), _cast_every_column(VectorPack.compile(pack), sub))
            assert kept.equals(fresh), name
