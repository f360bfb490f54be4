"""How polars' memory allocator hands freed pages back: after 10 s, not at once (set before polars loads).

Why (issue 20, ``bench/RESULTS.md``, eleventh session): a batch screening calls the vector evaluator
once per chunk, and each call builds and drops a few hundred MB of columns. polars' allocator
(jemalloc) returned those pages to the kernel within the call's lifetime, so every chunk touched
them afresh — about 0.7 M page faults for the alert table of 1 M patients, and on a virtual
machine a first touch costs 1.3–6 µs: a fifth to a third of the call's CPU seconds. Kept for
10 s, the next chunk reuses them (measured: the second call of ``vector_alerts`` on 1 M patients
3.8 → 2.4 CPU-s, page faults 0.70 M → 0.07 M; the first call 3.8 → 3.4). The price is resident
memory that stays up to 10 s after a burst (bench/screen.py (e') reports the peak).

jemalloc reads :data:`ALLOCATOR_ENV` once, when polars' library loads, so :func:`configure` only
works before the first ``import polars`` of the process; the ``cds-engine`` command calls it
first thing, and child processes (``serve`` workers, the writer, Dask workers) inherit the
environment. A value already set (an operator's own tuning) is left as it is. A library user who
wants the same calls :func:`configure` before importing polars, or sets the variable.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ALLOCATOR_ENV", "DECAY_CONF", "configure"]

#: the variable polars' jemalloc (built with the ``_rjem_`` prefix) reads its options from
ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"
#: freed pages go back to the kernel over 10 s (dirty, then muzzy) instead of right away
DECAY_CONF = "dirty_decay_ms:10000,muzzy_decay_ms:10000"


def configure() -> bool:
    """Set :data:`ALLOCATOR_ENV` to :data:`DECAY_CONF` unless set; True when polars will read it
    (it is not loaded yet), False when this process is too late (the setting then only reaches
    child processes)."""
    os.environ.setdefault(ALLOCATOR_ENV, DECAY_CONF)
    return "polars" not in sys.modules
