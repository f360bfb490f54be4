"""Rule analytics as CSV: every text cell through the formula neutraliser.

A cell a spreadsheet would run as a formula (first character ``= + - @``, tab or CR) gets a
leading ``'`` — the same rule as the batch CSVs (``batch/parts.py``, red-team L7). Rule titles
come from packs and site overrides: data, never trusted as inert.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from cds_engine.store.rule_stats import RuleStats

__all__ = ["analytics_csv", "neutralise"]

_FORMULA_START = re.compile(r"^[=+\-@\t\r]")
COLUMNS = ("rule", "title", "from", "to", "source", "fired_orders", "alert_rows", "silent",
           "prescriber_outcomes", "prescriber_overridden", "suggestion_cards_decided", "suggestions_accepted",
           "reviewer_decisions", "reviewer_overridden", "top_override_reasons")


def neutralise(value: Any) -> Any:
    if isinstance(value, str) and _FORMULA_START.match(value):
        return "'" + value
    return value


def analytics_csv(stats: Iterable[RuleStats], titles: Mapping[str, str], *, date_from: date | None,
                  date_to: date | None, source: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for s in stats:
        writer.writerow([neutralise(v) for v in (
            s.rule_id, titles.get(s.rule_id, s.title), date_from.isoformat() if date_from else "",
            date_to.isoformat() if date_to else "", source, s.fired, s.alert_rows, s.silent,
            s.prescriber_decided, s.prescriber_overridden, s.suggestions_decided, s.suggestions_accepted,
            s.reviewer_decided, s.reviewer_overridden,
            "; ".join(f"{reason} ({n})" for reason, n in s.top_override_reasons))])
    return out.getvalue()
