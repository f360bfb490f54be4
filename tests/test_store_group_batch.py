"""Group commit writes a batch in a constant number of statements, with the rows of one-by-one writes.

The writer thread shares the GIL with the request threads and every statement releases and re-takes
it, so a statement per record (the ordering-session lookup, the patient upsert) capped the writer
at a few hundred records a second (issue 19 item 2). These tests pin both halves of the fix on
SQLite and PostgreSQL: the number of statements of :func:`insert_evaluations` does not grow with the
batch, and the rows it leaves (evaluations with their session keys, orders, alerts, patients, the
analytics rollup) are those of :func:`insert_evaluation` called once per record.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Table, event, select

from cds_engine.sources.demographics import PatientDemographics
from cds_engine.store import Store, rollup
from cds_engine.store.api import EvaluationRecord
from cds_engine.store.db import utcnow
from cds_engine.store.models import AlertRow, Evaluation, OrderRow, Patient
from cds_engine.store.order_sessions import ORDER_SESSION_GAP, session_order_keys
from cds_engine.store.rollup import rollup_daily, rollup_episodes, rollup_reasons
from cds_engine.store.writer import insert_evaluation, insert_evaluations
from store_helpers import NOW, STORE_KINDS, make_alert, make_record, store_for

Item = tuple[EvaluationRecord, str, datetime]


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def counting(store: Store) -> Iterator[list[str]]:
    """Every statement sent to the database while inside (an executemany counts once)."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split(None, 1)[0])

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def _records(rng: random.Random, count: int, start: datetime, tag: str) -> list[Item]:
    """Order-select + order-sign pairs on ``count // 2`` orders, 8 calls a patient, demographics."""
    items: list[Item] = []
    for n in range(count):
        record = make_record(hook="order-select" if n % 2 == 0 else "order-sign",
                             patient=f"Patient/{tag}-{n // 8}", order_key=f"{tag}-order-{n // 2}",
                             as_of=start + timedelta(seconds=30 * n + rng.randint(0, 20)))
        who = PatientDemographics(name=f"Name {n}", birth_date="1950-01-01", identifiers=[("MRN", str(n))])
        items.append((record.model_copy(update={"demographics": who}), str(uuid.uuid4()), utcnow()))
    return items


def test_a_batch_takes_the_same_statements_whatever_its_size(kind: str, tmp_path: Path) -> None:
    rng = random.Random(19)
    with store_for(kind, tmp_path) as store:
        used: dict[int, list[str]] = {}
        for size in (10, 300):
            items = _records(rng, size, NOW + timedelta(days=size), f"b{size}")
            with counting(store) as seen, store.engine.begin() as conn:
                assert insert_evaluations(conn, items) == size
            used[size] = seen
        assert len(used[300]) == len(used[10]), (used[10], used[300])
        assert len(used[300]) <= 20  # session keys, evaluations, orders, alerts, patients, rollup
        with store.engine.connect() as conn:
            assert len(conn.execute(select(Evaluation.id)).all()) == 310
            assert len(conn.execute(select(Patient.patient_ref)).all()) == 2 + 38


def _batch(rng: random.Random) -> tuple[list[Item], list[Item]]:
    """(already stored, then one batch): sessions continued from the table and from earlier in the
    batch, a draft id reused after the gap, calls without an order key, a replayed line (same id),
    a retried hook call (same hookInstance, new id), one patient's demographics sent three times."""
    start = NOW - timedelta(hours=5)
    stored: list[Item] = []
    batch: list[Item] = []
    for n in range(12):
        base = f"order-{n % 3}"  # the same draft id every ~hour: a session goes on, or a new one begins
        when = start + timedelta(minutes=20 * n + rng.randint(0, 9))
        record = make_record(hook=rng.choice(["order-select", "order-sign"]), patient=f"Patient/{n % 3}",
                             order_key=base if n % 6 else None, as_of=when,
                             alerts=[make_alert(rng.choice(["TST-A01", "TST-B02"]))])
        who = PatientDemographics(name=f"Version {n}", birth_date="1960", identifiers=[("MRN", f"m{n % 3}")])
        (stored if n < 4 else batch).append((record.model_copy(update={"demographics": who}),
                                             str(uuid.uuid4()), start + timedelta(minutes=n)))
    batch.append(batch[2])  # the same journal line twice (a replay)
    retried, _, when = batch[3]
    batch.append((retried, str(uuid.uuid4()), when))  # the same hook call answered twice
    batch.append((make_record(order_key=None, alerts=[]), str(uuid.uuid4()), utcnow()))  # nothing fired
    return stored, batch


def _rows(conn: Connection) -> dict[str, Any]:
    """Everything the write path leaves, without the ids it draws at random (alert ids)."""
    def rows(table: Table | Any, *, leave_out: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
        columns = [c for c in table.columns if c.name not in leave_out]
        return sorted((tuple(r) for r in conn.execute(select(*columns))), key=repr)
    evaluations = Evaluation.__table__
    alert_order = {a: e for a, e in conn.execute(select(AlertRow.id, AlertRow.evaluation_id))}
    episodes = [(alert_order.get(row[0], row[0]), *row[1:]) for row in rows(rollup_episodes)]
    return {
        "evaluations": rows(evaluations), "orders": rows(OrderRow.__table__, leave_out=("id",)),
        "alerts": rows(AlertRow.__table__, leave_out=("id",)), "patients": rows(Patient.__table__),
        "episodes": sorted(episodes, key=repr), "daily": rows(rollup_daily), "reasons": rows(rollup_reasons),
    }


def test_a_batch_stores_what_one_by_one_writes_store(kind: str, tmp_path: Path) -> None:
    stored, batch = _batch(random.Random(7))
    found = []
    for way in ("one by one", "batch"):
        (tmp_path / way.replace(" ", "-")).mkdir()
        with store_for(kind, tmp_path / way.replace(" ", "-")) as store:
            for item in stored:
                with store.engine.begin() as conn:
                    insert_evaluation(conn, *item)
            with store.engine.begin() as conn:
                if way == "batch":
                    new = insert_evaluations(conn, batch)
                else:
                    new = sum(insert_evaluation(conn, *item) for item in batch)
            assert new == len(batch) - 2  # the replay and the retried call store nothing
            with store.engine.connect() as conn:
                found.append(_rows(conn))
    one_by_one, grouped = found
    assert len({row[9] for row in grouped["evaluations"]}) >= 4  # several sessions (order_key)
    for name in one_by_one:
        assert grouped[name] == one_by_one[name], name


def _oracle(conn: Connection, calls: list[tuple[str | None, datetime]]) -> list[str | None]:
    """The keys as the writer chose them one SELECT per call (the earlier in the batch first)."""
    import hashlib

    c = Evaluation.__table__.c
    gap = ORDER_SESSION_GAP
    seen: dict[str, list[tuple[datetime, str]]] = {}
    keys: list[str | None] = []
    for base, as_of in calls:
        if not base:
            keys.append(None)
            continue
        key = next((k for when, k in seen.get(base, []) if abs(when - as_of) <= gap), None)
        if key is None:
            key = conn.execute(select(c.order_key).where(
                c.order_base == base, c.as_of >= as_of - gap, c.as_of <= as_of + gap,
                c.order_key.is_not(None)).order_by(c.as_of).limit(1)).scalar()
        if key is None:
            key = hashlib.sha256(f"{base}|{as_of.isoformat()}".encode()).hexdigest()[:32]
        seen.setdefault(base, []).append((as_of, key))
        keys.append(key)
    return keys


def test_session_keys_of_a_batch_are_those_of_one_select_per_call(kind: str, tmp_path: Path) -> None:
    rng = random.Random(4)
    with store_for(kind, tmp_path) as store:
        # stored calls over three days (the batch reads several time windows), some without a key
        with store.engine.begin() as conn:
            for n in range(60):
                when = NOW + timedelta(minutes=rng.randint(0, 3 * 24 * 60), microseconds=n)
                record = make_record(order_key=f"base-{rng.randint(0, 6)}", as_of=when, alerts=[])
                insert_evaluation(conn, record, str(uuid.uuid4()), utcnow())
        with store.engine.connect() as conn:
            for _ in range(20):
                calls: list[tuple[str | None, datetime]] = [
                    (rng.choice([None, "", *(f"base-{b}" for b in range(8))]),
                     NOW + timedelta(minutes=rng.randint(-90, 3 * 24 * 60 + 90), seconds=rng.randint(0, 59)))
                    for _ in range(rng.randint(1, 40))]
                assert session_order_keys(conn, calls) == _oracle(conn, calls)


def test_the_rollup_touch_is_one_round_trip_on_postgresql_and_safe_for_any_key(kind: str,
                                                                                tmp_path: Path) -> None:
    """PostgreSQL runs the order locks and the rollup's statements as one text with the orders
    written in; a key that is not plain (a quote, a semicolon) takes the bound statements instead."""
    items = _records(random.Random(3), 40, NOW, "t")
    with store_for(kind, tmp_path) as store:
        with store.engine.begin() as conn:
            insert_evaluations(conn, items)
            if kind == "postgresql":
                assert rollup._touch_script(conn) is not None
            keys = [key for key, in conn.execute(select(Evaluation.order_key).distinct())]
            with counting(store) as seen:
                rollup.touch(conn, ["x'); DROP TABLE alerts; --", *keys])
            assert len(seen) == (11 if kind == "postgresql" else 10)  # bound statements (+ the locks)
            with counting(store) as seen:
                rollup.touch(conn, keys)
            assert len(seen) == (1 if kind == "postgresql" else 10)
        with store.engine.connect() as conn:
            assert len(conn.execute(select(AlertRow.id)).all()) == 40
            assert sum(row.fired for row in conn.execute(select(rollup_daily))) == 20  # 20 orders
