"""The writer's rollup moves only the episodes its new rows fall in (issue 19 item 2a), not every
episode of their orders: the other episodes of an order would be taken away and added back unchanged.

These cases are the ones the randomized test in ``test_store_rollup_add`` does not reach: an order
key shared by several patients (each patient is an episode of its own, as in the hook bench's
dump, where a few orders collect hundreds of episodes), and one rule whose title differs between
two calls (a pack version that renamed it). After every commit the kept-up tables must equal
:func:`rollup.rebuild` from the rows, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, select

from cds_engine.alerts import Alert
from cds_engine.store import Store, rollup
from cds_engine.store.api import IssuedAlert
from cds_engine.store.db import utcnow
from cds_engine.store.rollup import rollup_daily, rollup_episode_reasons, rollup_episodes, rollup_reasons
from cds_engine.store.writer import insert_evaluations
from store_helpers import STORE_KINDS, feedback, make_alert, make_record, store_for

START = datetime.now(UTC).replace(hour=0, minute=10, second=0, microsecond=0) - timedelta(days=2)


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def _snapshot(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    def rows(table: Table, keep: Any = lambda row: True) -> list[tuple[Any, ...]]:
        return sorted((tuple(r) for r in conn.execute(select(table)) if keep(r)), key=repr)
    return {"episodes": rows(rollup_episodes), "episode_reasons": rows(rollup_episode_reasons),
            "daily": rows(rollup_daily, lambda r: r.fired != 0),
            "reasons": rows(rollup_reasons, lambda r: r.orders != 0)}


def _kept_up_equals_rebuild(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    with store.engine.connect() as conn:
        transaction = conn.begin()
        kept_up = _snapshot(conn)
        rollup.rebuild(conn)
        rebuilt = _snapshot(conn)
        transaction.rollback()
    assert kept_up == rebuilt
    return kept_up


def _write(store: Store, calls: list[tuple[str, str, list[Alert], datetime]]) -> list[str]:
    """One group commit of hook calls (order key, patient, alerts, as_of); the cards written."""
    items = []
    for order, patient, alerts, when in calls:
        issued = [IssuedAlert(alert=a, card_uuid=str(uuid.uuid4())) for a in alerts]
        record = make_record(order_key=order, patient=patient, as_of=when, alerts=[])
        items.append((record.model_copy(update={"alerts": issued}), str(uuid.uuid4()), utcnow()))
    with store.engine.begin() as conn:
        insert_evaluations(conn, items)
    return [a.card_uuid or "" for r, _, _ in items for a in r.alerts]


def test_an_order_shared_by_patients_moves_only_the_episodes_written(store: Store) -> None:
    """One order key, six patients: each commit adds rows to some patients' episodes only (on the
    same rule, the day moving back across midnight for one of them); overrides on the way."""
    rules = ["TST-A01", "TST-B02"]
    cards: list[str] = []
    for round_no in range(6):
        calls = []
        for patient in range(round_no % 3, 6, 2):  # a different half of the patients each round
            rule = rules[(round_no + patient) % 2]
            when = START - timedelta(minutes=20 * (round_no == 4 and patient == 2))
            severity = ["info", "warning", "critical"][(round_no + patient) % 3]
            calls.append(("order-shared", f"Patient/{patient}", [make_alert(rule, severity=severity)],
                          when + timedelta(minutes=round_no)))
        cards += _write(store, calls)
        if round_no in (1, 3):
            store.sink.record_feedback(feedback(cards[round_no], at=START + timedelta(hours=round_no)))
        daily = _kept_up_equals_rebuild(store)["daily"]
    assert sum(row[7] for row in daily) == len(cards), "every alert row counted once"


def test_a_later_lower_title_leaves_the_daily_title_a_rebuild_gives(store: Store) -> None:
    """Two orders, one rule whose title changed between the calls: the day's row keeps the greatest
    title of its episodes (what a rebuild gives), whichever order was written last."""
    later = make_alert("TST-A01").model_copy(update={"title": "A renamed rule"})
    _write(store, [("order-1", "Patient/1", [make_alert("TST-A01")], START)])
    _write(store, [("order-2", "Patient/2", [later], START + timedelta(minutes=5))])
    daily = _kept_up_equals_rebuild(store)["daily"]
    assert [row[6] for row in daily] == ["Test rule TST-A01"]
    _write(store, [("order-2", "Patient/2", [later], START + timedelta(minutes=9))])  # its episode again
    assert [row[6] for row in _kept_up_equals_rebuild(store)["daily"]] == ["Test rule TST-A01"]
