"""The alert list as rows for a CSV download: the list's filter and order, at most ``MAX_EXPORT`` rows,
read in batches from a server-side cursor so 10,000 rows never sit in memory as ORM objects.

Columns are what the alert list shows, never who the patient is (no name, birth date or
identifiers: the ``patients`` table is not joined — issue #18 item 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from cds_engine.store.models import AlertRow, Evaluation
from cds_engine.store.queries import AlertFilter, apply_filter

__all__ = ["EXPORT_COLUMNS", "MAX_EXPORT", "export_rows"]

MAX_EXPORT = 10_000  # rows per download; the newest first, as the list shows them
BATCH = 1_000
EXPORT_COLUMNS = ("alert_id", "as_of", "source", "patient", "encounter", "rule", "tier", "severity",
                  "category", "summary", "review_status", "prescriber_outcome", "pack_version")


def export_rows(session: Session, f: AlertFilter, *, limit: int = MAX_EXPORT) -> Iterator[tuple[Any, ...]]:
    """The filtered alerts, newest first, as tuples in ``EXPORT_COLUMNS`` order."""
    source = case((Evaluation.hypothetical.is_(True), "hypothetical"), else_=Evaluation.source)
    query = apply_filter(select(
        AlertRow.id, Evaluation.as_of, source, Evaluation.patient_ref, Evaluation.encounter_ref,
        AlertRow.rule_id, AlertRow.tier_id, AlertRow.severity, AlertRow.category, AlertRow.summary,
        AlertRow.review_status, AlertRow.prescriber_outcome, AlertRow.pack_version,
    ).select_from(AlertRow).join(Evaluation, AlertRow.evaluation_id == Evaluation.id), f)
    query = query.order_by(Evaluation.as_of.desc(), AlertRow.evaluation_id, AlertRow.position).limit(
        max(0, min(limit, MAX_EXPORT)))
    for partition in session.execute(query.execution_options(yield_per=BATCH)).partitions():
        for row in partition:
            yield tuple(row)
