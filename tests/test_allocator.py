"""The cds-engine command sets polars' allocator decay before polars loads (src/cds_engine/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from cds_engine import allocator

PROBE = "import os, cds_engine.cli, polars; print(os.environ['_RJEM_MALLOC_CONF'])"


def _probe(extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != allocator.ALLOCATOR_ENV}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, **extra}, capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.strip()


def test_the_command_sets_the_decay_before_polars_reads_it() -> None:
    # polars appends the caller's value to its own defaults (later keys win in jemalloc): ours must be
    # there, hence set before polars' __init__ ran
    conf = _probe({})
    assert conf.endswith(allocator.DECAY_CONF), conf


def test_an_operators_own_setting_is_kept() -> None:
    conf = _probe({allocator.ALLOCATOR_ENV: "dirty_decay_ms:1234"})
    assert conf.endswith("dirty_decay_ms:1234"), conf
    assert allocator.DECAY_CONF not in conf


def test_too_late_once_polars_is_loaded(monkeypatch) -> None:
    import polars  # noqa: F401  (loaded by the test session anyway)

    monkeypatch.delenv(allocator.ALLOCATOR_ENV, raising=False)  # restored after the test
    assert allocator.configure() is False
    assert os.environ[allocator.ALLOCATOR_ENV] == allocator.DECAY_CONF  # children still get it
