"""What the review pages read and decide: filtered alert lists, one alert, rule analytics.

All filtering goes through bound parameters (SQLAlchemy expressions); no SQL text is ever
built from user input. Filters are validated first: an unknown severity is reported, not
passed on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, text
from sqlalchemy.orm import Session

from cds_engine.results import MISSING_DATA_RULE
from cds_engine.store import audit, rollup
from cds_engine.store.db import utcnow
from cds_engine.store.fatigue import fatigue_cards
from cds_engine.store.models import (
    PRESCRIBER_OUTCOMES,
    REVIEW_STATUSES,
    SEVERITIES,
    AlertRow,
    Evaluation,
    OrderRow,
    PrescriberFeedback,
    ReviewDecision,
    User,
)
from cds_engine.store.rollup_stats import rollup_rule_stats
from cds_engine.store.rule_stats import RuleStats, rule_stats

__all__ = ["SOURCE_CHOICES", "SOURCE_LABELS", "AlertFilter", "AlertPage", "RuleStats", "alert_detail",
           "analytics", "analytics_from_rows", "apply_filter", "decide", "list_alerts", "parse_filter",
           "roll_up_decisions", "source_kind"]

MAX_FILTER_TEXT = 256

# What the page can filter on. Without a choice, hypothetical screenings (``--assume-order``)
# are left out: they are "what would fire", not orders anybody wrote.
SOURCE_CHOICES = ("hook", "patient-view", "evaluate", "batch", "hypothetical", "all")
SOURCE_LABELS = {
    "hook": "CDS Hooks call",
    "patient-view": "Chart open (patient-view monitoring)",
    "evaluate": "/evaluate API",
    "batch": "Batch screening of current therapy",
    "hypothetical": "Hypothetical screening (assumed order)",
}


def source_kind(evaluation: Evaluation) -> str:
    """hook / evaluate / batch / hypothetical: the four kinds the page labels and filters."""
    return "hypothetical" if evaluation.hypothetical else evaluation.source


@dataclass
class AlertFilter:
    severity: str | None = None
    rule: str | None = None
    category: str | None = None
    status: str | None = None
    outcome: str | None = None
    patient: str | None = None
    source: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    errors: list[str] = field(default_factory=list)

    def as_params(self) -> dict[str, str]:
        """The filter as query parameters (for paging links and the audit log)."""
        out = {"severity": self.severity, "rule": self.rule, "category": self.category, "status": self.status,
               "outcome": self.outcome, "patient": self.patient, "source": self.source,
               "from": self.date_from.isoformat() if self.date_from else None,
               "to": self.date_to.isoformat() if self.date_to else None}
        return {k: v for k, v in out.items() if v}


def _choice(value: str | None, allowed: tuple[str, ...], name: str, errors: list[str]) -> str | None:
    if not value:
        return None
    if value not in allowed:
        errors.append(f"unknown {name} ignored")
        return None
    return value


def _text(value: str | None, name: str, errors: list[str]) -> str | None:
    if not value:
        return None
    value = value.strip()
    if len(value) > MAX_FILTER_TEXT:
        errors.append(f"{name} too long; ignored")
        return None
    return value or None


def _day(value: str | None, name: str, errors: list[str]) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        errors.append(f"{name} is not a date (YYYY-MM-DD); ignored")
        return None


def parse_filter(params: dict[str, str | None]) -> AlertFilter:
    errors: list[str] = []
    return AlertFilter(
        severity=_choice(params.get("severity"), SEVERITIES, "severity", errors),
        rule=_text(params.get("rule"), "rule", errors),
        category=_text(params.get("category"), "category", errors),
        status=_choice(params.get("status"), REVIEW_STATUSES, "status", errors),
        outcome=_choice(params.get("outcome"), (*PRESCRIBER_OUTCOMES, "none"), "prescriber outcome", errors),
        patient=_text(params.get("patient"), "patient", errors),
        source=_choice(params.get("source"), SOURCE_CHOICES, "source", errors),
        date_from=_day(params.get("from"), "from", errors),
        date_to=_day(params.get("to"), "to", errors),
        errors=errors,
    )


def _start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _apply(query: Select[Any], f: AlertFilter) -> Select[Any]:
    if f.severity:
        query = query.where(AlertRow.severity == f.severity)
    if f.rule and f.rule.startswith(f"{MISSING_DATA_RULE}."):  # one missing-data item (its tier)
        query = query.where(AlertRow.rule_id == MISSING_DATA_RULE, AlertRow.tier_id == f.rule)
    elif f.rule:
        query = query.where(AlertRow.rule_id == f.rule)
    if f.category:
        query = query.where(AlertRow.category == f.category)
    if f.status:
        query = query.where(AlertRow.review_status == f.status)
    if f.outcome == "none":
        query = query.where(AlertRow.prescriber_outcome.is_(None))
    elif f.outcome:
        query = query.where(AlertRow.prescriber_outcome == f.outcome)
    if f.patient:
        query = query.where(Evaluation.patient_ref == f.patient)
    if f.source == "hypothetical":
        query = query.where(Evaluation.hypothetical.is_(True))
    elif f.source != "all":
        query = query.where(Evaluation.hypothetical.is_(False))
        if f.source:
            query = query.where(Evaluation.source == f.source)
    if f.date_from:
        query = query.where(Evaluation.as_of >= _start(f.date_from))
    if f.date_to:
        query = query.where(Evaluation.as_of < _start(f.date_to + timedelta(days=1)))
    return query


@dataclass
class AlertPage:
    rows: list[tuple[AlertRow, Evaluation]]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def list_alerts(session: Session, f: AlertFilter, *, page: int = 1, page_size: int = 50) -> AlertPage:
    joined = AlertRow.evaluation_id == Evaluation.id
    base = _apply(select(AlertRow, Evaluation).join(Evaluation, joined), f)
    total = session.scalar(_apply(select(func.count()).select_from(AlertRow).join(Evaluation, joined), f))
    page = max(1, page)
    query = (base.order_by(Evaluation.as_of.desc(), AlertRow.evaluation_id, AlertRow.position)
             .offset((page - 1) * page_size).limit(page_size))
    rows = [(a, e) for a, e in session.execute(query).all()]
    return AlertPage(rows=rows, total=total or 0, page=page, page_size=page_size)


# A loose index scan: one index probe per distinct value (20 rules: ~2 ms), where SELECT DISTINCT
# reads every alert (1,000,000 alerts: ~240 ms on every list and analytics page). Constant text:
# the column comes from the fixed tuple below, never from a request.
_DISTINCT_COLUMNS = ("rule_id", "category")
_LOOSE_SCAN = ("WITH RECURSIVE r(v) AS (SELECT min({c}) FROM alerts UNION ALL "
               "SELECT (SELECT min({c}) FROM alerts WHERE {c} > r.v) FROM r WHERE r.v IS NOT NULL) "
               "SELECT v FROM r WHERE v IS NOT NULL")


def distinct_values(session: Session) -> dict[str, list[str]]:
    """Rule ids and categories present, for the filter drop-downs (both columns are indexed)."""
    rules, categories = (list(session.scalars(text(_LOOSE_SCAN.format(c=column))))
                         for column in _DISTINCT_COLUMNS)
    return {"rules": rules, "categories": categories}


@dataclass
class AlertDetail:
    alert: AlertRow
    evaluation: Evaluation
    order: OrderRow | None
    feedback: list[PrescriberFeedback]
    decisions: list[tuple[ReviewDecision, str]]
    kept_back: str | None = None  # why an evaluated card was not shown (alert-fatigue controls)


def alert_detail(session: Session, alert_id: str) -> AlertDetail | None:
    found = session.execute(
        select(AlertRow, Evaluation).join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
        .where(AlertRow.id == alert_id)).first()
    if found is None:
        return None
    alert, evaluation = found
    order = session.get(OrderRow, evaluation.id)
    feedback = list(session.scalars(select(PrescriberFeedback).where(PrescriberFeedback.alert_id == alert_id)
                                    .order_by(PrescriberFeedback.outcome_timestamp)))
    decisions = [(d, name) for d, name in session.execute(
        select(ReviewDecision, User.username).join(User, ReviewDecision.reviewer_id == User.id)
        .where(ReviewDecision.alert_id == alert_id).order_by(ReviewDecision.id)).all()]
    kept_back = None
    if alert.card_uuid:  # an evaluated card kept back by the alert-fatigue controls says why
        kept_back = session.scalar(select(fatigue_cards.c.suppressed_by)
                                   .where(fatigue_cards.c.card_uuid == alert.card_uuid))
    return AlertDetail(alert, evaluation, order, feedback, decisions, kept_back)


def decide(session: Session, alert: AlertRow, user: User, decision: str, *, reason_code: str | None,
           reason_display: str | None, comment: str | None, remote_addr: str | None,
           bulk: str | None = None, roll_up: bool = True) -> ReviewDecision:
    """A reviewer's acknowledgement or override: history row, alert status and audit in one transaction.

    ``roll_up=False`` (a bulk action) leaves the analytics rollup and queue items to one
    :func:`roll_up_decisions` call for all the alerts, in the same transaction.
    """
    if decision not in ("acknowledged", "overridden"):
        raise ValueError(f"unknown decision {decision!r}")
    now = utcnow()
    row = ReviewDecision(alert_id=alert.id, decision=decision, reason_code=reason_code,
                         reason_display=reason_display, comment=comment, reviewer_id=user.id, decided_at=now)
    session.add(row)
    alert.review_status, alert.reviewed_at, alert.reviewed_by = decision, now, user.id
    session.flush()
    if roll_up:
        roll_up_decisions(session, [alert.id])
    audit.record(session, actor=user.username, role=user.role, action=f"alert.{decision}",
                 target_type="alert", target_id=alert.id, remote_addr=remote_addr,
                 detail={"reason": reason_code, "comment": comment, "decision_id": row.id,
                         **({"bulk_action": bulk} if bulk else {})})
    return row


def roll_up_decisions(session: Session, alert_ids: list[str]) -> None:
    """The analytics rollup and the work-queue items follow the decisions on these alerts."""
    session.flush()
    rollup.touch_alerts(session.connection(), alert_ids)


# -- analytics ---------------------------------------------------------------------------------

def analytics(session: Session, *, date_from: date | None = None, date_to: date | None = None,
              rule: str | None = None, source: str | None = None) -> list[RuleStats]:
    """Per rule: fired (each order counted once), override and acceptance rates, alerts per day.

    Read from the daily rollup kept by the writer, feedback and decisions (:mod:`cds_engine.store.rollup`),
    so a year or "all" costs a few thousand rows, not every alert; the same source choices as the
    alert list, so hypothetical screenings are left out unless ``source`` asks for them.
    """
    return rollup_rule_stats(session, date_from=date_from, date_to=date_to, rule=rule, source=source)


def analytics_from_rows(session: Session, *, date_from: date | None = None, date_to: date | None = None,
                        rule: str | None = None, source: str | None = None) -> list[RuleStats]:
    """The same numbers read from every alert row (the rollup's reference; tests compare both)."""
    f = AlertFilter(rule=rule, date_from=date_from, date_to=date_to, source=source)
    return rule_stats(session, where(f))


def apply_filter(query: Select[Any], f: AlertFilter) -> Select[Any]:
    """``query`` (alerts joined to evaluations) with the alert list's filter (the CSV export's)."""
    return _apply(query, f)


def where(f: AlertFilter) -> list[ColumnElement[bool]]:
    """The filter as WHERE conditions on alerts joined to evaluations (for the aggregating queries)."""
    joined = select(AlertRow.id).join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
    clause = _apply(joined, f).whereclause
    return [clause] if clause is not None else []
