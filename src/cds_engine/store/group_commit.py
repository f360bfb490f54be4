"""The one writer thread of a process: journal lines into the database, many per transaction.

One commit (one WAL sync in SQLite, one round of ``COMMIT`` in PostgreSQL) for up to ``batch``
lines replaces one transaction per hook call, which was most of the service's CPU per request
and all of its queueing under load. The writer takes whatever the journal holds (waiting a few
ms for the first line), writes evaluations with a constant number of set-based statements per run
of them (:func:`~cds_engine.store.writer.insert_evaluations`: never one per record — each round
trip gives the GIL to the request threads and waits for it back, which capped this thread at a few
hundred records a second) and feedback in order behind the cards it names, commits, then tells the
journal those lines are done. While the database is away (transient error) it keeps the batch
and retries with a growing pause: the journal grows, the hook does not notice. A batch the
database refuses for another reason is retried line by line, and a line it still refuses goes to
``rejected.jsonl`` (counted).

Feedback whose card has no row yet (its evaluation is still in another worker's journal) is
parked and retried every second, up to ``park_seconds``; its journal segment is kept meanwhile,
so a crash does not lose it either. Every ``adopt_interval`` the writer adopts the journals of
dead processes (:meth:`~cds_engine.store.journal.Journal.adopt`).

The journal is this process's :class:`~cds_engine.store.journal.Journal` (``serve --writer
thread``) or, in the writer process (``--writer process``), a
:class:`~cds_engine.store.journal_tail.JournalTail` over every worker's files — anything with the
:class:`LineSource` methods.

The linger grows with the arrival rate: idle, a line waits ``linger`` (50 ms) for company; under
load the writer waits longer (up to ``max_linger``) so each commit carries more lines — the fixed
cost per transaction (PostgreSQL planning the rollup, locks, the WAL sync) is paid less often.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from cds_engine import metrics
from cds_engine.store.api import EvaluationRecord, FeedbackRecord
from cds_engine.store.db import redact, tune_writer_connection
from cds_engine.store.journal import JournalEntry, JournalItem
from cds_engine.store.sink import is_transient
from cds_engine.store.writer import apply_feedback, insert_evaluations, known_card

__all__ = ["GroupWriter", "LineSource"]

log = logging.getLogger("cds_engine.store.writer")

Reject = Callable[[JournalEntry, BaseException], None]


class LineSource(Protocol):
    """What the writer needs of a journal: :class:`Journal` or the writer process's ``JournalTail``."""

    def take(self, limit: int, wait: float, linger: float = 0.0) -> list[JournalItem]: ...

    def done(self, items: list[JournalItem]) -> None: ...

    def backlog(self) -> int: ...

    def adopt(self, reject: Reject) -> int: ...


def _name_os_thread(name: bytes) -> None:
    """The calling thread's OS-level name (Linux ``prctl(PR_SET_NAME)``); nothing elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class GroupWriter:
    def __init__(self, engine: Engine, journal: LineSource, reject: Reject, *, batch: int = 500,
                 wait: float = 0.005, linger: float = 0.05, adopt_interval: float = 1.0,
                 park_seconds: float = 300.0, max_linger: float = 0.25, linger_rate: float = 50.0,
                 idle_wait: float | None = None, idle_after: float = 1.0,
                 on_done: Callable[[list[JournalItem]], None] | None = None) -> None:
        self._engine = engine
        self.journal = journal
        self._reject = reject
        self.batch = batch
        self.wait = wait
        # After ``idle_after`` s without a line, wait ``idle_wait`` instead (default: ``wait``). For a
        # source that is polled (the writer process scans a directory per wait), so an idle host
        # does not pay a scan every few ms; the first line after a quiet spell is seen that much later.
        self.idle_wait = wait if idle_wait is None else max(idle_wait, wait)
        self.idle_after = idle_after
        self._last_line = time.monotonic()
        self.linger = linger  # after the first line, wait this long for more (adds ≤ 50 ms of write lag)
        self.max_linger = max(max_linger, linger)  # ... growing to this under load (adaptive_linger)
        self.linger_rate = linger_rate  # lines/s up to which the linger stays at ``linger``
        self._rate = 0.0  # lines/s taken, smoothed
        self._last_take = time.monotonic()
        self.adopt_interval = adopt_interval
        self.park_seconds = park_seconds
        self._on_done = on_done
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._parked: deque[tuple[float, JournalItem]] = deque()
        self._retry: list[JournalItem] = []  # a batch the database did not take (it was away)
        self._conn: Connection | None = None  # kept open: no pool checkout and ping per commit
        self.available = True
        self._down_since: float | None = None
        self.lags: deque[float] = deque(maxlen=20000)  # seconds from journal line to commit
        self.commits = 0
        self.written = 0
        self._last_report = time.monotonic()
        self._reported = 0  # `written` at the last report

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> GroupWriter:
        self._thread = threading.Thread(target=self._run, name="cds-store-writer", daemon=True)
        self._thread.start()
        return self

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect()
            try:
                tune_writer_connection(conn)  # its own page cache: see db.WRITER_SQLITE_CACHE_KIB
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # after a transient error: never reuse a connection in doubt
                conn.close()
            except Exception:
                pass

    def close(self, timeout: float = 5.0) -> None:
        """Write what the journal holds for up to ``timeout`` s; the rest is replayed at the next start."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 1)

    def _run(self) -> None:
        _name_os_thread(b"cds-writer")  # so /proc/<pid>/task/*/comm shows the writer's CPU (bench/load.py)
        try:
            self._loop()
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(Exception):
                    conn.close()

    def _loop(self) -> None:
        next_adopt = 0.0
        pause = 0.05
        while True:
            now = time.monotonic()
            stopping = self._stop.is_set()
            metrics.JOURNAL_DEPTH.set(self.journal.backlog())  # also while the database is away
            if stopping and (now >= self._deadline or (not self._retry and not self.journal.backlog())):
                return
            try:
                if now >= next_adopt and not stopping:
                    next_adopt = now + self.adopt_interval
                    self.journal.adopt(self._reject)
                batch, self._retry = self._retry, []
                if not batch:
                    wait, linger = (0.0, 0.0) if stopping else (self.current_wait(now),
                                                                self.adaptive_linger())
                    batch = self._due_parked(now) + self.journal.take(self.batch, wait, linger)
                    self._observe_rate(len(batch))
                if not batch:
                    self._report(now)
                    if stopping:
                        return
                    continue
                self._write(batch)
                pause = 0.05
            except Exception as exc:  # keep the thread alive whatever happens; the journal keeps the data
                if is_transient(exc):
                    self._mark_down(exc)
                else:
                    log.exception("store writer failed; retrying")
                if stopping:
                    time.sleep(min(pause, 0.2))
                else:
                    self._stop.wait(pause)
                pause = min(pause * 2, 2.0)

    def adaptive_linger(self) -> float:
        """``linger`` up to ``linger_rate`` lines/s, then in proportion to the rate, capped at
        ``max_linger``: the same small lag when idle, bigger batches under load."""
        return min(self.max_linger, self.linger * max(1.0, self._rate / self.linger_rate))

    def current_wait(self, now: float) -> float:
        """How long :meth:`take` waits for a first line: ``wait``, or ``idle_wait`` once idle."""
        return self.wait if now - self._last_line < self.idle_after else self.idle_wait

    def _observe_rate(self, taken: int) -> None:
        now = time.monotonic()
        if taken:
            self._last_line = now
        elapsed, self._last_take = now - self._last_take, now
        if elapsed > 0:
            weight = min(1.0, elapsed)  # about a one-second memory
            self._rate += weight * (taken / elapsed - self._rate)

    # -- writing -----------------------------------------------------------------------------
    def _write(self, batch: list[JournalItem], conflicts: int = 0) -> None:
        """Commit ``batch``; on a transient error it is kept in ``_retry`` (never counted done twice).

        A unique-key conflict may be a race with another worker's writer (the same hookInstance
        retried to two workers, a shared row both create): the batch is tried again, up to 3 times,
        before it is taken apart and a line rejected."""
        try:
            conn = self._connection()
            with conn.begin():
                done, parked = self._apply(conn, batch)
        except Exception as exc:
            if is_transient(exc):
                self._drop_connection()
                self._retry = batch
                raise
            if isinstance(exc, sa_exc.IntegrityError) and conflicts < 3:
                time.sleep(0.01 * (conflicts + 1))
                self._write(batch, conflicts + 1)
                return
            if len(batch) == 1:
                self._reject_items(batch, exc)
                return
            log.error("group commit of %d line(s) refused (%s): retrying one by one", len(batch),
                      type(exc).__name__)
            for position, item in enumerate(batch):
                try:
                    self._write([item])
                except Exception:
                    self._retry = batch[position:]
                    raise
            return
        self._mark_up()
        self._finish(done)
        now = time.monotonic()
        self._parked.extend((now + 1.0, item) for item in parked)

    def _apply(self, conn: Connection,
               batch: list[JournalItem]) -> tuple[list[JournalItem], list[JournalItem]]:
        done: list[JournalItem] = []
        parked: list[JournalItem] = []
        evaluations: list[tuple[EvaluationRecord, str, datetime]] = []
        for item in batch:
            entry = item.entry
            kind = entry.get("type")
            if kind == "evaluation":
                record = item.value if isinstance(item.value, EvaluationRecord) else (
                    EvaluationRecord.model_validate(entry["record"]))  # adopted: parse the line
                evaluations.append((record, entry["id"], datetime.fromisoformat(entry["recorded_at"])))
                done.append(item)
            elif kind == "feedback":
                insert_evaluations(conn, evaluations)  # the cards before it, in order
                evaluations = []
                if self._feedback(conn, entry):
                    done.append(item)
                else:
                    parked.append(item)
            else:
                raise ValueError(f"unknown journal entry type {kind!r}")
        insert_evaluations(conn, evaluations)
        return done, parked

    def _feedback(self, conn: Connection, entry: JournalEntry) -> bool:
        feedback = FeedbackRecord.model_validate(entry["record"])
        received = datetime.fromisoformat(entry["received_at"])
        if known_card(conn, feedback.card_uuid):
            apply_feedback(conn, feedback, entry["id"], received)
            return True
        if (datetime.now(UTC) - received).total_seconds() > self.park_seconds:
            raise LookupError(f"feedback for a card never stored ({self.park_seconds:.0f} s)")
        return False

    def _due_parked(self, now: float) -> list[JournalItem]:
        due = []
        while self._parked and self._parked[0][0] <= now:
            due.append(self._parked.popleft()[1])
        return due

    def _finish(self, done: list[JournalItem]) -> None:
        if not done:
            return
        now = datetime.now(UTC)
        for item in done:
            when = item.entry.get("recorded_at") or item.entry.get("received_at")
            if when:
                lag = (now - datetime.fromisoformat(when)).total_seconds()
                self.lags.append(lag)
                metrics.WRITE_LAG_SECONDS.observe(lag)
        self.commits += 1
        self.written += len(done)
        self.journal.done(done)
        if self._on_done is not None:
            self._on_done(done)

    def _reject_items(self, items: list[JournalItem], exc: BaseException) -> None:
        log.error("journal line rejected (%s): kept in rejected.jsonl", type(exc).__name__)
        for item in items:
            self._reject(item.entry, exc)
        self.journal.done(items)
        if self._on_done is not None:
            self._on_done(items)

    # -- state -------------------------------------------------------------------------------
    def _mark_down(self, error: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.available = False
            log.warning("database %s unavailable (%s): the journal keeps %d write(s) until it is back",
                        redact(self._engine.url), type(error).__name__, self.journal.backlog())

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning("database %s available again after %.1f s", redact(self._engine.url),
                        time.monotonic() - self._down_since)
            self._down_since = None
            self.available = True

    def _report(self, now: float) -> None:
        """Every 10 s while there is news (an idle writer does not fill the log)."""
        if now - self._last_report >= 10.0 and self.written != self._reported:
            self._last_report, self._reported = now, self.written
            log.info("store writer: %s", self.stats())

    def stats(self) -> dict[str, Any]:
        lags = sorted(self.lags)
        pick = (lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 1)) if lags else (
            lambda q: None)
        return {"written": self.written, "commits": self.commits, "backlog": self.journal.backlog(),
                "lag_ms_p50": pick(0.5), "lag_ms_p99": pick(0.99), "lag_ms_max": pick(1.0)}
