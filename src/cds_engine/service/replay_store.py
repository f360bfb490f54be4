"""Where seen JWT ``jti`` values are kept so that every worker and host refuses a replayed token.

Two shared stores, each with one small table of its own and its own connections — never the
evaluation store's — so a locked or paused evaluation database does not hold up token checks:

* :class:`SqliteReplayStore`: a WAL file in the data directory (0600), shared by the workers of
  one host. A check is one autocommitted ``INSERT … ON CONFLICT`` on a primary key.
* :class:`PostgresReplayStore`: table ``cds_jti_replay`` (created if absent) shared by hosts.

A check inserts ``(iss, jti, expires)``; an existing row is taken over only once it has expired
(``expires`` is the token's ``exp`` plus the clock leeway), so a replay finds a live row and is
refused. :meth:`purge` deletes expired rows in small batches (each a short write, so checks in
between never wait long) and :meth:`live_counts` feeds the per-issuer quota. All methods block:
callers run them off the event loop (:mod:`cds_engine.service.replay`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from cds_engine.files import FILE_MODE, private_dir, private_file

__all__ = ["PostgresReplayStore", "ReplayStore", "SqliteReplayStore", "open_replay_store"]

PURGE_BATCH = 1000  # rows per delete: one short write lock at a time
PURGE_MAX_BATCHES = 200  # per purge call; the rest waits for the next one
CLOSE_WAIT_SECONDS = 2.0  # longer than any statement may take (busy/statement timeouts ≤ 1 s)

log = logging.getLogger(__name__)


class ReplayStore(Protocol):
    """A shared set of seen ``(iss, jti)`` pairs with expiry times (epoch seconds)."""

    backend: str

    def first_use(self, iss: str, jti: str, expires: float, now: float) -> bool:
        """True (and recorded) if no live row holds this pair; raises when the store fails."""
        ...

    def purge(self, now: float) -> int:
        """Delete rows expired at ``now``; how many were deleted."""
        ...

    def live_counts(self, now: float) -> dict[str, int]:
        """Live rows per issuer (for the quota)."""
        ...

    def close(self) -> None: ...


class _PerThread:
    """One connection per calling thread (sqlite3 and psycopg connections are not shared).

    ``close_all`` closes every connection and starts a new generation: a thread that still holds
    a connection of an older generation opens a fresh one on its next call. Each connection is
    used under its own lock (:meth:`use`), which ``close_all`` takes before closing it: the
    replay check runs in a thread the request may have stopped waiting for (its timeout), and
    closing a sqlite3 connection while that thread is inside a statement on it crashed the
    process (a segfault seen at shutdown). A connection still busy after
    :data:`CLOSE_WAIT_SECONDS` is left open for the process's exit to reclaim.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[tuple[Any, threading.Lock]] = []
        self._lock = threading.Lock()
        self._generation = 0

    def get(self) -> Any | None:
        if getattr(self._local, "generation", -1) != self._generation:
            return None
        return getattr(self._local, "conn", None)

    def put(self, conn: Any) -> None:
        with self._lock:
            held = threading.Lock()
            self._local.conn, self._local.held, self._local.generation = conn, held, self._generation
            self._all.append((conn, held))

    @contextmanager
    def use(self, connect: Callable[[], Any]) -> Iterator[Any]:
        """This thread's connection (``connect()`` makes one when there is none), held under its
        lock for the ``with`` block, so ``close_all`` cannot close it mid-statement."""
        conn = self.get()
        if conn is None:
            conn = connect()
        held: threading.Lock = self._local.held
        with held:
            yield conn

    def drop(self) -> None:
        """Forget (and close) this thread's connection after an error: the next call reconnects."""
        conn = self.get()
        self._local.conn = None
        if conn is not None:
            with self._lock:
                self._all = [pair for pair in self._all if pair[0] is not conn]
            _close_quietly(conn)

    def close_all(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
            self._generation += 1
        for conn, held in conns:
            if held.acquire(timeout=CLOSE_WAIT_SECONDS):
                try:
                    _close_quietly(conn)
                finally:
                    held.release()
            else:
                log.warning("replay store: a connection still in use at close; left to the process exit")


def _purge_in_batches(execute: Callable[[str, tuple[Any, ...]], int], sql: str, now: float) -> int:
    """Run a ``DELETE … LIMIT PURGE_BATCH`` statement until it deletes less than a batch (or the
    cap); ``execute`` returns the statement's row count."""
    deleted = 0
    for _ in range(PURGE_MAX_BATCHES):
        rowcount = execute(sql, (now, PURGE_BATCH))
        deleted += max(rowcount, 0)
        if rowcount < PURGE_BATCH:
            break
    return deleted


def _close_quietly(conn: Any) -> None:
    with suppress(Exception):  # a connection stuck or broken: nothing more to do with it
        conn.close()


class SqliteReplayStore:
    """The host's replay store: one WAL SQLite file shared by all its workers."""

    backend = "sqlite"

    def __init__(self, path: str | Path, busy_timeout_ms: int = 250) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        private_dir(self.path.parent)
        if not self.path.exists():  # 0600 before SQLite opens it; -wal/-shm take its mode
            self.path.touch(mode=FILE_MODE)
        private_file(self.path)
        self._conns = _PerThread()
        with self._conns.use(self._connect) as conn:
            conn.executescript(
                "CREATE TABLE IF NOT EXISTS jti_seen (iss TEXT NOT NULL, jti TEXT NOT NULL, "
                "expires REAL NOT NULL, PRIMARY KEY (iss, jti)) WITHOUT ROWID;"
                "CREATE INDEX IF NOT EXISTS jti_seen_expires ON jti_seen (expires);"
            )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoint, no fsync per check
        self._conns.put(conn)
        return conn

    def _execute(self, sql: str, params: tuple[Any, ...]) -> tuple[int, list[Any]]:
        """(rowcount, rows) of one statement, run under the connection's lock."""
        try:
            with self._conns.use(self._connect) as conn:
                cursor = conn.execute(sql, params)
                return cursor.rowcount, cursor.fetchall()
        except sqlite3.Error:
            self._conns.drop()
            raise

    def first_use(self, iss: str, jti: str, expires: float, now: float) -> bool:
        rowcount, _ = self._execute(
            "INSERT INTO jti_seen (iss, jti, expires) VALUES (?, ?, ?) ON CONFLICT (iss, jti) "
            "DO UPDATE SET expires = excluded.expires WHERE jti_seen.expires <= ?",
            (iss, jti, expires, now),
        )
        return rowcount == 1

    def purge(self, now: float) -> int:
        return _purge_in_batches(
            lambda sql, params: self._execute(sql, params)[0],
            "DELETE FROM jti_seen WHERE (iss, jti) IN "
            "(SELECT iss, jti FROM jti_seen WHERE expires <= ? LIMIT ?)",
            now,
        )

    def live_counts(self, now: float) -> dict[str, int]:
        _, rows = self._execute(
            "SELECT iss, count(*) FROM jti_seen WHERE expires > ? GROUP BY iss", (now,)
        )
        return {iss: int(n) for iss, n in rows}

    def close(self) -> None:
        self._conns.close_all()


class PostgresReplayStore:
    """The replay store shared by hosts: table ``cds_jti_replay`` on a PostgreSQL server."""

    backend = "postgresql"

    def __init__(self, url: str, statement_timeout_ms: int = 1000) -> None:
        self.url = url
        self.statement_timeout_ms = statement_timeout_ms
        self._conns = _PerThread()
        self._execute(
            "CREATE TABLE IF NOT EXISTS cds_jti_replay (iss text NOT NULL, jti text NOT NULL, "
            "expires double precision NOT NULL, PRIMARY KEY (iss, jti))", ()
        )
        self._execute("CREATE INDEX IF NOT EXISTS cds_jti_replay_expires ON cds_jti_replay (expires)", ())

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(
            _libpq_url(self.url),
            autocommit=True,
            connect_timeout=2,
            application_name="cds-engine jti replay",
            # a check that cannot finish quickly is abandoned by the caller anyway
            options=f"-c statement_timeout={int(self.statement_timeout_ms)} "
            f"-c lock_timeout={int(self.statement_timeout_ms)} -c synchronous_commit=off",
        )
        self._conns.put(conn)
        return conn

    def _execute(self, sql: str, params: tuple[Any, ...]) -> tuple[int, list[Any]]:
        """(rowcount, rows) of one statement, run under the connection's lock."""
        try:
            with self._conns.use(self._connect) as conn:
                cursor = conn.execute(sql, params)
                return cursor.rowcount, (cursor.fetchall() if cursor.description else [])
        except Exception:
            self._conns.drop()
            raise

    def first_use(self, iss: str, jti: str, expires: float, now: float) -> bool:
        rowcount, _ = self._execute(
            "INSERT INTO cds_jti_replay AS t (iss, jti, expires) VALUES (%s, %s, %s) "
            "ON CONFLICT (iss, jti) DO UPDATE SET expires = EXCLUDED.expires WHERE t.expires <= %s",
            (iss, jti, expires, now),
        )
        return rowcount == 1

    def purge(self, now: float) -> int:
        return _purge_in_batches(
            lambda sql, params: self._execute(sql, params)[0],
            "DELETE FROM cds_jti_replay WHERE ctid IN (SELECT ctid FROM cds_jti_replay "
            "WHERE expires <= %s LIMIT %s FOR UPDATE SKIP LOCKED)",
            now,
        )

    def live_counts(self, now: float) -> dict[str, int]:
        _, rows = self._execute(
            "SELECT iss, count(*) FROM cds_jti_replay WHERE expires > %s GROUP BY iss", (now,)
        )
        return {iss: int(n) for iss, n in rows}

    def close(self) -> None:
        self._conns.close_all()


def _libpq_url(url: str) -> str:
    """``postgresql+psycopg://…`` (SQLAlchemy spelling, as ``--db`` takes it) → ``postgresql://…``."""
    scheme, sep, rest = url.partition("://")
    return ("postgresql" + sep + rest) if scheme.startswith("postgres") else url


def open_replay_store(url: str) -> ReplayStore:
    """``sqlite:///path`` or ``postgresql://…`` → a store (raises if it cannot be opened now)."""
    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme == "sqlite":
        path = url.partition(":///")[2]
        if not path:
            raise ValueError("a SQLite replay store needs a file: sqlite:///path/to/jti.db")
        return SqliteReplayStore(path)
    if scheme in ("postgresql", "postgres"):
        return PostgresReplayStore(url)
    raise ValueError(f"replay store URL must be sqlite:///FILE or postgresql://…, not {scheme or url!r}")
