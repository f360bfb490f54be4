"""``open_store(url)``: the one entry point the service, the batch runner and the CLI use."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from cds_engine.store import migrate
from cds_engine.store.db import create_db_engine, redact, resolve_url, utcnow
from cds_engine.store.fatigue import purge_fatigue
from cds_engine.store.group_commit import GroupWriter
from cds_engine.store.journal import Journal
from cds_engine.store.journal_sink import JournalSink
from cds_engine.store.models import Patient
from cds_engine.store.patients import DEFAULT_RETENTION_DAYS, purge_demographics
from cds_engine.store.sink import StoreSink, is_transient
from cds_engine.store.spool import Spool

__all__ = ["Store", "default_spool_dir", "open_store"]

log = logging.getLogger("cds_engine.store")


def default_spool_dir(url: str) -> Path:
    """``CDS_SPOOL_DIR``; else beside a SQLite file (``cds.db.spool/``); else ``./cds-spool``."""
    if os.environ.get("CDS_SPOOL_DIR"):
        return Path(os.environ["CDS_SPOOL_DIR"])
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(f"{parsed.database}.spool")
    return Path("cds-spool")


class Store:
    """The database, the hook's sink, the spool drainer and the review pages' data access.

    It knows no web layer: the service mounts the review pages over a store it is given
    (:func:`cds_engine.service.review.router.build_router`).
    """

    def __init__(self, url: str, *, spool_dir: str | Path | None = None, drain_interval: float = 2.0,
                 start_drainer: bool = True, journal: bool = False,
                 clock: Callable[[], datetime] = utcnow) -> None:
        """``clock``: the service's clock (``serve --fixed-clock``), which stamps the fatigue rows —
        the hourly purge ages them by it, else a replay's windows are purged as years old."""
        self.url = resolve_url(url)
        self.clock = clock
        self.engine: Engine = create_db_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.spool = Spool(spool_dir if spool_dir is not None else default_spool_dir(self.url))
        # who the patient is: forgotten this many days after their last alert is closed (hourly check)
        self.demographics_retention_days = DEFAULT_RETENTION_DAYS
        self._next_purge = 0.0
        ready = self._migrate()
        self.direct_sink = StoreSink(self.engine, self.spool, ready=ready, retry_interval=drain_interval)
        self.sink: StoreSink | JournalSink = self.direct_sink
        self.journal: Journal | None = None
        self.writer: GroupWriter | None = None
        if journal:  # the service: answers never wait for the database (group commit from a journal)
            self.journal = Journal(self.spool.directory).start()
            self.sink = JournalSink(self.engine, self.journal, self.direct_sink)
            self.writer = GroupWriter(self.engine, self.journal, self.spool.reject, on_done=self.sink.settled)
            self.sink.attach(self.writer)
            self.writer.start()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._drainer: threading.Thread | None = None
        if ready and self.spool.pending():
            self._drain_once()
        if start_drainer:
            self._drainer = threading.Thread(target=self._drain_loop, args=(drain_interval,),
                                             name="cds-store-drainer", daemon=True)
            self._drainer.start()

    # -- lifecycle ---------------------------------------------------------------------------
    def _migrate(self) -> bool:
        try:
            migrate.upgrade(self.engine)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("database %s unavailable at start (%s): the hook will spool until it is back",
                        redact(self.url), type(exc).__name__)
            return False
        return True

    def _drain_once(self) -> int:
        if not self.direct_sink.migrated:
            if not self._migrate():
                return 0
            self.direct_sink.mark_up()
        if not self.spool.pending():
            if not self.direct_sink.available:
                self._probe()
            return 0
        applied, complete = self.direct_sink.drain()
        if complete:  # every file present at the start went in: new writes may go direct again
            self.direct_sink.mark_up()
        if applied:
            log.info("drained %d spooled write(s) into %s", applied, redact(self.url))
        return applied

    def _probe(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            if not is_transient(exc):
                raise
            return
        self.direct_sink.mark_up()

    def _drain_loop(self, interval: float) -> None:
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._drain_once()
            except Exception:  # keep the thread alive whatever happens; the spool keeps the data
                log.exception("spool drainer failed; retrying")
            if time.monotonic() >= self._next_purge and self.sink.available:
                self._next_purge = time.monotonic() + 3600
                try:
                    self.purge_expired()
                except Exception as exc:  # tried again in an hour; the log names no patient
                    log.warning("hourly purge failed (%s); retrying in an hour", type(exc).__name__)

    def purge_expired(self) -> None:
        """The hourly purge: demographics past retention, fatigue state past its keep (by ``clock``)."""
        self.purge_demographics()
        with self.engine.begin() as conn:
            purge_fatigue(conn, self.clock())

    def drain_now(self) -> int:
        """Drain the spool in the calling thread (tests, shutdown, the CLI)."""
        return self._drain_once()

    def wake_drainer(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._drainer is not None:
            self._drainer.join(timeout=10)
        if self.writer is not None and self.journal is not None:
            self.writer.close()  # writes what it can within 5 s; the rest is replayed at the next start
            self.journal.close()
        self.spool.close()
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- data access -------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        """An ORM session in one transaction: committed on success, rolled back on error."""
        with self.sessions.begin() as session:
            yield session

    def purge_demographics(self, retention_days: int | None = None) -> int:
        """Forget who the patients are whose last alert was closed ``retention_days`` ago (count)."""
        days = self.demographics_retention_days if retention_days is None else retention_days
        with self.engine.begin() as conn:
            return purge_demographics(conn, days, utcnow())

    def forget_all_demographics(self) -> int:
        """``--no-demographics``: delete every stored name, birth date and identifier (count)."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(Patient)).rowcount or 0)

    @property
    def ready(self) -> bool:
        return self.sink.available


def open_store(url: str | None = None, *, spool_dir: str | Path | None = None,
               drain_interval: float = 2.0, start_drainer: bool = True, journal: bool = False,
               clock: Callable[[], datetime] = utcnow) -> Store:
    """Open (and migrate) the store at ``url`` — ``--db``, else ``CDS_DATABASE_URL``, else ``cds.db``.

    A database that is unreachable at start does not stop the service: evaluations are spooled
    and the drainer migrates and writes them once it answers. ``journal=True`` (the service) makes
    ``.sink`` a :class:`JournalSink`: evaluations go to a local journal and one writer thread
    stores them in group commits; the journals of dead processes in the same directory are adopted.
    """
    return Store(url or "", spool_dir=spool_dir, drain_interval=drain_interval, start_drainer=start_drainer,
                 journal=journal, clock=clock)
