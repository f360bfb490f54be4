"""Record table → alerts through ``cds-engine screen`` in a child process (issue 20, items 2 and 5).

Why a child process: the figure the analyst sees is the command's, and the memory goal is the
peak RSS *summed over the process tree* (the command and any worker it starts), sampled every
100 ms from outside. The child records when its imports finished, so interpreter start-up and
imports are reported apart from the screening itself; its CPU seconds (all threads) are reported
too, the figure that still means something on a busy machine.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

_CHILD = """
import sys, time, json
t0, c0 = time.perf_counter(), time.process_time()
from cds_engine.cli import app
t1, c1 = time.perf_counter(), time.process_time()
code = 0
try:
    app(sys.argv[2:], prog_name="cds-engine")
except SystemExit as exc:
    code = exc.code or 0
t2, c2 = time.perf_counter(), time.process_time()
with open(sys.argv[1], "w") as fh:
    json.dump({"imports_s": t1 - t0, "screen_s": t2 - t1, "exit": code,
               "imports_cpu_s": c1 - c0, "screen_cpu_s": c2 - c1}, fh)
"""


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def screen_cli(
    path: Path,
    out: Path,
    rules: Path,
    as_of: str,
    order: str,
    formats: tuple[str, ...],
    env: dict[str, str],
    chunk_rows: int | None = None,  # None: the command's default (DEFAULT_CHUNK_ROWS)
) -> dict:
    """Run ``cds-engine screen PATH --format …`` in a child; times, exit code and peak tree RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        times_file = Path(fh.name)
    args = [
        str(path),
        "--out",
        str(out),
        "--rules",
        str(rules),
        "--as-of",
        as_of,
        "--assume-order",
        order,
        "--no-progress",
    ]
    if chunk_rows is not None:
        args += ["--chunk-rows", str(chunk_rows)]
    args = ["screen", *args]
    for f in formats:
        args += ["--format", f]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(times_file), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, _tree_rss(watched))
        time.sleep(0.1)
    wall = time.perf_counter() - started
    _stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"cds-engine screen failed ({proc.returncode}): {stderr[-2000:]}")
    times = json.loads(times_file.read_text())
    times_file.unlink()
    summary = json.loads((out / "summary.json").read_text())
    return {
        **times,
        "wall_s": wall,
        "peak_tree_rss_mb": peak / 2**20,
        "patients": summary["counts"]["read"],
        "alerts": summary["counts"]["alerts"],
        "columnar": summary.get("columnar", {}),
        "formats": list(formats),
    }


def bench_record_table(path: Path, n: int, tmp: Path, rules: Path, as_of: str, env: dict[str, str]) -> dict:
    """(g) Parquet records → alerts.parquet only, and → alerts.csv only (timed apart)."""
    order = "baclofen 5 mg PO TID"
    pq = screen_cli(path, tmp / "g-parquet", rules, as_of, order, ("parquet",), env)
    csv = screen_cli(path, tmp / "g-csv", rules, as_of, order, ("csv",), env)
    return {
        "patients": n,
        "parquet": pq,
        "csv": csv,
        "rate_parquet": n / pq["screen_s"],
        "rate_csv": n / csv["screen_s"],
        "alerts_per_patient": pq["alerts"] / max(1, n),
    }
