"""What module-level caches own is released when they drop it, and no cache grows with the number of
engines a long-lived process opens (issue 20/19 leftovers).

* A batch context (``batch/work.py``) dropped for another configuration frees its durable rulesets
  (C memory, and one of the C module's 131,071 handles each) — but only once no chunk is still
  evaluating with it.
* The rollup's one-round-trip script (``store/rollup.py``) is compiled per dialect *configuration*,
  not per dialect name, and the cache of them is bounded.
* The SQLite writer's compiled inserts (``store/writer.py``) are bounded, however many engines
  (and so dialects) a process opens: tests, the writer restarting, a hot reload.
"""

from __future__ import annotations

import gc
import json
import weakref
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import JSON, Boolean, Column, Engine, Integer, MetaData, Table, create_engine, select

from cds_engine.batch import work
from cds_engine.batch.work import RunConfig
from cds_engine.facts.model import PatientFacts
from cds_engine.store import pipeline, rollup, writer
from cds_engine.store.db import UTCDateTime
from conftest import REPO, baclofen_rules_copy

AS_OF = "2026-01-15T12:00:00+00:00"


def _patient() -> PatientFacts:
    text = (REPO / "fixtures" / "baclofen" / "T11.json").read_text(encoding="utf-8")
    return PatientFacts.model_validate(json.loads(text)["facts"])


def _open_rulesets(ctx: work._Context) -> list[object]:
    """The context's durable rulesets that are still allocated (a thread evaluated with them)."""
    return [e for e in ctx.engine._created if e._handle is not None]


def test_an_evicted_context_frees_its_rulesets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Screens of other configurations in one process: each dropped rete context frees its rulesets."""
    root = baclofen_rules_copy(tmp_path)
    monkeypatch.setattr(work, "_CONTEXTS", {})  # this test's own cache, whatever it leaves
    held = []
    for day in range(1, 4):
        ctx = work._context(RunConfig(rules=str(root), engine="rete", as_of=f"2026-01-0{day}T12:00:00+00:00"))
        assert ctx.engine.evaluate(_patient())  # a ruleset made for this thread
        held.append(list(ctx.engine._created))
        assert all(e._handle is not None for e in held[-1])
        del ctx
    gc.collect()
    assert held[0] and held[1]
    assert all(e._handle is None for batch in held[:-1] for e in batch)  # the two dropped contexts
    (current,) = work._CONTEXTS.values()
    assert len(_open_rulesets(current)) == 1  # the cached one keeps serving
    assert current.engine.evaluate(_patient()) and current.engine.fallbacks == 0
    work._CONTEXTS.clear()
    del current
    gc.collect()
    assert all(e._handle is None for e in held[-1])


def test_a_context_in_use_is_not_closed_under_its_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk still evaluating with a context another configuration replaced (another thread's
    chunk, a pool initializer) keeps its rulesets, with no oracle fallback; they go when it ends."""
    root = baclofen_rules_copy(tmp_path)
    monkeypatch.setattr(work, "_CONTEXTS", {})
    running = work._context(RunConfig(rules=str(root), engine="rete", as_of=AS_OF))
    running.engine.evaluate(_patient())
    work.warm_context(RunConfig(rules=str(root), engine="rete", as_of="2026-02-01T12:00:00+00:00"))
    assert running not in work._CONTEXTS.values()
    gc.collect()
    assert len(_open_rulesets(running)) == 1
    assert running.engine.evaluate(_patient()) and running.engine.fallbacks == 0
    rulesets = list(running.engine._created)
    del running
    gc.collect()
    assert all(e._handle is None for e in rulesets)
    work._CONTEXTS.clear()


# ── the rollup's one-round-trip script ──────────────────────────────────────────────────────────


class _Conn:
    """What :func:`rollup._touch_script` reads of a connection: its dialect and execution options."""

    def __init__(self, engine: Engine, **options: object) -> None:
        self.dialect = engine.dialect
        self._options = options

    def get_execution_options(self) -> dict[str, object]:
        return self._options


def _pg(**kwargs: object) -> Engine:
    return create_engine("postgresql+psycopg://cds@127.0.0.1:1/none", **kwargs)  # never connected


def _script(conn: _Conn) -> str | None:
    return rollup._touch_script(conn)  # type: ignore[arg-type]


def test_rollup_script_is_compiled_for_each_dialect_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two PostgreSQL engines whose dialects compile the statements differently (here: labels
    shortened by ``label_length``) each run their own text, not the first one's; engines alike
    share one, and a configuration seen again is served from the cache."""
    rollup._SCRIPTS.clear()
    plain, short = _Conn(_pg()), _Conn(_pg(label_length=8))
    first = _script(plain)
    assert first is not None and "'cds-touch-orders'" in first
    own = _script(short)
    rollup._SCRIPTS.clear()
    assert own == _script(short) != first  # what this dialect compiles on its own
    assert _script(_Conn(_pg())) == first
    assert len(rollup._SCRIPTS) == 2  # a configuration seen again: no new entry


def test_rollup_scripts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollup, "_SCRIPTS", {})
    for length in range(20, 20 + rollup._SCRIPTS_MAX + 3):
        assert _script(_Conn(_pg(label_length=length))) is not None
        assert 0 < len(rollup._SCRIPTS) <= rollup._SCRIPTS_MAX


def test_compiled_texts_are_not_used_under_a_schema_translate_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver text is not translated: such a connection takes the bound statements (translated)
    — the rollup's script, the PostgreSQL pipeline and the SQLite writer's positional inserts."""
    monkeypatch.setattr(rollup, "_SCRIPTS", {})
    translated = _Conn(_pg(), schema_translate_map={None: "site_a"})
    assert _script(translated) is None
    assert _script(_Conn(_pg())) is not None
    assert not pipeline.pipelined(translated, [select(1)])  # type: ignore[arg-type]
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("ATTACH DATABASE ':memory:' AS site_a")
        _ROWS.create(conn.execution_options(schema_translate_map={None: "site_a"}))
        row = {"n": 1, "body": {"k": [1]}, "flag": True, "at": datetime(2026, 1, 1, tzinfo=UTC)}
        site = conn.execution_options(schema_translate_map={None: "site_a"})
        assert not writer._insert_positional(site, _ROWS, [row])  # nothing sent untranslated
        writer._insert_rows(site, _ROWS, [row])
        assert conn.exec_driver_sql("SELECT n FROM site_a.rows").all() == [(1,)]
    engine.dispose()


# ── the SQLite writer's compiled inserts ────────────────────────────────────────────────────────

_META = MetaData()
_ROWS = Table("rows", _META, Column("n", Integer, primary_key=True), Column("body", JSON),
              Column("flag", Boolean), Column("at", UTCDateTime))


def test_writer_inserts_are_bounded_over_many_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine after engine (tests, a writer restarting): the cache and the dialects it keeps stay
    bounded; an engine's inserts are still compiled once while it writes."""
    monkeypatch.setattr(writer, "_POSITIONAL", {})
    dialects = []
    for n in range(3 * writer._POSITIONAL_MAX):
        engine = create_engine("sqlite://")
        with engine.begin() as conn:
            _ROWS.create(conn)
            row = {"n": n, "body": {"k": [n]}, "flag": True, "at": datetime(2026, 1, 1, tzinfo=UTC)}
            assert writer._insert_positional(conn, _ROWS, [row])
            entry = writer._POSITIONAL[(_ROWS, tuple(row), conn.dialect)]
            assert writer._insert_positional(conn, _ROWS, [{**row, "n": n + 10_000}])
            assert writer._POSITIONAL[(_ROWS, tuple(row), conn.dialect)] is entry  # a hit
            stored = conn.exec_driver_sql("SELECT n, body, flag FROM rows ORDER BY n").all()
            body = f'{{"k": [{n}]}}'
            assert [tuple(r) for r in stored] == [(n, body, 1), (n + 10_000, body, 1)]
            dialects.append(weakref.ref(conn.dialect))
        engine.dispose()
        del engine, conn
        assert len(writer._POSITIONAL) <= writer._POSITIONAL_MAX
    gc.collect()
    assert sum(d() is not None for d in dialects) <= writer._POSITIONAL_MAX
