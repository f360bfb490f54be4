"""Hostile and malformed input through the service (in-process) and the FHIR adapter.

What a hospital's interface engine, a buggy EHR build or an attacker can send must end in a clear
4xx or a normal answer — never an exception, a 500 or a silently accepted nonsense dose:
oversized and deeply nested bodies, wrong content types, control characters and odd unicode in
free text, odd date formats, units the engine does not know, negative and absurd doses, and
hypothesis-generated FHIR resources and PatientFacts-like JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tests.service_helpers import LocalFhir, hook_request, medication_request

from cds_engine.service import ServiceSettings, create_app
from cds_engine.sources.fhir import facts_from_resources

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FHIR = "https://ehr.example/fhir"
SIGN = "/cds-services/baclofen-order-sign"
LIMIT = 100_000
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def record() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"},
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
            "effectiveDateTime": "2025-02-01",
            "valueQuantity": {"value": 75, "unit": "mL/min/{1.73_m2}"},
        },
    ]


@pytest.fixture(scope="module")
def client(engine) -> Iterator[TestClient]:
    app = create_app(
        lambda: engine,
        auth=None,
        fhir_transport=LocalFhir(record()).transport(FHIR),
        clock=lambda: NOW,
        settings=ServiceSettings(max_body_bytes=LIMIT),
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def sign(client: TestClient, *drafts: dict[str, Any]) -> Any:
    return client.post(SIGN, json=hook_request("order-sign", "p1", list(drafts), fhir_server=FHIR))


def codes(response: Any) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {c["source"]["topic"]["code"]: c["indicator"] for c in response.json()["cards"]}


def problem(response: Any) -> str:
    issue = response.json()["issue"][0]
    return " ".join([issue.get("diagnostics", ""), *issue.get("expression", [])])


# ── transport-level abuse ──────────────────────────────────────────────────────────────────
def test_oversized_body_is_413_at_the_configured_limit(client):
    body = hook_request("order-sign", "p1", [medication_request()])
    body["prefetch"] = {"blob": {"resourceType": "Basic", "text": "x" * LIMIT}}
    response = client.post(SIGN, json=body)
    assert response.status_code == 413
    assert str(LIMIT) in problem(response)


def test_oversized_body_without_content_length_is_413(client):
    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to refuse up front
        yield b'{"hook": "order-sign", "x": "'
        for _ in range(30):
            yield b"y" * 10_000
        yield b'"}'

    response = client.post(SIGN, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize("depth", [200, 5_000, 15_000])  # 15,000 levels: still under the body limit
@pytest.mark.parametrize("path", [SIGN, "/evaluate", SIGN + "/feedback"])
def test_deeply_nested_json_is_400_not_500(client, path, depth):
    for payload in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        response = client.post(path, content=payload, headers={"content-type": "application/json"})
        assert response.status_code == 400, (depth, response.status_code)
        assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data"],
)
@pytest.mark.parametrize("path", [SIGN, "/evaluate"])
def test_wrong_content_types_are_refused(client, path, content_type):
    body = json.dumps(hook_request("order-sign", "p1", [medication_request()]))
    response = client.post(path, content=body, headers={"content-type": content_type})
    assert response.status_code == 415
    assert "application/json" in problem(response)


def test_json_with_a_json_media_type_is_accepted(client):
    body = json.dumps(hook_request("order-sign", "p1", [medication_request()], fhir_server=FHIR))
    for content_type in ("application/json; charset=utf-8", "application/fhir+json"):
        assert client.post(SIGN, content=body, headers={"content-type": content_type}).status_code == 200


def test_non_utf8_and_garbage_bodies(client):
    for payload in (b"\xff\xfe\x00{", b"", b"null", b"[]", b'"text"', b"1e999999"):
        response = client.post(SIGN, content=payload, headers={"content-type": "application/json"})
        assert response.status_code == 400, (payload, response.status_code)


# ── free text, dates, units, doses ─────────────────────────────────────────────────────────
NASTY = [
    "Ærøskøbing-Łódź 李小龙 محمد",
    "tab\tnew\nline\rcarriage \x00 nul \x07 bell \x1b[31m ansi",
    "\u202eright-to-left override \u200b zero width \ufeff bom",
    "😀🧪 astral plane",
    "' OR 1=1 --; DROP TABLE evaluations; <script>alert(1)</script> {{7*7}} ${jndi:ldap://x}",
    "x" * 5_000,
]


@pytest.mark.parametrize("text", NASTY)
def test_unicode_and_control_characters_in_free_text(client, text):
    draft = medication_request(
        reasonCode=[{"text": text, "coding": [{"system": "http://example.org", "display": text}]}],
        note=[{"text": text}],
        dosageInstruction=[{**medication_request()["dosageInstruction"][0], "text": text}],
    )
    patient = {**record()[0], "name": [{"family": text, "given": [text]}]}
    body = hook_request("order-sign", "p1", [draft], prefetch={"patient": patient})
    body["fhirServer"] = FHIR
    response = client.post(SIGN, json=body)
    if "\x00" in text:  # a NUL in the context cannot be stored: 400 naming the field, nothing echoed
        assert response.status_code == 400, response.text
        field = response.json()["issue"][0]["expression"][0]
        assert field.startswith("context.draftOrders.entry[0].resource.")
        assert "nul" not in response.text
        return
    assert response.status_code == 200, response.text
    assert text not in response.text  # free text is never echoed into cards


@pytest.mark.parametrize("value", ["2025-13-45", "01/02/2025", "yesterday", "2025-02-30T25:00:00Z", "１２３"])
def test_odd_dates_are_400_naming_the_field(client, value):
    response = sign(client, medication_request(authoredOn=value))
    assert response.status_code == 400
    assert "context.draftOrders.entry[0].resource.authoredOn" in problem(response)


@pytest.mark.parametrize("value", ["2025", "2025-02", "2025-02-01T10:00:00+05:30"])
def test_partial_fhir_dates_are_tolerated(client, value):
    assert sign(client, medication_request(authoredOn=value)).status_code == 200


def test_known_units_convert_and_unknown_units_cannot_be_assessed(client):
    for unit in ("mcg", "μg", "ug"):  # oral baclofen in micrograms: a likely unit error
        assert "BAC-F03" in codes(sign(client, medication_request(dose=10, unit=unit))), unit
    big = codes(sign(client, medication_request(dose=1, unit="g")))  # 3 g/day: converted, not ignored
    assert big.get("BAC-D01") == "critical"
    # "" / " mg" / "m g\n" are not valid FHIR at all: that dose cannot be read — cannot-assess, not a 400
    for unit in ("mL", "drop", "puff", "mmol", "mg/kg", "tsp", "", " mg", "m g\n"):
        found = codes(sign(client, medication_request(dose=10, unit=unit)))
        assert "missing-data" in found, unit  # "dose cannot be converted to mg" — never silently accepted
        assert "BAC-D01" not in found
    response = sign(client, medication_request(dose=10, unit="\x00"))  # a NUL: 400 naming the element
    assert response.status_code == 400 and "doseQuantity.unit" in problem(response)


@pytest.mark.parametrize("where", ["doseQuantity", "doseRange.low", "doseRange.high"])
def test_negative_dose_is_400_naming_the_field(client, where):
    draft = medication_request()
    rate = draft["dosageInstruction"][0]["doseAndRate"][0]
    quantity = {"value": -10, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
    if where == "doseQuantity":
        rate["doseQuantity"] = quantity
    else:
        rate.pop("doseQuantity")
        rate["doseRange"] = {"low": {**quantity, "value": 5}, "high": {**quantity, "value": 20}}
        rate["doseRange"][where.split(".")[1]] = quantity
    response = sign(client, draft)
    assert response.status_code == 400, response.text
    assert f"dosageInstruction[0].doseAndRate[0].{where}.value" in problem(response)


@pytest.mark.parametrize("dose", [10_000, 1e12, 1e300])
def test_absurd_doses_raise_a_critical_dose_alert(client, dose):
    found = codes(sign(client, medication_request(dose=dose)))
    assert found.get("BAC-D01") == "critical"


def test_evaluate_rejects_negative_dose_and_flags_absurd_dose(client):
    facts: dict[str, Any] = {
        "as_of": "2025-03-01T12:00:00+00:00",
        "birth_date": "1960-05-02",
        "renal": {"egfr": {"value": 80, "date": "2025-02-01"}},
        "order": {
            "product": {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197391"},
            "route": "oral", "dose_amount": -5, "dose_unit": "mg", "doses_per_day": 3, "action": "new",
        },
    }
    refused = client.post("/evaluate", json=facts)
    assert refused.status_code in (400, 422) and "order" in problem(refused)
    facts["order"]["dose_amount"] = 10_000
    alerts = client.post("/evaluate", json=facts)
    assert alerts.status_code == 200
    assert any(a["rule_id"] == "BAC-D01" and a["severity"] == "critical" for a in alerts.json())


# ── generated FHIR resources ──────────────────────────────────────────────────────────────
_text = st.text(max_size=12)
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False), _text
)
_codes = st.sampled_from(["197391", "197392", "98979-8", "33914-3", "N18.5", "Z99.2", "x", ""])
_systems = st.sampled_from(
    ["http://www.nlm.nih.gov/research/umls/rxnorm", "http://loinc.org", "http://hl7.org/fhir/sid/icd-10-cm",
     "http://snomed.info/sct", "urn:x"]
)
_coding = st.fixed_dictionaries({}, optional={"system": _systems, "code": _codes, "display": _text})
_concept = st.fixed_dictionaries({}, optional={"coding": st.lists(_coding, max_size=2), "text": _text})
_date = st.one_of(
    st.dates().map(str), st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()), _text
)
_quantity = st.fixed_dictionaries(
    {}, optional={"value": st.one_of(st.floats(allow_nan=False), st.integers(), _text),
                  "unit": st.sampled_from(["mg", "mcg", "g", "mL", "drop", "mL/min/{1.73_m2}", ""]),
                  "comparator": st.sampled_from([">", "<", ">=", "<=", "x"])},
)
_ref = st.fixed_dictionaries({"reference": st.sampled_from(["Patient/p1", "Patient/other", "x", ""])})
_timing = st.fixed_dictionaries(
    {}, optional={"repeat": st.fixed_dictionaries(
        {}, optional={"frequency": _scalar, "period": _scalar,
                      "periodUnit": st.sampled_from(["d", "h", "wk", "x"]),
                      "timeOfDay": st.lists(_text, max_size=3)}),
        "code": _concept},
)
_dosage = st.fixed_dictionaries(
    {}, optional={"timing": _timing, "route": _concept, "asNeededBoolean": st.booleans(),
                  "doseAndRate": st.lists(st.fixed_dictionaries({}, optional={"doseQuantity": _quantity}),
                                          max_size=2),
                  "sequence": st.integers(-2, 3), "text": _text},
)
_noise = st.dictionaries(st.sampled_from(["extension", "meta", "foo", "id", "status"]), _scalar, max_size=2)


def _resource(rtype: str, fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    body = st.fixed_dictionaries({"resourceType": st.just(rtype)}, optional=fields)
    return st.tuples(body, _noise).map(lambda pair: {**pair[1], **pair[0]})


medication_requests = _resource("MedicationRequest", {
    "id": st.sampled_from(["mr-1", "mr-2", ""]),
    "status": st.sampled_from(
        ["draft", "active", "stopped", "on-hold", "completed", "entered-in-error", "x"]
    ),
    "intent": st.sampled_from(["order", "plan", "x"]),
    "subject": _ref, "medicationCodeableConcept": _concept, "authoredOn": _date,
    "dosageInstruction": st.lists(_dosage, max_size=3), "reasonCode": st.lists(_concept, max_size=2),
    "priorPrescription": _ref,
})
observations = _resource("Observation", {
    "status": st.sampled_from(["final", "amended", "preliminary", "x"]), "code": _concept,
    "subject": _ref, "effectiveDateTime": _date, "valueQuantity": _quantity,
    "valueString": _text,
})
conditions = _resource("Condition", {
    "code": _concept, "subject": _ref, "onsetDateTime": _date, "recordedDate": _date,
    "clinicalStatus": _concept, "verificationStatus": _concept,
})
patients = _resource("Patient", {
    "id": st.just("p1"), "birthDate": _date, "gender": st.sampled_from(["male", "female", "x"]),
    "deceasedBoolean": st.booleans(),
})
any_resource = st.one_of(medication_requests, observations, conditions, patients)


@settings(FUZZ, max_examples=150)
@given(resources=st.lists(any_resource, max_size=6), drafts=st.lists(medication_requests, max_size=2))
def test_generated_fhir_through_the_adapter_maps_or_rejects(pack, resources, drafts):
    with suppress(ValidationError, ValueError):  # a clear rejection (a ValidationError names the field)
        facts_from_resources(
            resources, as_of=NOW, vocab=pack.vocabulary, drug_class=pack.context.drug_class,
            draft_orders=drafts,
        )


@FUZZ
@given(resources=st.lists(any_resource, max_size=5), draft=medication_requests)
def test_generated_fhir_through_the_hook_is_4xx_or_200(client, resources, draft):
    draft = {**draft, "id": "mr-1", "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197391"}]}}
    patient = next((r for r in resources if r["resourceType"] == "Patient"), {"resourceType": "Patient",
                                                                              "id": "p1"})
    prefetch = {
        "patient": patient,
        "medicationRequests": _bundle(r for r in resources if r["resourceType"] == "MedicationRequest"),
        "observations": _bundle(r for r in resources if r["resourceType"] == "Observation"),
        "conditions": _bundle(r for r in resources if r["resourceType"] == "Condition"),
    }
    body = json.dumps(hook_request("order-sign", "p1", [draft], prefetch=prefetch))  # NaN/Infinity kept
    response = client.post(SIGN, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 412), response.text
    if response.status_code != 200:
        assert response.json()["resourceType"] == "OperationOutcome" and problem(response).strip()


def _bundle(resources: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


# ── generated PatientFacts-like JSON through /evaluate ─────────────────────────────────────
# Finite numbers only: the body is strict JSON (allow_nan=False), which has no NaN/Infinity — an
# infinite float here made the test's own json.dumps raise (the flaky failure). Non-finite values
# as raw literals are refused by test_non_finite_numbers_are_refused_naming_the_field.
_finite_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_num = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**9, 10**9), _text, st.none()
)
_lab = st.fixed_dictionaries({}, optional={"value": _num, "date": _date, "comparator": _text, "unit": _text})
_order = st.fixed_dictionaries({}, optional={
    "product": st.fixed_dictionaries({}, optional={"system": _systems, "code": _codes}),
    "route": st.sampled_from(["oral", "intrathecal", "iv", "x", ""]),
    "dose_amount": _num, "dose_unit": st.sampled_from(["mg", "mcg", "g", "mL", "drop", ""]),
    "doses_per_day": _num, "prn": st.booleans(), "action": st.sampled_from(["new", "modify", "x"]),
    "indication_group": _text, "schedule": st.lists(_num, max_size=3),
})
facts_json = st.fixed_dictionaries({}, optional={
    "as_of": _date, "birth_date": _date, "sex": st.sampled_from(["female", "male", "x"]),
    "renal": st.fixed_dictionaries({}, optional={"egfr": _lab, "dialysis_dependent": _finite_scalar}),
    "order": _order, "medications": st.lists(st.dictionaries(_text, _finite_scalar, max_size=3), max_size=2),
    "unknown_key": _finite_scalar,
})


@FUZZ
@given(facts=facts_json)
def test_generated_facts_through_evaluate_are_200_or_4xx(client, facts):
    response = client.post("/evaluate", content=json.dumps(facts, allow_nan=False),
                           headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code == 200:
        assert isinstance(response.json(), list)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_naming_the_field(client, literal):
    # Python's JSON parser accepts these; a NaN eGFR or dose would make every threshold test false
    facts = {
        "as_of": "2025-03-01T12:00:00+00:00",
        "renal": {"egfr": {"value": "__X__", "date": "2025-02-01"}},
        "order": {"product": {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197391"},
                  "dose_amount": 10, "dose_unit": "mg", "doses_per_day": 3},
    }
    body = json.dumps(facts).replace('"__X__"', literal)
    response = client.post("/evaluate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "renal.egfr.value" in problem(response)
    hook = hook_request("order-sign", "p1", [medication_request(dose=12345)], fhir_server=FHIR)
    payload = json.dumps(hook).replace("12345", literal)
    response = client.post(SIGN, content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "dosageInstruction[0].doseAndRate[0].doseQuantity.value" in problem(response)


def _deep_extension(depth: int) -> list[dict[str, Any]]:
    nested: dict[str, Any] = {"url": "https://ehr.example/x", "valueString": "leaf"}
    for _ in range(depth):
        nested = {"url": "https://ehr.example/x", "extension": [nested]}
    return [nested]


@pytest.mark.parametrize("depth", [250, 450])
def test_a_draft_nested_too_deeply_for_the_model_is_400_naming_the_draft(client, depth):
    """Nesting the JSON parser accepts but the FHIR model cannot walk (extension in extension ...)
    is a draft that cannot be read: a 400 naming it, never a 500 (was a RecursionError)."""
    draft = medication_request()
    draft["extension"] = _deep_extension(depth)
    body = json.dumps(hook_request("order-sign", "p1", [draft]))
    response = client.post(SIGN, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.status_code
    assert "draftOrders.entry[0]" in problem(response)


@pytest.mark.parametrize("depth", [250, 450])
def test_prefetched_resources_nested_deeply_are_an_answer_or_a_400(client, depth):
    """The same nesting in prefetched resources (read without the FHIR model): never a 500."""
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "code": {"text": "x"}, "extension": _deep_extension(depth)}
    patient = {**record()[0], "extension": _deep_extension(depth)}
    prefetch = {"patient": patient,
                "conditions": {"resourceType": "Bundle", "type": "searchset",
                               "entry": [{"resource": condition}]}}
    body = json.dumps(hook_request("order-sign", "p1", [medication_request()], prefetch=prefetch))
    response = client.post(SIGN, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400), response.status_code
