"""Operations metrics (issue #22 item 2): bounded labels, no patient data, guarded exposition.

The end-to-end checks through a real ``serve`` (loopback port, bearer token, several workers) are in
tests/test_metrics_serve.py; here: the label rules and the route that serves the exposition.
"""

from __future__ import annotations

import json
import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cds_engine import metrics
from cds_engine.service.deviations import note_deviation
from cds_engine.service.log_format import JsonFormatter
from cds_engine.service.metrics_http import metrics_router, route_label
from cds_engine.service.middleware import LoggedAndTimedMiddleware

TOKEN = "t" * 40


def test_route_labels_name_services_never_ids() -> None:
    assert route_label("/cds-services") == "discovery"
    assert route_label("/cds-services/baclofen-order-sign") == "baclofen-order-sign"
    assert route_label("/cds-services/baclofen-order-sign/feedback") == "feedback"
    assert route_label("/review/alerts/3f2a") == "review"
    assert route_label("/fhir/Patient/123") == "other"
    assert route_label("/metrics") is None


def test_free_text_never_becomes_a_label_value() -> None:
    assert metrics.label("intent-missing") == "intent-missing"
    assert metrics.label("Patient/123") == "other"
    assert metrics.label("Jane Doe") == "other"
    assert metrics.label("x" * 65) == "other"
    assert metrics.label(None) == "other"


def test_distinct_service_ids_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_services", set())
    labels = {metrics.service_label(f"svc-{i}") for i in range(200)}
    assert "other" in labels and len(labels) <= 65


def _app() -> FastAPI:
    app = FastAPI()
    app.include_router(metrics_router(TOKEN))

    @app.get("/cds-services/{service_id}")
    def hook(service_id: str) -> dict[str, str]:
        return {"service": service_id}

    app.add_middleware(LoggedAndTimedMiddleware)
    return app


def test_the_route_needs_the_bearer_token_and_shows_counted_events() -> None:
    client = TestClient(_app())
    note_deviation("context.userId", "user-id-missing")
    client.get("/cds-services/baclofen-order-select")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    text = answer.text
    assert 'cds_request_deviations_total{kind="user-id-missing"}' in text
    assert 'cds_request_duration_seconds_count{service="baclofen-order-select",status="2xx"}' in text
    for family in ("cds_cards_total", "cds_evaluator_fallbacks_total", "cds_fhir_callback_failures_total",
                   "cds_journal_depth", "cds_store_write_lag_seconds", "cds_jti_store_failures_total"):
        assert f"# TYPE {family.removesuffix('_total')}" in text, f"{family} is declared before first use"


def test_json_log_lines_are_objects() -> None:
    record = logging.LogRecord("cds", logging.INFO, __file__, 1, "rules reloaded: %s", ("baclofen",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "rules reloaded: baclofen"
    assert line["level"] == "INFO" and line["logger"] == "cds"
