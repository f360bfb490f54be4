"""``rules/rete.py`` builds a pack's durable ruleset text once per loaded pack object (on PackMemo).

Every thread's evaluator of one pack shares the text; a hot reload's new pack object gets its own
(equal) text, and a pack that is dropped is forgotten with it.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from cds_engine.engine import Engine
from cds_engine.rules import rete

RULES = Path(__file__).resolve().parent.parent / "rules"


def test_the_ruleset_is_built_once_per_pack_object(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    real = rete.durable_ruleset
    monkeypatch.setattr(rete, "durable_ruleset", lambda pack: built.append(pack) or real(pack))
    pack = Engine.from_dir(RULES).packs[0]
    first = rete._built(pack)
    again = rete._built(pack)
    assert again is first and built.count(pack) == 1
    one, two = rete.ReteEvaluator(pack, "slot-a"), rete.ReteEvaluator(pack, "slot-b")
    try:
        assert built.count(pack) == 1 and one.rule_count == two.rule_count == first[1]
    finally:
        one.close()
        two.close()
    reloaded = Engine.from_dir(RULES).packs[0]  # a hot reload: a new pack object, built anew, equal
    assert rete._built(reloaded) is not first and rete._built(reloaded) == first
    assert built.count(reloaded) == 1


def test_a_dropped_pack_is_forgotten() -> None:
    pack = Engine.from_dir(RULES).packs[0]
    rete._built(pack)
    held = rete._built.__self__._held  # type: ignore[attr-defined]
    key = id(pack)
    assert key in held
    del pack
    gc.collect()
    assert key not in held
