"""Prefetch values and co-medications the service cannot read never vanish without a card.

Red-team re-audit (``reaudit-sec`` findings 1, 2, 3, 10), through the app (``create_app``, the real
routes, a stub FHIR server as an httpx transport):

1. a prefetch key sent in any shape but null or a readable Bundle (a string, a list, a number, a
   resource of another type, a Bundle with unreadable entries or fewer entries than its total)
   gets the data-unavailable card naming that key — the same as an absent key;
2. a co-medication naming its product by an unresolvable ``medicationReference`` makes its list
   unavailable (card: an active medicine could not be identified); contained, prefetched or read
   from ``fhirServer`` it fires the interaction rule as an inline code does; patient-view does
   not answer ``[]`` for baclofen by unresolved reference, a paged list or a non-Bundle;
3. a fetched body nested past the recursion limit, or a paging link httpx cannot send, makes its
   key unavailable — 200 with the card, never a 500;
4. a draft coded with the RxNorm OID ``urn:oid:2.16.840.1.113883.6.88`` reads as RxNorm.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import LocalFhir, baclofen_concept, hook_request, medication_request

from cds_engine.codes import SYSTEM_OIDS
from cds_engine.service import ServiceSettings, create_app
from cds_engine.service.discovery import patient_view_templates, prefetch_templates
from cds_engine.vocabulary import normalize_system

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
FHIR = "https://ehr.example/fhir"
SIGN = "/cds-services/baclofen-order-sign"
VIEW = "/cds-services/baclofen-patient-view"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
OPIOID = {
    "coding": [{"system": RXNORM, "code": "1049221"}],
    "text": "Acetaminophen 325 MG / oxyCODONE Hydrochloride 5 MG Oral Tablet",
}


def record() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01", "gender": "female"},
        {
            "resourceType": "Observation", "id": "o1", "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
            "effectiveDateTime": "2026-11-20",
            "valueQuantity": {"value": 85, "unit": "mL/min/{1.73_m2}"},
        },
    ]


def opioid(**product: Any) -> dict[str, Any]:
    """The patient's active opioid (BAC-C01's partner); ``product`` replaces its inline concept."""
    out: dict[str, Any] = {
        "resourceType": "MedicationRequest", "id": "home-opioid", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-10-01",
        "medicationCodeableConcept": copy.deepcopy(OPIOID),
    }
    if product:
        del out["medicationCodeableConcept"]
        out.update(product)
    return out


OPIOID_MEDICATION = {"resourceType": "Medication", "id": "x", "code": copy.deepcopy(OPIOID)}


class Stub:
    """The EHR's FHIR server over a record; ``override`` answers chosen paths with raw bytes."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.local = LocalFhir(resources)
        self.paths: list[str] = []
        self.override: dict[str, bytes] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        relative = str(request.url)[len(FHIR):]
        self.paths.append(relative)
        for prefix, raw in self.override.items():
            if relative.startswith(prefix):
                return httpx.Response(200, content=raw, headers={"content-type": "application/fhir+json"})
        body = self.local.get(relative)
        if body is None:
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=body)


def client_for(engine, stub: Stub | None = None) -> TestClient:
    stub = stub or Stub([])
    app = create_app(lambda: engine, auth=None, fhir_transport=httpx.MockTransport(stub.handle),
                     clock=lambda: NOW, settings=ServiceSettings())
    return TestClient(app, raise_server_exceptions=False)


def full_prefetch(pack, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """Every key filled the way an EHR honouring our templates fills it."""
    return LocalFhir(resources).prefetch(prefetch_templates(pack), {"patientId": "p1", "encounterId": "e1"})


def codes(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [c["source"]["topic"]["code"] for c in response.json()["cards"]]


def unavailable_text(response: httpx.Response) -> str:
    cards = [c for c in response.json()["cards"] if c["source"]["topic"]["code"] == "data-unavailable"]
    return " ".join(c["summary"] + " " + c.get("detail", "") for c in cards)


def sign(client: TestClient, prefetch: dict[str, Any], *, fhir: bool = False,
         drafts: list[dict[str, Any]] | None = None) -> httpx.Response:
    body = hook_request("order-sign", "p1", drafts or [medication_request()], prefetch=prefetch,
                        fhir_server=FHIR if fhir else None, encounter="e1")
    return client.post(SIGN, json=body)


# ── 1. every malformed shape of every key: the data-unavailable card ───────────────────────────
def _shapes(expected: str) -> dict[str, Any]:
    one = {"resourceType": expected, "id": "r1", "subject": {"reference": "Patient/p1"}}
    return {
        "string": "garbage",
        "empty list": [],
        "entry list": [{"resource": one}],
        "number": 5,
        "true": True,
        "no resourceType": {"entry": [{"resource": one}]},
        "another type": {"resourceType": "Practitioner", "id": "x"},
        "entries without resource": {"resourceType": "Bundle", "type": "searchset",
                                     "entry": [{"fullUrl": "x"}]},
        "entry a string": {"resourceType": "Bundle", "type": "searchset", "entry": "x"},
        "total above entries": {"resourceType": "Bundle", "type": "searchset", "total": 14, "entry": []},
        "entries of another type": {"resourceType": "Bundle", "type": "searchset",
                                    "entry": [{"resource": {"resourceType": "Practitioner", "id": "x"}}]},
    }


def _list_keys(pack) -> list[str]:
    return [k for k, t in prefetch_templates(pack).items() if "?" in t]


@pytest.mark.parametrize("fhir", [False, True], ids=["no-fhirServer", "fhirServer"])
def test_every_malformed_shape_of_every_list_key_gets_the_card(engine, pack, fhir):
    templates = prefetch_templates(pack)
    stub = Stub([*record(), opioid()])
    failures = []
    with client_for(engine, stub) as client:
        assert "BAC-C01" in codes(sign(client, full_prefetch(pack, [*record(), opioid()])))  # the baseline
        for key in _list_keys(pack):
            expected = templates[key].split("?")[0]
            for label, value in _shapes(expected).items():
                prefetch = full_prefetch(pack, [*record(), opioid()])
                prefetch[key] = value
                response = sign(client, prefetch, fhir=fhir)
                if response.status_code != 200 or key not in unavailable_text(response):
                    failures.append((key, label, response.status_code, response.text[:200]))
    assert failures == []


def test_a_single_resource_for_a_search_is_used_and_the_list_named_incomplete(engine, pack):
    with client_for(engine) as client:
        prefetch = full_prefetch(pack, record())
        prefetch["medicationRequests"] = opioid()  # a bare resource where the search's Bundle belongs
        response = sign(client, prefetch)
    assert "BAC-C01" in codes(response)  # its data is read ...
    assert "medicationRequests" in unavailable_text(response)  # ... and the list is not called whole


def test_a_malformed_patient_key_is_not_an_all_clear(engine, pack):
    with client_for(engine) as client:
        for value in ("garbage", [], {"resourceType": "Practitioner", "id": "p1"}, 5):
            prefetch = full_prefetch(pack, record())
            prefetch["patient"] = value
            response = sign(client, prefetch)
            assert response.status_code == 412, (value, response.text)


def test_readable_bundles_and_null_stay_as_they_were(engine, pack):
    """No card for what is whole: included Medications, search outcomes, null, a matching total."""
    with client_for(engine) as client:
        prefetch = full_prefetch(pack, [*record(), opioid()])
        prefetch["medicationRequests"]["entry"].append(
            {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}})
        prefetch["medicationRequests"]["entry"].append(
            {"resource": {"resourceType": "Medication", "id": "m9"}, "search": {"mode": "include"}})
        prefetch["allergies"] = None
        response = sign(client, prefetch)
    assert "BAC-C01" in codes(response) and "data-unavailable" not in codes(response)


# ── 2. co-medications by reference ──────────────────────────────────────────────────────────────
def test_an_unresolvable_co_medication_gets_the_card_without_fhir_server(engine, pack):
    with client_for(engine) as client:
        response = sign(client, full_prefetch(pack, [*record(), opioid(medicationReference={
            "reference": "Medication/x"})]))
    assert "medicationRequests" in unavailable_text(response)
    assert "could not be identified" in unavailable_text(response)


def test_an_unresolvable_co_medication_is_read_then_named(engine, pack):
    stub = Stub(record())  # the server has no Medication/x
    with client_for(engine, stub) as client:
        response = sign(client, full_prefetch(pack, [*record(), opioid(medicationReference={
            "reference": "Medication/x"})]), fhir=True)
    assert "/Medication/x" in stub.paths  # read like a draft's product
    assert "could not be identified" in unavailable_text(response)


@pytest.mark.parametrize("where", ["contained", "prefetched", "read"])
def test_a_resolvable_co_medication_fires_the_interaction(engine, pack, where):
    resources = record()
    if where == "contained":
        med = opioid(medicationReference={"reference": "#m"},
                     contained=[{**OPIOID_MEDICATION, "id": "m"}])
    else:
        med = opioid(medicationReference={"reference": "Medication/x"})
    prefetch = full_prefetch(pack, [*resources, med])
    if where == "prefetched":
        prefetch["medicationRequests"]["entry"].append(
            {"resource": OPIOID_MEDICATION, "search": {"mode": "include"}})
    stub = Stub([*resources, OPIOID_MEDICATION])
    with client_for(engine, stub) as client:
        response = sign(client, prefetch, fhir=where == "read")
    assert "BAC-C01" in codes(response)
    assert "data-unavailable" not in codes(response)


def test_an_unidentifiable_reference_in_another_list_is_named_too(engine, pack):
    with client_for(engine) as client:
        prefetch = full_prefetch(pack, record())
        prefetch["medicationStatements"] = {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "MedicationStatement", "id": "s1", "status": "active",
                          "subject": {"reference": "Patient/p1"},
                          "medicationReference": {"reference": "https://elsewhere/Medication/1"}}}]}
        response = sign(client, prefetch)
    assert "medicationStatements" in unavailable_text(response)


# ── patient-view ─────────────────────────────────────────────────────────────────────────────────
def view(client: TestClient, prefetch: dict[str, Any], *, fhir: bool = False) -> httpx.Response:
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": "7f1e0c2a-0b6e-4d3c-9a8e-1f2d3c4b5a69",
                            "context": {"userId": "Practitioner/doc", "patientId": "p1", "encounterId": "e1"},
                            "prefetch": prefetch}
    if fhir:
        body["fhirServer"] = FHIR
        body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": "cds-engine"}
    return client.post(VIEW, json=body)


def baclofen_active(**product: Any) -> dict[str, Any]:
    out = medication_request(id="act-1", status="active", dose=20, per_day=3, authoredOn="2024-01-01")
    if product:
        del out["medicationCodeableConcept"]
        out.update(product)
    return out


def view_prefetch(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return LocalFhir(resources).prefetch(patient_view_templates(), {"patientId": "p1"})


@pytest.fixture
def viewing(engine):
    with client_for(engine) as client:
        if client.get("/cds-services").json()["services"] and not any(
            s["id"] == "baclofen-patient-view" for s in client.get("/cds-services").json()["services"]
        ):
            pytest.skip("the shipped pack offers no patient-view service")
        yield client


def test_patient_view_unresolved_baclofen_is_not_an_all_clear(viewing):
    prefetch = view_prefetch([*record(), baclofen_active(medicationReference={"reference": "Medication/b"})])
    response = view(viewing, prefetch)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    assert cards and "could not be identified" in cards[0]["detail"]


@pytest.mark.parametrize("shape", ["paged", "not a Bundle", "entries without resource"])
def test_patient_view_list_not_whole_is_not_an_all_clear(viewing, shape):
    prefetch = view_prefetch(record())
    if shape == "paged":
        prefetch["activeMedicationRequests"]["link"] = [
            {"relation": "next", "url": f"{FHIR}/MedicationRequest?_page=2"}]
    elif shape == "not a Bundle":
        prefetch["activeMedicationRequests"] = {"resourceType": "Patient", "id": "p1"}
    else:
        prefetch["activeMedicationRequests"]["entry"] = [{"fullUrl": "x"}]
    response = view(viewing, prefetch)
    assert response.status_code == 200, response.text
    assert [c["source"]["topic"]["code"] for c in response.json()["cards"]] == ["monitoring-unchecked"]


def test_patient_view_reads_a_referenced_baclofen(engine):
    baclofen = {"resourceType": "Medication", "id": "b", "code": baclofen_concept()}
    resources = [*record(), baclofen_active(medicationReference={"reference": "Medication/b"}), baclofen]
    stub = Stub(resources)
    with client_for(engine, stub) as client:
        response = view(client, view_prefetch([r for r in resources if r is not baclofen]), fhir=True)
    assert response.status_code == 200, response.text
    assert "/Medication/b" in stub.paths
    assert "could not be identified" not in response.text


# ── 3. a key that cannot be fetched or parsed: its card, never a 500 ───────────────────────────
def test_a_fetched_body_nested_too_deep_makes_its_key_unavailable(engine, pack):
    stub = Stub([*record(), opioid()])
    deep = b"[" * 200_000 + b"]" * 200_000
    stub.override["/MedicationRequest?"] = b'{"resourceType":"Bundle","entry":' + deep + b"}"
    prefetch = full_prefetch(pack, record())
    del prefetch["medicationRequests"]
    with client_for(engine, stub) as client:
        response = sign(client, prefetch, fhir=True)
    assert response.status_code == 200, response.text
    assert "medicationRequests" in unavailable_text(response)


@pytest.mark.parametrize(
    "link", [f"{FHIR}/MedicationRequest?_page=\x01", f"{FHIR}/MedicationRequest?x=" + "a" * 70_000]
)
def test_a_paging_link_httpx_cannot_send_makes_its_key_unavailable(engine, pack, link):
    prefetch = full_prefetch(pack, record())
    prefetch["medicationRequests"]["link"] = [{"relation": "next", "url": link}]
    with client_for(engine, Stub(record())) as client:
        response = sign(client, prefetch, fhir=True)
    assert response.status_code == 200, response.text
    assert "medicationRequests" in unavailable_text(response)


def test_a_fetched_search_answer_that_is_not_a_whole_bundle_is_unavailable(engine, pack):
    stub = Stub([*record(), opioid()])
    stub.override["/MedicationRequest?"] = b'{"resourceType":"Bundle","entry":[{"fullUrl":"x"}]}'
    prefetch = full_prefetch(pack, record())
    del prefetch["medicationRequests"]
    with client_for(engine, stub) as client:
        response = sign(client, prefetch, fhir=True)
    assert "medicationRequests" in unavailable_text(response)


# ── 4. OID aliases of the vocabulary's code systems ─────────────────────────────────────────────
def test_every_known_system_oid_normalises_to_its_uri():
    for uri, oid in SYSTEM_OIDS.items():
        assert normalize_system(f"urn:oid:{oid}") == uri
        assert normalize_system(f"URN:OID:{oid}") == uri
    assert normalize_system("urn:oid:1.2.3") == "urn:oid:1.2.3"


def test_a_draft_coded_with_the_rxnorm_oid_fires_as_rxnorm(engine, pack):
    draft = medication_request()
    draft["medicationCodeableConcept"]["coding"][0]["system"] = f"urn:oid:{SYSTEM_OIDS[RXNORM]}"
    draft["medicationCodeableConcept"].pop("text")
    draft["medicationCodeableConcept"]["coding"][0].pop("display")
    canonical = medication_request()
    canonical["medicationCodeableConcept"].pop("text")
    canonical["medicationCodeableConcept"]["coding"][0].pop("display")
    with client_for(engine) as client:
        by_oid = codes(sign(client, full_prefetch(pack, [*record(), opioid()]), drafts=[draft]))
        by_uri = codes(sign(client, full_prefetch(pack, [*record(), opioid()]), drafts=[canonical]))
    assert "BAC-C01" in by_uri
    assert by_oid == by_uri


def test_a_fetched_body_nested_too_deep_is_refused_not_raised():
    """The parser's own guard (the hook's per-key catch is a second one, tested above)."""
    from cds_engine.service.callbacks import CallbackRefused, _parse_fetched

    with pytest.raises(CallbackRefused):
        _parse_fetched(b"[" * 200_000 + b"]" * 200_000)
    assert _parse_fetched(b'{"resourceType":"Bundle"}') == {"resourceType": "Bundle"}


def test_a_paging_link_httpx_cannot_send_is_not_followed():
    from cds_engine.service.prefetch import _follows

    assert _follows(f"{FHIR}/MedicationRequest?_page=2", FHIR)
    assert not _follows(f"{FHIR}/MedicationRequest?_page=\x01", FHIR)
    assert not _follows(f"{FHIR}/MedicationRequest?x=" + "a" * 70_000, FHIR)


def test_any_failure_fetching_one_key_makes_that_key_unavailable(engine, pack):
    """An exception of a kind no list foresaw (here a RuntimeError from the transport): a card."""
    stub = Stub([*record(), opioid()])
    handle = stub.handle

    def failing(request: httpx.Request) -> httpx.Response:
        if "/Condition?" in str(request.url):
            raise RuntimeError("unforeseen")
        return handle(request)

    stub.handle = failing  # type: ignore[method-assign]
    prefetch = full_prefetch(pack, record())
    del prefetch["conditions"]
    with client_for(engine, stub) as client:
        response = sign(client, prefetch, fhir=True)
    assert response.status_code == 200, response.text
    assert "conditions" in unavailable_text(response)
