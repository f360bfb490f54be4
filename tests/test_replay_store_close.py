"""Closing the replay store never closes a connection inside a statement.

The replay check runs in a thread the request may have stopped waiting for (its timeout), so at
shutdown a check can still be running when the store is closed. Closing a sqlite3 connection
while another thread is inside a statement on it crashed the process (a segfault seen while a
test's teardown closed the store); ``close`` now waits for the statement, and leaves a connection
that stays busy too long to the process exit.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cds_engine.service import replay_store
from cds_engine.service.replay_store import SqliteReplayStore


def _slow_statement(store: SqliteReplayStore, seconds: float, started: threading.Event,
                    outcome: dict[str, object]) -> None:
    """Run ``SELECT slow()`` on this thread's connection: a statement that lasts ``seconds``."""
    def slow() -> int:
        started.set()
        time.sleep(seconds)
        outcome["finished_at"] = time.monotonic()
        return 1

    try:
        with store._conns.use(store._connect) as conn:
            conn.create_function("slow", 0, slow)
        outcome["rows"] = store._execute("SELECT slow()", ())[1]
    except Exception as exc:  # recorded: the test says what went wrong
        outcome["error"] = exc


def test_close_waits_for_a_statement_in_another_thread(tmp_path: Path) -> None:
    store = SqliteReplayStore(tmp_path / "jti.db")
    started, outcome = threading.Event(), {}
    worker = threading.Thread(target=_slow_statement, args=(store, 0.4, started, outcome))
    worker.start()
    assert started.wait(5)
    store.close()
    closed_at = time.monotonic()
    worker.join(5)
    assert "error" not in outcome, outcome
    assert outcome["rows"] == [(1,)]
    assert closed_at >= outcome["finished_at"]  # closed only after the statement ended


def test_a_connection_busy_too_long_is_left_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(replay_store, "CLOSE_WAIT_SECONDS", 0.05)
    store = SqliteReplayStore(tmp_path / "jti.db")
    started, outcome = threading.Event(), {}
    worker = threading.Thread(target=_slow_statement, args=(store, 0.5, started, outcome))
    worker.start()
    assert started.wait(5)
    store.close()  # does not wait the statement out, does not close under it
    assert "finished_at" not in outcome
    assert "still in use at close" in caplog.text
    worker.join(5)
    assert "error" not in outcome, outcome
    assert outcome["rows"] == [(1,)]


def test_the_store_reconnects_after_close(tmp_path: Path) -> None:
    store = SqliteReplayStore(tmp_path / "jti.db")
    assert store.first_use("iss", "a", time.time() + 60, time.time())
    store.close()
    assert not store.first_use("iss", "a", time.time() + 60, time.time())  # same file, still seen
    assert store.purge(time.time() + 120) == 1
    assert store.live_counts(time.time()) == {}
    store.close()
