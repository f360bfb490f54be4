"""Module-level caches against long-running processes: a changed pack is never answered from a cache
keyed by the old one, and no client text can grow a cache beyond its bound (count AND size).

The service runs for months and ``screen`` may run many screens in one process, so a cache keyed
by something that outlives the pack (a path) or holding whatever a client sends (any length up to
the 10 MB body limit) is a defect even when each single call is right.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cds_engine.batch import work
from cds_engine.batch.work import RunConfig
from cds_engine.facts import names, normalize
from cds_engine.facts.text_cache import CLIENT_TEXT_CHARS
from cds_engine.sources import fhir_read
from conftest import baclofen_rules_copy

AS_OF = "2026-01-15T12:00:00+00:00"


def test_screen_context_follows_an_edited_pack(tmp_path: Path) -> None:
    """Two screens in one process with the same rules path: the second uses the edited threshold."""
    root = baclofen_rules_copy(tmp_path)
    cfg = RunConfig(rules=str(root), engine="vector", as_of=AS_OF)
    first = work._context(cfg)
    assert first.engine.packs[0].params["max_daily_mg"] == 80
    assert work._context(cfg) is first  # unchanged files: the same context (built once)
    pack = root / "baclofen" / "pack.yaml"
    text = pack.read_text(encoding="utf-8")
    old = "max_daily_mg: {value: 80,"
    assert old in text
    pack.write_text(text.replace(old, "max_daily_mg: {value: 90,", 1), encoding="utf-8")  # same size
    second = work._context(cfg)
    assert second is not first
    assert second.engine.packs[0].params["max_daily_mg"] == 90
    assert second.engine.packs[0].content_hash != first.engine.packs[0].content_hash
    # a pack swapped in by a rename (another inode) with the old mtime and size is seen too
    replacement = root / "baclofen" / "pack.yaml.new"
    replacement.write_text(text, encoding="utf-8")
    st = pack.stat()
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, pack)
    assert work._context(cfg).engine.packs[0].params["max_daily_mg"] == 80
    assert len(work._CONTEXTS) == 1


def test_a_screen_keeps_the_packs_it_started_with(tmp_path: Path) -> None:
    """A run is pinned to its packs: its own process keeps serving them after an edit, and a worker
    that starts later (an empty cache) refuses the edited files by name instead of mixing versions."""
    root = baclofen_rules_copy(tmp_path)
    start = work._context(RunConfig(rules=str(root), engine="vector", as_of=AS_OF))
    cfg = work.pinned(RunConfig(rules=str(root), engine="vector", as_of=AS_OF), start)
    assert cfg.packs == (start.engine.site_hash or "", start.engine.packs[0].content_hash)
    pack = root / "baclofen" / "pack.yaml"
    text = pack.read_text(encoding="utf-8")
    edited = text.replace("max_daily_mg: {value: 80,", "max_daily_mg: {value: 90,", 1)
    pack.write_text(edited, encoding="utf-8")
    assert work._context(cfg) is start  # the run's later chunks: its own packs, not the edit
    work._CONTEXTS.clear()  # a worker process that starts now
    with pytest.raises(work.PacksChanged, match="changed after this screen started"):
        work._context(cfg)
    work.warm_context(cfg)  # a pool's initializer leaves the error to the chunk (it has the message)
    pack.write_text(text, encoding="utf-8")  # the files as the run started: served again
    assert work._context(cfg).engine.packs[0].params["max_daily_mg"] == 80


def test_date_memos_keep_no_long_client_text() -> None:
    """100,000 distinct long date texts: counts within the bound, no long text held, same answers."""
    fhir_read._MOMENTS.clear()
    fhir_read._DAYS.clear()
    pad = " " * 1000
    for n in range(100_000):
        text = f"2021-03-04T05:06:{n % 60:02d}Z{pad}{n}"
        assert fhir_read.parse_datetime(text) is None
        assert fhir_read.parse_date(text) is None
    long_ok = "  2021-03-04T05:06:07+02:00" + pad
    assert fhir_read.parse_datetime(long_ok) == fhir_read._parse_datetime(long_ok) is not None
    assert fhir_read.parse_date(long_ok) == fhir_read._parse_date(long_ok) is not None
    for memo in (fhir_read._MOMENTS, fhir_read._DAYS):
        assert len(memo) <= fhir_read._MOMENTS_MAX
        assert all(len(key) <= fhir_read._KEY_CHARS for key in memo)
    short = "2021-03-04T05:06:07Z"
    assert fhir_read.parse_datetime(short) == fhir_read._parse_datetime(short)
    assert short in fhir_read._MOMENTS  # short texts are still remembered


def test_a_full_date_memo_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """More distinct short dates than the bound: each memo stays within it, answers unchanged."""
    monkeypatch.setattr(fhir_read, "_MOMENTS_MAX", 10)
    fhir_read._MOMENTS.clear()
    fhir_read._DAYS.clear()
    for n in range(25):
        text = f"2021-03-{1 + n:02d}T05:06:07Z"
        assert fhir_read.parse_datetime(text) == fhir_read._parse_datetime(text) is not None
        assert fhir_read.parse_date(text) == fhir_read._parse_date(text) is not None
        assert 1 <= len(fhir_read._MOMENTS) <= 10 and 1 <= len(fhir_read._DAYS) <= 10
    assert "2021-03-25T05:06:07Z" in fhir_read._MOMENTS and "2021-03-25T05:06:07Z" in fhir_read._DAYS
    fhir_read._MOMENTS.clear()
    fhir_read._DAYS.clear()


def test_text_caches_keep_no_long_client_text() -> None:
    """The card-text caches hold at most 4,096 texts of at most CLIENT_TEXT_CHARS characters each."""
    caches = (normalize.normalize_route, normalize.form_from_text, normalize.display_text, names._clean)
    for cache in caches:
        assert cache.max_chars == CLIENT_TEXT_CHARS == 256
        assert cache.cache_info().maxsize == 4096
    before = [c.cache_info() for c in caches]
    for n in range(300):
        text = f"tablet {n} " + "x" * 5000
        assert normalize.normalize_route(text) == normalize.normalize_route.__wrapped__(text)
        assert normalize.form_from_text(text) == normalize.form_from_text.__wrapped__(text)
        assert normalize.display_text(text) == normalize.display_text.__wrapped__(text, 40)
        assert names._clean(text) == names._clean.__wrapped__(text)
    after = [c.cache_info() for c in caches]
    for old, new in zip(before, after, strict=True):
        assert (new.hits, new.misses, new.currsize) == (old.hits, old.misses, old.currsize)
    assert normalize.normalize_route(" Oral ") == normalize.normalize_route.__wrapped__(" Oral ")
    assert normalize.normalize_route.cache_info().currsize >= 1  # short texts are still remembered


def test_code_memos_do_not_keep_every_vocabulary_ever_loaded() -> None:
    """Each memo holds its vocabulary: a long-lived process that loads pack after pack keeps a bounded few."""
    from cds_engine.batch import columnar_lists

    owners = [object() for _ in range(100)]
    for owner in owners:
        for kind in ("condition", "allergy", "medication"):
            memo = columnar_lists._code_memo(kind, owner)
            assert memo.owner is owner
            assert columnar_lists._code_memo(kind, owner) is memo  # a hit while it is held
    assert len(columnar_lists._INFO_CACHE) <= columnar_lists._INFO_OWNERS_MAX


def test_one_chunk_is_read_and_evaluated_with_one_context(tmp_path: Path) -> None:
    """Unpinned (the Python API): the prepared half carries its context's pin to the evaluating half."""
    from cds_engine.batch.inputs import csv_chunks

    root = baclofen_rules_copy(tmp_path)
    table = tmp_path / "patients.csv"
    table.write_text("patient_id,birth_date,sex\np1,1950-01-01,female\n", encoding="utf-8")
    cfg = RunConfig(rules=str(root), engine="vector", as_of=AS_OF)
    prepared = work.prepare_chunk(next(iter(csv_chunks(table, 100, 0))), cfg)
    assert prepared.cfg.packs == work._hashes(work._context(cfg))
    assert work._context(prepared.cfg) is work._context(cfg)
