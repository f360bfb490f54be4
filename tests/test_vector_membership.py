"""The vector path's "in" / "not in" clauses: a short list of strings is tested as equalities.

:func:`cds_engine.evaluators.vector._member` writes ``fact in (a, b)`` over a string fact as
``fact == a or fact == b`` (cheaper than ``is_in``'s hash probe per row). The flags must be the
ones ``is_in`` gives, character for character, and a missing fact must stay False for both
"in" and "not in" (the projections decide what a missing fact means; a clause that said
"not in" for a null row would turn an unknown into a finding).
"""

from __future__ import annotations

import polars as pl
import pytest

from cds_engine.evaluators import vector
from cds_engine.evaluators.vector import VectorPack
from cds_engine.rules.conditions import Clause

# strings that share a view's length or its 4-byte prefix, are longer than a view's 12 inline
# bytes and differ only after them, differ in case, are empty, or are missing
_TRICKY = [
    "oral",
    "oralx",
    "ora",
    "Oral",
    "",
    "enteral",
    "spasticity_stroke",
    "spasticity_strokes",
    "spasticity_cerebral_palsy",
    "spasticity_cerebral_palsz",
    "x" * 40,
    None,
]


def _reference(c: Clause) -> pl.Expr:
    """The clause as written before the shortcut (is_in, nulls False)."""
    values = list(c.value) if isinstance(c.value, tuple | list) else [c.value]
    member = pl.col(c.fact).is_in(values)
    return (member if c.op == "in" else ~member).fill_null(False)


def _frame(fact: str, values: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame({fact: [*_TRICKY, *values, None]}, schema={fact: pl.String})


@pytest.mark.parametrize("op", ["in", "not_in"])
@pytest.mark.parametrize(
    "values",
    [
        ("oral",),
        ("oral", "enteral"),
        ("spasticity_stroke", "spasticity_cerebral_palsy", "x" * 40),
        ("", "ora", "Oral", "oral"),
        ("a", "b", "c", "d", "e"),  # past the limit: is_in itself
        ("oral", "oral"),
    ],
)
def test_short_string_lists_give_is_ins_flags(op, values):
    c = Clause("cmp", "order_route", op, values)
    frame = _frame(c.fact, list(values))
    got = frame.select(vector._clause(c).alias("f"))["f"]
    want = frame.select(_reference(c).alias("f"))["f"]
    assert got.null_count() == 0
    assert got.to_list() == want.to_list()
    nulls = frame[c.fact].is_null()
    assert not got.filter(nulls).any()  # a missing fact is neither "in" nor "not in"


def test_the_shortcut_is_taken_only_for_short_lists_of_strings():
    short = vector._member("order_route", ["oral", "enteral"])
    assert "is_in" not in str(short)
    assert "is_in" in str(vector._member("order_route", list("abcde")))
    assert "is_in" in str(vector._member("order_route", []))
    assert "is_in" in str(vector._member("egfr", [30.0, 60.0]))  # a number fact: is_in as before


def test_every_membership_clause_of_the_pack_matches_is_in(pack):
    vp = VectorPack.compile(pack)
    clauses = [c for c in vp._clauses.exprs if c.kind == "cmp" and c.op in ("in", "not_in")]
    assert clauses, "the pack has membership clauses"
    for c in clauses:
        listed = [v for v in (c.value if isinstance(c.value, tuple | list) else (c.value,)) if v is not None]
        frame = _frame(c.fact, listed).with_columns(pl.col(c.fact).cast(vp.columns[c.fact]))
        got = frame.select(vector._clause(c).alias("f"))["f"]
        assert got.to_list() == frame.select(_reference(c).alias("f"))["f"].to_list(), c
