"""``serve --data-dir``: the journal (and spool) of a PostgreSQL store lives under the data directory.

Before, it went to ``./cds-spool`` in whatever directory the service was started from, so a restart
from another directory (or a unit file with another ``WorkingDirectory``) left a dead worker's
journal where no writer would adopt it. ``CDS_SPOOL_DIR`` still wins; SQLite keeps its journal
beside the database file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_engine.commands.serve import open_sink
from store_helpers import postgres_database


@pytest.mark.postgres
def test_the_journal_of_a_postgresql_store_is_under_the_data_dir(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDS_SPOOL_DIR", raising=False)
    with postgres_database() as url:
        _sink, _routers, store = open_sink(url, lambda: None, tmp_path / "data")
        try:
            assert store.journal is not None
            assert store.journal.directory == tmp_path / "data" / "cds-spool"
        finally:
            store.close()
        monkeypatch.setenv("CDS_SPOOL_DIR", str(tmp_path / "chosen"))
        _sink, _routers, store = open_sink(url, lambda: None, tmp_path / "data")
        try:
            assert store.journal is not None and store.journal.directory == tmp_path / "chosen"
        finally:
            store.close()


def test_a_sqlite_store_keeps_its_journal_beside_the_database(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDS_SPOOL_DIR", raising=False)
    _sink, _routers, store = open_sink(f"sqlite:///{tmp_path}/cds.db", lambda: None, tmp_path / "data")
    try:
        assert store.journal is not None and store.journal.directory == tmp_path / "cds.db.spool"
    finally:
        store.close()
