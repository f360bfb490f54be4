"""The ordering-session lookup reads what a call can pick, not every call of the last hour (issue #19).

An order evaluated again and again (bench/load.py signs one draft order on every call) had each
group commit read every stored call of that order within the session gap: thousands of rows per
batch, growing with the run. The lookup now reads the band where the batch's calls look first and
the earliest stored call after it, per base. These tests pin both: the keys are those of the old
whole-window read (kept here as the oracle), ties in time included, and the rows read stay few.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, and_, insert, or_, select

from cds_engine.store import order_sessions
from cds_engine.store.db import utcnow
from cds_engine.store.models import Evaluation
from cds_engine.store.order_sessions import ORDER_SESSION_GAP, session_order_keys
from cds_engine.store.writer import insert_evaluation
from store_helpers import NOW, STORE_KINDS, make_record, store_for

_evaluations: Any = Evaluation.__table__


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _whole_windows(conn: Connection, calls: list[tuple[str, datetime]], gap: timedelta) -> Any:
    """The old read: every stored call of the bases anywhere in the windows."""
    c = _evaluations.c
    near = or_(*(and_(c.as_of >= low, c.as_of <= high)
                 for low, high in order_sessions._windows([t for _, t in calls], gap)))
    stored: dict[str, list[tuple[datetime, str]]] = {}
    if calls:
        rows = conn.execute(select(c.order_base, c.as_of, c.order_key).where(
            c.order_base.in_(sorted({b for b, _ in calls})), near, c.order_key.is_not(None)))
        for base, as_of, key in rows:
            stored.setdefault(base, []).append((as_of, str(key)))
    for sessions in stored.values():
        sessions.sort()
    return stored


def _stored_call(conn: Connection, base: str, key: str, as_of: datetime) -> None:
    conn.execute(insert(_evaluations).values(
        id=str(uuid.uuid4()), source="hook", hook="order-sign", service_id="s", order_key=key,
        order_base=base, as_of=as_of, recorded_at=utcnow(), pack_id="p", pack_version="1",
        pack_hash="f" * 64, site_hash="s", hypothetical=False))


def test_keys_are_those_of_the_whole_window_read(kind: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(23)
    with store_for(kind, tmp_path) as store:
        with store.engine.begin() as conn:
            for _ in range(150):  # dense calls on few bases, some sessions apart, ties in time
                minutes = rng.choice([rng.randint(0, 300), 100])
                when = NOW + timedelta(minutes=minutes, seconds=rng.choice([0, 30]))
                _stored_call(conn, f"base-{rng.randint(0, 3)}", f"key-{rng.randint(0, 9)}", when)
        with store.engine.connect() as conn:
            for _ in range(40):
                calls: list[tuple[str | None, datetime]] = [
                    (rng.choice([None, *(f"base-{b}" for b in range(5))]),
                     NOW + timedelta(minutes=rng.randint(-70, 370), seconds=rng.choice([0, 30])))
                    for _ in range(rng.randint(1, 30))]
                found = session_order_keys(conn, calls)
                with monkeypatch.context() as patched:
                    patched.setattr(order_sessions, "_stored_sessions", _whole_windows)
                    assert found == session_order_keys(conn, calls)


def test_an_order_seen_thousands_of_times_reads_a_few_rows(kind: str, tmp_path: Path) -> None:
    with store_for(kind, tmp_path) as store:
        with store.engine.begin() as conn:
            for n in range(400):  # one draft order signed every 5 s for the last half hour
                record = make_record(order_key="busy-order", as_of=NOW + timedelta(seconds=5 * n), alerts=[])
                insert_evaluation(conn, record, str(uuid.uuid4()), utcnow())
        now = NOW + timedelta(seconds=2000)
        with store.engine.connect() as conn:
            calls = [("busy-order", now), ("busy-order", now + timedelta(milliseconds=40))]
            read = order_sessions._stored_sessions(conn, calls, ORDER_SESSION_GAP)
            assert sum(len(v) for v in read.values()) <= 2, read
            keys = session_order_keys(conn, list(calls))
            assert len(set(keys)) == 1
            assert keys[0] == conn.scalar(select(_evaluations.c.order_key).limit(1))  # the same session
