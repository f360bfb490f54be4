"""The work queue: open alerts as one item per (order, rule tier), grouped by patient and encounter.

The same order seen at order-select and again at order-sign is one item (its newest alert opens
it). Groups come most severe first, then most recent; items within a group likewise. Built in SQL
(a window function picks each item's newest row) and paged by group, so a large store never loads
whole. Hypothetical screenings stay out unless the filter asks for them (the alert-list filter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, case, func, select, tuple_
from sqlalchemy.orm import Session

from cds_engine.store.models import SEVERITIES, AlertRow, Evaluation

__all__ = ["MAX_BULK", "QueueGroup", "QueueItem", "bulk_candidates", "work_queue"]

_RANK = {name: rank for rank, name in enumerate(SEVERITIES, start=1)}


@dataclass
class QueueItem:
    alert_id: str
    rule_id: str
    tier_id: str
    severity: str
    summary: str
    last_seen: datetime
    alert_rows: int  # stored alerts folded into this item (order-select + order-sign: 2)


@dataclass
class QueueGroup:
    patient_ref: str
    encounter_ref: str
    severity: str
    items: list[QueueItem] = field(default_factory=list)


def work_queue(session: Session, where: list[ColumnElement[bool]], *, page: int = 1,
               page_size: int = 25) -> tuple[list[QueueGroup], int]:
    """(groups of this page, number of groups) for the open alerts matching ``where``."""
    patient = func.coalesce(Evaluation.patient_ref, "")
    encounter = func.coalesce(Evaluation.encounter_ref, "")
    item = [patient, encounter, func.coalesce(Evaluation.order_key, AlertRow.id), AlertRow.tier_id]
    severity = case(_RANK, value=AlertRow.severity, else_=0)
    rows = (select(
        patient.label("patient"), encounter.label("encounter"), AlertRow.id.label("alert_id"),
        AlertRow.rule_id, AlertRow.tier_id, AlertRow.summary, severity.label("sev"),
        Evaluation.as_of.label("as_of"),
        func.row_number().over(partition_by=item,
                               order_by=(Evaluation.as_of.desc(), AlertRow.id)).label("rn"),
        func.count().over(partition_by=item).label("n"),
        func.max(severity).over(partition_by=item).label("item_sev"),
    ).join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
        .where(AlertRow.review_status == "open", *where).subquery())
    items = select(rows).where(rows.c.rn == 1).subquery()
    groups = (select(items.c.patient, items.c.encounter, func.max(items.c.item_sev).label("sev"),
                     func.max(items.c.as_of).label("last"))
              .group_by(items.c.patient, items.c.encounter))
    total = session.scalar(select(func.count()).select_from(groups.subquery())) or 0
    ordered = groups.order_by(func.max(items.c.item_sev).desc(), func.max(items.c.as_of).desc(),
                              items.c.patient, items.c.encounter)
    page_rows = session.execute(ordered.offset((max(page, 1) - 1) * page_size).limit(page_size)).all()
    names = {rank: name for name, rank in _RANK.items()}
    out = {(p, e): QueueGroup(p, e, names.get(sev, "unknown")) for p, e, sev, _ in page_rows}
    if out:
        keys = list(out)
        chosen = (select(items).where(tuple_(items.c.patient, items.c.encounter).in_(keys))
                  .order_by(items.c.item_sev.desc(), items.c.as_of.desc(), items.c.rule_id))
        for r in session.execute(chosen):
            out[(r.patient, r.encounter)].items.append(QueueItem(
                alert_id=r.alert_id, rule_id=r.rule_id, tier_id=r.tier_id,
                severity=names.get(r.item_sev, "unknown"), summary=r.summary, last_seen=r.as_of,
                alert_rows=int(r.n)))
    return list(out.values()), total


MAX_BULK = 500  # alerts one bulk action may decide (the rest stay for the next)


def bulk_candidates(session: Session, tier_id: str, *, limit: int = MAX_BULK) -> list[AlertRow]:
    """Open, non-critical alerts of exactly one rule tier from real orders (never hypothetical)."""
    query = (select(AlertRow).join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
             .where(AlertRow.tier_id == tier_id, AlertRow.review_status == "open",
                    AlertRow.severity != "critical", Evaluation.hypothetical.is_(False))
             .order_by(AlertRow.id).limit(limit))
    return list(session.scalars(query))
