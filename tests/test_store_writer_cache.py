"""The group writer's own SQLite connection gets a larger page cache; every other connection does not.

With SQLite's default 2,000 KiB a group commit of ~100 hook lines spilled dirty pages to the WAL in
the middle of its transaction and read evicted index pages back at the next commit (issue 19, the
writer's CPU per line). :func:`~cds_engine.store.db.tune_writer_connection` raises the cache of the
one connection :class:`~cds_engine.store.group_commit.GroupWriter` keeps — also after it replaced a
connection in doubt — and leaves durability (``synchronous``) and the other connections alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from cds_engine.store import Store
from cds_engine.store.db import WRITER_SQLITE_CACHE_KIB, tune_writer_connection
from cds_engine.store.group_commit import GroupWriter
from cds_engine.store.journal import Journal
from cds_engine.store.models import AlertRow, Evaluation
from store_helpers import STORE_KINDS, make_record, store_for


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _pragma(conn: Connection, name: str) -> Any:
    """A SQLite setting of this very connection, read on its DBAPI cursor (no SQLAlchemy transaction)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        return cursor.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        cursor.close()


def _writer(store: Store, tmp_path: Path) -> tuple[GroupWriter, Journal]:
    journal = Journal(tmp_path / "journal")
    writer = GroupWriter(store.engine, journal, lambda entry, exc: None, adopt_interval=1e9)
    return writer, journal


def test_writer_connection_has_its_own_cache_on_sqlite(tmp_path: Path) -> None:
    with store_for("sqlite", tmp_path) as store:
        writer, journal = _writer(store, tmp_path)
        try:
            conn = writer._connection()
            assert _pragma(conn, "cache_size") == -WRITER_SQLITE_CACHE_KIB
            assert WRITER_SQLITE_CACHE_KIB > 2000  # larger than SQLite's default, or it is pointless
            # durability is what every connection gets (README: WAL, synchronous NORMAL), not weakened
            assert _pragma(conn, "synchronous") == 1
            assert _pragma(conn, "journal_mode") == "wal"
            with store.engine.connect() as other:  # the page's and the workers' connections
                assert _pragma(other, "cache_size") == -2000
            writer._drop_connection()  # after a transient error the writer opens a new connection
            assert _pragma(writer._connection(), "cache_size") == -WRITER_SQLITE_CACHE_KIB
        finally:
            writer._drop_connection()
            journal.close()


def test_tuned_writer_stores_every_line(kind: str, tmp_path: Path) -> None:
    """The tuned connection writes what the journal holds (both databases; PostgreSQL is left as it is)."""
    with store_for(kind, tmp_path) as store:
        writer, journal = _writer(store, tmp_path)
        journal.start()
        for n in range(12):
            record = make_record(patient=f"Patient/{n // 4}", order_key=f"order-{n // 2}")
            journal.append({"type": "evaluation", "id": f"00000000-0000-4000-8000-{n:012d}",
                            "recorded_at": record.as_of.isoformat()}, record)
        writer.start()
        writer.close()
        journal.close()
        with store.engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Evaluation)) == 12
            assert conn.scalar(select(func.count()).select_from(AlertRow)) >= 12


def test_tune_writer_connection_leaves_postgresql_alone(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    from store_helpers import postgres_admin_url

    if postgres_admin_url() is None:
        pytest.skip("no PostgreSQL (CDS_TEST_DATABASE_URL)")
    with store_for("postgresql", tmp_path) as store, store.engine.connect() as conn:
        tune_writer_connection(conn)  # nothing to set, nothing raised, no transaction left open
        assert not conn.in_transaction()
