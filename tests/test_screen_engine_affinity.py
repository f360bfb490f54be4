"""``run_screen`` runs polars' lazy queries on the in-memory engine (issue 20, record table → alerts).

Why a test: the default engine of polars 2.1 streams a query in morsels and concatenates them, a
second copy of every column for a chunk that is in memory anyway; ``run_screen`` picks the
in-memory engine for its run, leaves a user's explicit ``POLARS_ENGINE_AFFINITY`` alone and
restores the setting afterwards (the outputs are the same either way: tests/test_batch_table.py).
"""

from __future__ import annotations

import os
from typing import Any

import polars as pl
import pytest

from cds_engine.batch import runner


def _seen(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []

    def fake(opts: Any) -> str:
        seen.append((os.environ.get("POLARS_ENGINE_AFFINITY"), pl.LazyFrame({"a": [1]}).collect().height))
        return "result"

    monkeypatch.setattr(runner, "_run_screen", fake)
    return seen


def test_run_screen_uses_the_in_memory_engine_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLARS_ENGINE_AFFINITY", raising=False)
    seen = _seen(monkeypatch)
    assert runner.run_screen(None) == "result"  # type: ignore[arg-type]
    assert seen == [("in-memory", 1)]
    assert "POLARS_ENGINE_AFFINITY" not in os.environ


def test_run_screen_keeps_an_explicit_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLARS_ENGINE_AFFINITY", "streaming")
    seen = _seen(monkeypatch)
    assert runner.run_screen(None) == "result"  # type: ignore[arg-type]
    assert seen == [("streaming", 1)]
    assert os.environ["POLARS_ENGINE_AFFINITY"] == "streaming"


def test_run_screen_restores_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLARS_ENGINE_AFFINITY", raising=False)

    def failing(opts: Any) -> None:
        raise runner.ScreenError("cannot start")

    monkeypatch.setattr(runner, "_run_screen", failing)
    with pytest.raises(runner.ScreenError):
        runner.run_screen(None)  # type: ignore[arg-type]
    assert "POLARS_ENGINE_AFFINITY" not in os.environ
