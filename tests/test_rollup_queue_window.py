"""Queue items from one window (issue 19 item 2a): the item's highest severity, its open-row count and
its newest open row (by time, then id) must come out exactly as the queue defines them — through
the writer's merge and through :func:`rebuild_queue`, on SQLite and PostgreSQL.

``item_rows`` computes all three over one partition and one order, ``max`` and ``count`` with the whole
partition as their frame (SQLite sorted the rows once per window before). A frame left at its default
(up to the current row) would give the newest row's own severity and a count of one; a wrong order,
another newest row. The rows
here make each of those differ: the newest row is not the most severe, rows tie on time (the id
decides), an item spans calls, items differ only by source kind, patient or encounter missing, and a
decided row leaves its item.
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
from cds_engine.store.models import AlertRow, Evaluation
from cds_engine.store.queue_items import queue_items, rebuild_queue
from cds_engine.store.writer import insert_evaluations
from store_helpers import NOW, SEVERITY_RANK, STORE_KINDS, make_alert, make_record, store_for


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def _records() -> list[EvaluationRecord]:
    """Calls whose items need the whole window: newest row not the most severe, ties on time."""
    def record(seconds: int, severities: list[str], hypothetical: bool = False,
               **kwargs: Any) -> EvaluationRecord:
        alerts = [make_alert("TST-Q01", severity, summary=f"{severity} at {seconds}")
                  for severity in severities]
        made = make_record(as_of=NOW + timedelta(seconds=seconds), alerts=alerts, **kwargs)
        return _patched(made, hypothetical=hypothetical)
    return [
        record(0, ["critical", "info", "warning"]),  # one call: three rows of one item tie on time
        record(5, ["info"]),  # the item's newest row, the least severe
        record(3, ["warning", "info"], source="evaluate"),  # same order and patient, another source kind
        record(3, ["info", "warning"], hypothetical=True, source="evaluate"),
        record(9, ["warning"], order_key=None),  # no order: the alert is its own item
        record(2, ["info", "critical"], patient="Patient/2", order_key="order-2"),
        record(7, ["info"], patient="Patient/2", order_key="order-2"),
    ]


def _patched(record: EvaluationRecord, **changes: Any) -> EvaluationRecord:
    return record.model_copy(update=changes)


def _expected(conn: Any) -> list[tuple[Any, ...]]:
    """The queue's definition, in Python: per (order, tier, source kind, patient, encounter) of the
    open rows — newest row by (time desc, id), highest severity, number of rows."""
    rows = conn.execute(select(AlertRow.id, AlertRow.tier_id, AlertRow.rule_id, AlertRow.severity,
                               AlertRow.summary, AlertRow.review_status, Evaluation.order_key,
                               Evaluation.source, Evaluation.hypothetical, Evaluation.patient_ref,
                               Evaluation.encounter_ref, Evaluation.as_of)
                        .join(Evaluation, AlertRow.evaluation_id == Evaluation.id)).all()
    items: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows:
        if r.review_status != "open":
            continue
        src = "hypothetical" if r.hypothetical else r.source
        key = (r.order_key or r.id, r.tier_id, src, r.patient_ref or "", r.encounter_ref or "")
        items.setdefault(key, []).append(r)
    out = []
    for key, members in items.items():
        newest = min(members, key=lambda r: (-r.as_of.timestamp(), r.id))
        rank = max(SEVERITY_RANK.get(r.severity, 0) for r in members)
        newest_at = newest.as_of.timestamp()
        out.append((*key, newest.rule_id, rank, newest.summary, newest.id, newest_at, len(members)))
    return sorted(out)


def _stored(conn: Any) -> list[tuple[Any, ...]]:
    return sorted((r.o, r.tier_id, r.src, r.p, r.e, r.rule_id, r.sev, r.summary, r.alert_id,
                   r.last_seen.timestamp(), r.alert_rows) for r in conn.execute(select(queue_items)))


def test_items_need_the_whole_window(store: Store) -> None:
    records = _records()
    assert any(r.hypothetical for r in records)
    records.append(_patched(records[0], hook_instance="no-patient", patient_ref=None,
                            order_key="order-3"))
    with store.engine.begin() as conn:
        insert_evaluations(conn, [(r, f"ev-{n}", NOW) for n, r in enumerate(records)])
    with store.engine.begin() as conn:  # later calls merged into the items already stored
        later = [_patched(r, hook_instance=f"again-{n}", as_of=r.as_of + timedelta(seconds=1))
                 for n, r in enumerate(records[:3])]
        insert_evaluations(conn, [(r, f"again-{n}", NOW) for n, r in enumerate(later)])
    with store.engine.connect() as conn:
        expected, stored = _expected(conn), _stored(conn)
    assert stored == expected
    assert {row[-1] for row in stored} > {1}, "no item spans several rows: the test would prove nothing"
    assert any(row[6] != SEVERITY_RANK["info"] and row[7].startswith("info") for row in stored), \
        "no item whose newest row is less severe than the item"


def test_rebuild_leaves_out_decided_rows(store: Store) -> None:
    with store.engine.begin() as conn:
        insert_evaluations(conn, [(r, f"ev-{n}", NOW) for n, r in enumerate(_records())])
        newest = conn.execute(select(queue_items.c.alert_id).order_by(queue_items.c.alert_rows.desc(),
                                                                        queue_items.c.o)).scalars().first()
        conn.execute(update(AlertRow).where(AlertRow.id == newest).values(review_status="overridden"))
        rebuild_queue(conn)
    with store.engine.connect() as conn:
        expected, stored = _expected(conn), _stored(conn)
    assert stored == expected
    assert newest not in {row[8] for row in stored}
