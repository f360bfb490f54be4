"""The alert table's final order: ``_in_alert_order`` sorts the parts on one integer key.

Why a test of its own: the key packs the patient row and each wording code's place in the
(rank, code) order into one integer, 32 bits wide when rows × codes fit and 64 otherwise, and a
wrong packing still gives a plausible table (grouped by patient, most rows in order). These
check the order against Alert.sort_key's rule spelt out in Python, with both key widths, on many
parts whose texts are long enough to live in the string buffers rather than inline in the views.
"""

from __future__ import annotations

import random

import polars as pl
import pytest

from cds_engine.alerts import SEVERITY_ORDER
from cds_engine.evaluators import vector


def _words() -> vector._Wordings:
    """A small wording table: each severity, findings and reports."""
    words = vector._Wordings()
    for i, (kind, severity) in enumerate(
        [
            ("finding", "info"),
            ("cannot-assess", "critical"),
            ("finding", "critical"),
            ("finding", "warning"),
            ("cannot-assess", "warning"),
            ("finding", "critical"),
        ]
    ):
        words.add(kind, f"rule-{i}", f"tier-{i}", "category", severity, f"title {i}")
    return words


def _parts(rng: random.Random, words: vector._Wordings) -> list[pl.DataFrame]:
    """One part per wording code, each in row order, a random subset of 300 rows each."""
    parts = []
    for code in range(len(words.rows)):
        rows = sorted(rng.sample(range(300), rng.randint(1, 120)))
        parts.append(
            pl.DataFrame(
                {
                    "__row": pl.Series(rows, dtype=pl.get_index_type()),
                    "__code": pl.Series([code] * len(rows), dtype=pl.UInt32),
                    "summary": [f"a summary long enough for a buffer {code}:{r}" for r in rows],
                    "missing": ["" if r % 3 else f"fact_{r % 7}" for r in rows],
                    "not_assessed": pl.Series([""] * len(rows), dtype=pl.String),
                    "evidence": [f'{{"fact.with_a_long_name":{r}.0,"code":{code}}}' for r in rows],
                }
            )
        )
    return parts


def _expected(parts: list[pl.DataFrame], words: vector._Wordings) -> list[tuple]:
    """Alert.sort_key's order spelt out: patient row, most severe first, findings first, then code."""
    rows = [row for part in parts for row in part.iter_rows()]

    def key(row: tuple) -> tuple[int, int, int, int]:
        kind, _, _, _, severity, _ = words.rows[row[1]]
        return (row[0], -SEVERITY_ORDER[severity], kind != "finding", row[1])

    return sorted(rows, key=key)


@pytest.mark.parametrize("rows", [300, 2**32 // 6 + 1])  # a 32-bit key, then a 64-bit one (6 codes)
def test_parts_come_out_in_alert_order(rows):
    rng = random.Random(7)
    words = _words()
    parts = _parts(rng, words)
    expected = _expected(parts, words)
    out = vector._in_alert_order(parts, words, rows)
    assert out.columns == vector._PER_ROW
    assert out.rows() == expected
    assert out.schema["__row"] == pl.get_index_type() and out.schema["__code"] == pl.UInt32


def test_the_key_is_narrow_when_it_fits_and_exact_when_not():
    words = _words()
    row = pl.get_index_type()
    frame = pl.DataFrame(
        {"__row": pl.Series([0, 1, 2**31 - 1], dtype=row), "__code": pl.Series([0, 5, 2], dtype=pl.UInt32)}
    )
    assert frame.select(vector._sort_key(words, 2**32 // 6)).dtypes == [pl.UInt32]
    wide = frame.select(vector._sort_key(words, 2**31)).to_series()
    assert wide.dtype == pl.UInt64
    # places: code 0 (an info finding) is last (5), code 5 second, code 2 first; no wrap at 2^31 rows
    assert wide.to_list() == [5, 6 + 1, (2**31 - 1) * 6 + 0]


def test_rows_are_numbered_in_the_index_type(pack):
    """``__row`` is polars' index type: what the parts carry and the sort moves (half an Int64)."""
    vp = vector.VectorPack.compile(pack)
    wide = vector._first_pass(vp, vector._plan(vp), _one_patient(vp), "patient_id", None, ["__row"])
    assert wide.schema["__row"] == pl.get_index_type()


def test_the_texts_survive_the_sort():
    rng = random.Random(11)
    words = _words()
    parts = _parts(rng, words)
    texts = sorted(t for p in parts for t in p["evidence"].to_list())
    out = vector._in_alert_order(parts, words, 300)
    assert sorted(out["evidence"].to_list()) == texts
    assert out.height == sum(p.height for p in parts)


def test_one_part_and_empty_texts():
    words = _words()
    part = pl.DataFrame(
        {
            "__row": pl.Series([2, 0, 1], dtype=pl.get_index_type()),
            "__code": pl.Series([3, 3, 3], dtype=pl.UInt32),
            "summary": ["c", "a", "b"],
            "missing": ["", "", ""],
            "not_assessed": ["", "", ""],
            "evidence": ["{}", "{}", "{}"],
        }
    )
    out = vector._in_alert_order([part], words, 3)
    assert out["summary"].to_list() == ["a", "b", "c"]


def _one_patient(vp: vector.VectorPack) -> pl.DataFrame:
    """A one-row frame with every fact missing (the first pass fills defaults and nulls)."""
    return pl.DataFrame({"patient_id": ["p1"]})


def test_the_key_width_switches_exactly_where_the_largest_key_stops_fitting():
    """rows × codes ≤ 2^32: the largest key, (rows - 1) × codes + the last place, is 2^32 - 1 at most."""
    words = _words()
    n = len(words.rows)
    fits = 2**32 // n
    last = pl.DataFrame(
        {"__row": pl.Series([fits - 1], dtype=pl.get_index_type()), "__code": pl.Series([0], dtype=pl.UInt32)}
    )  # code 0, an info finding, has the largest place (n - 1)
    narrow = last.select(vector._sort_key(words, fits)).to_series()
    assert narrow.dtype == pl.UInt32 and narrow.to_list() == [fits * n - 1]
    over = last.with_columns(pl.Series("__row", [fits], dtype=pl.get_index_type()))
    wider = over.select(vector._sort_key(words, fits + 1)).to_series()
    assert wider.dtype == pl.UInt64 and wider.to_list() == [(fits + 1) * n - 1]


def test_the_sort_is_told_the_rows_left_after_the_mask(pack, monkeypatch):
    """``vector_alerts`` hands ``_in_alert_order`` the height of ``wide`` (the rows after the mask):
    a smaller figure could let a 32-bit key wrap on a large chunk."""
    from tests.vector_helpers import random_facts

    vp = vector.VectorPack.compile(pack)
    frame = random_facts(vp, 400, random.Random(3), missing=0.2)
    keep = pl.Series([i % 3 != 0 for i in range(frame.height)])
    seen: list[int] = []
    real = vector._in_alert_order

    def spy(parts, words, rows):
        seen.append(rows)
        return real(parts, words, rows)

    monkeypatch.setattr(vector, "_in_alert_order", spy)
    vector.vector_alerts(vp, frame, mask=keep)
    vector.vector_alerts(vp, frame)
    assert seen == [int(keep.sum()), frame.height]


def test_an_empty_table_has_the_columns_of_a_full_one_in_order(pack):
    """A chunk without alerts is concatenated with chunks with alerts: the carried columns sit after
    ``evidence`` in both (they were last in an empty table, and ``pl.concat`` refused the pair)."""
    from tests.vector_helpers import random_facts

    vp = vector.VectorPack.compile(pack)
    frame = random_facts(vp, 200, random.Random(5), missing=0.1).with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("__unit")
    )
    full = vector.vector_alerts(vp, frame, carry=("__unit",))
    empty = vector.vector_alerts(vp, frame, mask=pl.Series([False] * frame.height), carry=("__unit",))
    assert full.height > 0 and empty.height == 0
    assert empty.schema == full.schema
    assert pl.concat([empty, full], how="vertical").equals(full)
