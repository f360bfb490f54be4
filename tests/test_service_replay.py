"""Every request file of ``examples/cds-hooks`` replayed with its drug swapped to baclofen.

Expected answers (the README of that folder lists each file's deviations):

* conformant requests, and those with a *tolerated* deviation (``Patient/``-prefixed patientId,
  no ``Bundle.type``, status ``active`` on order-sign, empty ``prefetch``, ``doseAndRate`` as an
  object) → 200 with conformant cards; their ``fhirServer`` is answered by a stub FHIR server;
* non-conformant requests → 400 naming the first offending field;
* with no way to read the patient (no prefetch, FHIR server down) → 412.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import REFERENCE, LocalFhir, load_reference, swap_to_baclofen

from cds_engine.service import ServiceSettings, create_app
from cds_engine.service.validate import response_problems

NOW = datetime(2025, 3, 1, tzinfo=UTC)

# file -> (status, field named by a 400 or None, expect cards from the baclofen pack)
EXPECTED = {
    "order_select_hook_request.json": (200, None, True),
    "order_sign_hook_request.json": (200, None, True),
    "order-sign-request_complete-prefetch.json": (200, None, True),
    "order-select-request_complete-prefetch.json": (200, None, True),
    "noPrefetch.json": (200, None, True),
    "HookRequest-warfarin-nsaids-order-sign.json": (200, None, True),  # no userId: tolerated
    "CdsServiceRequestJson.json": (400, "hookInstance", False),
    "ASLPCrdServiceRequest.json": (400, "hookInstance", False),
    "medicationRequestPrefetch.json": (400, "context.draftOrders", False),
}


def test_every_request_file_is_covered():
    files = {p.name for p in REFERENCE.glob("*.json")}
    responses_and_keys = {
        "valid_cards.json",
        "crd_authorization_hook_response.json",
        "warfarin-nsaids-cards.json",
        "response-example-rec-08-on-benzodiazepine.json",
        "jwks.json",
        "cds-services.json",
        "cds-services-v220.json",
    }
    assert files - responses_and_keys == set(EXPECTED)


class AnyServer(LocalFhir):
    """The EHR behind any fhirServer: knows every patient id it is asked about."""

    def read(self, rtype: str, rid: str):
        found = super().read(rtype, rid)
        if found is None and rtype == "Patient":
            return {"resourceType": "Patient", "id": rid, "birthDate": "1958-04-02", "gender": "female"}
        return found

    def search(self, rtype: str, params):
        bundle = super().search(rtype, params)
        if rtype == "Observation" and params.get("patient"):
            bundle["entry"].append(
                {
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "effectiveDateTime": "2025-02-01",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3"}]},
                        "subject": {"reference": f"Patient/{params['patient'][0]}"},
                        "valueQuantity": {"value": 72, "unit": "mL/min/{1.73_m2}"},
                    }
                }
            )
        return bundle


@pytest.fixture
def client(engine) -> Iterator[TestClient]:
    server = AnyServer([])

    def handle(request: httpx.Request) -> httpx.Response:
        relative = request.url.path.split("/fhir", 1)[-1] if "/fhir" in request.url.path else request.url.path
        relative = relative.removeprefix("/r4").removeprefix("/baseDstu3")
        if request.url.query:
            relative += "?" + request.url.query.decode()
        if request.method == "POST" and relative.endswith("/_search"):  # long searches
            relative = relative.removesuffix("/_search") + "?" + request.content.decode()
        body = server.get(relative)
        return httpx.Response(200, json=body) if body else httpx.Response(404)

    app = create_app(
        lambda: engine,
        auth=None,
        fhir_transport=httpx.MockTransport(handle),
        clock=lambda: NOW,
        settings=ServiceSettings(allow_loopback_fhir=True),  # noPrefetch names http://localhost:8080/fhir
    )
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replay_with_baclofen(client, name):
    status, field, cards_expected = EXPECTED[name]
    request = swap_to_baclofen(load_reference(name))
    hook = request.get("hook") if request.get("hook") in ("order-select", "order-sign") else "order-sign"
    response = client.post(f"/cds-services/baclofen-{hook}", json=request)
    assert response.status_code == status, response.text
    body = response.json()
    if status == 200:
        assert response_problems(body) == []
        if cards_expected:  # advice from the pack (a rule, or "dose cannot be converted to mg")
            assert body["cards"]
            assert {c["source"]["topic"]["system"] for c in body["cards"]} == {
                "https://cds-engine.org/packs/baclofen"
            }
    else:
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["expression"] == [field]


def test_without_a_reachable_fhir_server_the_answer_is_412(engine):
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("unreachable", request=request)

    app = create_app(lambda: engine, auth=None, fhir_transport=httpx.MockTransport(down), clock=lambda: NOW)
    with TestClient(app) as test_client:
        request = swap_to_baclofen(load_reference("order_sign_hook_request.json"))
        response = test_client.post("/cds-services/baclofen-order-sign", json=request)
        assert response.status_code == 412


def test_complete_prefetch_resolves_medication_reference_without_fetching_it(client):
    request = swap_to_baclofen(load_reference("order-sign-request_complete-prefetch.json"))
    response = client.post("/cds-services/baclofen-order-sign", json=request)
    cards = response.json()["cards"]
    assert cards and all(
        c["source"]["topic"]["system"] == "https://cds-engine.org/packs/baclofen" for c in cards
    )
