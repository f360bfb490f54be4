"""Where a record-table screening's CPU goes, stage by stage (issue 20, item 2).

    .venv/bin/python bench/screening/stages.py --patients 1000000
    .venv/bin/python bench/screening/stages.py --patients 200000 --format parquet --format csv

Why a tool of its own: ``bench/screen.py`` item (g) gives the command's rate and CPU seconds, not
where they go. This runs the same screening (the same generated population as (g), seed 5, and
``--assume-order``) in this process with the stages made *sequential* — no read-ahead thread, the
parts written in line — so each stage's CPU seconds (all threads, ``time.process_time``) can be
taken apart: each wrapped function is charged its own time, not that of the wrapped functions it
calls. The run is slower than the pipelined command; the split is what it is for. Figures are
CPU seconds; on a busy machine they grow too, less than wall-clock times.

Each stage's system seconds and minor page faults are charged the same way. Why: on some
machines (a Firecracker VM measured 1.3–6 µs of kernel time per first touch of a 4 KiB page)
the alert table's fresh memory — about 0.7 M pages per 1 M patients, most of it in the sort —
is a fifth to a third of its CPU seconds, while the tier outcomes touch almost none; a stage
whose "sys" share is large is paying for memory, not for computing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import REPO, machine_header, use_repo_paths

use_repo_paths()

from cds_engine import allocator  # noqa: E402

allocator.configure()  # as the cds-engine command does, before polars loads (src/cds_engine/allocator.py)

#: (module, function) pairs charged separately; a method is "Class.name"
STAGES = {
    "cds_engine.batch.work": ["_table_frame", "clean_table", "derive_table", "table_alerts", "_merge_table"],
    "cds_engine.batch.table_screen": ["columnar_facts", "vector_alerts", "patient_counts"],
    "cds_engine.batch.columnar_facts": [
        "medication_facts",
        "condition_facts",
        "allergy_facts",
        "_after_lists",
    ],
    "cds_engine.batch.parts": ["PartStore.write", "PartStore.merge"],
    "cds_engine.batch.runner": ["render_report", "_evaluated_patients"],
    # vector_alerts' own steps (what is left charged to vector_alerts: the final select of the
    # wording and pack columns); evidence_expr and summary_expr are the eager per-tier statistics
    # they take of a tier's rows, the texts themselves are built in _run_jobs' query
    "cds_engine.evaluators.vector": [
        "_first_pass",
        "_second_pass",
        "_finding_parts",
        "_take_rows",
        "_run_jobs",
        "evidence_expr",
        "summary_expr",
        "_missing_rows",
        "_in_alert_order",
    ],
}


def _usage() -> tuple[float, float, int]:
    """CPU seconds (all threads), of them system seconds, and minor page faults so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.process_time(), ru.ru_stime, ru.ru_minflt


class Charges:
    """Exclusive CPU seconds, system seconds and page faults per wrapped function.

    Nested wrapped calls are charged to themselves. Not thread-safe: the stages run in line.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.system: dict[str, float] = {}
        self.faults: dict[str, int] = {}
        self.stack: list[list[float]] = []

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def charged(*args: Any, **kwargs: Any) -> Any:
            started = _usage()
            self.stack.append([0.0, 0.0, 0])
            try:
                return fn(*args, **kwargs)
            finally:
                spent = [now - then for now, then in zip(_usage(), started, strict=True)]
                inner = self.stack.pop()
                own = [a - b for a, b in zip(spent, inner, strict=True)]
                self.seconds[label] = self.seconds.get(label, 0.0) + own[0]
                self.system[label] = self.system.get(label, 0.0) + own[1]
                self.faults[label] = self.faults.get(label, 0) + int(own[2])
                if self.stack:
                    self.stack[-1] = [a + b for a, b in zip(self.stack[-1], spent, strict=True)]

        return charged


def instrument(charges: Charges) -> None:
    """Sequential stages (no read-ahead, parts written in line) and every stage in STAGES wrapped."""
    os.environ["CDS_SCREEN_PREFETCH"] = "0"
    runner = importlib.import_module("cds_engine.batch.runner")

    def in_line(results: Any, write: Callable[..., None], finished: Callable[..., None]) -> None:
        for result in results:
            write(result)
            finished(result)

    runner._write_behind = in_line
    for module_name, names in STAGES.items():
        module = importlib.import_module(module_name)
        for name in names:
            if "." in name:
                owner_name, attr = name.split(".")
                owner = getattr(module, owner_name)
                setattr(owner, attr, charges.wrap(name, getattr(owner, attr)))
            elif hasattr(module, name):
                setattr(module, name, charges.wrap(name, getattr(module, name)))


def main() -> None:
    from cds_engine.batch.runner import DEFAULT_CHUNK_ROWS  # after allocator.configure (polars loads)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=1_000_000)
    ap.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)  # the command's
    ap.add_argument("--format", action="append", dest="formats", help="alert tables (default: parquet)")
    ap.add_argument("--smoke", action="store_true", help="2,000 patients (CI): seconds")
    args = ap.parse_args()
    if args.smoke:
        args.patients, args.chunk_rows = 2_000, 1_000
    print(machine_header("bench/screening/stages.py", smoke=args.smoke))
    from screen import AS_OF, record_population

    from cds_engine.engine import Engine

    charges = Charges()
    instrument(charges)
    from cds_engine.batch.runner import ScreenOptions, run_screen

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = tmp / "records.parquet"
        vocab = Engine.from_dir(REPO / "rules").packs[0].vocabulary
        record_population(vocab, args.patients, seed=5).write_parquet(path)
        out = tmp / "out"
        shutil.rmtree(out, ignore_errors=True)
        options = ScreenOptions(
            inputs=[path],
            out=out,
            rules=REPO / "rules",
            as_of=AS_OF,
            assume_order="baclofen 5 mg PO TID",
            progress=False,
            formats=tuple(args.formats or ("parquet",)),
            rows_per_chunk=args.chunk_rows,
        )
        wall, before = time.perf_counter(), _usage()
        run_screen(options)
        cpu, system, faults = (now - then for now, then in zip(_usage(), before, strict=True))
        wall = time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.patients:,} patients, sequential stages: CPU {cpu:.2f} s (system {system:.2f} s, "
        f"{faults / 1e3:,.0f} k page faults), wall {wall:.2f} s, peak RSS {peak:.0f} MB"
    )
    print(f"  {'stage':24s} {'CPU':>8s}  {'share':>6s}  {'of it sys':>9s}  {'faults':>8s}")
    for label, seconds in sorted(charges.seconds.items(), key=lambda kv: -kv[1]):
        print(
            f"  {label:24s} {seconds:6.2f} s  {100 * seconds / cpu:4.1f} %  {charges.system[label]:7.2f} s"
            f"  {charges.faults[label] / 1e3:6.0f} k"
        )
    rest = cpu - sum(charges.seconds.values())
    rest_sys = system - sum(charges.system.values())
    rest_faults = faults - sum(charges.faults.values())
    print(
        f"  {'(everything else)':24s} {rest:6.2f} s  {100 * rest / cpu:4.1f} %  {rest_sys:7.2f} s"
        f"  {rest_faults / 1e3:6.0f} k"
    )


if __name__ == "__main__":
    main()
