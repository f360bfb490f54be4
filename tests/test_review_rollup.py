"""The analytics rollup and the queue items (issue #18 items 5/6) give the same answers as the direct
SQL over every row.

Generated data goes through the real write paths (one-by-one and group-commit writer, prescriber
feedback, reviewer decisions, cards kept back by the fatigue controls); then every analytics view
the page offers is read from the rollup and from the rows and compared, on SQLite and PostgreSQL.
A rebuild from the rows (the migration's backfill) must land on the same tables as the increments.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cds_engine.store import Store, open_store
from cds_engine.store import users as user_admin
from cds_engine.store.api import EvaluationRecord, IssuedAlert
from cds_engine.store.db import utcnow
from cds_engine.store.fatigue import fatigue_cards
from cds_engine.store.models import AlertRow
from cds_engine.store.queries import (
    analytics,
    analytics_from_rows,
    decide,
    parse_filter,
    roll_up_decisions,
    where,
)
from cds_engine.store.queue_items import queue_items, rebuild_queue, work_queue_from_items
from cds_engine.store.rollup import rebuild, rollup_daily, rollup_episodes, rollup_reasons
from cds_engine.store.work_queue import work_queue
from cds_engine.store.writer import insert_evaluations
from store_helpers import STORE_KINDS, feedback, make_alert, make_record, postgres_database, store_for

TODAY = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
MISSING = [("egfr", "Cannot assess: Current eGFR"), ("dose_mg", "Cannot assess: Dose in mg")]
SEVERITY = {"TST-A01": "info", "TST-B02": "warning", "TST-C03": "critical"}
RULES = [*SEVERITY, *(f"missing-data.{item}" for item, _ in MISSING)]
SOURCES = ["hook", "hook", "batch", "evaluate", "patient-view", "hypothetical"]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def _alert(rng: random.Random, rule: str) -> Any:
    """One alert of ``rule`` (a rule tier has one severity, as in a pack)."""
    if rule.startswith("missing-data."):
        title = dict(MISSING)[rule.split(".", 1)[1]]
        return make_alert("missing-data", suggestions=False, category="missing-data").model_copy(
            update={"tier_id": rule, "title": title, "kind": "cannot-assess"})
    return make_alert(rule, severity=SEVERITY[rule], suggestions=rng.random() < 0.6)


def _generate(store: Store, seed: int = 18) -> None:
    """~80 orders over 400 days: order-select + order-sign pairs, feedback, decisions, kept-back cards."""
    rng = random.Random(seed)
    records: list[EvaluationRecord] = []
    for n in range(80):
        source = rng.choice(SOURCES)
        when = TODAY - timedelta(days=rng.choice([0, 1, 5, 29, 31, 89, 100, 364, 370, 399]))
        alerts = [_alert(rng, rule) for rule in rng.sample(RULES, rng.randint(1, 3))]
        hooks = ["order-select", "order-sign"] if source == "hook" and rng.random() < 0.7 else ["order-sign"]
        for step, hook in enumerate(hooks):
            issued = [IssuedAlert(alert=a, card_uuid=str(uuid.uuid4()), shown=rng.random() < 0.8,
                                  card_suggestions=rng.choice([None, 0, 1])) for a in alerts]
            record = make_record(source="hook" if source == "hypothetical" else source, hook=hook,
                                 patient=f"Patient/{n % 17}",
                                 order_key=None if rng.random() < 0.1 else f"order-{n}",
                                 as_of=when + timedelta(minutes=step), alerts=[])
            records.append(record.model_copy(update={"alerts": issued,
                                                      "hypothetical": source == "hypothetical"}))
    kept = [a.card_uuid for r in records for a in r.alerts if not a.shown and rng.random() < 0.5]
    with store.engine.begin() as conn:  # the fatigue controls remember kept-back cards before the write
        conn.execute(fatigue_cards.insert(), [{
            "card_uuid": c, "pack_id": "test-pack", "tier_id": "t", "suppress_key": "k", "client_key": "c",
            "override_reasons": [], "suppressed_by": "not shown — suppressed by test",
            "recorded_at": utcnow(),
        } for c in kept])
    half = len(records) // 2
    for r in records[:half]:
        store.sink.record_evaluation(r)
    with store.engine.begin() as conn:  # the group-commit path
        insert_evaluations(conn, [(r, str(uuid.uuid4()), utcnow()) for r in records[half:]])
    for r in records:
        for a in r.alerts:
            if rng.random() < 0.4:
                outcome = rng.choice(["overridden", "accepted"])
                store.sink.record_feedback(feedback(a.card_uuid or "", outcome,
                                                    accepted=["s1"] if rng.random() < 0.5 else None))
    with store.session() as db:
        user = user_admin.add_user(db, "rollup-reviewer", "correct-horse-battery", "reviewer", actor="test")
        db.flush()
        in_bulk: list[str] = []
        for alert in db.scalars(select(AlertRow).order_by(AlertRow.id)).all():
            if rng.random() < 0.3:  # one by one, or as a bulk action does: rolled up once at the end
                one_by_one = rng.random() < 0.5
                decide(db, alert, user, rng.choice(["acknowledged", "overridden"]), reason_code="r",
                       reason_display=None, comment=None, remote_addr=None, roll_up=one_by_one)
                in_bulk += [] if one_by_one else [alert.id]
        assert in_bulk
        roll_up_decisions(db, in_bulk)


def _as_dict(stats: list[Any]) -> dict[str, dict[str, Any]]:
    return {s.rule_id: {k: v for k, v in vars(s).items()} for s in stats}


VIEWS: list[dict[str, Any]] = [
    {}, {"source": "all"}, {"source": "hypothetical"}, {"source": "hook"}, {"source": "batch"},
    {"rule": "TST-A01"}, {"rule": "missing-data.egfr"}, {"rule": "missing-data"},
    {"date_from": (TODAY - timedelta(days=30)).date()}, {"date_from": (TODAY - timedelta(days=365)).date()},
    {"date_from": (TODAY - timedelta(days=90)).date(), "date_to": (TODAY - timedelta(days=2)).date()},
]


@pytest.mark.parametrize("view", VIEWS, ids=[str(v) for v in VIEWS])
def test_rollup_matches_direct_sql(store: Store, view: dict[str, Any]) -> None:
    _generate(store)
    with store.session() as db:
        from_rows = analytics_from_rows(db, **view)
        from_rollup = analytics(db, **view)
    assert from_rows, "the generated data must give something to compare"
    assert _as_dict(from_rollup) == _as_dict(from_rows)


def _tables(store: Store) -> list[list[tuple[Any, ...]]]:
    """The rollup's rows, daily sums that moved back to zero left out (a rebuild never writes them)."""
    with store.engine.connect() as conn:
        episodes = sorted(tuple(row) for row in conn.execute(select(rollup_episodes)))
        daily = sorted(tuple(row) for row in conn.execute(select(rollup_daily)) if row.fired != 0)
        reasons = sorted(tuple(row) for row in conn.execute(select(rollup_reasons)) if row.orders != 0)
    return [episodes, daily, reasons]


def test_rebuild_from_rows_equals_the_increments(store: Store) -> None:
    _generate(store, seed=7)
    kept_up = _tables(store)
    with store.engine.begin() as conn:
        rebuild(conn)
    assert _tables(store) == kept_up
    assert kept_up[0], "episodes were rolled up"


def test_a_replayed_feedback_and_a_second_sighting_change_no_count(store: Store) -> None:
    alert = make_alert("TST-A01")
    first = make_record(order_key="o-1", hook="order-select", as_of=TODAY, alerts=[alert])
    store.sink.record_evaluation(first)
    second = make_record(order_key="o-1", hook="order-sign", as_of=TODAY + timedelta(minutes=1),
                         alerts=[alert])
    store.sink.record_evaluation(second)
    card = first.alerts[0].card_uuid or ""
    store.sink.record_feedback(feedback(card, "overridden"))
    store.sink.record_feedback(feedback(card, "overridden"))
    with store.session() as db:
        (stats,) = analytics(db)
    assert (stats.alert_rows, stats.fired, stats.prescriber_overridden) == (2, 1, 1)
    assert stats.top_override_reasons and stats.top_override_reasons[0][1] == 1


QUEUE_VIEWS: list[dict[str, str]] = [{}, {"source": "all"}, {"source": "hypothetical"}, {"source": "batch"},
                                     {"rule": "TST-B02"}, {"rule": "missing-data.dose_mg"},
                                     {"severity": "critical"}]


def test_queue_items_give_the_queue_of_the_open_alerts(store: Store) -> None:
    _generate(store, seed=11)
    with store.session() as db:
        for view in QUEUE_VIEWS:
            for page in (1, 2):
                expected = work_queue(db, where(parse_filter(view)), page=page, page_size=4)
                assert work_queue_from_items(db, **view, page=page, page_size=4) == expected, (view, page)
        assert work_queue(db, where(parse_filter({})), page=1)[1] > 4, "more than one page to compare"
    with store.engine.connect() as conn:
        kept_up = sorted(tuple(r) for r in conn.execute(select(queue_items)))
    with store.engine.begin() as conn:
        rebuild_queue(conn)
    with store.engine.connect() as conn:
        assert sorted(tuple(r) for r in conn.execute(select(queue_items))) == kept_up


@pytest.mark.postgres
def test_two_writers_on_one_order_at_once_count_it_once(tmp_path: Path) -> None:
    """Two order-sign calls of one order written by two workers at the same moment: the second
    waits for the first's order lock, then sees its rows (no lost or doubled episode, no
    duplicate-key error)."""
    import threading
    import time

    from cds_engine.store.writer import insert_evaluation

    with postgres_database() as url:
        s = open_store(url, spool_dir=tmp_path / "spool", start_drainer=False)
        try:
            alert = make_alert("TST-A01")
            s.sink.record_evaluation(make_record(order_key="same", hook="order-select", as_of=TODAY,
                                                 alerts=[alert]))  # the ordering session exists
            first, second = (make_record(order_key="same", hook="order-sign", alerts=[alert],
                                         as_of=TODAY + timedelta(minutes=m)) for m in (1, 2))
            done = threading.Event()

            def other() -> None:
                with s.engine.begin() as conn:
                    insert_evaluation(conn, second, str(uuid.uuid4()), utcnow())
                done.set()

            with s.engine.begin() as conn:
                insert_evaluation(conn, first, str(uuid.uuid4()), utcnow())
                thread = threading.Thread(target=other)
                thread.start()
                time.sleep(0.5)
                assert not done.is_set(), "the second writer waits for the order's lock"
            thread.join(10)
            assert done.is_set()
            with s.session() as db:
                (stats,) = analytics(db)
                assert (stats.fired, stats.alert_rows) == (1, 3)
                assert _as_dict(analytics_from_rows(db)) == _as_dict([stats])
        finally:
            s.close()
