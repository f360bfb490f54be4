"""The stored alerts a FHIR export may carry: real events only, streamed in pages.

Real events are hook calls and screenings of real therapy (``source`` hook or batch, never a
hypothetical ``--assume-order`` screening, never ``/evaluate`` — an API call about facts the caller
supplied, not about a chart). Shown cards only, unless suppressed ones are asked for: a card the
engine evaluated but did not show (repeat suppression) is exported only on request, and callers
mark it preliminary. Silent alerts of a draft pack (not shown because the pack is not approved for
use) are never exported: unapproved content must not enter a chart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cds_engine.store.fatigue import fatigue_cards
from cds_engine.store.models import AlertRow, Evaluation, OrderRow, PrescriberFeedback

__all__ = ["EXPORT_SOURCES", "ExportItem", "export_items"]

EXPORT_SOURCES = ("hook", "batch")
_PAGE = 500


@dataclass(frozen=True)
class ExportItem:
    alert: AlertRow
    evaluation: Evaluation
    order: dict[str, Any] | None
    feedback: list[PrescriberFeedback]


def export_items(session: Session, since: datetime, *, include_suppressed: bool = False,
                 until: datetime | None = None) -> Iterator[ExportItem]:
    """Alerts of real events since ``since`` (evaluation time), oldest first, with order and feedback."""
    query = (
        select(AlertRow, Evaluation)
        .join(Evaluation, Evaluation.id == AlertRow.evaluation_id)
        .where(Evaluation.source.in_(EXPORT_SOURCES), Evaluation.hypothetical.is_(False),
               Evaluation.as_of >= since)
        .order_by(Evaluation.as_of, AlertRow.id)
    )
    if until is not None:
        query = query.where(Evaluation.as_of < until)
    if include_suppressed:  # shown, or held back by repeat suppression (not a draft pack's silence)
        kept_back = select(fatigue_cards.c.card_uuid).where(fatigue_cards.c.suppressed_by.is_not(None))
        query = query.where(or_(AlertRow.shown.is_(True), AlertRow.card_uuid.in_(kept_back)))
    else:
        query = query.where(AlertRow.shown.is_(True))
    page: list[tuple[AlertRow, Evaluation]] = []
    for alert, evaluation in session.execute(query.execution_options(yield_per=_PAGE)):
        page.append((alert, evaluation))
        if len(page) >= _PAGE:
            yield from _complete(session, page)
            page = []
    if page:
        yield from _complete(session, page)


def _complete(session: Session, page: list[tuple[AlertRow, Evaluation]]) -> Iterator[ExportItem]:
    evaluation_ids = {e.id for _, e in page}
    alert_ids = [a.id for a, _ in page]
    orders = {o.evaluation_id: o.body for o in session.scalars(
        select(OrderRow).where(OrderRow.evaluation_id.in_(evaluation_ids)))}
    feedback: dict[str, list[PrescriberFeedback]] = {}
    for row in session.scalars(select(PrescriberFeedback).where(PrescriberFeedback.alert_id.in_(alert_ids))
                               .order_by(PrescriberFeedback.outcome_timestamp)):
        feedback.setdefault(row.alert_id, []).append(row)
    for alert, evaluation in page:
        yield ExportItem(alert=alert, evaluation=evaluation, order=orders.get(evaluation.id),
                         feedback=feedback.get(alert.id, []))
