"""The ``patients`` table: who the patient is, written by the writer, read by the review pages, purged.

One row per patient reference (never copied into evaluations). A patient is forgotten
``demographics_retention_days`` (default 365) after their last alert was closed — no alert of
theirs still open and none decided within the period; evaluations and alerts keep only the
opaque reference. Nothing here logs a value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, exists, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cds_engine.sources.demographics import PatientDemographics
from cds_engine.store.documents import document_insert, document_rows
from cds_engine.store.models import AlertRow, Evaluation, Patient

__all__ = ["DEFAULT_RETENTION_DAYS", "patients_by_ref", "purge_demographics", "upsert_patient",
           "upsert_patients"]

DEFAULT_RETENTION_DAYS = 365
ROWS_PER_UPSERT = 1000  # 5 parameters a row: far below SQLite's and PostgreSQL's limits

log = logging.getLogger("cds_engine.store")

_patients: Table = Patient.__table__  # type: ignore[assignment]


def upsert_patient(conn: Connection, patient_ref: str, who: PatientDemographics, at: datetime) -> None:
    """Insert or refresh the patient's row with what the EHR sent this time."""
    upsert_patients(conn, [(patient_ref, who, at)])


_UPSERT_ONE = sqlite.insert(_patients)
_SQLITE_UPSERT = _UPSERT_ONE.on_conflict_do_update(
    index_elements=[_patients.c.patient_ref],
    set_={k: _UPSERT_ONE.excluded[k] for k in ("name", "birth_date", "identifiers", "updated_at")})


def upsert_patients(conn: Connection, sent: Iterable[tuple[str, PatientDemographics, datetime]]) -> None:
    """:func:`upsert_patient` for many, in one multi-row statement per :data:`ROWS_PER_UPSERT`.

    The last of several rows for one patient wins, as written one by one (one statement may not
    update a row twice, so the earlier ones are dropped here). Rows go in patient order, so two
    writers upserting the same patients lock their rows in the same order (no deadlock)."""
    latest: dict[str, dict[str, Any]] = {}
    for patient_ref, who, at in sent:
        latest[patient_ref] = {"patient_ref": patient_ref, "name": who.name, "birth_date": who.birth_date,
                               "identifiers": [list(pair) for pair in who.identifiers], "updated_at": at}
    rows = [latest[ref] for ref in sorted(latest)]
    if conn.dialect.name == "postgresql" and (document := document_rows(_patients, rows)) is not None:
        names = tuple(rows[0])  # one JSON document (store/documents.py), the same conflict and SET
        conn.execute(document_insert(_patients, names, conflict_keys=names[:1], update=names[1:]),
                     {"rows": document})
        return
    if conn.dialect.name == "sqlite":  # one statement text whatever the count: compiled once, executemany
        if rows:
            conn.execute(_SQLITE_UPSERT, rows)
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    for start in range(0, len(rows), ROWS_PER_UPSERT):
        statement = dialect.insert(_patients).values(rows[start:start + ROWS_PER_UPSERT])
        conn.execute(statement.on_conflict_do_update(
            index_elements=[_patients.c.patient_ref],
            set_={k: statement.excluded[k] for k in ("name", "birth_date", "identifiers", "updated_at")}))


def purge_demographics(conn: Connection, retention_days: int, now: datetime) -> int:
    """Delete the rows of patients whose last alert was closed more than ``retention_days`` ago.

    Kept while any alert of the patient is open or was decided within the period. Returns the
    number of rows deleted (logged as a count only).
    """
    cutoff = now - timedelta(days=max(0, retention_days))
    recent = (select(AlertRow.id).join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
              .where(Evaluation.patient_ref == _patients.c.patient_ref,
                     or_(AlertRow.review_status == "open",
                         and_(AlertRow.reviewed_at.is_not(None), AlertRow.reviewed_at >= cutoff))))
    result = conn.execute(delete(_patients).where(_patients.c.updated_at < cutoff, ~exists(recent)))
    count = int(result.rowcount or 0)
    if count:
        log.info("demographics purged for %d patient(s) (retention %d days)", count, retention_days)
    return count


def patients_by_ref(session: Session, refs: Iterable[str | None]) -> dict[str, Patient]:
    """The stored rows of these patient references (missing ones: not sent, not kept, or purged)."""
    wanted = sorted({r for r in refs if r})
    if not wanted:
        return {}
    return {p.patient_ref: p for p in session.scalars(select(Patient).where(Patient.patient_ref.in_(wanted)))}
