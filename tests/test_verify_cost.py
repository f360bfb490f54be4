"""The band-overlap check of the verifier reads two tiers' DNFs without building their product.

``Expander.joint_projection`` must give exactly ``projection(conj([a, b]), fact)`` and examine far
fewer pairs of conjunctions than ``len(a) * len(b)``. The shipped packs must be verified without
giving any check up as too complex (a skipped overlap check is a silent gap). Work is counted
(``pairs_examined``), never timed.
"""

from __future__ import annotations

import itertools

import pytest

from cds_engine.authoring.verify import verify_dir
from cds_engine.rules import dnf
from cds_engine.rules.conditions import Clause
from cds_engine.rules.dnf import Expander
from cds_engine.rules.intervals import projection, union
from conftest import RULES


def cmp(fact: str, op: str, value: object) -> Clause:
    return Clause("cmp", fact, op, value)


def kinds(name: str) -> str:
    return "bool" if name.startswith("flag") else "number"


def expected(x: Expander, a: dnf.DNF, b: dnf.DNF, fact: str) -> list:
    return union(projection(Expander(kind_of=kinds, max_terms=10**7).conj([a, b]), fact))


def wide(n: int, lo: float, hi: float, *, shared_flag: bool | None = None, flags: str = "flag") -> dnf.DNF:
    """n terms: one band of ``dose`` and one of n unrelated flags (plus an optional shared flag)."""
    out = []
    for i in range(n):
        terms = {cmp("dose", "gte", lo), cmp("dose", "lt", hi), cmp(f"{flags}{i}", "eq", True)}
        if shared_flag is not None:
            terms.add(cmp("flag_shared", "eq", shared_flag))
        out.append(frozenset(terms))
    return out


CASES = [
    (wide(3, 0, 10), wide(4, 5, 20), "dose"),  # overlap 5..10
    (wide(3, 0, 10), wide(4, 10, 20), "dose"),  # no overlap
    (wide(3, 0, 10, shared_flag=True), wide(4, 5, 20, shared_flag=False), "dose"),  # never together
    (wide(3, 0, 10, shared_flag=True), wide(4, 5, 20, shared_flag=True), "dose"),
    ([frozenset({cmp("dose", "gt", 1)}), frozenset({cmp("egfr", "lt", 30)})],
     [frozenset({cmp("dose", "lt", 5), cmp("egfr", "gte", 30)})], "dose"),  # one branch leaves dose free
    ([frozenset({cmp("egfr__gt", "gte", 60)}), frozenset({cmp("egfr", "lt", 30)})],
     [frozenset({cmp("egfr", "lt", 50)})], "egfr"),  # a bound and an exact value never coexist
    ([frozenset({cmp("dose", "eq", 5)}), frozenset({cmp("dose", "in", (7, 9))})],
     [frozenset({cmp("dose", "gt", 6)})], "dose"),  # finite sets become points
]


@pytest.mark.parametrize(("a", "b", "fact"), CASES)
def test_joint_projection_equals_the_projection_of_the_product(a, b, fact):
    x = Expander(kind_of=kinds)
    assert x.joint_projection(a, b, fact) == expected(x, a, b, fact)
    assert x.joint_projection(b, a, fact) == expected(x, b, a, fact)


def test_joint_projection_does_not_build_the_product():
    a, b = wide(200, 0, 10), wide(200, 5, 20, flags="flag_b")
    x = Expander(kind_of=kinds, max_terms=100)  # the product (40 000 terms) would be too complex
    assert x.joint_projection(a, b, "dose") == expected(x, a, b, "dose")
    assert x.pairs_examined <= 10  # the first pair is a witness; 40 000 before


def test_joint_projection_cuts_terms_to_the_facts_that_decide():
    a = wide(200, 0, 10, shared_flag=True)
    b = wide(200, 5, 20, shared_flag=False, flags="flag_b")  # never together; cut down, one pair each
    x = Expander(kind_of=kinds, max_terms=100)
    assert x.joint_projection(a, b, "dose") == []
    assert x.pairs_examined <= 1


def test_joint_projection_gives_up_past_its_budget():
    a = wide(200, 0, 10, shared_flag=True)
    b = wide(200, 5, 20, shared_flag=False)  # every flag shared: 40 000 pairs, none compatible
    x = Expander(kind_of=kinds, max_terms=10)
    with pytest.raises(dnf.TooComplex):
        x.joint_projection(a, b, "dose")
    assert Expander(kind_of=kinds).joint_projection(a, b, "dose") == []  # within the default budget


def test_shipped_packs_verify_without_skipping_and_within_a_work_bound(monkeypatch):
    made: list[Expander] = []
    init = Expander.__init__

    def record(self: Expander, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Expander, "__init__", record)
    report = verify_dir(RULES)
    assert report.ok
    assert [pr.skipped for pr in report.packs] == [[] for _ in report.packs]
    examined = sum(x.pairs_examined for x in made)
    # about 2 400 on the baclofen pack; the product it replaced tried over 4 000 000
    assert 0 < examined < 20_000, examined


def test_every_tier_pair_of_the_shipped_packs_matches_the_full_product():
    """Cross-check on the real packs, limited to pairs whose product stays small."""
    report = verify_dir(RULES)
    x = Expander()
    checked = 0
    for pr in report.packs:
        assert pr.pack is not None
        for rule in pr.pack.rules:
            for ta, tb in itertools.combinations(rule.tiers, 2):
                a, b = x.dnf(ta.node, "is_true"), x.dnf(tb.node, "is_true")
                if len(a) * len(b) > 5_000:
                    continue
                facts = {c.fact for conj in a + b for c in conj if c.kind == "cmp" and "__" not in c.fact}
                for fact in sorted(facts):
                    ref = union(projection(x.conj([a, b]), fact))
                    assert x.joint_projection(a, b, fact) == ref, (ta.id, tb.id, fact)
                    checked += 1
    assert checked > 50
