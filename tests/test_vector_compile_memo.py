"""VectorPack.compile's memos give the plan the uncached compiler gave (issue 20 item 2).

The compiler keeps each sub-tree's "undecided" column per node object (``_undecided``), each
column's ``pl.col`` per key (``_Columns.ref``), each fact's root conditions once per compile and
the typed literals of ``_plan``/``_mask`` once (``_typed_lit``). Each is a cache of an immutable
expression, so the compiled plan must serialise to exactly what the uncached walk builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cds_engine.engine import Engine
from cds_engine.evaluators import vector
from cds_engine.evaluators.vector import VectorPack
from cds_engine.rules.conditions import And, Leaf, Or

RULES = Path(__file__).resolve().parents[1] / "rules"


@pytest.fixture(scope="module")
def packs() -> list[Any]:
    return list(Engine.from_dir(RULES).packs)


def _ser(e: Any) -> str:
    return e.meta.serialize(format="json") if isinstance(e, pl.Expr) else repr(e)


def _dump(vp: VectorPack) -> list[str]:
    """Everything compile and _plan produce, expressions serialised."""
    out = [repr(vp.columns), repr(vp.defaults), repr([(r.id, [t.id for t in r.ranked]) for r in vp.rules])]
    for cols in (vp._clauses, vp._nodes):
        out += [f"{k!r} {name} {_ser(e)}" for k, (name, e) in cols.exprs.items()]
    out += [f"{t} {_ser(e)}" for t, e in vp._outcome.items()]
    out += [f"{t} {root} {_ser(e)}" for t, reps in vp._reports.items() for root, e in reps]
    for name, value in vars(vector._plan(vp)).items():
        out.append(f"{name} {[_ser(x) for x in value] if isinstance(value, list) else _ser(value)}")
    return out


def _uncached_compile(pack: Any, monkeypatch: pytest.MonkeyPatch) -> VectorPack:
    """The compiler without the memos: every ask walks, hashes and builds again."""
    with monkeypatch.context() as m:
        m.setattr(VectorPack, "_undecided", VectorPack._undecided_of)
        m.setattr(vector, "_typed_lit", lambda value, dtype: pl.lit(value, dtype))

        def ref(self: Any, key: Any, build: Any) -> pl.Expr:
            if key not in self.exprs:
                self.exprs[key] = (f"{self.prefix}{len(self.exprs)}", build())
            return pl.col(self.exprs[key][0])

        m.setattr(vector._Columns, "ref", ref)
        vp = VectorPack.compile(pack)
        dump = _dump(vp)
    vp.dump = dump  # type: ignore[attr-defined]
    return vp


def test_plan_same_as_uncached(packs: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for pack in packs:
        want = _uncached_compile(pack, monkeypatch).dump  # type: ignore[attr-defined]
        got = _dump(VectorPack.compile(pack))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g == w


def test_compile_twice_same(packs: list[Any]) -> None:
    pack = packs[0]
    assert _dump(VectorPack.compile(pack)) == _dump(VectorPack.compile(pack))


def test_equal_subtrees_of_distinct_objects_share_a_column() -> None:
    """The per-object memo sits in front of the equality-keyed columns: equal copies still share one."""
    vp = VectorPack(pack=None)  # type: ignore[arg-type]
    proj = vector.Projection(
        clause=lambda c: vp._clauses.ref(c, lambda: vector._clause(c)),
        conj=lambda items: pl.all_horizontal(list(items)),
        disj=lambda items: pl.any_horizontal(list(items)),
    )

    def tree() -> Or:
        return Or(
            (And((Leaf("egfr", "lt", 30.0, "cannot-assess"), Leaf("age", "gte", 65, "cannot-assess"))),)
        )

    a, b = tree(), tree()
    assert a == b and a is not b
    first = vp._undecided(a.children[0], proj)
    assert vp._undecided(a.children[0], proj) is first  # the same object: no second walk
    second = vp._undecided(b.children[0], proj)
    assert isinstance(first, pl.Expr) and _ser(second) == _ser(first)
    assert len(vp._nodes.exprs) == 1


def test_typed_lit_keeps_types_apart() -> None:
    assert _ser(vector._typed_lit(1, pl.UInt8)) == _ser(pl.lit(1, pl.UInt8))
    assert _ser(vector._typed_lit(1, pl.UInt16)) == _ser(pl.lit(1, pl.UInt16))
    assert _ser(vector._typed_lit(1, pl.UInt8)) != _ser(vector._typed_lit(1, pl.UInt16))
    assert pl.select(vector._typed_lit(1 << 40, pl.Int64)).item() == 1 << 40


@pytest.mark.parametrize(
    ("count", "dtype"), [(3, pl.UInt8), (12, pl.UInt16), (20, pl.UInt32), (40, pl.Int64)]
)
def test_mask_expression_as_written_with_lit(count: int, dtype: Any) -> None:
    """_mask with the shared literals is the expression it was with a fresh ``pl.lit`` per bit."""
    flags = [pl.col(f"f{j}") for j in range(count)]
    bits = [pl.when(f).then(pl.lit(1 << j, dtype)).otherwise(pl.lit(0, dtype)) for j, f in enumerate(flags)]
    want = bits[0]
    for bit in bits[1:]:
        want = want | bit
    assert _ser(vector._mask(flags)) == _ser(want)
