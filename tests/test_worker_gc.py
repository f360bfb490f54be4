"""Serving workers freeze start-up's objects out of the garbage collector (issue 19, item 2a), and a
hot reload leaves no old pack's objects frozen (:mod:`cds_engine.service.heap`).

Why it matters: unfrozen, a full collection every ~1,500 calls walked the ~200,000 objects start-up
made, ~110 ms with the GIL held. Frozen objects are never collected as cycles, so a reload must
refreeze once the old engine is closed — else each reload would keep an old engine caught in a cycle
for the life of the worker.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from service_helpers import REPO, serve_process, wait_for

START = 240.0  # workers and the spare may take this long on a busy 2-core machine
_FROZE = re.compile(r"(worker|spare worker) \[(\d+)\]: (\d+) start-up objects frozen")

# Run in a child: freezing the test runner's own heap would outlive the test.
_RELOADS = textwrap.dedent("""
    import gc, sys, time, weakref
    from cds_engine.service import heap
    from cds_engine.service.reload import EngineHolder

    holder = EngineHolder(sys.argv[1])
    holder.grace_seconds = 0.3  # the reload has returned (its frame holds the old engine)
    engine = holder.engine
    engine.cycle = engine  # only the collector can free it: it must not stay frozen
    assert heap.freeze_startup() > 0 and heap.frozen()
    counts, olds = [gc.get_freeze_count()], [weakref.ref(engine)]
    del engine
    for _ in range(int(sys.argv[2])):
        assert holder.reload("test")
        deadline = time.monotonic() + 30
        while olds[-1]() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # the timer thread has refrozen
        counts.append(gc.get_freeze_count())
        engine = holder.engine
        engine.cycle = engine
        olds.append(weakref.ref(engine))
        del engine
    print(sum(ref() is not None for ref in olds[:-1]), *counts)
""")


def test_reloads_leave_no_old_engine_frozen_and_the_frozen_count_bounded() -> None:
    reloads = 6
    done = subprocess.run([sys.executable, "-c", _RELOADS, str(REPO / "rules"), str(reloads)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    alive, *counts = (int(v) for v in done.stdout.split())
    assert alive == 0, f"{alive} retired engines (in cycles) still alive: frozen across a reload"
    # what stays is start-up's objects plus live caches (rules.simplify's bounded memo): far less
    # than the objects of one more engine per reload (the engine alone: ~19,000)
    growth = [b - a for a, b in itertools.pairwise(counts)]
    assert max(growth) < 3_000, counts


def test_heap_left_alone_in_a_process_that_never_froze() -> None:
    code = ("import gc\nfrom cds_engine.service import heap\n"
            "assert heap.refreeze() is None and not heap.frozen() and gc.get_freeze_count() == 0\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_worker_and_the_spare_freeze_after_start_up(tmp_path: Path) -> None:
    args = ["--no-auth", "--db", "none", "--rules", str(REPO / "rules"), "--workers", "2"]
    with serve_process(args, tmp_path, timeout=START) as (base, _parent, log):
        pids: set[int] = set()

        def both() -> bool:
            pids.add(httpx.get(f"{base}/healthz", timeout=10).json()["worker"]["pid"])
            return len(pids) >= 2

        wait_for(both, START, interval=0.2, what="2 workers answering", ignoring=(httpx.HTTPError,))

        def frozen() -> dict[int, tuple[str, int]]:
            return {int(pid): (what, int(n)) for what, pid, n in _FROZE.findall(log.read_text())}

        wait_for(lambda: pids <= set(frozen()) and any(w == "spare worker" for w, _ in frozen().values()),
                 START, interval=0.3, what="both workers and the spare frozen")
        seen = frozen()
        assert all(seen[pid][0] == "worker" for pid in pids), seen
        # start-up's objects: modules, compiled packs, validators (~200,000 measured)
        assert all(n > 50_000 for _, n in seen.values()), seen


# Run in a child: the counter and the freeze are process-wide.
_SETTLE = textwrap.dedent("""
    import gc, sys
    from cds_engine.service import heap

    def lazy_objects():  # what a first request builds and keeps (a model class, a module's tables)
        return [{"n": i, "kids": [i]} for i in range(5_000)]

    froze = sys.argv[1] == "froze"
    if froze:
        heap.freeze_startup()
    kept = lazy_objects()
    first = min(heap.SETTLE_AT)
    settled = [heap.note_answer() for _ in range(first)]
    in_old_generations = sum(1 for o in gc.get_objects() if o is kept or o is kept[0])
    print(settled.index(True) + 1 if True in settled else 0, in_old_generations)
""")


def test_a_frozen_worker_settles_once_its_first_answers_built_what_lives_on() -> None:
    """The lazily built objects (first requests' imports and validators) leave the collector's passes
    at the first settle point, exactly once there; a process that never froze is left alone."""
    done = subprocess.run([sys.executable, "-c", _SETTLE, "froze"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    at, walked = (int(v) for v in done.stdout.split())
    assert at == 100, f"settled at answer {at}"
    assert walked == 0, "the objects kept since start-up are still walked by every collection"

    done = subprocess.run([sys.executable, "-c", _SETTLE, "never"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    at, walked = (int(v) for v in done.stdout.split())
    assert (at, walked) == (0, 2), "a process that never froze must not be frozen by the answers it counts"
