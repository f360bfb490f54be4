"""Opening the database: URL resolution, SQLite pragmas, PostgreSQL time limits, UTC times.

Everything dialect-specific that is not a migration lives here, so the rest of the store is
written once for SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.types import DateTime, TypeDecorator

from cds_engine.files import private_open

__all__ = ["DEFAULT_URL", "WRITER_SQLITE_CACHE_KIB", "UTCDateTime", "create_db_engine", "redact",
           "resolve_url", "tune_writer_connection", "utcnow"]

DEFAULT_URL = "sqlite:///cds.db"

# A hook must not hang on a database that does not answer: fail fast and spool instead.
_PG_CONNECT_TIMEOUT_S = 2
_PG_STATEMENT_TIMEOUT_MS = 5000
_SQLITE_BUSY_TIMEOUT_MS = 2000
# Page cache of the group writer's own SQLite connection (SQLite's default is 2,000 KiB). A group
# commit of ~100 hook lines dirties more pages than that (random-key index pages), so SQLite spilled
# dirty pages to the WAL mid-transaction and read evicted ones back for the next commit: with a store
# of 10,000 lines, 85 read and 119 write syscalls a line. 16 MiB keeps a commit's pages and the hot
# index pages (issue 19, writer-cache session). Set on that connection only (GroupWriter._connection);
# the review page's and the workers' own connections keep SQLite's default.
WRITER_SQLITE_CACHE_KIB = 16384


def utcnow() -> datetime:
    return datetime.now(UTC)


def resolve_url(url: str | None) -> str:
    """``--db`` value, else ``CDS_DATABASE_URL``, else the SQLite file ``cds.db``.

    ``postgresql://`` and ``postgres://`` are taken to mean psycopg 3 (the installed driver).
    """
    url = url or os.environ.get("CDS_DATABASE_URL") or DEFAULT_URL
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redact(url: str | URL) -> str:
    """The URL without its password, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    # hide_parameters: a failing statement's message (logged, raised) never carries the bound values,
    # which are patient data
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "future": True, "hide_parameters": True}
    if parsed.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
        if "options" not in parsed.query:
            connect_args["options"] = f"-c statement_timeout={_PG_STATEMENT_TIMEOUT_MS}"
        kwargs.update(connect_args=connect_args, pool_size=5, max_overflow=10, pool_timeout=5)
    elif parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000}
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        _private_sqlite_file(parsed.database)
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _private_sqlite_file(database: str | None) -> None:
    """Create the SQLite file 0600 before SQLite does (its -wal and -shm files take the same mode)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.parent.is_dir():
        private_open(path, "a").close()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL so readers (the page) never block the writer (the hook); FKs on; short busy wait."""
    cur = dbapi_conn.cursor()
    try:
        if cur.execute("PRAGMA journal_mode").fetchone()[0] != "memory":
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cur.close()


def tune_writer_connection(conn: Connection) -> None:
    """Settings for the one long-lived connection of the group writer (SQLite: a larger page cache).

    Durability settings are not touched here (``synchronous`` stays what :func:`_sqlite_pragmas`
    sets for every connection); PostgreSQL needs nothing.
    """
    if conn.dialect.name != "sqlite":
        return
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"PRAGMA cache_size=-{WRITER_SQLITE_CACHE_KIB}")
    finally:
        cursor.close()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes in, UTC-aware datetimes out — on SQLite too (which drops zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; times must carry a timezone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
