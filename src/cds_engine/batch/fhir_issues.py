"""``screen --format fhir-ndjson``: the run's alert table as FHIR R4 DetectedIssue NDJSON.

Only screenings of real therapy: a hypothetical ``--assume-order`` run describes orders nobody wrote,
and such issues must never enter a chart — the runner refuses the combination before screening.
Rows are streamed from ``alerts.parquet`` in record batches (no whole-table Python list), and the
file is written 0600 beside the other outputs.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq

from cds_engine.batch.store import alert_from_row
from cds_engine.detected_issue import IssueContext, detected_issue, dumps
from cds_engine.engine import Engine
from cds_engine.files import private_open

__all__ = ["FILE_NAME", "write_detected_issues"]

FILE_NAME = "detected-issues.ndjson"
_BATCH_ROWS = 10_000


def _patient_ref(patient_id: str | None) -> str | None:
    if not patient_id:
        return None
    return patient_id if "/" in patient_id else f"Patient/{patient_id}"


def write_detected_issues(alerts_parquet: Path, out: Path, engine: Engine, as_of: datetime) -> int:
    """Write one DetectedIssue per alert row to ``out``; returns how many were written."""
    count = 0
    with private_open(out, "w", encoding="utf-8") as handle:
        if not alerts_parquet.exists():
            return 0
        for batch in pq.ParquetFile(alerts_parquet).iter_batches(batch_size=_BATCH_ROWS):
            issues = []
            for row in batch.to_pylist():
                alert = alert_from_row(row, engine)
                where = f"{row.get('source')}|{row.get('row')}|{row.get('patient_id')}"
                basis = f"{where}|{alert.tier_id}|{as_of}"
                ident = hashlib.sha256(basis.encode()).hexdigest()[:40]
                issues.append(detected_issue(alert, IssueContext(
                    patient_ref=_patient_ref(row.get("patient_id")), identified=as_of, alert_id=ident)))
            for line in dumps(issues):
                handle.write(line)
                count += 1
    return count
