"""The work queue's items kept as rows: one per open (patient, encounter, order, rule tier, source kind).

Building the queue from the alerts table means window functions over every open alert joined to
its evaluation on each page view (50,000 open of 1,000,000: over a second). ``queue_items``
(migration 0007) holds the result of that same SQL (:func:`item_rows`'s
definition: the item's newest open alert, how many open alerts it folds, its highest severity),
recomputed per order whenever that order's alerts change (the writer's insert, a reviewer's
decision, a bulk action — :func:`cds_engine.store.rollup.touch` calls :func:`refresh`), in the same
transaction. The page then groups a few ten thousand item rows instead of ranking every alert.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Index,
    Integer,
    String,
    Table,
    case,
    delete,
    func,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.orm import Session

from cds_engine.results import MISSING_DATA_RULE
from cds_engine.store.db import UTCDateTime
from cds_engine.store.models import SEVERITIES, AlertRow, Base, Evaluation
from cds_engine.store.work_queue import QueueGroup, QueueItem

__all__ = ["item_rows", "queue_items", "rebuild_queue", "refresh", "refresh_statements", "rows_of_orders",
           "work_queue_from_items"]

_RANK = {name: rank for rank, name in enumerate(SEVERITIES, start=1)}
_NAMES = dict(enumerate(SEVERITIES, start=1))

queue_items = Table(
    "queue_items", Base.metadata,
    Column("o", String(256), primary_key=True),  # order key, or the alert id of an alert without one
    Column("tier_id", String(96), primary_key=True),
    Column("src", String(16), primary_key=True),  # source kind: hook, batch, …, hypothetical
    Column("p", String(256), primary_key=True),
    Column("e", String(256), primary_key=True),
    Column("rule_id", String(64), nullable=False),
    Column("sev", Integer, nullable=False),
    Column("summary", String(200), nullable=False),
    Column("alert_id", String(36), nullable=False),  # the item's newest open alert
    Column("last_seen", UTCDateTime(), nullable=False),
    Column("alert_rows", Integer, nullable=False),
    Index("ix_queue_items_p_e", "p", "e"),
    Index("ix_queue_items_rule_id", "rule_id"),
    Index("ix_queue_items_src", "src"),
)


def item_rows(where: list[ColumnElement[bool]]) -> Any:
    """(columns, SELECT) of the queue items of the orders matching ``where``: the one SQL shared
    by the table's refresh and the writer's merge (:func:`cds_engine.store.rollup.add_alerts`).
    It also runs inside migration 0007 (its backfill calls ``rebuild_queue``): read only columns
    that exist at that revision, or an old store's upgrade breaks."""
    # Constants written in, not bound: SQLite gets a new ``?`` in each copy of the item's
    # expressions, and its windows then differ even where they are the same (see _item_window).
    src = case((Evaluation.hypothetical.is_(True), literal_column("'hypothetical'", String)),
               else_=Evaluation.source)
    patient = func.coalesce(Evaluation.patient_ref, literal_column("''", String))
    encounter = func.coalesce(Evaluation.encounter_ref, literal_column("''", String))
    order = func.coalesce(Evaluation.order_key, AlertRow.id)
    severity = case(_RANK, value=AlertRow.severity, else_=0)
    rows = (select(
        order.label("o"), AlertRow.tier_id.label("tier_id"), src.label("src"), patient.label("p"),
        encounter.label("e"), AlertRow.rule_id.label("rule_id"), *_item_window(severity, [
            patient, encounter, order, AlertRow.tier_id, src]),
        AlertRow.summary.label("summary"), AlertRow.id.label("alert_id"), Evaluation.as_of.label("last_seen"),
    ).select_from(AlertRow).join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
        .where(AlertRow.review_status == "open", *where).subquery())
    columns = [c.name for c in queue_items.columns]
    return columns, select(*(rows.c[c] for c in columns)).where(rows.c.rn == 1)


def _item_window(severity: Any, item: list[Any]) -> list[Any]:
    """The item's highest severity, its row count and its rows ranked newest first by (time, id).

    Why: the three windows had two definitions (``max`` and ``count`` unordered, ``row_number``
    ordered), and the constants bound in each copy of the item's expressions made even the equal
    ones differ: SQLite sorted the rows once per window, three times (the writer's queue merge,
    ~0.11 ms a real hook line at 200 lines a commit; issue 19 item 2a). One partition and one order
    for all three — ``max`` and ``count`` over the whole partition as their frame, the same values
    — and SQLite sorts once. PostgreSQL sorted once already and keeps its plan (two window steps,
    ``row_number``'s stop at the first row)."""
    order = (Evaluation.as_of.desc(), AlertRow.id)
    whole = {"partition_by": item, "order_by": order, "rows": (None, None)}
    return [func.max(severity).over(**whole).label("sev"), func.count().over(**whole).label("alert_rows"),
            func.row_number().over(partition_by=item, order_by=order).label("rn")]


def rows_of_orders(orders: Any) -> list[ColumnElement[bool]]:
    """Conditions on alerts joined to evaluations for the rows of these orders (an order key, or the
    id of an alert without one). Index-friendly: the alerts are found by evaluation id (through the
    order-key index) or by their own id, never by scanning the join."""
    by_order = select(Evaluation.id).where(Evaluation.order_key.in_(orders))
    return [or_(AlertRow.evaluation_id.in_(by_order), AlertRow.id.in_(orders)),
            or_(Evaluation.order_key.in_(orders), Evaluation.order_key.is_(None))]


def refresh_statements(orders: Any) -> list[Any]:
    """The statements that recompute the queue items of ``orders`` (a list, or an expanding bind
    parameter) from their open alerts; run in the transaction that changed them."""
    columns, query = item_rows(rows_of_orders(orders))
    return [delete(queue_items).where(queue_items.c.o.in_(orders)),
            queue_items.insert().from_select(columns, query)]


def refresh(conn: Connection, orders: list[str]) -> None:
    """Recompute the queue items of these orders from their open alerts (same transaction)."""
    for statement in refresh_statements(orders):
        conn.execute(statement)


def rebuild_queue(conn: Connection) -> None:
    """Every queue item again from the open alerts (the migration's backfill; after a bulk fill)."""
    conn.execute(delete(queue_items))
    columns, query = item_rows([])
    conn.execute(queue_items.insert().from_select(columns, query))


def _conditions(severity: str | None, rule: str | None, source: str | None) -> list[ColumnElement[bool]]:
    q = queue_items.c
    out: list[ColumnElement[bool]] = []
    if severity:
        out.append(q.sev == _RANK.get(severity, -1))
    if rule and rule.startswith(f"{MISSING_DATA_RULE}."):
        out.extend([q.rule_id == MISSING_DATA_RULE, q.tier_id == rule])
    elif rule:
        out.append(q.rule_id == rule)
    if source == "hypothetical":
        out.append(q.src == "hypothetical")
    elif source != "all":
        out.append(q.src != "hypothetical")
        if source:
            out.append(q.src == source)
    return out


def work_queue_from_items(session: Session, *, severity: str | None = None, rule: str | None = None,
                          source: str | None = None, page: int = 1,
                          page_size: int = 25) -> tuple[list[QueueGroup], int]:
    """(groups of this page, number of groups): the same answer as
    :func:`cds_engine.store.work_queue.work_queue` with that filter, read from ``queue_items``."""
    q = queue_items.c
    where = _conditions(severity, rule, source)
    sev, last = func.max(q.sev), func.max(q.last_seen)
    groups = (select(q.p, q.e, sev.label("sev"), func.count().over().label("groups"))
              .where(*where).group_by(q.p, q.e)
              .order_by(sev.desc(), last.desc(), q.p, q.e)
              .offset((max(page, 1) - 1) * page_size).limit(page_size))
    page_rows = session.execute(groups).all()
    if page_rows:
        total = int(page_rows[0].groups)
    else:  # past the last page (or nothing open): count only then
        counted = select(q.p, q.e).where(*where).group_by(q.p, q.e).subquery()
        total = session.scalar(select(func.count()).select_from(counted)) or 0
    out = {(r.p, r.e): QueueGroup(r.p, r.e, _NAMES.get(r.sev, "unknown")) for r in page_rows}
    if out:
        chosen = (select(queue_items).where(tuple_(q.p, q.e).in_(list(out)), *where)
                  .order_by(q.sev.desc(), q.last_seen.desc(), q.rule_id, q.alert_id))
        for r in session.execute(chosen):
            out[(r.p, r.e)].items.append(QueueItem(
                alert_id=r.alert_id, rule_id=r.rule_id, tier_id=r.tier_id,
                severity=_NAMES.get(r.sev, "unknown"), summary=r.summary, last_seen=r.last_seen,
                alert_rows=int(r.alert_rows)))
    return list(out.values()), total
