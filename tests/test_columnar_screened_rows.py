"""Record-table screening, cheaper (issue 20 item 2): each shortcut equals what it replaced.

* ``derive_table`` derives the facts of the screened rows only (``columnar_facts(keep=...)``) and
  filters the wide fact table only where a row is not reviewed: its per-pack tables equal the old
  "derive every row, then keep the applicable, screened ones".
* ``columnar_facts`` builds only the facts the pack reads (and the "how old" texts by a gather):
  every column it returns equals the full derivation's.
* ``patient_counts`` over a chunk's consecutive lines counts the runs where they lie, without binary search.
* ``work._parquet_rows`` reads whole row groups and keeps the rest for the next chunk: the rows
  equal the plain slice, in order, out of order, and with groups bigger than a chunk.
* ``medication_facts_bits`` reuses the last chunk's code table when it holds every code.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from cds_engine.batch import columnar_facts as cf
from cds_engine.batch import columnar_lists, work
from cds_engine.batch.order_text import parse_order_text
from cds_engine.batch.table_screen import _runs, derive_table, patient_counts
from cds_engine.engine import Engine
from cds_engine.evaluators.vector import VectorPack
from cds_engine.facts.renal import age_text
from cds_engine.facts.routes import ROUTE_FAMILIES
from cds_engine.sources.table import clean_table, frame_from_cells
from conftest import RULES
from record_rows import record_rows
from test_record_table_counts import _reference

AS_OF = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def setup():
    engine = Engine.from_dir(RULES)
    packs = engine.running_packs
    vectors = {p.id: VectorPack.compile(p) for p in packs}
    return engine, packs, vectors


def _typed(vocab, n: int, seed: int) -> pl.DataFrame:
    rows = record_rows(vocab, n, seed=seed)
    header = list(rows[0])
    frame = frame_from_cells(header, [(i + 2, [r[h] for h in header]) for i, r in enumerate(rows)])
    return clean_table(frame, AS_OF)[0]


def _old_per_pack(typed: pl.DataFrame, packs, vectors, order) -> list[tuple[str, pl.DataFrame]]:
    """derive_table as it was: every row derived, then the applicable, screened rows kept."""
    deceased = typed["deceased"].fill_null(False) if "deceased" in typed.columns else None
    got = []
    for pack in packs:
        vp = vectors[pack.id]
        one = cf.columnar_facts(
            typed, vp.columns, pack.vocabulary, pack.context, AS_OF, pack.spec.pack.triggers, order
        )
        got.append((pack.id, one))
    fallback = pl.concat([g.fallback for _, g in got]).unique()
    rows = pl.int_range(typed.height, dtype=pl.Int64, eager=True)
    screened = rows.filter(~rows.is_in(fallback.implode()) & (~deceased if deceased is not None else True))
    out = []
    for pack_id, one in got:
        facts = one.facts.with_columns(one.applicable.alias("__app"))
        kept = facts.filter(pl.col("__app") & pl.col("__r").is_in(screened.implode()))
        where = kept["__r"]
        out.append((pack_id, kept.hstack([typed["__line"].gather(where), typed["patient_id"].gather(where)])))
    return out


@pytest.mark.parametrize("seed", [20, 7, 3])
@pytest.mark.parametrize("assumed", [False, True])
def test_screened_rows_only_equal_the_filtered_facts(setup, seed: int, assumed: bool) -> None:
    _, packs, vectors = setup
    vocab = packs[0].vocabulary
    typed = _typed(vocab, 1_500, seed)
    assert typed["deceased"].fill_null(False).sum() > 0  # some rows are not screened
    order = parse_order_text("baclofen 5 mg PO TID", vocab).to_order() if assumed else None
    new = derive_table(typed, packs, vectors, AS_OF, order).per_pack
    old = _old_per_pack(typed, packs, vectors, order)
    assert [p for p, _ in new] == [p for p, _ in old]
    for (_, a), (_, b) in zip(new, old, strict=True):
        assert a.height > 0
        assert a.schema == b.schema
        assert a.equals(b)


def test_only_the_read_facts_are_built_and_equal(setup, monkeypatch) -> None:
    """The facts a pack reads are the same when everything is built (the pruning changes no value)."""
    _, packs, vectors = setup
    pack = packs[0]
    vp = vectors[pack.id]
    typed = _typed(pack.vocabulary, 1_000, 11)
    args = (typed, vp.columns, pack.vocabulary, pack.context, AS_OF, pack.spec.pack.triggers)
    pruned = cf.columnar_facts(*args)
    monkeypatch.setattr(cf, "_wanted", lambda name, needed: True)  # build every scalar fact
    full = cf.columnar_facts(*args)
    assert pruned.facts.equals(full.facts)
    assert pruned.applicable.equals(full.applicable)


def test_age_texts_gather_equals_per_distinct_value() -> None:
    rng = random.Random(5)
    days = [rng.choice([None, float(rng.randint(-3, 900))]) for _ in range(3_000)]
    odd = [*days[:100], float("nan"), float("inf"), 2.7, -0.5, None]
    wide = [0.0, 1e6, None]  # a range too wide for a table of texts: per distinct value
    for values in (days, odd, wide, [None, None]):
        out = pl.DataFrame({"d": pl.Series(values, dtype=pl.Float64)})
        out = pl.concat([out, out], rechunk=False)  # two chunks, as a parallel select gives
        got = cf._age_texts(out, {"d": "t"})
        want = [None if v is None or not math.isfinite(v) else age_text(int(v)) for v in out["d"].to_list()]
        assert got["t"].to_list() == want
        assert got["t"].dtype == pl.String
        if values is days:  # the gather: lined up with the frame's chunks (no copy of it later)
            assert got.n_chunks("all")[-1] == got["d"].n_chunks() == 2


def _counts_tables(seed: int, n: int, first: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = random.Random(seed)
    lines = list(range(first, first + n))
    patients = pl.DataFrame({"__unit": lines}, schema={"__unit": pl.Int64})
    rows = []
    for line in lines:
        for _ in range(rng.choice([0, 0, 1, 2, 3, 5])):
            rows.append(
                {
                    "__unit": line,
                    "severity": rng.choice(["critical", "warning", "info", None]),
                    "kind": rng.choice(["finding", "cannot-assess", None]),
                }
            )
    alerts = pl.DataFrame(rows, schema={"__unit": pl.Int64, "severity": pl.String, "kind": pl.String})
    return patients, alerts


@pytest.mark.parametrize("seed", range(5))
def test_counts_of_consecutive_lines_equal_the_group_by(seed: int) -> None:
    patients, alerts = _counts_tables(seed, 400, 1 + 100_000 * seed)
    assert _runs(alerts["__unit"], patients["__unit"]) is not None  # the shortcut is taken
    got = patient_counts(patients, alerts)
    want = _reference(patients, alerts)
    assert got.schema == want.schema
    assert got.equals(want)
    assert got["alerts"].sum() == alerts.height


def test_counts_shortcut_declines_what_it_cannot_read() -> None:
    patients, alerts = _counts_tables(9, 50, 10)
    gap = patients.filter(pl.col("__unit") != 30)  # a line left to the per-patient path
    assert _runs(alerts["__unit"], gap["__unit"]) is None
    assert patient_counts(gap, alerts).equals(_reference(gap, alerts))
    outside = pl.concat([alerts, alerts.head(1).with_columns(pl.lit(1_000, pl.Int64).alias("__unit"))])
    assert _runs(outside["__unit"], patients["__unit"]) is None
    assert patient_counts(patients, outside).equals(_reference(patients, outside))


def test_parquet_rows_equal_the_slice(tmp_path: Path, monkeypatch) -> None:
    n = 1_003
    frame = pl.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(n)],
            "egfr": [float(i % 97) for i in range(n)],
            "medications": [f"a{i % 7};b{i % 11}" for i in range(n)],
        }
    )
    path = tmp_path / "t.parquet"
    frame.write_parquet(path, row_group_size=70)
    source = str(path)

    def want(start: int, stop: int) -> pl.DataFrame:
        return pl.scan_parquet(source).slice(start, stop - start).collect()

    work._LAST_DECODED.clear()
    for size in (50, 70, 100, 333):
        spans = [(s, min(s + size, n)) for s in range(0, n, size)]
        for start, stop in spans:  # in order: each group decoded once
            assert work._parquet_rows(source, start, stop).equals(want(start, stop))
        for start, stop in reversed(spans):  # out of order: nothing kept is used wrongly
            assert work._parquet_rows(source, start, stop).equals(want(start, stop))
    monkeypatch.setattr(work, "_GROUP_SPAN", 0)  # groups "too big": the plain slice
    assert work._parquet_rows(source, 5, 20).equals(want(5, 20))
    decoded = []
    real = pl.scan_parquet

    def spy(*a, **k):
        decoded.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(work, "_GROUP_SPAN", 4)
    monkeypatch.setattr(pl, "scan_parquet", spy)
    work._LAST_DECODED.clear()
    for start in range(0, 700, 50):
        work._parquet_rows(source, start, start + 50)
    assert len(decoded) == 10  # 700 rows of 70-row groups: each group read once, not 14 slices


def test_medicine_code_table_reused_only_when_it_holds_every_code(setup) -> None:
    _, packs, vectors = setup
    pack = packs[0]
    vp = vectors[pack.id]
    base = _typed(pack.vocabulary, 600, 21)
    more = _typed(pack.vocabulary, 600, 22)  # other codes (and free texts) than the first chunk's
    args = (vp.columns, pack.vocabulary, pack.context, AS_OF, pack.spec.pack.triggers)
    columnar_lists._PREPARED.clear()
    cold = cf.columnar_facts(more, *args).facts
    columnar_lists._PREPARED.clear()
    cf.columnar_facts(base, *args)  # the first chunk's table is kept …
    warm = cf.columnar_facts(more, *args).facts  # … and found to lack codes of this one
    again = cf.columnar_facts(more, *args).facts  # … and this one's reused whole
    assert cold.equals(warm)
    assert cold.equals(again)


def _every_column(packs, vectors) -> dict[str, pl.DataType]:
    """The columns both packs read, and every family column of every group of the vocabulary."""
    every: dict[str, pl.DataType] = {}
    for p in packs:
        for name, dtype in vectors[p.id].columns.items():
            assert every.setdefault(name, dtype) == dtype, name
    groups: dict[str, set[str]] = {}
    for (kind, _system, _code), names in packs[0].vocabulary.codes.items():
        groups.setdefault(kind, set()).update(names)
    families = {
        "drug_class": {"meds.": pl.Float64, "inpatient_meds.": pl.Float64, "meds_named.": pl.String},
        "condition_group": {"cond.": pl.Boolean, "cond_named.": pl.String, "cond_history.": pl.Boolean},
        "condition_history": {"cond_history.": pl.Boolean},
        "allergy_group": {"allergy.": pl.Boolean},
    }
    for kind, columns in families.items():
        for group in sorted(groups[kind]):
            for prefix, dtype in columns.items():
                every.setdefault(prefix + group, dtype)
    for route in (*sorted(ROUTE_FAMILIES), "unknown"):
        every.setdefault(f"drug_active_by_route.{route}", pl.Float64)
    assert not cf.unsupported_facts(every)
    return every


@pytest.mark.parametrize("seed", [11, 12])
def test_pruned_facts_equal_every_fact_built(seed: int, monkeypatch) -> None:
    """Each pack's facts as ``derive_table`` builds them (only the columns it reads, only the screened
    rows) equal, column by column, the full fact set: ``columnar_facts`` asked for every column both
    shipped packs read, every scalar built (``_wanted``), every row derived — the pruning is checked
    against the unpruned derivation, not against itself."""
    engine = Engine.from_dir(RULES, statuses=("active", "draft"))
    packs = engine.running_packs
    assert [p.id for p in packs] == ["baclofen", "gabapentinoid"]
    vectors = {p.id: VectorPack.compile(p) for p in packs}
    every = _every_column(packs, vectors)
    typed = _typed(packs[0].vocabulary, 1_200, seed)
    alive = ~typed["deceased"].fill_null(False)
    for pack in packs:
        vp = vectors[pack.id]
        args = (pack.vocabulary, pack.context, AS_OF, pack.spec.pack.triggers)
        assert len(vp.columns) < len(every)  # the pack reads fewer facts than are built in full
        pruned = cf.columnar_facts(typed, vp.columns, *args, keep=alive)
        with monkeypatch.context() as m:
            m.setattr(cf, "_wanted", lambda name, needed: True)
            full = cf.columnar_facts(typed, every, *args)
        assert pruned.fallback.equals(full.fallback)
        assert pruned.reasons == full.reasons
        rows = pruned.facts["__r"]
        assert 0 < rows.len() < full.facts.height  # the deceased rows are not derived
        at = full.facts["__r"].is_in(rows.implode())
        whole = full.facts.filter(at)
        assert whole["__r"].equals(rows)
        assert pruned.applicable.equals(full.applicable.filter(at))
        assert list(pruned.facts.columns) == ["__r", *vp.columns]
        diffs = []
        for name, dtype in vp.columns.items():
            a, b = pruned.facts[name], whole[name]
            if a.dtype != dtype or b.dtype != dtype or not a.equals(b):
                same = ((a == b) | (a.is_null() & b.is_null())).fill_null(False)
                diffs.append((name, a.dtype, b.dtype, int((~same).sum())))
        assert not diffs, (pack.id, diffs[:5])
        assert any(whole[c].null_count() < whole.height for c in vp.columns if c.startswith("order_"))
