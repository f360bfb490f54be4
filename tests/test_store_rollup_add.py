"""The writer adds new alert rows to the rollup and the queue items by merging, not by recomputing their
orders (issue #19: one order evaluated thousands of times made every group commit re-read all its
rows). The merge must leave exactly what a recompute from the rows leaves.

Property test on SQLite and PostgreSQL: rounds of writes (group commit and one by one) on a few
orders that keep coming back — earlier and later calls, several packs, severities, cards kept back —
interleaved with prescriber feedback and reviewer decisions on the rows already there. After every
round the kept-up tables must equal :func:`rollup.rebuild` and :func:`rebuild_queue` from the rows.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, select

from cds_engine.store import Store, rollup
from cds_engine.store import users as user_admin
from cds_engine.store.api import IssuedAlert
from cds_engine.store.db import utcnow
from cds_engine.store.fatigue import fatigue_cards
from cds_engine.store.models import AlertRow
from cds_engine.store.pipeline import pipelined
from cds_engine.store.queries import decide
from cds_engine.store.queue_items import queue_items, rebuild_queue
from cds_engine.store.rollup import (
    rollup_daily,
    rollup_episode_reasons,
    rollup_episodes,
    rollup_reasons,
)
from cds_engine.store.writer import insert_evaluation, insert_evaluations
from store_helpers import STORE_KINDS, feedback, make_alert, make_record, store_for

START = datetime.now(UTC).replace(hour=0, minute=10, second=0, microsecond=0) - timedelta(days=3)
RULES = ["TST-A01", "TST-B02", "TST-C03"]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def _snapshot(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every kept-up table; sums that moved back to zero left out (a rebuild never writes them)."""
    def rows(table: Table, keep: Any = lambda row: True) -> list[tuple[Any, ...]]:
        return sorted((tuple(r) for r in conn.execute(select(table)) if keep(r)), key=repr)
    return {"episodes": rows(rollup_episodes), "episode_reasons": rows(rollup_episode_reasons),
            "daily": rows(rollup_daily, lambda r: r.fired != 0),
            "reasons": rows(rollup_reasons, lambda r: r.orders != 0), "queue": rows(queue_items)}


def _recomputed(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """What a recompute from the rows gives — rolled back afterwards, so the increments go on."""
    with store.engine.connect() as conn:
        transaction = conn.begin()
        rollup.rebuild(conn)
        rebuild_queue(conn)
        found = _snapshot(conn)
        transaction.rollback()
    return found


def _write_round(store: Store, rng: random.Random) -> list[str]:
    """One round of evaluations on orders that recur; returns the cards written."""
    items = []
    for _ in range(rng.randint(3, 12)):
        order = rng.choice([None, *(f"order-{k}" for k in range(4))])
        # one ordering session (< 1 h apart) across midnight: the episode's day moves back; ties in time
        when = START + timedelta(minutes=rng.choice([0, 0, 5, -20, -25]), seconds=rng.choice([0, 0, 7]))
        alerts = []
        for rule in rng.sample(RULES, rng.randint(1, 2)):
            alert = make_alert(rule, severity=rng.choice(["info", "warning", "critical"]),
                               suggestions=rng.random() < 0.5)
            pack = rng.choice(["pack-a", "pack-b"])
            alerts.append(IssuedAlert(alert=alert.model_copy(update={"pack_id": pack}),
                                      card_uuid=str(uuid.uuid4()), shown=rng.random() < 0.7,
                                      card_suggestions=rng.choice([None, 0, 1])))
        record = make_record(order_key=order, patient=f"Patient/{(order or '0')[-1]}",
                             source=rng.choice(["hook", "hook", "hook", "evaluate"]), as_of=when, alerts=[])
        items.append((record.model_copy(update={"alerts": alerts, "hypothetical": rng.random() < 0.1}),
                      str(uuid.uuid4()), utcnow()))
    kept = [a.card_uuid for r, _, _ in items for a in r.alerts if not a.shown and rng.random() < 0.5]
    with store.engine.begin() as conn:  # the fatigue controls remember kept-back cards first
        for card in kept:
            conn.execute(fatigue_cards.insert().values(
                card_uuid=card, pack_id="pack-a", tier_id="t", suppress_key="k", client_key="c",
                override_reasons=[], suppressed_by="suppressed by test", recorded_at=utcnow()))
    with store.engine.begin() as conn:
        if rng.random() < 0.6:
            insert_evaluations(conn, items)
        else:
            for item in items:
                insert_evaluation(conn, *item)
    return [a.card_uuid or "" for r, _, _ in items for a in r.alerts]


def test_added_rows_give_what_a_recompute_gives(store: Store) -> None:
    rng = random.Random(19)
    with store.session() as db:
        user = user_admin.add_user(db, "add-reviewer", "correct-horse-battery", "reviewer", actor="test")
        db.commit()
        user_id = user.id
    cards: list[str] = []
    for round_no in range(12):
        cards += _write_round(store, rng)
        for card in rng.sample(cards, min(len(cards), rng.randint(0, 4))):  # feedback, then more rows
            when = START + timedelta(hours=rng.randint(0, 40))
            store.sink.record_feedback(feedback(card, rng.choice(["overridden", "accepted"]), at=when,
                                                accepted=["s1"] if rng.random() < 0.5 else None))
        with store.session() as db:
            reviewer = db.get(user_admin.User, user_id)
            assert reviewer is not None
            for alert in db.scalars(select(AlertRow).where(AlertRow.review_status == "open")).all():
                if rng.random() < 0.05:
                    decide(db, alert, reviewer, rng.choice(["acknowledged", "overridden"]), reason_code="r",
                           reason_display=None, comment=None, remote_addr=None)
            db.commit()
        with store.engine.connect() as conn:
            kept_up = _snapshot(conn)
        assert kept_up == _recomputed(store), f"round {round_no}"
    assert max(row[9] for row in kept_up["episodes"]) >= 6, "episodes grew over several writes"
    assert any(row[12] is not None for row in kept_up["episodes"]), "rows added after an outcome"


def test_the_add_path_is_one_pipeline_of_fixed_texts_on_postgresql(store: Store) -> None:
    """PostgreSQL: the same statement texts whatever the batch (so psycopg prepares them once per
    connection), sent together; nothing written into the text."""
    with store.engine.connect() as conn:
        statements = rollup._add_statements(conn.dialect.name)
        if conn.dialect.name != "postgresql":
            assert not pipelined(conn, statements)
            return
        assert pipelined(conn, [rollup._LOCKS, *statements])
        texts = [str(s.compile(dialect=conn.dialect)) for s in statements]
    assert all("%(ids)s" in t or "%(orders)s" in t for t in texts)
    assert not any("POSTCOMPILE" in t for t in texts)
