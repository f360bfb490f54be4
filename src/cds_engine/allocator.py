"""polars' allocator settings for the ``cds-engine`` command: one arena, freed pages kept 10 s.

Why (issue 20 items 2, 3 and 5; ``bench/RESULTS.md``, twelfth session): a screening calls the vector
evaluator once per chunk, and each call builds and drops a few hundred MB of columns. polars'
allocator (jemalloc) hands freed pages back to the kernel after 0.5–1 s, so every chunk touched
its pages afresh (about 0.6 M page faults per 1 M record-table patients; on a virtual machine a
first touch costs 1.3–6 µs of kernel time). A longer decay alone (10 s, tried and reverted in the
eleventh session) let each chunk reuse them but raised the resident peak: jemalloc gives every
thread an arena of its own (8 on 2 CPUs) and each keeps its own freed pages. With one arena the
threads share one pool of freed pages, so a chunk reuses what the last one freed whichever thread
allocates it: measured on 1 M and 5 M record-table patients, fewer page faults and less CPU than
polars' defaults and a resident peak no higher (numbers in ``bench/RESULTS.md``).

jemalloc reads :data:`ALLOCATOR_ENV` once, when polars' library loads, so :func:`configure` only
works before the first ``import polars`` of the process; the ``cds-engine`` command calls it
first thing, and child processes (``serve`` workers, the writer, a local Dask cluster) inherit the
environment. polars appends a value found there after its own defaults, and jemalloc lets the
later key win. Left as it is: an ``_RJEM_MALLOC_CONF`` already set (an operator's own tuning), or
``CDS_ALLOCATOR=polars`` (polars' own settings). A library user who wants ours calls
:func:`configure` before importing polars.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import MutableMapping

__all__ = ["ALLOCATOR_ENV", "CHOICE_ENV", "CONF", "configure"]

#: the variable polars' jemalloc (built with the ``_rjem_`` prefix) reads its options from
ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"
#: ``polars`` keeps polars' own allocator settings; unset (or ``cds-engine``) gives :data:`CONF`
CHOICE_ENV = "CDS_ALLOCATOR"
#: one arena for all threads; freed pages go back to the kernel over 10 s (dirty, then muzzy)
CONF = "narenas:1,dirty_decay_ms:10000,muzzy_decay_ms:10000"

_CHOICES = ("cds-engine", "polars")


def configure(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set :data:`ALLOCATOR_ENV` to :data:`CONF` unless it is set or :data:`CHOICE_ENV` says ``polars``.

    Returns True when this process's polars will read the variable (polars is not loaded yet),
    False when it is too late here (a value set then only reaches child processes).
    """
    env = os.environ if environ is None else environ
    choice = env.get(CHOICE_ENV, "").strip().lower() or "cds-engine"
    if choice not in _CHOICES:
        warnings.warn(
            f"{CHOICE_ENV}={env[CHOICE_ENV]!r} is not one of {', '.join(_CHOICES)}; using cds-engine's",
            stacklevel=2,
        )
        choice = "cds-engine"
    if choice == "cds-engine" and not env.get(ALLOCATOR_ENV):
        env[ALLOCATOR_ENV] = CONF
    return "polars" not in sys.modules
