"""Evaluations that could not be stored: counted by kind, never silent.

``evaluation_not_stored_total{kind}`` (shown by ``/healthz``): ``sink-error`` — the sink raised
into the hook (nothing kept), ``rejected`` — a spooled line that can never be applied (moved to
``rejected.jsonl`` without its patient data), ``spooled-after-error`` — a write that failed for a
reason other than the database being away (kept in the spool, retried by the drainer). Each is
also an ERROR log line naming the kind and the exception type only.
"""

from __future__ import annotations

import threading
from collections import Counter

from cds_engine import metrics

__all__ = ["count_not_stored", "not_stored_counts"]

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def count_not_stored(kind: str) -> None:
    with _lock:
        _counts[kind] += 1
    metrics.NOT_STORED.labels(metrics.label(kind)).inc()


def not_stored_counts() -> dict[str, int]:
    with _lock:
        return dict(sorted(_counts.items()))
