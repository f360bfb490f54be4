"""The ``missing`` column of finding rows: three ways to spell a rule's missing roots, one text.

``vector._missing_text`` turns a rule's bit mask of missing roots into ";"-joined names. It
answers with the literal ``_NO_MISSING`` when no row lacks a root (most rules on most chunks:
no gather at all, and the rule's parts do not take the position columns), indexes a small text
table by the mask when the masks are small, and otherwise looks each mask up in a hash map.
Every way must give the same table as the plain per-row text (``_MASK_BITS`` 0).
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
import pytest
from tests.vector_helpers import random_facts

from cds_engine.evaluators import summaries, vector
from cds_engine.evaluators.vector import VectorPack, vector_alerts


def _table(pack: Any, frame: pl.DataFrame) -> pl.DataFrame:
    vp = VectorPack.compile(pack)  # the plan (and its masks) is built on first use
    summaries._FORMATTED.clear()
    summaries._FOLDED.clear()
    return vector_alerts(vp, frame)


@pytest.mark.parametrize("pack_id", ["baclofen", "gabapentinoid"])
@pytest.mark.parametrize("missing", [0.0, 0.05, 0.3])
def test_table_hash_and_plain_missing_texts_give_the_same_alert_table(engine, pack_id, missing, monkeypatch):
    pack = next(p for p in engine.packs if p.id == pack_id)
    frame = random_facts(VectorPack.compile(pack), 500, random.Random(31), missing)
    table = _table(pack, frame)  # the default: the literal or the text table
    if missing >= 0.3:
        assert (table["missing"] != "").any()
    monkeypatch.setattr(vector, "_MASK_TABLE", 0)  # every mask through the hash map
    assert _table(pack, frame).equals(table)
    monkeypatch.setattr(vector, "_MASK_BITS", 0)  # the plain per-row text
    assert _table(pack, frame).equals(table)


def test_no_row_lacking_a_root_is_the_literal_and_reads_empty():
    roots = ["a", "b", "c"]
    frame = pl.DataFrame({"p": [0, 1, None, 2]}, schema={"p": pl.Int64})
    position = pl.col("p")
    for column in ([0, 0, 0], [None, None, None], [0, None, 0], []):
        series = pl.Series(column, dtype=pl.Int64)
        expr = vector._missing_text(series, position, roots)
        assert expr is vector._NO_MISSING
    mixed = pl.Series([0, 5, None], dtype=pl.Int64)  # 5 = a and c
    expr = vector._missing_text(mixed, position, roots)
    assert expr is not vector._NO_MISSING
    got = frame.select(expr.alias("m"))["m"].to_list()
    assert got == ["", "a;c", "", ""]  # null position (no open tier) and null mask read ""


def test_text_table_and_hash_map_agree_on_every_mask(monkeypatch):
    roots = [f"r{j}" for j in range(6)]
    rng = random.Random(5)
    masks = pl.Series([None if rng.random() < 0.1 else rng.randrange(64) for _ in range(300)], dtype=pl.Int64)
    frame = pl.DataFrame({"p": [None if rng.random() < 0.2 else rng.randrange(300) for _ in range(1000)]})
    position = pl.col("p").cast(pl.Int64)
    by_table = frame.select(vector._missing_text(masks, position, roots).alias("m"))
    monkeypatch.setattr(vector, "_MASK_TABLE", 0)
    by_hash = frame.select(vector._missing_text(masks, position, roots).alias("m"))
    assert by_table.equals(by_hash)
    want = [
        "" if p is None or masks[p] is None else ";".join(r for j, r in enumerate(roots) if masks[p] >> j & 1)
        for p in frame["p"].to_list()
    ]
    assert by_table["m"].to_list() == want
