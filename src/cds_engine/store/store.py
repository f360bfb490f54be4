"""``open_store(url)``: the one entry point the service, the batch runner and the CLI use."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from cds_engine.store import migrate
from cds_engine.store.db import create_db_engine, redact, resolve_url
from cds_engine.store.sink import StoreSink, is_transient
from cds_engine.store.spool import Spool

if TYPE_CHECKING:
    from fastapi import APIRouter

    from cds_engine.engine import Engine as RuleEngine

__all__ = ["EngineProvider", "Store", "default_spool_dir", "open_store"]

log = logging.getLogger("cds_engine.store")

EngineProvider = Callable[[], "RuleEngine | None"]


def default_spool_dir(url: str) -> Path:
    """``CDS_SPOOL_DIR``; else beside a SQLite file (``cds.db.spool/``); else ``./cds-spool``."""
    if os.environ.get("CDS_SPOOL_DIR"):
        return Path(os.environ["CDS_SPOOL_DIR"])
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(f"{parsed.database}.spool")
    return Path("cds-spool")


class Store:
    """The database, the hook's sink, the spool drainer and the review pages' data access."""

    def __init__(self, url: str, *, spool_dir: str | Path | None = None, drain_interval: float = 2.0,
                 start_drainer: bool = True) -> None:
        self.url = resolve_url(url)
        self.engine: Engine = create_db_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.spool = Spool(spool_dir if spool_dir is not None else default_spool_dir(self.url))
        ready = self._migrate()
        self.sink = StoreSink(self.engine, self.spool, ready=ready, retry_interval=drain_interval)
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
        if not self.sink.migrated:
            if not self._migrate():
                return 0
            self.sink.mark_up()
        if not self.spool.pending():
            if not self.sink.available:
                self._probe()
            return 0
        applied, complete = self.sink.drain()
        if complete:  # every file present at the start went in: new writes may go direct again
            self.sink.mark_up()
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
        self.sink.mark_up()

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

    @property
    def ready(self) -> bool:
        return self.sink.available

    def review_router(self, engine_provider: EngineProvider | RuleEngine | None = None, *,
                      secure_cookies: bool | None = None) -> APIRouter:
        """The review pages, mounted under ``/review``. ``engine_provider`` returns the current
        rule engine (for rule titles, sources and the packs' override reasons)."""
        from cds_engine.service.review.router import build_router

        return build_router(self, engine_provider, secure_cookies=secure_cookies)


def open_store(url: str | None = None, *, spool_dir: str | Path | None = None,
               drain_interval: float = 2.0, start_drainer: bool = True) -> Store:
    """Open (and migrate) the store at ``url`` — ``--db``, else ``CDS_DATABASE_URL``, else ``cds.db``.

    A database that is unreachable at start does not stop the service: evaluations are spooled
    and the drainer migrates and writes them once it answers.
    """
    return Store(url or "", spool_dir=spool_dir, drain_interval=drain_interval, start_drainer=start_drainer)
