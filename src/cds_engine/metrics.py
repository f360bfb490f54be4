"""Operations metrics (Prometheus, via prometheus-client): what to watch, never who was treated.

Every metric is declared here, at the bottom of the import graph, so the engine, the service and the
store can count without knowing about one another or about the endpoint that exposes them.

Label values come from bounded sets only — service ids, pack and rule ids, severities, and the
fixed reason/kind words of the code — never a patient, encounter, user, order or URL. Free-text
label values are squeezed through :func:`label` (a short token, else ``other``), and the service
id label through a cap on distinct values, so a caller cannot grow the exposition without bound.

Several workers (``serve --workers N``): prometheus-client's multiprocess mode. The supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` (a private directory) before any worker starts; each worker then writes
its values to memory-mapped files there and :func:`exposition` sums them.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

__all__ = [
    "CALLBACK_FAILURES",
    "CALLBACK_SECONDS",
    "CARDS",
    "DEVIATIONS",
    "EVALUATOR_FALLBACKS",
    "JOURNAL_DEPTH",
    "LIMITED",
    "MULTIPROC_ENV",
    "NOT_STORED",
    "REPLAY_STORE_FAILURES",
    "REQUEST_SECONDS",
    "WRITE_LAG_SECONDS",
    "declare_all",
    "exposition",
    "label",
    "leave_multiprocess",
    "service_label",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _Lazy:
    """A metric created on first use: importing prometheus-client costs ~0.1 s, which every command
    and batch worker importing the engine would otherwise pay for metrics it never exposes."""

    def __init__(self, kind: str, name: str, doc: str, labelnames: list[str] | None = None,
                 **kwargs: Any) -> None:
        self._spec = (kind, name, doc, labelnames or [], kwargs)
        self._metric: Any = None
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], Any] = {}

    def _real(self) -> Any:
        if self._metric is None:
            with self._lock:
                if self._metric is None:
                    import prometheus_client

                    kind, name, doc, labelnames, kwargs = self._spec
                    self._metric = getattr(prometheus_client, kind)(name, doc, labelnames, **kwargs)
        return self._metric

    def child(self, *values: str) -> Any:
        """``labels(*values)``, remembered: prometheus-client's ``labels`` costs a few µs (argument
        checks, a lock, a tuple of ``str``) on every request and card; the child it returns for the
        same values is the same object every time, and prometheus-client keeps it for the life of
        the process anyway, so remembering it here grows nothing that was not already held.
        Values must already be bounded label values (:func:`label`, :func:`service_label`)."""
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = self._real().labels(*values)
        return found

    def __getattr__(self, attr: str) -> Any:  # labels, inc, observe, set, ...
        return getattr(self._real(), attr)


def _counter(name: str, doc: str, labelnames: list[str] | None = None) -> Any:
    return _Lazy("Counter", name, doc, labelnames)


def _histogram(name: str, doc: str, labelnames: list[str] | None = None, **kw: Any) -> Any:
    return _Lazy("Histogram", name, doc, labelnames, **kw)


def _gauge(name: str, doc: str, labelnames: list[str] | None = None, **kw: Any) -> Any:
    return _Lazy("Gauge", name, doc, labelnames, **kw)

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)

REQUEST_SECONDS = _histogram(
    "cds_request_duration_seconds", "HTTP request latency by CDS service (or route kind) and status class",
    ["service", "status"], buckets=_LATENCY_BUCKETS)
CARDS = _counter(
    "cds_cards_total", "Alerts issued by pack, rule and severity; outcome shown | suppressed | silent",
    ["pack", "rule", "severity", "outcome"])
DEVIATIONS = _counter(
    "cds_request_deviations_total", "Tolerated deviations from the CDS Hooks / FHIR specs, by kind", ["kind"])
EVALUATOR_FALLBACKS = _counter(
    "cds_evaluator_fallbacks_total", "Rete failures answered by the reference evaluator instead (must be 0)",
    ["pack"])
CALLBACK_SECONDS = _histogram(
    "cds_fhir_callback_duration_seconds", "FHIR call-backs (fhirServer reads), per prefetch key",
    ["key"], buckets=_LATENCY_BUCKETS)
CALLBACK_FAILURES = _counter(
    "cds_fhir_callback_failures_total", "FHIR call-backs that failed, were partial or ran out of time",
    ["reason"])
NOT_STORED = _counter(
    "cds_evaluations_not_stored_total", "Evaluations answered but not recorded, by reason", ["reason"])
LIMITED = _counter("cds_requests_limited_total", "Requests refused by a size or count limit", ["kind"])
REPLAY_STORE_FAILURES = _counter(
    "cds_jti_store_failures_total", "Replay (jti) store checks that failed or timed out; policy applied",
    ["policy"])
JOURNAL_DEPTH = _gauge(
    "cds_journal_depth", "Evaluations journaled locally and not yet in the database",
    None, multiprocess_mode="livesum")
WRITE_LAG_SECONDS = _histogram(
    "cds_store_write_lag_seconds", "Time from the answer to the evaluation's row in the database",
    None, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0))

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_MAX_SERVICES = 64
_services: set[str] = set()
_services_lock = threading.Lock()


def label(value: str | None) -> str:
    """A label value that is a short code-like token, else ``other`` (nothing free-form is exported)."""
    if value and _TOKEN.fullmatch(value):
        return value
    return "other"


def service_label(value: str | None) -> str:
    """A service id label; after :data:`_MAX_SERVICES` distinct ids, new ones count as ``other``."""
    token = label(value)
    with _services_lock:
        if token in _services:
            return token
        if len(_services) < _MAX_SERVICES:
            _services.add(token)
            return token
    return "other"


_ALL = [REQUEST_SECONDS, CARDS, DEVIATIONS, EVALUATOR_FALLBACKS, CALLBACK_SECONDS, CALLBACK_FAILURES,
        NOT_STORED, LIMITED, REPLAY_STORE_FAILURES, JOURNAL_DEPTH, WRITE_LAG_SECONDS]


def declare_all() -> None:
    """Create every metric now, so a scrape lists every family even before its first event."""
    for metric in _ALL:
        metric._real()


def leave_multiprocess(directory: str) -> None:
    """Undo ``PROMETHEUS_MULTIPROC_DIR=directory`` set by this process (an in-process ``serve`` that
    returned, e.g. under a test runner): a later ``serve`` child would inherit the variable and sum
    the stale files of this one's writer. Also puts prometheus-client back on in-memory values if it
    was imported meanwhile (it picks its value class once, at import), and removes the directory."""
    import shutil
    import sys

    if os.environ.get(MULTIPROC_ENV) == directory:
        del os.environ[MULTIPROC_ENV]
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    shutil.rmtree(directory, ignore_errors=True)


def exposition() -> tuple[bytes, str]:
    """The text exposition of this process — or, in multiprocess mode, of every worker summed."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    declare_all()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
