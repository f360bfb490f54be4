"""The "cannot assess" rows: their ``missing`` and ``not_assessed`` texts spelt from bit masks.

``vector._missing_rows`` groups a report's rows by which tiers it stands for and which root facts
they lack. It keys them by two bit masks and spells each distinct mask once (``_render_masks``);
with more flags than ``_MASK_BITS`` it builds both texts per row and groups on the texts
(``_render_unique``). The two ways must give the same table, byte for byte, on frames where the
reports list several tiers and several facts (so the order of the names is checked too).
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
    vp = VectorPack.compile(pack)  # a fresh plan and summary cache: nothing carried between the ways
    summaries._FORMATTED.clear()
    summaries._FOLDED.clear()
    return vector_alerts(vp, frame)


@pytest.mark.parametrize("pack_id", ["baclofen", "gabapentinoid"])
@pytest.mark.parametrize("missing", [0.1, 0.4])
def test_masked_and_plain_report_texts_give_the_same_alert_table(engine, pack_id, missing, monkeypatch):
    pack = next(p for p in engine.packs if p.id == pack_id)
    frame = random_facts(VectorPack.compile(pack), 600, random.Random(47), missing)
    table = _table(pack, frame)
    reports = table.filter(pl.col("kind") == "cannot-assess")
    assert reports.height > 0
    if missing >= 0.4:  # lists of several names: their order is part of what is compared
        assert reports["not_assessed"].str.contains(";").any()
        if pack_id == "baclofen":  # gabapentinoid's reports each stand for one fact
            assert reports["missing"].str.contains(";").any()
    monkeypatch.setattr(vector, "_MASK_BITS", 0)  # every report through the per-row texts
    plain = _table(pack, frame)
    assert plain.equals(table)


def test_spelt_names_follow_the_flag_order():
    names = ["b.tier", "a.tier", "c.tier"]  # not sorted: the order given is the order written
    assert vector._spelt(names, 0) == ""
    assert vector._spelt(names, 0b101) == "b.tier;c.tier"
    assert vector._spelt(names, 0b111) == "b.tier;a.tier;c.tier"
