"""The cds-engine command sets polars' allocator options before polars loads (src/cds_engine/allocator.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from cds_engine import allocator

# what polars' jemalloc will read: polars' __init__ rewrites the variable as its defaults + ours
PROBE = "import os, cds_engine.cli, polars; print(os.environ['_RJEM_MALLOC_CONF'])"


def _probe(extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (allocator.ALLOCATOR_ENV, allocator.CHOICE_ENV)}
    return subprocess.run([sys.executable, "-c", PROBE], env={**env, **extra}, capture_output=True, text=True,
                          check=True, timeout=120)


def _last(conf: str) -> dict[str, str]:
    """jemalloc's reading of a conf string: later keys win."""
    return dict(item.split(":", 1) for item in conf.split(","))


def test_the_command_sets_one_arena_and_a_10s_decay_before_polars_reads_it() -> None:
    conf = _probe({}).stdout.strip()
    # ours must come after polars' defaults, hence set before polars' __init__ ran
    assert conf.endswith(allocator.CONF), conf
    assert _last(conf)["narenas"] == "1"
    assert _last(conf)["dirty_decay_ms"] == "10000"


def test_jemalloc_runs_with_them() -> None:
    # jemalloc's own statistics at exit (stats_print, added to ours for the probe): the options took,
    # one arena for the threads (+ the one for huge allocations); a misspelt option would be reported
    code = (
        "import cds_engine.allocator as a; a.CONF += ',stats_print:true'; import cds_engine.cli, polars; "
        "polars.DataFrame({'x': range(100_000)}).sum()"
    )
    env = {k: v for k, v in os.environ.items() if k not in (allocator.ALLOCATOR_ENV, allocator.CHOICE_ENV)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         timeout=120)
    stats = out.stdout + out.stderr
    assert "Invalid conf" not in stats, stats
    assert "opt.narenas: 1\n" in stats, stats
    assert "opt.dirty_decay_ms: 10000 " in stats, stats
    assert "opt.muzzy_decay_ms: 10000 " in stats, stats
    assert re.search(r"^Arenas: 2$", stats, re.MULTILINE), stats


def test_an_operators_own_setting_is_kept() -> None:
    conf = _probe({allocator.ALLOCATOR_ENV: "dirty_decay_ms:1234"}).stdout.strip()
    assert conf.endswith("dirty_decay_ms:1234"), conf
    assert allocator.CONF not in conf


@pytest.mark.parametrize("choice", ["polars", " Polars "])
def test_cds_allocator_polars_keeps_polars_own_settings(choice: str) -> None:
    conf = _probe({allocator.CHOICE_ENV: choice}).stdout.strip()
    assert "narenas" not in conf
    assert _last(conf)["dirty_decay_ms"] == "500", conf  # polars' own


def test_unknown_choice_warns_and_uses_ours() -> None:
    env: dict[str, str] = {allocator.CHOICE_ENV: "tcmalloc"}
    with pytest.warns(UserWarning, match="CDS_ALLOCATOR"):
        allocator.configure(env)
    assert env[allocator.ALLOCATOR_ENV] == allocator.CONF


def test_an_empty_variable_counts_as_unset() -> None:
    env = {allocator.ALLOCATOR_ENV: ""}
    allocator.configure(env)
    assert env[allocator.ALLOCATOR_ENV] == allocator.CONF


def test_too_late_once_polars_is_loaded() -> None:
    import polars  # noqa: F401  (loaded by the test session anyway)

    env: dict[str, str] = {}
    assert allocator.configure(env) is False
    assert env[allocator.ALLOCATOR_ENV] == allocator.CONF  # child processes still get it
