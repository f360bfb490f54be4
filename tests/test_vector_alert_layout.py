"""The alert table's layout shortcuts: per-tier open texts, and ids taken from ``wide`` after the sort.

Why a test of its own: two shortcuts of :func:`cds_engine.evaluators.vector.vector_alerts` are
exact only for a structural reason, and a wrong version still gives plausible tables:

* a fired tier's part writes ``missing`` and ``not_assessed`` from the rule's tiers of strictly
  higher severity only (the others are blocked by the fired tier); counting the wrong tiers
  drops or invents open tiers on exactly the rows that have them;
* the parts carry only ``__row``, the row's position in ``wide``; the patient id and the carried
  columns are gathered from ``wide`` after the sort. Numbered before the mask, ``__row`` would
  hand alerts the ids and carried values of other rows — only under a mask.
"""

from __future__ import annotations

import random

import polars as pl
import pytest
from tests.vector_helpers import random_facts

from cds_engine.alerts import SEVERITY_ORDER
from cds_engine.evaluators import vector
from cds_engine.evaluators.vector import VectorPack, vector_alerts
from cds_engine.rules.conditions import TRUE, UNKNOWN


@pytest.fixture(scope="module")
def vp(pack) -> VectorPack:
    return VectorPack.compile(pack)


@pytest.fixture(scope="module")
def frame(vp) -> pl.DataFrame:
    facts = random_facts(vp, 600, random.Random(41), missing=0.3)
    return facts.with_columns(pl.format("unit-{}", pl.int_range(pl.len())).alias("__unit"))


def test_open_texts_list_only_tiers_of_higher_severity(vp):
    ids = ["__row"]
    for rule in vp.rules:
        for tier in rule.ranked:
            common, computed = vector._open_texts(rule, tier, ids, pl.lit("x"))
            level = SEVERITY_ORDER[tier.severity]
            higher = [t.id for t in rule.ranked if SEVERITY_ORDER[t.severity] > level]
            flags = [c.removeprefix(vector._OPEN) for c in common if c.startswith(vector._OPEN)]
            assert flags == higher, tier.id
            if not higher:  # nothing can be open: both texts are the literal ""
                assert common == ids
                texts = pl.select(*computed.values())
                assert texts.row(0) == ("", ""), tier.id


def test_open_tiers_are_spelt_on_the_rows_that_have_them(pack, vp, frame):
    """Every finding's not_assessed is the rule's open tiers above it, recomputed from outcomes."""
    table = vector_alerts(vp, frame)
    outcomes = vp.outcomes(frame).with_columns(frame["patient_id"])
    by_patient = {row["patient_id"]: row for row in outcomes.iter_rows(named=True)}
    rules = {r.id: r for r in vp.rules}
    spelt = 0
    for row in table.filter(pl.col("kind") == "finding").iter_rows(named=True):
        out = by_patient[row["patient_id"]]
        rule = rules[row["rule_id"]]
        fired = next(t for t in rule.ranked if t.id == row["tier_id"])
        level = SEVERITY_ORDER[fired.severity]
        wanted = [
            t.id
            for t in rule.ranked
            if SEVERITY_ORDER[t.severity] > level
            and out[t.id] == UNKNOWN
            and not any(
                out[u.id] == TRUE and SEVERITY_ORDER[u.severity] >= SEVERITY_ORDER[t.severity]
                for u in rule.ranked
            )
        ]
        assert row["not_assessed"] == ";".join(wanted), (row["patient_id"], row["tier_id"])
        assert wanted or row["missing"] == "", row  # no open tier: no missing root
        spelt += bool(wanted)
    assert spelt > 0  # the generated rows do leave higher tiers open


@pytest.mark.parametrize("keep", ["every third", "last half"])
def test_masked_rows_carry_their_own_ids_and_columns(vp, frame, keep):
    n = frame.height
    kept = [i % 3 == 2 for i in range(n)] if keep == "every third" else [i >= n // 2 for i in range(n)]
    mask = pl.Series("mask", kept)
    table = vector_alerts(vp, frame, mask=mask, carry=("__unit",))
    unit_of = dict(zip(frame["patient_id"].to_list(), frame["__unit"].to_list(), strict=True))
    kept_ids = set(frame.filter(mask)["patient_id"].to_list())
    assert table.height > len(kept_ids)
    assert set(table["patient_id"].to_list()) <= kept_ids
    assert all(unit_of[p] == u for p, u in table.select("patient_id", "__unit").iter_rows())
    unmasked = vector_alerts(vp, frame, carry=("__unit",))
    assert table.equals(unmasked.filter(pl.col("patient_id").is_in(list(kept_ids))))
