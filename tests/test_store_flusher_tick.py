"""Issue 19 goal 2(a): the journal flusher's tick does as little as it can in the serving process.

Each tick of the fsync thread needs the GIL (the event loop's) twice; what it does in Python between
costs the worker CPU at every tick while lines come. What must hold: a short tick sleeps in one
system call (not an Event's Condition wait); an external journal's tick takes the journal lock only
when a segment is old enough to hand over or closed and waiting to be let go — and then still hands
it over and lets it go; a long interval still waits on the stop event, so ``close()`` is prompt.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path
from typing import Any

from cds_engine.store.journal import Journal


def _entry() -> dict[str, str]:
    return {"type": "feedback", "id": str(uuid.uuid4())}


class _CountingLock:
    """The journal's Condition, counting how often it is entered."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = 0

    def __enter__(self) -> Any:
        self.entered += 1
        return self.inner.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.inner.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_young_open_segment_costs_the_tick_no_lock(tmp_path: Path) -> None:
    journal = Journal(tmp_path, external=True, segment_seconds=60)  # not started: steps driven here
    try:
        journal.append(_entry())
        counting = _CountingLock(journal._lock)
        journal._lock = counting  # type: ignore[assignment]
        journal._hand_over_old()
        journal._release()
        assert counting.entered == 0, "the tick took the journal lock with nothing to hand over"
        assert journal._current is not None and not journal._current.closed
    finally:
        journal._lock = getattr(journal._lock, "inner", journal._lock)  # type: ignore[assignment]
        journal.close()


def test_an_old_segment_is_still_handed_over_and_let_go(tmp_path: Path) -> None:
    journal = Journal(tmp_path, external=True, segment_seconds=0.05)  # not started: steps driven here
    try:
        journal.append(_entry())
        segment = journal._current
        assert segment is not None
        time.sleep(0.1)
        journal._hand_over_old()
        assert segment.closed and journal._current is None
        assert journal.flush()  # fsynced, then let go: the writer process may take its lock now
        assert segment not in journal._segments
        fd = os.open(segment.path, os.O_RDONLY)
        try:  # its lock can be taken: "finished" to the writer process
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        journal.close()


def test_a_short_tick_sleeps_without_the_stop_event(tmp_path: Path) -> None:
    journal = Journal(tmp_path, external=True, fsync_interval=0.01)
    waits: list[float | None] = []
    real = journal._stop.wait

    def counting(timeout: float | None = None) -> bool:
        waits.append(timeout)
        return real(timeout)

    journal._stop.wait = counting  # type: ignore[method-assign]  # before the flusher looks it up
    journal.start()
    try:
        start = time.monotonic()
        while time.monotonic() - start < 0.2:
            journal.append(_entry())
            time.sleep(0.002)
        time.sleep(0.05)
        assert journal.fsyncs >= 3, journal.fsyncs
        assert waits == [], f"{len(waits)} timed Event waits in the tick"
    finally:
        started = time.monotonic()
        journal.close()
        assert time.monotonic() - started < 2.0
        assert journal._flusher is not None and not journal._flusher.is_alive()


def test_a_long_interval_still_stops_at_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path, external=True, fsync_interval=60).start()
    journal.append(_entry())  # wakes the flusher: it now waits one interval (60 s) before its tick
    time.sleep(0.1)
    started = time.monotonic()
    journal.close()
    assert time.monotonic() - started < 2.0, "close() waited for a long tick's sleep"
    assert journal._flusher is not None and not journal._flusher.is_alive()


