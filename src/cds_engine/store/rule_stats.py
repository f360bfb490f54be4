"""Rule analytics aggregated in the database (GROUP BY), not row by row in Python.

An *episode* is one rule (one missing-data item for cannot-assess reports) on one order of one
patient (``order_key``): the order seen at order-select and again at order-sign counts once, and
its latest prescriber outcome and latest reviewer decision are the ones counted. Alerts without
an order key count one each. Three levels of SQL: alert rows ranked within their episode (window
functions), episodes, then per rule and per rule and day.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from cds_engine.results import MISSING_DATA_RULE
from cds_engine.store.fatigue import fatigue_cards
from cds_engine.store.models import SEVERITIES, AlertRow, Evaluation, PrescriberFeedback

__all__ = ["TOP_REASONS", "RuleStats", "flag", "rule_stats", "utc_day"]

TOP_REASONS = 3  # override reasons listed per rule

_RANK = {name: rank for rank, name in enumerate(SEVERITIES, start=1)}


@dataclass
class RuleStats:
    rule_id: str  # a rule id, or ``missing-data.<item>`` (one row per missing-data item)
    title: str
    alert_rows: int = 0  # every stored alert (order-select and order-sign of one order: two rows)
    fired: int = 0  # distinct orders (episodes) the rule fired on
    silent: int = 0  # episodes never shown (draft pack, silent mode)
    prescriber_decided: int = 0
    prescriber_overridden: int = 0
    suggestions_decided: int = 0  # decided episodes whose shown card carried a suggestion
    suggestions_accepted: int = 0
    reviewer_decided: int = 0
    reviewer_overridden: int = 0
    per_day: Counter[date] = field(default_factory=Counter)
    severities: Counter[str] = field(default_factory=Counter)
    # the prescribers' most given override reasons: (reason as shown, orders overridden with it)
    top_override_reasons: list[tuple[str, int]] = field(default_factory=list)
    # cards evaluated and stored but kept back by the alert-fatigue controls (service/fatigue.py);
    # last, so positional construction above keeps its order
    suppressed: int = 0

    @staticmethod
    def _rate(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    @property
    def override_rate(self) -> float | None:
        return self._rate(self.prescriber_overridden, self.prescriber_decided)

    @property
    def acceptance_rate(self) -> float | None:
        return self._rate(self.suggestions_accepted, self.suggestions_decided)

    @property
    def reviewer_override_rate(self) -> float | None:
        return self._rate(self.reviewer_overridden, self.reviewer_decided)


def flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """1 where ``condition`` holds, else 0 (summed into counts; shared with the rollup)."""
    return case((condition, 1), else_=0)


def utc_day(column: Any, dialect: str) -> Any:
    """The UTC calendar day of a timestamp column, as both dialects store it (shared with the rollup)."""
    if dialect == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)  # SQLite keeps UTC text


def rule_stats(session: Session, where: list[ColumnElement[bool]]) -> list[RuleStats]:
    """Per rule (per missing-data item): fired, shown, outcomes and per-day counts; ``where`` filters rows."""
    dialect = session.get_bind().dialect.name
    array_length = func.jsonb_array_length if dialect == "postgresql" else func.json_array_length
    key = case((AlertRow.rule_id == MISSING_DATA_RULE, AlertRow.tier_id), else_=AlertRow.rule_id)
    patient = func.coalesce(Evaluation.patient_ref, "")
    order = func.coalesce(Evaluation.order_key, AlertRow.id)
    episode = [key, patient, order]
    shown = AlertRow.shown.is_(True)
    # a shown card that carried a suggestion: the card's own count; the rule's list when not known
    unknown = AlertRow.card_suggestions.is_(None)
    carried = and_(shown, or_(AlertRow.card_suggestions > 0,
                              and_(unknown, array_length(AlertRow.suggestions) > 0)))
    rows = select(
        key.label("k"), patient.label("p"), order.label("o"), AlertRow.title.label("title"),
        Evaluation.as_of.label("as_of"), flag(shown).label("shown"), flag(carried).label("carried"),
        case(_RANK, value=AlertRow.severity, else_=0).label("sev"),
        AlertRow.prescriber_outcome.label("outcome"),
        flag(AlertRow.suggestion_accepted.is_(True)).label("accepted"),
        case((AlertRow.review_status != "open", AlertRow.review_status)).label("review"),
        func.row_number().over(partition_by=episode,
                               order_by=(AlertRow.prescriber_outcome_at.desc().nulls_last(),
                                         AlertRow.id)).label("orank"),  # id: ties pick the same row
        func.row_number().over(partition_by=episode, order_by=(
            flag(AlertRow.review_status != "open").desc(), AlertRow.reviewed_at.desc().nulls_last(),
            AlertRow.id,
        )).label("rrank"),
    ).join(Evaluation, AlertRow.evaluation_id == Evaluation.id).where(*where).subquery()
    latest_outcome = case((rows.c.orank == 1, rows.c.outcome))
    episodes = select(
        rows.c.k, func.count().label("n"), func.max(rows.c.title).label("title"),
        func.min(rows.c.as_of).label("first_seen"), func.max(rows.c.shown).label("shown"),
        func.max(rows.c.carried).label("carried"), func.max(rows.c.sev).label("sev"),
        func.max(latest_outcome).label("outcome"),
        func.max(case((rows.c.orank == 1, rows.c.accepted), else_=0)).label("accepted"),
        func.max(case((rows.c.rrank == 1, rows.c.review))).label("review"),
    ).group_by(rows.c.k, rows.c.p, rows.c.o).subquery()
    e = episodes.c
    decided = e.outcome.is_not(None)
    per_rule = select(
        e.k, func.max(e.title), func.sum(e.n), func.count(), func.sum(1 - e.shown), func.sum(flag(decided)),
        func.sum(flag(e.outcome == "overridden")), func.sum(flag(and_(decided, e.carried == 1))),
        func.sum(flag(and_(decided, e.carried == 1, e.accepted == 1))),
        func.sum(flag(e.review.is_not(None))),
        func.sum(flag(e.review == "overridden")),
    ).group_by(e.k)
    stats: dict[str, RuleStats] = {}
    for k, title, n, fired, silent, p_dec, p_over, s_dec, s_acc, r_dec, r_over in session.execute(per_rule):
        stats[k] = RuleStats(k, title, int(n), int(fired), int(silent), int(p_dec), int(p_over), int(s_dec),
                             int(s_acc), int(r_dec), int(r_over))
    day = utc_day(e.first_seen, dialect)
    names = {rank: name for name, rank in _RANK.items()}
    by_day = select(e.k, day, e.sev, func.count()).group_by(e.k, day, e.sev)
    for k, when, sev, count in session.execute(by_day):
        stats[k].per_day[date.fromisoformat(str(when)[:10])] += count
        stats[k].severities[names.get(sev, "unknown")] += count
    for k, kept, never_shown in session.execute(_suppressed(key, patient, order, where)):
        if k in stats:  # kept back by the fatigue controls: counted apart, never as silent mode
            stats[k].suppressed = int(kept or 0)
            stats[k].silent -= int(never_shown or 0)
    for k, reason, count in session.execute(_override_reasons(key, order, where)):
        if k in stats and len(stats[k].top_override_reasons) < TOP_REASONS:
            stats[k].top_override_reasons.append((str(reason), int(count)))
    return sorted(stats.values(), key=lambda s: (-s.fired, s.rule_id))


def _suppressed(key: Any, patient: Any, order: Any, where: list[ColumnElement[bool]]) -> Any:
    """(rule key, cards kept back, episodes never shown only because of that) per rule."""
    kept = flag(fatigue_cards.c.suppressed_by.is_not(None))
    episodes = (
        select(key.label("k"), func.max(flag(AlertRow.shown.is_(True))).label("shown"),
               func.sum(kept).label("kept"))
        .select_from(AlertRow)
        .join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
        .outerjoin(fatigue_cards, fatigue_cards.c.card_uuid == AlertRow.card_uuid)
        .where(*where)
        .group_by(key, patient, order)
        .subquery()
    )
    never_shown = flag(and_(episodes.c.shown == 0, episodes.c.kept > 0))
    return select(episodes.c.k, func.sum(episodes.c.kept), func.sum(never_shown)).group_by(episodes.c.k)


def _override_reasons(key: Any, order: Any, where: list[ColumnElement[bool]]) -> Any:
    """(rule key, reason, orders) of prescriber overrides, most given first: each order counted once
    per reason however many of its alerts (order-select, order-sign) carried the feedback."""
    feedback = PrescriberFeedback
    reason = func.coalesce(feedback.override_reason_display, feedback.override_reason_code, "no reason given")
    count = func.count(func.distinct(order))
    return (select(key, reason, count)
            .select_from(PrescriberFeedback)
            .join(AlertRow, PrescriberFeedback.alert_id == AlertRow.id)
            .join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
            .where(PrescriberFeedback.outcome == "overridden", *where)
            .group_by(key, reason)
            .order_by(key, count.desc(), reason))
