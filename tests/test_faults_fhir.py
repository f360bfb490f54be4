"""The EHR's FHIR server behind a missing prefetch is slow or down: the hook answers within budget.

A real HTTP server thread on 127.0.0.1 (plain http is accepted on loopback only) plays the EHR's
FHIR server; the service reads it through its real httpx client, not a mock transport. Outcomes,
as the README documents: the patient cannot be had → 412; only some parts of the record cannot →
200 with the rules that could run plus a ``data-unavailable`` card. Either way within the budget
(one budget per hook call, shared by the prefetch reads and any ``Medication`` reads).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import LocalFhir, hook_request, medication_request
from tests.test_service_api import patient_record

from cds_engine.service import ServiceSettings, create_app

BUDGET = 1.0
SLACK = 1.5  # evaluation, thread hand-offs and a busy 2-core machine
SIGN = "/cds-services/baclofen-order-sign"


class FhirServer:
    """Answers FHIR reads/searches from :class:`LocalFhir`; ``delay(path)`` seconds first."""

    def __init__(self, fhir: LocalFhir, delay: Callable[[str], float]) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pause = delay(self.path)
                if pause:
                    owner.stop.wait(pause)
                parts = urlsplit(self.path)
                relative = parts.path.removeprefix("/fhir") + (f"?{parts.query}" if parts.query else "")
                body = fhir.get(relative)
                payload = json.dumps(body or {"resourceType": "OperationOutcome", "issue": []}).encode()
                try:
                    self.send_response(200 if body is not None else 404)
                    self.send_header("content-type", "application/fhir+json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the service gave up on us: expected

            def log_message(self, *args: object) -> None:
                pass

        self.stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()  # wake the sleeping handlers
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app(engine):
    return create_app(
        lambda: engine,
        auth=None,
        settings=ServiceSettings(fhir_timeout_seconds=BUDGET, allow_loopback_fhir=True),
    )


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str], float]], FhirServer]]:
    servers: list[FhirServer] = []

    def start(delay: Callable[[str], float]) -> FhirServer:
        servers.append(FhirServer(LocalFhir(patient_record()), delay))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def timed_call(app, body: dict) -> tuple[int, dict, float]:
    with TestClient(app) as client:
        t0 = time.monotonic()
        response = client.post(SIGN, json=body)
        return response.status_code, response.json(), time.monotonic() - t0


def test_fhir_server_that_hangs_gives_412_within_budget(app, serve):
    server = serve(lambda path: 30)
    status, body, elapsed = timed_call(app, hook_request("order-sign", "p1", [medication_request()],
                                                         fhir_server=server.base))
    assert status == 412, body
    assert body["issue"][0]["expression"] == ["context.patientId"]
    assert elapsed < BUDGET + SLACK, elapsed


def test_slow_parts_of_the_record_give_200_with_a_data_unavailable_card(app, serve):
    server = serve(lambda path: 0 if path.startswith("/fhir/Patient/") else 30)
    status, body, elapsed = timed_call(app, hook_request("order-sign", "p1", [medication_request()],
                                                         fhir_server=server.base))
    assert status == 200, body
    codes = [c["source"]["topic"]["code"] for c in body["cards"]]
    assert "data-unavailable" in codes
    assert elapsed < BUDGET + SLACK, elapsed


def test_fhir_server_down_gives_412_quickly(app):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status, body, elapsed = timed_call(app, hook_request("order-sign", "p1", [medication_request()],
                                                         fhir_server=f"http://127.0.0.1:{port}/fhir"))
    assert status == 412, body
    assert elapsed < BUDGET + SLACK, elapsed


def test_one_budget_covers_prefetch_and_medication_reads(engine, serve):
    # the prefetch reads use up the budget; the Medication read must not get a second one
    budget = 2.0  # two budgets (4 s) would clearly exceed budget + slack
    app = create_app(
        lambda: engine,
        auth=None,
        settings=ServiceSettings(fhir_timeout_seconds=budget, allow_loopback_fhir=True),
    )
    server = serve(lambda path: 0 if path.startswith("/fhir/Patient/") else 30)
    draft = medication_request()
    draft.pop("medicationCodeableConcept")
    draft["medicationReference"] = {"reference": "Medication/unknown-med"}
    body = hook_request("order-sign", "p1", [draft], fhir_server=server.base)
    status, answer, elapsed = timed_call(app, body)
    assert status == 412, answer  # the ordered medication could not be had in time
    assert answer["issue"][0]["expression"] == ["context.draftOrders"]
    assert budget <= elapsed < budget + SLACK, elapsed
