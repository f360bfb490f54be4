"""FHIR call-backs under control (security issue item 4) and what real clients need of them.

* long searches go as ``POST {type}/_search`` (a stub FHIR server answers 414 to long GETs);
* a paged prefetch is followed through ``fhirServer`` under the same-origin rules, at most 5
  pages per key; what cannot be followed is named partial on the data-unavailable card;
* ``fhirServer`` must be on the calling issuer's allow-list; plain-http loopback only with the
  trial flag; ``fhirAuthorization.patient`` must be the context's patient; ids must be FHIR ids;
  at most N call-backs and M bytes per hook; the bearer token goes to no other origin;
* cards name their order (two baclofen drafts in one request).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import LocalFhir, Signer, hook_request, medication_request

from cds_engine.service import AuthSettings, ServiceSettings, create_app
from cds_engine.service.callbacks import CallbackLimits, encode_id, same_origin, search_request
from cds_engine.service.discovery import prefetch_templates
from cds_engine.service.validate import response_problems

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
FHIR = "https://ehr.example/fhir"
SIGN = "/cds-services/baclofen-order-sign"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def record(patient: str = "p1") -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": patient, "birthDate": "1960-01-01", "gender": "female"},
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
            "effectiveDateTime": "2026-11-20",
            "valueQuantity": {"value": 85, "unit": "mL/min/{1.73_m2}"},
        },
    ]


def opioid(patient: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "home-opioid",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": "2026-10-01",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "1049221"}],
            "text": "Acetaminophen 325 MG / oxyCODONE Hydrochloride 5 MG Oral Tablet",
        },
    }


class StubFhir:
    """An EHR FHIR server: reads/searches over a record, 414 for long GETs, optional paging."""

    def __init__(self, resources: list[dict[str, Any]], *, max_get: int = 2000) -> None:
        self.local = LocalFhir(resources)
        self.max_get = max_get
        self.requests: list[tuple[str, str, str | None]] = []  # method, url, Authorization
        self.page2: list[dict[str, Any]] = []
        self.endless = False
        self.body_padding = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.requests.append((request.method, url, request.headers.get("authorization")))
        if not url.startswith(FHIR):
            return httpx.Response(404)
        if request.method == "GET" and len(url) > self.max_get:
            return httpx.Response(414)
        if "_page=" in url:
            page = int(url.rsplit("_page=", 1)[1])
            bundle: dict[str, Any] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r} for r in (self.page2 if page == 2 else [])],
            }
            if self.endless:
                bundle["link"] = [
                    {"relation": "next", "url": f"{FHIR}/MedicationRequest?patient=p1&_page={page + 1}"}
                ]
            return httpx.Response(200, json=bundle)
        relative = url[len(FHIR) :]
        if request.method == "POST" and relative.split("?")[0].endswith("/_search"):
            relative = relative[: -len("/_search")] + "?" + request.content.decode()
        body = self.local.get(relative)
        if body is None:
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
        if self.body_padding:
            body = {**body, "meta": {"tag": [{"code": "x" * self.body_padding}]}}
        return httpx.Response(200, json=body)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def app_for(engine, stub: StubFhir, **settings: Any) -> TestClient:
    app = create_app(
        lambda: engine,
        auth=settings.pop("auth", None),
        fhir_transport=stub.transport(),
        clock=lambda: NOW,
        settings=ServiceSettings(**settings),
    )
    return TestClient(app)


def codes(response: httpx.Response) -> list[str]:
    return [c["source"]["topic"]["code"] for c in response.json()["cards"]]


def unavailable_text(response: httpx.Response) -> str:
    cards = [c for c in response.json()["cards"] if c["source"]["topic"]["code"] == "data-unavailable"]
    return " ".join(c["summary"] + " " + c.get("detail", "") for c in cards)


# ── long searches ──────────────────────────────────────────────────────────────────────────
def test_search_request_switches_to_post_over_1800_characters():
    short = search_request(FHIR, "Observation?patient=p1", 1800)
    assert short == ("GET", f"{FHIR}/Observation?patient=p1", None)
    method, url, form = search_request(FHIR, "Procedure?patient=p1&code=" + "x" * 2000, 1800)
    assert (method, url) == ("POST", f"{FHIR}/Procedure/_search") and form and form.startswith("patient=p1")


def test_long_templates_go_as_post_search_against_a_server_refusing_long_gets(engine, pack):
    assert max(len(t) for t in prefetch_templates(pack).values()) > 1800  # dialysisProcedures
    stub = StubFhir(record())
    with app_for(engine, stub) as client:
        response = client.post(
            SIGN, json=hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR)
        )
    assert response.status_code == 200, response.text
    assert "data-unavailable" not in codes(response)
    posts = [url for method, url, _ in stub.requests if method == "POST"]
    assert f"{FHIR}/Procedure/_search" in posts
    assert all(len(url) <= 1800 for method, url, _ in stub.requests if method == "GET")


def test_a_414_on_a_shorter_get_is_retried_as_post(engine):
    stub = StubFhir(record(), max_get=300)  # a stricter proxy: the Observation search is refused as GET
    with app_for(engine, stub) as client:
        response = client.post(
            SIGN, json=hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR)
        )
    assert response.status_code == 200, response.text
    assert "data-unavailable" not in codes(response)
    assert f"{FHIR}/Observation/_search" in [url for method, url, _ in stub.requests if method == "POST"]


# ── paged prefetch ─────────────────────────────────────────────────────────────────────────
def paged_prefetch(pack, next_url: str) -> dict[str, Any]:
    prefetch = LocalFhir(record()).prefetch(prefetch_templates(pack), {"patientId": "p1"})
    prefetch["medicationRequests"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": next_url}],
        "entry": [],
    }
    return prefetch


def test_next_link_of_a_prefetched_bundle_is_followed(engine, pack):
    stub = StubFhir(record())
    stub.page2 = [opioid()]
    body = hook_request(
        "order-sign",
        "p1",
        [medication_request()],
        fhir_server=FHIR,
        prefetch=paged_prefetch(pack, f"{FHIR}/MedicationRequest?patient=p1&_page=2"),
    )
    with app_for(engine, stub) as client:
        response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.text
    assert "BAC-C01" in codes(response)  # the opioid was on page 2
    assert "data-unavailable" not in codes(response)
    assert [url for _, url, _ in stub.requests] == [f"{FHIR}/MedicationRequest?patient=p1&_page=2"]
    assert response_problems(response.json()) == []


def test_next_link_to_another_origin_is_not_followed_and_the_list_is_named_partial(engine, pack):
    stub = StubFhir(record())
    for other in (
        "https://elsewhere.example/fhir/MedicationRequest?_page=2",
        "https://user:pw@ehr.example/fhir?_page=2",
    ):
        body = hook_request(
            "order-sign",
            "p1",
            [medication_request()],
            fhir_server=FHIR,
            token="tok-1",
            prefetch=paged_prefetch(pack, other),
        )
        with app_for(engine, stub) as client:
            response = client.post(SIGN, json=body)
        assert response.status_code == 200, response.text
        assert "medicationRequests" in unavailable_text(response)
    assert not [u for _, u, _ in stub.requests if not u.startswith(FHIR)]  # no call, no token elsewhere


def test_at_most_five_pages_per_key_then_partial(engine, pack):
    stub = StubFhir(record())
    stub.endless = True
    body = hook_request(
        "order-sign",
        "p1",
        [medication_request()],
        fhir_server=FHIR,
        prefetch=paged_prefetch(pack, f"{FHIR}/MedicationRequest?patient=p1&_page=2"),
    )
    with app_for(engine, stub) as client:
        response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.text
    assert len(stub.requests) == 4  # pages 2–5; page 1 came with the request
    assert "medicationRequests" in unavailable_text(response)


def test_paged_prefetch_without_fhir_server_is_partial(engine, pack):
    stub = StubFhir(record())
    body = hook_request(
        "order-sign",
        "p1",
        [medication_request()],
        prefetch=paged_prefetch(pack, f"{FHIR}/MedicationRequest?_page=2"),
    )
    with app_for(engine, stub) as client:
        response = client.post(SIGN, json=body)
    assert response.status_code == 200 and "medicationRequests" in unavailable_text(response)
    assert stub.requests == []


# ── who may be called ──────────────────────────────────────────────────────────────────────
@pytest.fixture
def signed(tmp_path: Path) -> Iterator[tuple[Signer, AuthSettings]]:
    signer = Signer(issuer="https://ehr.example")
    (tmp_path / "jwks.json").write_text(json.dumps(signer.jwks()), encoding="utf-8")
    issuers = tmp_path / "issuers.json"
    issuers.write_text(
        json.dumps({"issuers": {signer.issuer: {"jwks_file": "jwks.json", "fhir_servers": [FHIR]}}}),
        encoding="utf-8",
    )
    yield signer, AuthSettings.from_file(issuers, public_base_url="http://testserver")


def signed_post(client: TestClient, signer: Signer, body: dict[str, Any]) -> httpx.Response:
    token = signer.token(f"http://testserver{SIGN}")
    return client.post(SIGN, json=body, headers={"Authorization": f"Bearer {token}"})


def test_fhir_server_on_the_issuers_allow_list_is_called(engine, signed):
    signer, auth = signed
    stub = StubFhir(record())
    with app_for(engine, stub, auth=auth) as client:
        body = hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR, token="tok-1")
        response = signed_post(client, signer, body)
    assert response.status_code == 200, response.text
    assert stub.requests and {auth for _, _, auth in stub.requests} == {"Bearer tok-1"}


def test_fhir_server_off_the_allow_list_gets_no_call_and_no_token(engine, pack, signed):
    signer, auth = signed
    stub = StubFhir(record())
    with app_for(engine, stub, auth=auth) as client:
        before = client.get("/healthz").json()["request_limited_total"].get("callback-server-not-allowed", 0)
        body = hook_request(
            "order-sign", "p1", [medication_request()], fhir_server="https://evil.example/fhir"
        )
        assert signed_post(client, signer, body).status_code == 412  # essential data missing
        body["prefetch"] = {"patient": record()[0]}  # the prefetch is still evaluated
        response = signed_post(client, signer, body)
        assert response.status_code == 200, response.text
        assert "data-unavailable" in codes(response)
        after = client.get("/healthz").json()["request_limited_total"]["callback-server-not-allowed"]
    assert stub.requests == [] and after == before + 2


def test_loopback_http_only_with_the_trial_flag(engine):
    loopback = "http://127.0.0.1:9/fhir"
    stub = StubFhir(record())
    body = hook_request("order-sign", "p1", [medication_request()], fhir_server=loopback)
    with app_for(engine, stub) as client:
        assert client.post(SIGN, json=body).status_code == 412
    assert stub.requests == []
    with app_for(engine, stub, allow_loopback_fhir=True) as client:
        client.post(SIGN, json=body)
    assert stub.requests and all(url.startswith(loopback) for _, url, _ in stub.requests)


def test_token_for_another_patient_is_not_used(engine):
    stub = StubFhir(record())
    body = hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR, token="tok-1")
    body["fhirAuthorization"]["patient"] = "someone-else"
    with app_for(engine, stub) as client:
        before = client.get("/healthz").json()["request_limited_total"].get("callback-patient-mismatch", 0)
        assert client.post(SIGN, json=body).status_code == 412
        after = client.get("/healthz").json()["request_limited_total"]["callback-patient-mismatch"]
    assert stub.requests == [] and after == before + 1
    body["fhirAuthorization"]["patient"] = "Patient/p1"
    with app_for(engine, stub) as client:
        assert client.post(SIGN, json=body).status_code == 200
    assert stub.requests


def test_ids_outside_the_fhir_grammar_are_never_put_into_urls(engine):
    stub = StubFhir(record())
    body = hook_request("order-sign", "p1?_id=x", [medication_request(patient="p1")], fhir_server=FHIR)
    with app_for(engine, stub) as client:
        assert client.post(SIGN, json=body).status_code == 412
    assert stub.requests == []
    assert encode_id("Practitioner/a b&c") == "Practitioner/a%20b%26c"


def test_same_origin_rules():
    assert same_origin("https://ehr.example/fhir/x?_page=2", FHIR)
    assert same_origin("https://ehr.example:443/other", FHIR)
    assert not same_origin("http://ehr.example/fhir", FHIR)
    assert not same_origin("https://ehr.example:8443/fhir", FHIR)
    assert not same_origin("https://u:p@ehr.example/fhir", FHIR)
    assert not same_origin("https://ehr.example.evil/fhir", FHIR)


def test_call_backs_per_hook_are_capped(engine):
    stub = StubFhir(record())
    with app_for(engine, stub, callbacks=CallbackLimits(max_calls=3)) as client:
        response = client.post(
            SIGN, json=hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR)
        )
    assert len(stub.requests) <= 3
    assert response.status_code in (200, 412)


def test_bodies_are_capped_while_streaming(engine, pack):
    stub = StubFhir(record())
    stub.body_padding = 5000
    prefetch = LocalFhir(record()).prefetch(prefetch_templates(pack), {"patientId": "p1"})
    del prefetch["observations"]
    body = hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR, prefetch=prefetch)
    with app_for(engine, stub, callbacks=CallbackLimits(max_bytes_per_call=4000)) as client:
        response = client.post(SIGN, json=body)
        limited = client.get("/healthz").json()["request_limited_total"]
    assert response.status_code == 200, response.text
    assert "observations" in unavailable_text(response)
    assert limited.get("callback-bytes-per-call", 0) >= 1


# ── cards name their order ─────────────────────────────────────────────────────────────────
def test_cards_name_their_order_with_two_baclofen_drafts(engine, pack):
    ten = medication_request(id="mr-10", code="197391", dose=1, unit="{pill}", per_day=3)
    twenty = medication_request(id="mr-20", code="197392", dose=3, unit="{pill}", per_day=3)
    prefetch = LocalFhir(record()).prefetch(prefetch_templates(pack), {"patientId": "p1"})
    body = hook_request("order-sign", "p1", [ten, twenty], prefetch=prefetch)
    with app_for(engine, StubFhir(record())) as client:
        response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    assert response_problems(response.json()) == []
    named = [c for c in cards if c["source"]["topic"]["code"] != "data-unavailable"]
    assert named
    for card in named:
        first = card["detail"].split("\n", 1)[0]
        assert first.startswith(("**Order:** ", "**Orders:** ")), first
        assert "Baclofen 10 MG Oral Tablet" in first or "Baclofen 20 MG Oral Tablet" in first
    d01 = next(c for c in cards if c["source"]["topic"]["code"] == "BAC-D01")
    assert "Baclofen 20 MG Oral Tablet — 3 tablets, 3 times per day" in d01["detail"].split("\n", 1)[0]
    for card in cards:
        for suggestion in card.get("suggestions") or []:
            targets = {a.get("resourceId") for a in suggestion["actions"] if a["type"] == "delete"}
            assert targets <= {"MedicationRequest/mr-20", "MedicationRequest/mr-10"}
            if card is d01:
                assert targets == {"MedicationRequest/mr-20"}


def test_a_draft_without_id_gets_no_suggestion(engine, pack):
    draft = medication_request(id=None, code="197392", dose=3, unit="{pill}", per_day=3)
    prefetch = LocalFhir(record()).prefetch(prefetch_templates(pack), {"patientId": "p1"})
    with app_for(engine, StubFhir(record())) as client:
        response = client.post(SIGN, json=hook_request("order-sign", "p1", [draft], prefetch=prefetch))
    assert response.status_code == 200, response.text
    assert "BAC-D01" in codes(response)
    assert not any(c.get("suggestions") for c in response.json()["cards"])


def test_a_medication_reference_outside_the_id_grammar_is_not_fetched(engine, pack):
    draft = medication_request()
    draft.pop("medicationCodeableConcept")
    draft["medicationReference"] = {"reference": "Medication/../../admin?x=1"}
    prefetch = LocalFhir(record()).prefetch(prefetch_templates(pack), {"patientId": "p1"})
    stub = StubFhir(record())
    with app_for(engine, stub) as client:
        body = hook_request("order-sign", "p1", [draft], fhir_server=FHIR, prefetch=prefetch)
        assert client.post(SIGN, json=body).status_code == 412
    assert not [u for _, u, _ in stub.requests if "admin" in u]
