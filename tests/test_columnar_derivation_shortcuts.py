"""The record-table derivation's shortcuts for list columns give what the full steps gave.

Why a test of its own: ``_entries`` and ``allergy_facts`` skip a list column with no list in any
row (``columnar_facts`` adds the lists a table lacks as nulls). These tests hold the shortcut and
the full step side by side at that edge, and ``allergy_facts`` against ``facts.derive`` (the
per-patient reference) on chunks of real rows with no, one, or a few allergy entries — a chunk of
one entry is where a too-eager shortcut would drop a patient's allergy silently.
``tests/test_columnar_facts.py`` and ``tests/test_columnar_medication_bits.py`` compare the whole
derivation with ``facts.derive``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from cds_engine.batch.columnar_lists import ROW, _entries, allergy_facts
from cds_engine.engine import Engine
from cds_engine.facts.derive import derive
from cds_engine.sources.table import clean_table, frame_from_cells, row_to_facts
from conftest import RULES
from record_rows import RXNORM, record_rows

AS_OF = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def test_entries_of_a_list_column_with_no_list() -> None:
    frame = pl.DataFrame(
        {ROW: [0, 1, 2], "allergies": [None, None, None], "conditions": [["a"], None, ["b", "c"]]},
        schema={ROW: pl.Int64, "allergies": pl.List(pl.String), "conditions": pl.List(pl.String)},
    )
    none = _entries(frame, "allergies", 0)
    assert none.height == 0
    # the same frame, schema included, as the explode of the column gives
    exploded = (
        frame.select(pl.col(ROW), pl.col("allergies").alias("__code"))
        .explode("__code")
        .filter(pl.col("__code").is_not_null())
        .with_columns(pl.lit(0, pl.Int8).alias("__tag"))
        .select(ROW, "__tag", "__code")
    )
    assert_frame_equal(none, exploded)
    assert _entries(frame, "conditions", 1)["__code"].to_list() == ["a", "b", "c"]
    assert_frame_equal(allergy_facts(frame, vocab=None), frame.select(ROW))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pack():
    return next(p for p in Engine.from_dir(RULES).running_packs if p.id == "baclofen")


def _rows(pack, n: int, seed: int) -> list[dict[str, str]]:
    """Generated record rows, none rejected by the reader (a "nan" eGFR is)."""
    rows = record_rows(pack.vocabulary, n, seed=seed)
    for r in rows:
        r["egfr"] = "" if r["egfr"] == "nan" else r["egfr"]
    return rows


def _typed(rows: list[dict[str, str]]) -> pl.DataFrame:
    header = list(rows[0])
    frame = frame_from_cells(header, [(i + 2, [r[h] for h in header]) for i, r in enumerate(rows)])
    typed = clean_table(frame, AS_OF)[0]
    return typed.with_columns(pl.int_range(typed.height, dtype=pl.Int64).alias(ROW))


def _groups_of_columnar(frame: pl.DataFrame, vocab) -> list[set[str]]:
    """Per row, the ``allergy.<group>`` facts ``allergy_facts`` sets true."""
    wide = allergy_facts(frame, vocab)
    assert wide[ROW].to_list() == frame[ROW].to_list()
    names = [c for c in wide.columns if c != ROW]
    return [{n for n in names if row[n]} for row in wide.iter_rows(named=True)]


def _groups_of_derive(frame: pl.DataFrame, pack) -> list[set[str]]:
    """Per row, the ``allergy.<group>`` facts the per-patient ``facts.derive`` states (the reference)."""
    out = []
    for row in frame.iter_rows(named=True):
        flat = derive(row_to_facts(row, AS_OF), pack.vocabulary, pack.context)
        out.append({k for k, v in flat.items() if k.startswith("allergy.") and v})
    return out


# allergy cells per row: a chunk of exactly one entry (at the first, a middle or the last row),
# one row of two entries, a few rows, none at all, and entries with no group
_ALLERGY_CASES = {
    "one entry, first row": {0: f"{RXNORM}|1292"},
    "one entry, middle row": {7: "rxnorm|197391"},
    "one entry, last row": {19: "baclofen"},
    "one row of two entries": {4: "peanut;rxnorm|1292"},
    "several rows": {1: "rxnorm|1292", 2: "peanut", 9: "baclofen;sorbitol", 15: f"{RXNORM}|197392"},
    "one entry with no group": {3: "peanut"},
    "none": {},
}


@pytest.mark.parametrize("case", list(_ALLERGY_CASES))
def test_allergy_facts_equal_derive_on_real_rows(pack, case: str) -> None:
    rows = _rows(pack, 20, seed=7)
    for i, r in enumerate(rows):
        r["allergies"] = _ALLERGY_CASES[case].get(i, "")
    frame = _typed(rows)
    assert frame.height == 20
    expected = _groups_of_derive(frame, pack)
    assert _groups_of_columnar(frame, pack.vocabulary) == expected
    if case.startswith("one entry,") or case == "several rows":
        assert any(expected), "the case must hold an allergy of a group"


def test_allergy_facts_of_a_one_row_chunk(pack) -> None:
    rows = _rows(pack, 1, seed=3)
    rows[0]["allergies"] = "rxnorm|1292"
    frame = _typed(rows)
    assert (
        _groups_of_columnar(frame, pack.vocabulary)
        == _groups_of_derive(frame, pack)
        == [{"allergy.baclofen"}]
    )
