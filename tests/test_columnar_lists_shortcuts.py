"""The record-table derivation's shortcuts give what the general operations they replace give.

Why a test of its own: each shortcut (a row sum by slot instead of a group-by, the joined names
of one-name lists taken as that name, a code table reused for the same set of codes, no copy of
the frame when no row falls back) is exact only under a condition the code relies on. These
tests hold the shortcut and the general operation side by side on the cases at the edge of
that condition; ``tests/test_columnar_facts.py`` and ``tests/test_columnar_medication_bits.py``
compare the whole derivation with ``facts.derive``.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl
from polars.testing import assert_frame_equal, assert_series_equal

from cds_engine.batch import columnar_lists
from cds_engine.batch.columnar_lists import _dense_row_sums, _joined_names, _names_expr, _row_sums
from cds_engine.facts.names import MAX_NAMES


def _entries(rows: int, max_slots: int, words: int, seed: int) -> pl.DataFrame:
    """Entries of ``rows`` rows (some with none), one per (row, slot), words of distinct bits per row."""
    rng = random.Random(seed)
    data: dict[str, list[int]] = {"__pos": [], "__k": [], **{f"__w{j}": [] for j in range(words)}}
    for pos in range(rows):
        for k in rng.sample(range(max_slots), rng.randint(0, max_slots)):
            data["__pos"].append(pos)
            data["__k"].append(k)
            for j in range(words):
                data[f"__w{j}"].append(rng.getrandbits(4) << (4 * k))  # slot k owns bits 4k..4k+3
    order = list(range(len(data["__pos"])))
    rng.shuffle(order)  # the sums may not depend on the entries' order
    return pl.DataFrame(
        {k: [v[i] for i in order] for k, v in data.items()},
        schema={"__pos": pl.Int64, "__k": pl.Int64, **{f"__w{j}": pl.UInt64 for j in range(words)}},
    )


def test_row_sums_equal_a_group_by_sum() -> None:
    rows, words = 300, 2
    entries = _entries(rows, max_slots=6, words=words, seed=7)
    expected = (
        pl.DataFrame({"__pos": range(rows)}, schema={"__pos": pl.Int64})
        .join(
            entries.group_by("__pos").agg(pl.col(f"__w{j}").sum() for j in range(words)),
            on="__pos",
            how="left",
            maintain_order="left",
        )
        .fill_null(0)
    )
    got = _row_sums(entries, rows, words)
    for j in range(words):
        assert_series_equal(got[j], expected[f"__w{j}"], check_names=False)
    # rows without entries are 0, not null; every row of one slot only is that entry's word
    assert all(s.null_count() == 0 for s in got)


def test_dense_row_sums_equal_the_slot_sums() -> None:
    """Every row with the same number of entries, in row then slot order: the reshape's sums are
    the per-slot sums (and not those of entries taken column-major)."""
    rows, per_row, words = 250, 3, 2
    rng = random.Random(11)
    data: dict[str, list[int]] = {"__pos": [], "__k": [], **{f"__w{j}": [] for j in range(words)}}
    for pos in range(rows):
        for k in range(per_row):
            data["__pos"].append(pos)
            data["__k"].append(k)
            for j in range(words):
                data[f"__w{j}"].append(rng.getrandbits(4) << (4 * k))
    entries = pl.DataFrame(
        data, schema={"__pos": pl.Int64, "__k": pl.Int64, **{f"__w{j}": pl.UInt64 for j in range(words)}}
    )
    expected = _row_sums(entries, rows, words)
    got = _dense_row_sums(entries, rows, words, per_row)
    for j in range(words):
        assert got[j].dtype == pl.UInt64
        assert_series_equal(got[j], expected[j], check_names=False)


def test_joined_names_equal_the_expression() -> None:
    lists = [
        ["a"],
        [None],
        ["a", "a"],
        ["b", "a", "b"],
        [f"n{i}" for i in range(MAX_NAMES + 2)],
        [f"n{i}" for i in range(MAX_NAMES)],
        ["x", None],
        [""],
    ]
    names = pl.Series("name", lists, dtype=pl.List(pl.String))
    expected = names.to_frame().select(_names_expr("name")).to_series()
    assert_series_equal(_joined_names(names), expected, check_names=False)
    # one name: itself (the shortcut); one null: what the expression gives ("")
    assert _joined_names(names)[:2].to_list() == ["a", ""]


def test_code_table_is_reused_for_the_same_codes_only() -> None:
    calls: list[str] = []

    def info(code: str) -> dict[str, Any]:
        calls.append(code)
        return {"n": len(code)}

    owner = object()
    schema = {"n": pl.Int64}
    first = columnar_lists._code_table(pl.Series(["a", "bb", None]), info, schema, ("reuse", owner))
    same = columnar_lists._code_table(pl.Series(["bb", "a", "a"]), info, schema, ("reuse", owner))
    assert same is first  # the same set of codes: the table built for it
    other = columnar_lists._code_table(pl.Series(["a", "ccc"]), info, schema, ("reuse", owner))
    assert other is not first
    assert dict(other.iter_rows()) == {"a": 1, "ccc": 3}
    assert sorted(calls) == ["a", "bb", "ccc"]  # each code asked once
    rebuilt = columnar_lists._code_table(pl.Series(["ccc", "a"]), info, schema, None)
    assert_frame_equal(other.sort("__code"), rebuilt.sort("__code"))
