"""Shared test fixtures: the engine on the repository's rules, and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_engine.engine import Engine

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine.from_dir(RULES)


@pytest.fixture(scope="session")
def pack(engine: Engine):
    return next(p for p in engine.packs if p.id == "baclofen")
