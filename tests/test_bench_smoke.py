"""Every benchmark runs (``--smoke``: tiny sizes, a few seconds), so ``bench/`` cannot rot unnoticed.

Each script is started the way a user would (``python bench/X.py``) from a directory outside the
repository, so it must find everything it needs from its own location; its output must carry the
machine/load-average header that bench/RESULTS.md figures are read against. Timings are not checked:
on a busy CI machine they mean nothing (goals are ratios from quiet runs, see bench/RESULTS.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("bench_common.py", "raw_client.py")  # modules the scripts import, not scripts
BENCHES = [  # and a tool beside bench/screen.py's (g): CPU per stage
    *sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name not in LIBRARIES),
    "screening/stages.py",
]

pytestmark = pytest.mark.slow


def test_every_bench_is_covered():
    assert BENCHES == ["engine.py", "hook.py", "hook_cpu.py", "load.py", "replay.py", "review.py",
                       "screen.py", "writer.py", "writer_split.py", "screening/stages.py"]


@pytest.mark.parametrize("name", BENCHES)
def test_bench_smoke(name: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / name), "--smoke"],
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert f"bench/{name}:" in done.stdout and "load average at start" in done.stdout
    assert "SMOKE RUN" in done.stdout


@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda _: ())(0)) < 2, reason="needs two CPUs")
def test_hook_alternate_smoke_with_pinning(tmp_path: Path) -> None:
    """bench/hook.py --alternate with serve's pinning options (issue 19 goal a): runs, and the servers and
    writers run where asked — not where the pinned load generator that started them runs."""
    first, second = sorted(os.sched_getaffinity(0))[:2]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "hook.py"), "--smoke", "--alternate", "sqlite",
         "--worker-cpus", str(first), "--writer-cpus", str(second), "--client-cpus", str(second)],
        cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert (f"every server (store off and on) CPU {first}; store writer process CPU {second}; "
            f"load generator CPU {second} (read from the processes: servers CPU {first}; "
            f"writers CPU {second})") in done.stdout
