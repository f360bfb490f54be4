"""The work queue's items (issue 19): each item's highest severity, its open-row count and its newest
open row (by time, then id) must come out of :func:`work_queue` exactly as the queue defines them, on
SQLite and PostgreSQL — here defined once more in plain Python.

:func:`work_queue` is the reference the review page's ``queue_items`` path is tested against (it is
kept in its plain form: three windows, one per value), so its own correctness is checked here. A
window frame up to the current row would give the newest row's own severity and a count of one; a
wrong order, another newest row; a partition without the patient, encounter, order or tier, merged
items. The rows here make each of those differ: the newest row is not the most severe, rows tie on
time (the id decides), an item spans calls, items differ only by patient, encounter, order or tier,
patient or encounter missing, an alert without an order is its own item, and decided rows leave
their item.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from cds_engine.store import Store
from cds_engine.store.api import EvaluationRecord
from cds_engine.store.models import SEVERITIES, AlertRow, Evaluation
from cds_engine.store.work_queue import work_queue
from cds_engine.store.writer import insert_evaluations
from store_helpers import NOW, SEVERITY_RANK, STORE_KINDS, make_alert, make_record, store_for


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def _records() -> list[EvaluationRecord]:
    """Hook calls whose queue items differ only where a window would: newest row not the most
    severe, rows tied on time, items told apart by patient, encounter, order or tier alone."""
    def record(seconds: int, severities: list[str], rule: str = "TST-W01", **kwargs: Any) -> EvaluationRecord:
        alerts = [make_alert(rule, severity, summary=f"{severity} at {seconds}") for severity in severities]
        changes = {k: kwargs.pop(k) for k in ("encounter_ref", "patient_ref", "hypothetical") if k in kwargs}
        made = make_record(as_of=NOW + timedelta(seconds=seconds), alerts=alerts, **kwargs)
        return made.model_copy(update=changes)
    return [
        record(0, ["critical", "info", "warning"]),  # one call: three rows of one item tie on time
        record(5, ["info"]),  # the item's newest row, the least severe
        record(3, ["warning"], rule="TST-W02"),  # same order, another tier: another item
        record(4, ["info", "warning"], encounter_ref="Encounter/2"),  # another encounter
        record(6, ["warning"], hypothetical=True, source="evaluate"),  # one item across source kinds
        record(9, ["warning"], order_key=None),  # no order: each alert is its own item
        record(9, ["info", "critical"], order_key=None),
        record(2, ["info", "critical"], patient="Patient/2", order_key="order-2"),
        record(7, ["info"], patient="Patient/2", order_key="order-2"),
        record(8, ["critical", "warning"], patient_ref=None, order_key="order-3"),  # no patient
        record(1, ["warning"], patient_ref=None, order_key="order-3", encounter_ref=None),
    ]


def _expected(conn: Any) -> list[tuple[Any, ...]]:
    """The queue's definition, in Python: per (patient, encounter, order, tier) of the open rows —
    newest row by (time desc, id), highest severity, number of rows."""
    rows = conn.execute(select(AlertRow.id, AlertRow.tier_id, AlertRow.rule_id, AlertRow.severity,
                               AlertRow.summary, AlertRow.review_status, Evaluation.order_key,
                               Evaluation.patient_ref, Evaluation.encounter_ref, Evaluation.as_of)
                        .join(Evaluation, AlertRow.evaluation_id == Evaluation.id)).all()
    items: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows:
        if r.review_status == "open":
            key = (r.patient_ref or "", r.encounter_ref or "", r.order_key or r.id, r.tier_id)
            items.setdefault(key, []).append(r)
    names = dict(enumerate(SEVERITIES, start=1))
    out = []
    for (patient, encounter, _, _), members in items.items():
        newest = min(members, key=lambda r: (-r.as_of.timestamp(), r.id))
        severity = names[max(SEVERITY_RANK[r.severity] for r in members)]
        out.append((patient, encounter, newest.id, newest.rule_id, newest.tier_id, severity, newest.summary,
                    newest.as_of.timestamp(), len(members)))
    return sorted(out)


def _listed(store: Store) -> list[tuple[Any, ...]]:
    with store.session() as db:
        groups, total = work_queue(db, [], page=1, page_size=1000)
    assert total == len(groups)
    return sorted((g.patient_ref, g.encounter_ref, i.alert_id, i.rule_id, i.tier_id, i.severity, i.summary,
                   i.last_seen.timestamp(), i.alert_rows) for g in groups for i in g.items)


def test_items_need_the_whole_window(store: Store) -> None:
    records = _records()
    with store.engine.begin() as conn:
        insert_evaluations(conn, [(r, f"ev-{n}", NOW) for n, r in enumerate(records)])
    with store.engine.begin() as conn:  # later calls on the same orders
        later = [r.model_copy(update={"hook_instance": f"again-{n}", "as_of": r.as_of + timedelta(seconds=1)})
                 for n, r in enumerate(records[:2])]
        insert_evaluations(conn, [(r, f"again-{n}", NOW) for n, r in enumerate(later)])
    with store.engine.connect() as conn:
        expected = _expected(conn)
    listed = _listed(store)
    assert listed == expected
    assert max(row[-1] for row in listed) >= 4, "no item spans several calls: the test would prove nothing"
    assert any(row[5] != "info" and row[6].startswith("info") for row in listed), \
        "no item whose newest row is less severe than the item"
    assert any(row[0] == "" for row in listed) and any(row[1] == "" for row in listed)


def test_decided_rows_leave_their_item(store: Store) -> None:
    with store.engine.begin() as conn:
        insert_evaluations(conn, [(r, f"ev-{n}", NOW) for n, r in enumerate(_records())])
    before = _listed(store)
    newest = max(before, key=lambda row: row[-1])[2]  # the newest row of the largest item
    with store.engine.begin() as conn:
        conn.execute(update(AlertRow).where(AlertRow.id == newest).values(review_status="overridden"))
        expected = _expected(conn)
    listed = _listed(store)
    assert listed == expected
    assert newest not in {row[2] for row in listed}
