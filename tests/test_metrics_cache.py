"""The per-request metric shortcuts (issue 19, item 3) answer what the long way answers.

``route_label`` remembers the label of each path (bounded), and ``_Lazy.child`` remembers the
prometheus-client child of each label tuple: both only skip work, so here the remembered answers
are compared with the computed ones, and the memory is shown to stay bounded.
"""

from __future__ import annotations

import pytest

from cds_engine import metrics
from cds_engine.service import metrics_http
from cds_engine.service.metrics_http import _route_label, route_label

PATHS = [
    "/",
    "",
    "/cds-services",
    "/cds-services/",
    "/cds-services/baclofen-order-sign",
    "/cds-services/baclofen-order-sign/",
    "/cds-services/baclofen-order-sign/feedback",
    "/cds-services/a/b/c",
    "/cds-services/Jane Doe",
    "/evaluate",
    "/review/alerts/3f2a",
    "/healthz",
    "/metrics",
    "/metrics/x",
    "/fhir/Patient/123",
]


def test_remembered_route_labels_equal_computed_ones() -> None:
    for _ in range(2):  # the second pass answers from memory
        for path in PATHS:
            assert route_label(path) == _route_label(path), path
    assert route_label("/metrics") is None  # a remembered None is still "not timed"


def test_the_route_label_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_http, "_ROUTE_LABELS", {})
    monkeypatch.setattr(metrics_http, "_ROUTE_LABELS_MAX", 8)
    for i in range(50):
        assert route_label(f"/fhir/Patient/{i}") == "other"
    assert len(metrics_http._ROUTE_LABELS) == 8
    assert route_label("/healthz") == "healthz"  # past the bound: computed, still right


def test_a_remembered_child_is_the_labelled_series() -> None:
    child = metrics.REQUEST_SECONDS.child("test-cache-service", "2xx")
    assert child is metrics.REQUEST_SECONDS.child("test-cache-service", "2xx")
    assert child is metrics.REQUEST_SECONDS.labels("test-cache-service", "2xx")
    counter = metrics.CARDS.child("test-pack", "R1", "warning", "shown")
    before = metrics.CARDS.labels("test-pack", "R1", "warning", "shown")._value.get()
    counter.inc()
    assert metrics.CARDS.labels("test-pack", "R1", "warning", "shown")._value.get() == before + 1
