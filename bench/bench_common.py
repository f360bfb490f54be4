"""What every benchmark shares: import paths from a clean clone, the machine header, ``--smoke``.

Each ``bench/*.py`` runs from a fresh clone with nothing but the repository (the Synthea examples in
``examples/``, the test helpers in ``tests/``) and has a ``--smoke`` mode of a few seconds that
``tests/test_bench_smoke.py`` runs, so a benchmark cannot rot unnoticed. Figures of record come
from quiet runs (load average < 0.3 at start, printed in the header) and live in bench/RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
QUIET_LOAD = 0.3  # 1-minute load average below which a run counts as quiet


def use_repo_paths() -> None:
    """Make ``cds_engine`` (src), ``tests.service_helpers`` and ``store_helpers`` importable."""
    for path in (REPO / "tests", REPO, REPO / "src"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that imports the same modules as this process."""
    paths = [str(REPO / "src"), str(REPO), str(REPO / "tests")]
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, *([old] if old else [])]), **extra}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(name: str, smoke: bool = False) -> str:
    """One line: CPU, cores, RAM, Python, load average at start (and whether the run is quiet)."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    try:
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        mem = "RAM unknown"
    quiet = "quiet" if load[0] < QUIET_LOAD else f"NOT quiet (>= {QUIET_LOAD}): figures are not of record"
    mode = " — SMOKE RUN (tiny sizes, figures meaningless)" if smoke else ""
    writer = os.environ.get("CDS_STORE_WRITER")  # serve's --writer, inherited by every served process
    if not writer:
        from cds_engine.commands.serve import DEFAULT_WRITER

        writer = f"{DEFAULT_WRITER} (default)"
    mode += f"; store writer: {writer}"
    return (
        f"{name}: {_cpu_model()}, {os.cpu_count()} cores, {mem}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average at start {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} ({quiet}){mode}"
    )
