"""The service in-process: discovery, hooks (prefetch, call-back, unavailable data), errors, feedback."""

from __future__ import annotations

import csv
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import REPO, LocalFhir, RecordingSink, Signer, hook_request, medication_request

from cds_engine.service import AuthSettings, ServiceSettings, create_app
from cds_engine.service.discovery import prefetch_templates
from cds_engine.service.validate import response_problems

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FHIR = "https://ehr.example/fhir"
SIGN = "/cds-services/baclofen-order-sign"
SELECT = "/cds-services/baclofen-order-select"


def patient_record(patient: str = "p1", egfr: float = 45) -> list[dict]:
    return [
        {
            "resourceType": "Patient",
            "id": patient,
            "birthDate": "1950-01-01",
            "gender": "female",
            "name": [{"family": "Zzyzx-Secret", "given": ["Quintessa"]}],
        },
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
            "effectiveDateTime": "2025-02-01",
            "valueQuantity": {"value": egfr, "unit": "mL/min/{1.73_m2}"},
        },
    ]


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def fhir() -> LocalFhir:
    return LocalFhir(patient_record())


@pytest.fixture
def client(engine, sink, fhir) -> Iterator[TestClient]:
    app = create_app(
        lambda: engine,
        sink=sink,
        auth=None,
        fhir_transport=fhir.transport(FHIR),
        clock=lambda: NOW,
        settings=ServiceSettings(max_body_bytes=200_000),
    )
    with TestClient(app) as test_client:
        yield test_client


def full_prefetch(pack, fhir: LocalFhir, patient: str = "p1") -> dict:
    return fhir.prefetch(prefetch_templates(pack), {"patientId": patient})


# ── discovery ──────────────────────────────────────────────────────────────────────────────
def test_discovery_services_and_prefetch(client, pack):
    body = client.get("/cds-services").json()
    services = {s["id"]: s for s in body["services"]}
    assert set(services) == {"baclofen-order-select", "baclofen-order-sign", "baclofen-patient-view"}
    assert {s["hook"] for s in services.values()} == {"order-select", "order-sign", "patient-view"}
    prefetch = services["baclofen-order-sign"]["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    # every status, newest first, one bounded page (security issue 15, item 1)
    assert prefetch["medicationRequests"] == (
        "MedicationRequest?patient={{context.patientId}}&_sort=-authoredon&_count=1000"
    )
    for key in ("medicationStatements", "conditions", "allergies", "encounter", "dialysisProcedures"):
        assert key in prefetch
    assert "approval pending" in services["baclofen-order-sign"]["description"].lower()


def test_observation_template_has_every_vocabulary_egfr_code(client):
    template = client.get("/cds-services").json()["services"][0]["prefetch"]["observations"]
    rows = list(csv.DictReader((REPO / "rules" / "vocabulary" / "codes.csv").open(encoding="utf-8")))
    egfr = {r["code"] for r in rows if r["group"] == "egfr"}
    assert {"33914-3", "98979-8"} <= egfr
    for concept in ("egfr", "pregnancy_test"):
        for row in rows:
            if row["group"] == concept and row["system"] == "http://loinc.org":
                assert f"http://loinc.org|{row['code']}" in template, row["code"]
    assert "http://loinc.org|2160-0" in template and "http://loinc.org|38483-4" in template  # creatinine


# ── hooks ──────────────────────────────────────────────────────────────────────────────────
def test_order_sign_with_full_prefetch(client, sink, pack, fhir):
    body = hook_request(
        "order-sign", "p1", [medication_request(dose=40, per_day=3)], prefetch=full_prefetch(pack, fhir)
    )
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert response_problems(data) == []
    codes = [c["source"]["topic"]["code"] for c in data["cards"]]
    assert "BAC-D01" in codes and "BAC-R01" in codes
    order = {"critical": 0, "warning": 1, "info": 2}
    assert [order[c["indicator"]] for c in data["cards"]] == sorted(
        order[c["indicator"]] for c in data["cards"]
    )
    assert fhir.calls == []  # everything was prefetched
    assert {"parse", "prefetch", "facts", "evaluation", "cards", "store"} <= {
        part.split(";")[0] for part in response.headers["server-timing"].split(", ")
    }
    (record,) = sink.evaluations
    assert record.hook_instance == body["hookInstance"] and record.pack_id == "baclofen"
    assert {a.card_uuid for a in record.alerts} == {c["uuid"] for c in data["cards"]}


def test_order_key_is_stable_from_select_to_sign(client, sink, pack, fhir):
    prefetch = full_prefetch(pack, fhir)
    draft = medication_request(dose=5, per_day=3)
    client.post(SELECT, json=hook_request("order-select", "p1", [draft], prefetch=prefetch))
    signed = {**draft, "dosageInstruction": medication_request(dose=10, per_day=3)["dosageInstruction"]}
    client.post(SIGN, json=hook_request("order-sign", "p1", [signed], prefetch=prefetch))
    assert len(sink.evaluations) == 2
    assert sink.evaluations[0].order_key == sink.evaluations[1].order_key
    other = hook_request("order-sign", "p1", [medication_request(id="mr-2")], prefetch=prefetch)
    client.post(SIGN, json=other)
    assert sink.evaluations[2].order_key != sink.evaluations[0].order_key


def test_unrelated_order_gives_no_cards_and_no_fhir_call(client, fhir, sink):
    draft = medication_request()
    draft["medicationCodeableConcept"] = {
        "coding": [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "314231",
                "display": "Simvastatin 10 MG Oral Tablet",
            }
        ]
    }
    response = client.post(SIGN, json=hook_request("order-sign", "p1", [draft], fhir_server=FHIR))
    assert response.status_code == 200 and response.json() == {"cards": []}
    assert fhir.calls == [] and sink.evaluations == []


def test_partner_drug_while_on_baclofen(client, pack, fhir):
    fhir.resources.append({**medication_request(id="home", status="active"), "authoredOn": "2024-01-01"})
    opioid = medication_request(id="op")
    opioid["medicationCodeableConcept"] = {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049221"}],
        "text": "Acetaminophen 325 MG / oxyCODONE Hydrochloride 5 MG Oral Tablet",
    }
    response = client.post(
        SIGN, json=hook_request("order-sign", "p1", [opioid], prefetch=full_prefetch(pack, fhir))
    )
    assert "BAC-C01" in [c["source"]["topic"]["code"] for c in response.json()["cards"]]


def test_missing_keys_are_fetched_from_the_fhir_server(client, fhir):
    response = client.post(
        SIGN, json=hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR)
    )
    assert response.status_code == 200, response.text
    assert any(call.startswith("/Patient/p1") for call in fhir.calls)
    assert any(call.startswith("/Observation?patient=p1") for call in fhir.calls)
    cards = response.json()["cards"]
    assert "data-unavailable" not in [c["source"]["topic"]["code"] for c in cards]


def test_bearer_token_is_sent(engine, fhir):
    headers: list[str | None] = []
    inner = fhir.transport(FHIR)

    def handle(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("authorization"))
        return inner.handle_request(request)

    app = create_app(lambda: engine, auth=None, fhir_transport=httpx.MockTransport(handle), clock=lambda: NOW)
    with TestClient(app) as c:
        c.post(
            SIGN,
            json=hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR, token="tok-1"),
        )
    assert headers and set(headers) == {"Bearer tok-1"}


def test_unavailable_prefetch_gives_a_card_not_an_error(client, pack, fhir):
    prefetch = full_prefetch(pack, fhir)
    prefetch["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception"}],
    }
    del prefetch["allergies"]  # absent, and no fhirServer to read it from
    response = client.post(
        SIGN, json=hook_request("order-sign", "p1", [medication_request()], prefetch=prefetch)
    )
    assert response.status_code == 200
    card = next(c for c in response.json()["cards"] if c["source"]["topic"]["code"] == "data-unavailable")
    assert (
        card["indicator"] == "warning" and "conditions" in card["summary"] and "allergies" in card["summary"]
    )
    assert "BAC-S01" in card["detail"] and "BAC-A01" in card["detail"]
    assert response_problems(response.json()) == []


def test_null_prefetch_means_no_data(client, pack, fhir):
    prefetch = {k: None for k in prefetch_templates(pack)}
    prefetch["patient"] = fhir.read("Patient", "p1")
    response = client.post(
        SIGN, json=hook_request("order-sign", "p1", [medication_request()], prefetch=prefetch)
    )
    codes = [c["source"]["topic"]["code"] for c in response.json()["cards"]]
    assert response.status_code == 200 and "data-unavailable" not in codes
    assert "BAC-R00" in codes  # no eGFR: the rule that covers it says so


def test_412_only_when_patient_cannot_be_had(client, pack):
    response = client.post(SIGN, json=hook_request("order-sign", "p1", [medication_request()]))
    assert response.status_code == 412
    assert response.json()["issue"][0]["expression"] == ["context.patientId"]
    gone = client.post(
        SIGN,
        json=hook_request("order-sign", "nobody", [medication_request(patient="nobody")], fhir_server=FHIR),
    )
    assert gone.status_code == 412


def test_tolerated_deviations(client, pack, fhir):
    body = hook_request(
        "order-sign", "p1", [medication_request(status="active")], prefetch=full_prefetch(pack, fhir)
    )
    body["context"]["patientId"] = "Patient/p1"
    del body["context"]["draftOrders"]["type"]
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["cards"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b.update(hookInstance="not-a-uuid"), "hookInstance"),
        (lambda b: b["context"].update(userId="example"), "context.userId"),
        (lambda b: b["context"].update(patientId="p\x001"), "context.patientId"),
        (lambda b: b.update(hook="order-select"), "hook"),
        (
            lambda b: b["context"]["draftOrders"].update(resourceType="List"),
            "context.draftOrders.resourceType",
        ),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(authoredOn="0001-01-01"),
            "context.draftOrders.entry[0].resource.authoredOn",
        ),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(subject="Patient/p1"),
            "context.draftOrders.entry[0].resource.subject",
        ),
        (lambda b: b.update(fhirAuthorization={"access_token": "x"}), "fhirAuthorization.token_type"),
    ],
)
def test_400_names_the_field(client, change, field):
    body = hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR)
    change(body)
    response = client.post(SIGN, json=body)
    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert issue["expression"] == [field], issue


def test_400_on_bad_selection_and_bad_json_404_on_unknown_service(client):
    body = hook_request("order-select", "p1", [medication_request()])
    body["context"]["selections"] = ["MedicationRequest/elsewhere"]
    response = client.post(SELECT, json=body)
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == [
        "context.selections[0]"
    ]
    bad = client.post(SIGN, content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400
    assert (
        client.post(
            "/cds-services/nope", json=hook_request("order-sign", "p1", [medication_request()])
        ).status_code
        == 404
    )


def test_413_for_oversized_bodies(client):
    body = hook_request("order-sign", "p1", [medication_request()])
    body["prefetch"] = {"blob": {"resourceType": "Basic", "text": "x" * 300_000}}
    assert client.post(SIGN, json=body).status_code == 413


def test_logs_carry_no_phi(client, pack, fhir, caplog):
    caplog.set_level(logging.DEBUG)
    body = hook_request("order-sign", "p1", [medication_request(dose=40)], prefetch=full_prefetch(pack, fhir))
    client.post(SIGN, json=body)
    text = caplog.text
    assert body["hookInstance"] in text and "BAC-D01" in text and "baclofen-order-sign" in text
    for secret in ("Zzyzx-Secret", "Quintessa", "1950-01-01"):
        assert secret not in text


# ── feedback ───────────────────────────────────────────────────────────────────────────────
def test_feedback_both_override_shapes(client, sink, pack, fhir):
    cards = client.post(
        SIGN,
        json=hook_request(
            "order-sign", "p1", [medication_request(dose=40)], prefetch=full_prefetch(pack, fhir)
        ),
    ).json()["cards"]
    card = cards[0]
    reason = card["overrideReasons"][0]
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2025-03-01T12:05:00Z",
                "overrideReason": {"reason": reason, "userComment": "known patient"},
            },
            {
                "card": cards[1]["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2025-03-01T12:05:00Z",
                "overrideReason": reason,
            },  # legacy sandbox shape
        ]
    }
    response = client.post("/cds-services/baclofen-order-sign/feedback", json=feedback)
    assert response.status_code == 200 and response.json() == {"received": 2}
    assert [f.override_reason_code for f in sink.feedback] == [reason["code"], reason["code"]]
    assert sink.feedback[0].comment == "known patient"
    with_suggestion = next((c for c in cards if c.get("suggestions")), None)
    if with_suggestion:
        accepted = {
            "feedback": [
                {
                    "card": with_suggestion["uuid"],
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": with_suggestion["suggestions"][0]["uuid"]}],
                    "outcomeTimestamp": "2025-03-01T12:06:00Z",
                }
            ]
        }
        assert client.post("/cds-services/baclofen-order-sign/feedback", json=accepted).status_code == 200
    unknown = {
        "feedback": [
            {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2025-03-01T12:05:00Z"}
        ]
    }
    assert client.post("/cds-services/baclofen-order-sign/feedback", json=unknown).json()["unknownCards"]
    bad = {
        "feedback": [
            {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2025-03-01T12:05:00Z"}
        ]
    }
    assert client.post("/cds-services/baclofen-order-sign/feedback", json=bad).status_code == 400


# ── plain JSON, health, CORS ───────────────────────────────────────────────────────────────
def test_evaluate_endpoint(client, sink):
    facts = {
        "as_of": "2025-03-01T12:00:00Z",
        "birth_date": "1950-01-01",
        "order": {
            "product": {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197391"},
            "route": "oral",
            "dose_amount": 40,
            "dose_unit": "mg",
            "doses_per_day": 3,
        },
    }
    response = client.post("/evaluate", json=facts)
    assert response.status_code == 200
    assert "BAC-D01" in [a["rule_id"] for a in response.json()]
    assert sink.evaluations[-1].source == "evaluate"
    bad = client.post("/evaluate", json={**facts, "as_of": "2025-03-01T12:00:00"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["as_of"]
    typo = client.post("/evaluate", json={**facts, "weigth_kg": 70})
    assert typo.status_code == 400 and typo.json()["issue"][0]["expression"] == ["weigth_kg"]
    schema = client.get("/openapi.json").json()
    assert {
        "/evaluate",
        "/cds-services",
        "/cds-services/{service_id}",
        "/cds-services/{service_id}/feedback",
    } <= set(schema["paths"])


def test_healthz_and_cors_preflight_without_token(engine, tmp_path):
    signer = Signer()
    app = create_app(
        lambda: engine, auth=AuthSettings.from_file(signer.issuers_file(tmp_path)), clock=lambda: NOW
    )
    with TestClient(app) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        preflight = c.options(
            SIGN,
            headers={
                "Origin": "https://sandbox.cds-hooks.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert c.get("/cds-services").status_code == 401
        ok = c.get(
            "/cds-services",
            headers={"Authorization": f"Bearer {signer.token('http://testserver/cds-services')}"},
        )
        assert ok.status_code == 200
        denied = c.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
        assert denied.status_code == 401 and denied.json()["issue"][0]["diagnostics"] == "unauthorized"
        assert "access-control-allow-origin" in denied.headers


def _opioid(id: str = "op") -> dict:
    order = medication_request(id=id)
    order["medicationCodeableConcept"] = {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049221"}],
        "text": "Acetaminophen 325 MG / oxyCODONE Hydrochloride 5 MG Oral Tablet",
    }
    return order


def test_partner_drug_without_the_packs_drug_is_silent(client, pack, fhir, sink):
    response = client.post(
        SIGN, json=hook_request("order-sign", "p1", [_opioid()], prefetch=full_prefetch(pack, fhir))
    )
    assert response.status_code == 200 and response.json() == {"cards": []}
    assert sink.evaluations == []
    prefetch = full_prefetch(pack, fhir)
    prefetch["medicationRequests"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    unknown = client.post(SIGN, json=hook_request("order-sign", "p1", [_opioid()], prefetch=prefetch))
    codes = [c["source"]["topic"]["code"] for c in unknown.json()["cards"]]
    assert codes == ["data-unavailable"]  # cannot tell whether the patient takes the pack's drug


def test_fhir_server_without_tls_is_not_called(engine, fhir):
    app = create_app(lambda: engine, auth=None, fhir_transport=fhir.transport("http://ehr.example/fhir"))
    with TestClient(app) as c:
        body = hook_request("order-sign", "p1", [medication_request()], fhir_server="http://ehr.example/fhir")
        assert c.post(SIGN, json=body).status_code == 412  # the patient could not be read safely
    assert fhir.calls == []


def test_jwks_from_an_allow_listed_url_and_jku_check():
    import asyncio

    from cds_engine.service.auth import AuthError, JwtVerifier, TrustedIssuer

    signer = Signer()
    url = "https://ehr.example/.well-known/jwks.json"
    fetched: list[str] = []

    def serve_jwks(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(200, json=signer.jwks())

    settings = AuthSettings(issuers={signer.issuer: TrustedIssuer(jwks_url=url)})
    verifier = JwtVerifier(settings, client=httpx.AsyncClient(transport=httpx.MockTransport(serve_jwks)))
    aud = "https://cds.example/cds-services"

    async def run() -> None:
        claims = await verifier.verify(signer.token(aud), aud)
        assert claims["iss"] == signer.issuer
        await verifier.verify(signer.token(aud), aud)  # cached: no second fetch
        bad = jwt_with_jku(signer, aud, "https://attacker.example/jwks.json")
        with pytest.raises(AuthError):
            await verifier.verify(bad, aud)

    asyncio.run(run())
    assert fetched == [url]


def jwt_with_jku(signer: Signer, aud: str, jku: str) -> str:
    import time as _time

    import jwt

    now = int(_time.time())
    claims = {"iss": signer.issuer, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, signer.key, algorithm="ES384", headers={"kid": signer.kid, "jku": jku})
