"""A hot reload frees the packs it replaced: nothing module-wide keeps an old engine's objects alive.

A service that reloads its rules often (a site editing its packs, a watcher firing) must not grow
with every reload. Checked by weak references and live-object counts (never memory sizes): after a
reload and a collection, the old engine, its packs, their tiers, trees and vocabulary are gone,
however many caches the calls made on them filled (evidence plans, compiled trees, tree leaves,
hook scopes, prefetch templates, the FHIR classification memo). The durable_rules session a Rete
evaluator opens lives in C memory, out of the collector's sight: it is checked to be deleted.
"""

from __future__ import annotations

import gc
import json
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest

from cds_engine.engine import Engine, project
from cds_engine.facts.model import PatientFacts
from cds_engine.rules import rete
from cds_engine.rules.compile import CompiledPack
from cds_engine.service.discovery import prefetch_templates
from cds_engine.service.hook_scope import offers_hook
from cds_engine.service.reload import EngineHolder
from cds_engine.sources import fhir_read
from conftest import REPO, RULES

FIXTURES = sorted((REPO / "fixtures" / "baclofen").glob("*.json"))[:30]


def _facts() -> list[PatientFacts]:
    return [PatientFacts.model_validate(json.loads(p.read_text())["facts"]) for p in FIXTURES]


def _use(engine: Engine, facts: list[PatientFacts]) -> int:
    """Everything per-pack that a served call caches; returns the number of alerts raised."""
    alerts = sum(len(engine.evaluate(f)) for f in facts)
    for pack in engine.packs:
        prefetch_templates(pack)
        offers_hook(pack, "order-sign")
        fhir_read._MEMO.table(pack.vocabulary)
    return alerts


def _refs(engine: Engine) -> list[weakref.ref[Any]]:
    """Weak references to the engine and to one object of each kind a pack is made of."""
    pack = engine.packs[0]
    tier = next(t for r in pack.rules for t in r.tiers if t.node.__class__.__name__ != "Leaf")
    return [weakref.ref(o) for o in (engine, pack, tier, tier.node, pack.vocabulary)]


def _wait_for_retired() -> None:
    """Let the reload's closing timer run (grace 0) before looking at what is left."""
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.join(10)
    gc.collect()


def test_a_closed_engine_and_its_packs_are_freed() -> None:
    facts = _facts()
    engine = Engine.from_dir(RULES)
    assert _use(engine, facts) > 0  # alerts were built: evidence plans and trees were cached
    refs = _refs(engine)
    engine.close()
    del engine
    gc.collect()
    alive = [type(r()).__name__ for r in refs if r() is not None]
    assert alive == []


def test_many_reloads_leave_one_engines_packs(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    holder = EngineHolder(rules, site=False)
    holder.grace_seconds = 0.0
    facts = _facts()
    _use(holder(), facts)
    first = _refs(holder())
    replaced = [weakref.ref(p) for p in holder().packs]
    for n in range(4):
        assert holder.reload("test")
        _use(holder(), facts)
        if n < 3:  # every engine's packs but the serving one's
            replaced += [weakref.ref(p) for p in holder().packs]
    _wait_for_retired()
    assert [type(r()).__name__ for r in first if r() is not None] == []
    # the packs this holder loaded and replaced (other tests' engines in this process are not counted)
    assert [r().spec.pack.id for r in replaced if r() is not None] == []
    assert all(isinstance(p, CompiledPack) for p in holder().packs)


def test_the_service_keeps_no_engine_a_reload_replaced(tmp_path: Path) -> None:
    """The app's start-up (lifespan) warms the engine it started with; it must not hold on to it."""
    from fastapi.testclient import TestClient

    from cds_engine.service.app import create_app

    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    holder = EngineHolder(rules, site=False)
    holder.grace_seconds = 0.0
    with TestClient(create_app(holder, auth=None)) as client:
        assert client.get("/cds-services").status_code == 200
        first = _refs(holder())
        assert holder.reload("test")
        assert client.get("/cds-services").status_code == 200
        _wait_for_retired()
        assert [type(r()).__name__ for r in first if r() is not None] == []


@pytest.mark.parametrize("patient", ["fixtures", "empty"])
def test_closing_an_evaluator_deletes_its_durable_session(
    monkeypatch: pytest.MonkeyPatch, patient: str
) -> None:
    """``delete_ruleset`` alone leaves the slot's session (its pools) allocated in C.

    After ``close`` the session must be gone — also for an evaluator whose patients fired no rule
    (durable_rules leaves such a session's action context uninitialised; the probe settles it).
    """
    deleted: list[tuple[int, str]] = []
    real = rete.dre.delete_state

    def delete_state(handle: int, sid: str) -> None:
        real(handle, sid)
        with pytest.raises(rete.dre.error):  # the session no longer exists
            rete.dre.get_facts(handle, sid)
        deleted.append((handle, sid))

    monkeypatch.setattr(rete.dre, "delete_state", delete_state)
    engine = Engine.from_dir(RULES)
    pack = engine.packs[0]
    evaluator = rete.ReteEvaluator(pack, slot="slot-memory-test")
    handle = evaluator._handle
    referenced = pack.referenced_facts()
    cases = _facts() if patient == "fixtures" else [PatientFacts(as_of=_facts()[0].as_of)]
    for facts in cases:
        evaluator.outcomes(project(engine.flat_facts(pack, facts), referenced))
    assert evaluator.leftover_facts() == []
    evaluator.close()
    assert deleted == [(handle, "slot-memory-test")]
    evaluator.close()  # twice is harmless
    assert len(deleted) == 1


def test_objects_that_take_no_weak_reference_are_answered_not_kept() -> None:
    """A stand-in pack (a SimpleNamespace in tests, say) cannot be held weakly: it is still answered."""
    from types import SimpleNamespace

    from cds_engine.rules.pack_memo import PackMemo, remember

    table: dict[int, Any] = {}
    stand_in = SimpleNamespace(id="x")
    assert remember(table, stand_in, 42) == 42
    assert table == {}
    memo = PackMemo(lambda pack: pack.id)
    assert memo.get(stand_in) == "x"
    assert memo._held == {}
