"""The work queue: open alerts as one item per (order, rule tier), grouped by patient and encounter.

The same order seen at order-select and again at order-sign is one item (its newest alert opens
it). Groups come most severe first, then most recent; items within a group likewise. Built in SQL
(a window function picks each item's newest row) and paged by group, so a large store never loads
whole. Hypothetical screenings stay out unless the filter asks for them (the alert-list filter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, or_, select, tuple_
from sqlalchemy.orm import Session

from cds_engine.rules.schema import NEVER_SUPPRESSED_CATEGORIES
from cds_engine.store.models import SEVERITIES, AlertRow, Evaluation

__all__ = ["MAX_BULK", "QueueGroup", "QueueItem", "bulk_candidates", "bulk_refused", "work_queue"]

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


def _items(where: list[ColumnElement[bool]]) -> Any:
    """Open alerts matching ``where``, one row per item (its newest alert), with the item's size and
    highest severity (window functions over patient, encounter, order, tier)."""
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
    return select(rows).where(rows.c.rn == 1).subquery()


def work_queue(session: Session, where: list[ColumnElement[bool]], *, page: int = 1,
               page_size: int = 25) -> tuple[list[QueueGroup], int]:
    """(groups of this page, number of groups) for the open alerts matching ``where``.

    Two statements: the page of groups with the number of groups beside each (``count(*) OVER ()``,
    one pass instead of a count and a page), then the items of those groups only — the patients
    filtered before the window functions run, so the patient index is used.
    """
    items = _items(where)
    groups = (select(items.c.patient, items.c.encounter, func.max(items.c.item_sev).label("sev"),
                     func.max(items.c.as_of).label("last"), func.count().over().label("groups"))
              .group_by(items.c.patient, items.c.encounter))
    ordered = groups.order_by(func.max(items.c.item_sev).desc(), func.max(items.c.as_of).desc(),
                              items.c.patient, items.c.encounter)
    page_rows = session.execute(ordered.offset((max(page, 1) - 1) * page_size).limit(page_size)).all()
    if page_rows:
        total = int(page_rows[0].groups)
    else:  # past the last page (or nothing open): count only then
        total = session.scalar(select(func.count()).select_from(groups.subquery())) or 0
    names = {rank: name for name, rank in _RANK.items()}
    out = {(r.patient, r.encounter): QueueGroup(r.patient, r.encounter, names.get(r.sev, "unknown"))
           for r in page_rows}
    if out:
        refs = sorted({p for p, _ in out if p})
        known = Evaluation.patient_ref.in_(refs) if refs else None
        unknown = Evaluation.patient_ref.is_(None) if any(not p for p, _ in out) else None
        prefilter = [c for c in (known, unknown) if c is not None]
        chosen_items = _items([*where, or_(*prefilter)])
        chosen = (select(chosen_items)
                  .where(tuple_(chosen_items.c.patient, chosen_items.c.encounter).in_(list(out)))
                  .order_by(chosen_items.c.item_sev.desc(), chosen_items.c.as_of.desc(),
                            chosen_items.c.rule_id, chosen_items.c.alert_id))  # id: ties keep one order
        for r in session.execute(chosen):
            out[(r.patient, r.encounter)].items.append(QueueItem(
                alert_id=r.alert_id, rule_id=r.rule_id, tier_id=r.tier_id,
                severity=names.get(r.item_sev, "unknown"), summary=r.summary, last_seen=r.as_of,
                alert_rows=int(r.n)))
    return list(out.values()), total


MAX_BULK = 500  # alerts one bulk action may decide (the rest stay for the next)


def bulk_refused(session: Session, tier_id: str) -> bool:
    """True when alerts of this tier must be decided one by one whatever the pack lists: a critical
    tier, or a category that always shows (withdrawal, allergy, order error, pregnancy)."""
    found = session.execute(select(AlertRow.category, AlertRow.severity)
                            .where(AlertRow.tier_id == tier_id).limit(1)).first()
    return found is not None and (found.severity == "critical"
                                  or found.category in NEVER_SUPPRESSED_CATEGORIES)


def bulk_candidates(session: Session, tier_id: str, *, limit: int = MAX_BULK) -> list[AlertRow]:
    """Open alerts of exactly one rule tier from real orders (never hypothetical), never critical
    and never of a category that always shows — the query itself refuses them."""
    query = (select(AlertRow).join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
             .where(AlertRow.tier_id == tier_id, AlertRow.review_status == "open",
                    AlertRow.severity != "critical", Evaluation.hypothetical.is_(False),
                    AlertRow.category.not_in(sorted(NEVER_SUPPRESSED_CATEGORIES)))
             .order_by(AlertRow.id).limit(limit))
    return list(session.scalars(query))
