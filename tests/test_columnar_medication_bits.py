"""The medicines' bit-field derivation (``medication_facts_bits``) equals the group-by one, fact for fact.

Why a test of its own: ``tests/test_columnar_facts.py`` compares the columnar path with
``facts.derive``, through whichever medicines path a chunk takes. Here both paths run on the same
rows and their frames must be equal — values, nulls, dtypes and column set — including the
rows the generated tables rarely hold: many entries of one class (names joined, "+N more"), the
same name twice, the drug on the inpatient list (reconciliation), rows wider than the bit fields
take (the group-by path answers), and every one of the three lists empty.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from cds_engine.batch import columnar_lists
from cds_engine.batch.columnar_facts import columnar_facts
from cds_engine.batch.order_text import parse_order_text
from cds_engine.engine import Engine
from cds_engine.evaluators.vector import VectorPack
from cds_engine.sources.table import clean_table, frame_from_cells
from conftest import RULES
from record_rows import record_rows

AS_OF = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def packs():
    engine = Engine.from_dir(RULES)
    return [(p, VectorPack.compile(p)) for p in engine.running_packs]


def _typed(rows: list[dict[str, str]]) -> pl.DataFrame:
    header = list(rows[0])
    frame = frame_from_cells(header, [(i + 2, [r[h] for h in header]) for i, r in enumerate(rows)])
    return clean_table(frame, AS_OF)[0]


def _both(pack, vp, typed: pl.DataFrame, order=None, monkeypatch=None) -> None:
    """columnar_facts with the bit fields and with the group-by: the same frames."""
    got = {}
    for bits in (True, False):
        monkeypatch.setattr(columnar_lists, "BITS", bits)
        got[bits] = columnar_facts(
            typed, vp.columns, pack.vocabulary, pack.context, AS_OF, pack.spec.pack.triggers, order
        )
    assert_frame_equal(got[True].facts, got[False].facts)
    assert got[True].applicable.to_list() == got[False].applicable.to_list()
    assert got[True].fallback.to_list() == got[False].fallback.to_list()


def _crowded(vocab, n: int, seed: int) -> list[dict[str, str]]:
    """Generated rows with crowded medicine lists: many codes of few classes, repeats, the drug."""
    rows = record_rows(vocab, n, seed=seed)
    rng = random.Random(seed)
    drugs = sorted({f"{s}|{c}" for (k, s, c), _ in vocab.codes.items() if k == "drug_class"})
    few = drugs[:12]  # few codes: the same class (and the same name) several times in a row
    baclofen = [f"rxnorm|{c}" for c in ("197391", "197392", "1300890", "1666613", "617298")]
    for r in rows:
        pool = few + baclofen
        r["medications"] = ";".join(rng.choice(pool) for _ in range(rng.choice([0, 1, 3, 6, 9])))
        r["home_medications"] = ";".join(rng.choice(pool) for _ in range(rng.choice([0, 0, 2, 5])))
        r["inpatient_medications"] = ";".join(rng.choice(pool) for _ in range(rng.choice([0, 0, 1, 3])))
    return rows


@pytest.mark.parametrize("seed", [3, 20, 77])
def test_bits_equal_group_by_on_generated_rows(packs, seed: int, monkeypatch) -> None:
    for pack, vp in packs:
        vocab = pack.vocabulary
        _both(pack, vp, _typed(record_rows(vocab, 3_000, seed=seed)), monkeypatch=monkeypatch)
        _both(pack, vp, _typed(_crowded(vocab, 3_000, seed=seed)), monkeypatch=monkeypatch)


def test_bits_equal_group_by_with_an_assumed_order(packs, monkeypatch) -> None:
    for pack, vp in packs:
        order = parse_order_text("baclofen 5 mg PO TID", pack.vocabulary).to_order()
        rows = _crowded(pack.vocabulary, 2_000, seed=5)
        for r in rows:  # what only the Python path expresses, left out (every row column-wise)
            r.update(previous_daily_dose_mg="", last_dose_time="")
        _both(pack, vp, _typed(rows), order, monkeypatch=monkeypatch)


def test_wide_rows_take_the_group_by(packs, monkeypatch) -> None:
    """A row of more entries than MAX_SLOTS: the chunk takes the group-by, with the same facts."""
    pack, vp = packs[0]
    rows = _crowded(pack.vocabulary, 200, seed=9)
    drugs = sorted({f"{s}|{c}" for (k, s, c), _ in pack.vocabulary.codes.items() if k == "drug_class"})
    rows[7]["medications"] = ";".join(drugs[: columnar_lists.MAX_SLOTS + 3])
    typed = _typed(rows)
    calls = []
    real = columnar_lists.medication_facts_bits

    def spy(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(columnar_lists, "medication_facts_bits", spy)
    _both(pack, vp, typed, monkeypatch=monkeypatch)
    assert calls == [None]  # asked once (BITS on), declined


def test_empty_lists_and_a_lone_row(packs, monkeypatch) -> None:
    pack, vp = packs[0]
    rows = record_rows(pack.vocabulary, 50, seed=1)
    for r in rows:
        r.update(medications="", home_medications="", inpatient_medications="")
    _both(pack, vp, _typed(rows), monkeypatch=monkeypatch)
    _both(pack, vp, _typed(_crowded(pack.vocabulary, 1, seed=4)), monkeypatch=monkeypatch)


@pytest.mark.parametrize("empty", [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)])
def test_some_lists_empty_in_every_row(packs, empty: tuple[int, ...], monkeypatch) -> None:
    """A list empty throughout the chunk has no entries: the slots of the others still find their
    names (the crowded rows name several entries of a class)."""
    pack, vp = packs[0]
    rows = _crowded(pack.vocabulary, 1_500, seed=31)
    names = ("medications", "home_medications", "inpatient_medications")
    for r in rows:
        r.update({names[t]: "" for t in empty})
    _both(pack, vp, _typed(rows), monkeypatch=monkeypatch)
    _both(pack, vp, _typed(_crowded(pack.vocabulary, 1, seed=4)), monkeypatch=monkeypatch)


@pytest.mark.parametrize("per_row", [1, 2, 5])
@pytest.mark.parametrize("hospital", [False, True])
def test_rows_of_equal_lists_take_the_dense_sums(packs, per_row: int, hospital: bool, monkeypatch) -> None:
    """Every row lists ``per_row`` medicines on the first list only (the bench's extract): the row
    sums are a reshape of the entries (``_dense_row_sums``), with the same facts as the group-by.
    Without anyone in hospital the code table's inpatient and reconciled words are not joined
    either; with some in hospital they are (the drug on the home list is reconciled)."""
    pack, vp = packs[0]
    rows = _crowded(pack.vocabulary, 1_200, seed=41)
    rng = random.Random(41)
    drugs = sorted({f"{s}|{c}" for (k, s, c), _ in pack.vocabulary.codes.items() if k == "drug_class"})
    pool = [*drugs[:12], "rxnorm|197391", "rxnorm|1666613"]  # repeats of a class, and the drug
    for r in rows:
        r["medications"] = ";".join(rng.choice(pool) for _ in range(per_row))
        r.update(home_medications="", inpatient_medications="")
        r["inpatient"] = rng.choice(["true", "false", ""]) if hospital else ""
    calls = []
    real = columnar_lists._dense_row_sums

    def spy(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(columnar_lists, "_dense_row_sums", spy)
    _both(pack, vp, _typed(rows), monkeypatch=monkeypatch)
    order = parse_order_text("baclofen 5 mg PO TID", pack.vocabulary).to_order()
    for r in rows:  # what only the Python path expresses, left out (every row column-wise)
        r.update(previous_daily_dose_mg="", last_dose_time="", admission_time="")
    _both(pack, vp, _typed(rows), order, monkeypatch=monkeypatch)
    assert calls == [per_row, per_row]  # the bit fields took the dense sums, once per derivation
    # one row of fewer entries: the general sums (no reshape of a ragged table)
    rows[5]["medications"] = ""
    calls.clear()
    _both(pack, vp, _typed(rows), order, monkeypatch=monkeypatch)
    assert calls == []
