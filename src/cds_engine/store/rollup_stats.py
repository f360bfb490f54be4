"""Rule analytics read from the daily rollup (store/rollup.py) instead of every alert row.

The same numbers as :func:`cds_engine.store.rule_stats.rule_stats` for whole days, with one
difference on purpose: an order's episode belongs to the UTC day it was first seen, so a window
that starts between an order's order-select and order-sign counts it wholly or not at all (the
direct SQL counts the rows inside the window). Tests compare both on generated data.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from cds_engine.results import MISSING_DATA_RULE
from cds_engine.store.models import SEVERITIES
from cds_engine.store.rollup import SUMS as _SUMS
from cds_engine.store.rollup import rollup_daily, rollup_reasons, source_kinds
from cds_engine.store.rule_stats import TOP_REASONS, RuleStats

__all__ = ["rollup_rule_stats"]

_NAMES = dict(enumerate(SEVERITIES, start=1))


def _where(table: Any, date_from: date | None, date_to: date | None, rule: str | None,
           source: str | None) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if date_from:
        out.append(table.c.day >= date_from)
    if date_to:
        out.append(table.c.day <= date_to)
    if rule == MISSING_DATA_RULE:  # every missing-data item
        out.append(table.c.k.like(f"{MISSING_DATA_RULE}.%"))
    elif rule:
        out.append(table.c.k == rule)
    kinds = source_kinds(source)
    if kinds is not None:
        out.append(table.c.src.in_(kinds))
    return out


def rollup_rule_stats(session: Session, *, date_from: date | None = None, date_to: date | None = None,
                      rule: str | None = None, source: str | None = None) -> list[RuleStats]:
    """Per rule (per missing-data item): the analytics page's numbers from the daily rollup."""
    d = rollup_daily.c
    where = _where(rollup_daily, date_from, date_to, rule, source)
    fired = func.sum(d.fired)
    # two small answers (per rule with its severities; per rule and day) rather than one row per
    # (rule, day, severity) summed in Python: 2 years of 20 rules is 14,600 rows, not 44,000
    by_severity = [func.sum(case((d.sev == rank, d.fired), else_=0)) for rank in _NAMES]
    per_rule = (select(d.k, func.max(d.title), *(func.sum(d[name]) for name in _SUMS), *by_severity)
                .where(*where).group_by(d.k).having(fired > 0))
    stats: dict[str, RuleStats] = {}
    for k, title, *sums in session.execute(per_rule):
        n, fired_n, silent, kept, never_kept, p_dec, p_over, s_dec, s_acc, r_dec, r_over, *sevs = (
            int(v or 0) for v in sums)
        stats[k] = RuleStats(k, title, n, fired_n, silent - never_kept, p_dec, p_over, s_dec, s_acc, r_dec,
                             r_over, suppressed=kept)
        stats[k].severities.update({name: count for name, count in zip(_NAMES.values(), sevs, strict=True)
                                    if count})
        if fired_n > sum(sevs):  # a severity the store does not know: said, never dropped
            stats[k].severities["unknown"] += fired_n - sum(sevs)
    for k, day, count in session.execute(select(d.k, d.day, fired).where(*where).group_by(d.k, d.day)
                                         .having(fired != 0)):
        if k in stats:
            when = day if isinstance(day, date) else date.fromisoformat(str(day)[:10])
            stats[k].per_day[when] += int(count)
    r = rollup_reasons.c
    count = func.sum(r.orders)
    reasons = (select(r.k, r.reason, count).where(*_where(rollup_reasons, date_from, date_to, rule, source))
               .group_by(r.k, r.reason).having(count > 0).order_by(r.k, count.desc(), r.reason))
    for k, reason, orders in session.execute(reasons):
        if k in stats and len(stats[k].top_override_reasons) < TOP_REASONS:
            stats[k].top_override_reasons.append((str(reason), int(orders)))
    return sorted(stats.values(), key=lambda s: (-s.fired, s.rule_id))
