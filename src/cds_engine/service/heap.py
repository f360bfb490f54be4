"""The cyclic garbage collector in a serving worker: start-up's objects kept out of its passes (issue 19, 2a).

Why: a worker holds ~200,000 tracked objects made at start-up (modules, compiled packs, pydantic
validators) that live as long as it does. Every request allocates enough (FHIR parsing, facts,
models) for about one first-generation collection per call, and the survivors trigger a full
collection that walks all of start-up's objects: measured with ``gc.callbacks`` in a uvicorn server
with a SQLite store at concurrency 1, one per ~1,000 calls after warm-up, **110-150 ms of CPU with
the GIL held** — a stall for every request of that worker. :func:`freeze_startup` (``gc.freeze``)
moves what exists after start-up into the permanent generation, which no collection walks: over
the same 1,000 calls the full passes then took ≤ 1 ms each; the first- and second-generation
passes cost the same as before, and the answers are byte-identical (400 varied calls).

The first-generation threshold is left at Python's 700 (unlike the writer process,
:func:`cds_engine.store.writer_process.tune_collector`): a request's objects die young, and a higher
threshold only made each pass longer for no saving (per call, server: 0.21 ms of collection at
700, 0.25 at 5,000 with passes up to 2.5 ms; in-process: 0.06 / 0.08 at 2,000 / 0.10 at 10,000).

A hot reload makes a new engine and frees the old one after a grace period. Frozen objects are
still freed by reference counting, but a frozen cycle is never collected, and the new engine's
objects are not frozen. So once the old engine is closed, :func:`refreeze` unfreezes, collects
the whole heap once and freezes again (one full pass per reload, as long as one of those freezing
removes, against ~0.9 s of CPU for the reload itself): no old pack's objects stay frozen, and the
frozen count after any number of reloads is that of one start-up plus what live caches hold
(``tests/test_worker_gc.py``). ``serve`` with one worker freezes
before uvicorn starts (its packs are compiled by then). A process that never froze (tests, the
batch commands) is left as it is.

**Settling after the first answers** (:func:`note_answer`). Start-up is not all that lives for
good: the first requests import modules lazily (anyio's backend, prometheus_client's exposition,
http.server) and build the FHIR model classes and their pydantic validators for the resource types
they meet. Left unfrozen, those ~15,000 objects (and everything a validator's traverse reaches) are
walked by every full collection — and one came every ~0.65 s at concurrency 1 (each first-
generation pass that runs during a request promotes that request's live objects, so the 25 %
growth rule for a full pass is met every ten of them): **4-8 ms with the GIL held** each time,
measured with ``gc.callbacks`` in ``bench/hook.py``'s server, with or without a store. After the
answers counted in :data:`SETTLE_AT` the worker collects and freezes once more: the same full
passes then take **0.3-0.4 ms**. Objects of requests in flight at that moment are frozen too; they
are still freed by reference counting, and at most a request's worth of cycles per settle point
stays (three points in a worker's life).
"""

from __future__ import annotations

import gc
import logging
import threading

__all__ = ["SETTLE_AT", "freeze_startup", "frozen", "note_answer", "refreeze"]

log = logging.getLogger("cds_engine.service")

_lock = threading.Lock()
_frozen = False
_answers = 0

SETTLE_AT = frozenset({100, 1_000, 10_000})  # answers after which a frozen worker freezes once more


def frozen() -> bool:
    """Has this process frozen its start-up objects (:func:`freeze_startup`)?"""
    return _frozen


def freeze_startup() -> int:
    """Collect, then freeze everything alive (after start-up: packs compiled, evaluators warm).

    Called again (a spare taking a slot after its start-up froze) it freezes only what was made
    since. Returns the number of frozen objects."""
    global _frozen
    with _lock:
        gc.collect()
        gc.freeze()
        _frozen = True
        return gc.get_freeze_count()


def refreeze() -> int | None:
    """After a reload retired an engine: unfreeze, collect all, freeze; None in a process that never froze."""
    with _lock:
        if not _frozen:
            return None
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        count = gc.get_freeze_count()
    log.debug("worker heap refrozen after a reload: %d objects", count)
    return count


def note_answer() -> bool:
    """Count one answered request; at a count in :data:`SETTLE_AT`, in a process that froze its
    start-up, collect and freeze again (module docstring). Called after the response is sent, on
    the event loop's thread. Returns whether this call settled the heap."""
    global _answers
    _answers += 1
    if _answers not in SETTLE_AT or not _frozen:
        return False
    count = freeze_startup()  # the same collect-then-freeze, now over what the answers built too
    log.debug("worker heap settled after %d answers: %d objects frozen", _answers, count)
    return True
