"""Tolerated deviations from the spec in what real clients send: one log line and one counter each.

Real EHRs and the CDS Hooks Sandbox send requests that are not strictly valid (``category`` as
one object, no ``intent`` before a medication is chosen, a ``Patient/``-prefixed ``patientId``…).
Strict validation must never be why a usable order gets no check, so these are read anyway —
and counted, so an operator sees which client deviates how. The log line names the field path
and the kind of deviation only, never a value (no PHI in logs); the counter
``request_deviation_total{kind}`` is shown by ``/healthz``. The kinds are :data:`KINDS`; README
("How a FHIR order becomes the order under review") says which client sends each.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from cds_engine import metrics

__all__ = ["KINDS", "deviation_counts", "note_deviation"]

log = logging.getLogger("cds_engine.service.deviations")

KINDS: dict[str, str] = {
    "category-object": "MedicationRequest.category sent as one object (STU3 shape), read as a list",
    "dose-and-rate-object": "dosageInstruction.doseAndRate sent as one object, read as a list",
    "intent-missing": "MedicationRequest without intent, read as an order",
    "medication-missing": "draft without a medication yet: nothing to check for it",
    "medication-text-only": "medication named by text only, no code",
    "status-not-draft": "order-sign draft whose status is not draft (e.g. active)",
    "patient-id-prefixed": "context.patientId sent as Patient/<id>",
    "encounter-id-prefixed": "context.encounterId sent as Encounter/<id>",
    "bundle-type-missing": "draftOrders Bundle without type",
    "user-id-missing": "context.userId missing (stored as unknown)",
    "dose-unreadable": "a draft's dose could not be read: its dose checks are cannot-assess",
    "date-out-of-range": "a date in a fetched or prefetched resource outside 1900-2200: made unknown",
    "number-not-finite": "NaN or Infinity in a fetched or prefetched resource: made unknown",
    "number-negative": "a negative quantity in a fetched or prefetched resource: made unknown",
}

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def note_deviation(path: str, kind: str) -> None:
    """Count one tolerated deviation and log where it was (field path and kind only, never a value)."""
    with _lock:
        _counts[kind] += 1
    metrics.DEVIATIONS.labels(metrics.label(kind)).inc()
    log.info("request deviation tolerated: field=%s kind=%s", path, kind)


def deviation_counts() -> dict[str, int]:
    """``request_deviation_total`` by kind since the process started."""
    with _lock:
        return dict(sorted(_counts.items()))
