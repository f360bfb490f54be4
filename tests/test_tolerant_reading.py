"""What real clients send (the CDS Hooks Sandbox captures and known deviations) is read, counted, never a 400.

And what still is a 400: NUL characters, lone surrogates, out-of-range dates in the context, a
negative dose — naming the field and never echoing the value.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import LocalFhir, RecordingSink, hook_request, medication_request

from cds_engine.service import create_app
from cds_engine.service.discovery import prefetch_templates
from cds_engine.service.validate import response_problems

REPO = Path(__file__).resolve().parents[1]
SANDBOX = REPO / "examples" / "cds-hooks" / "sandbox"
CAPTURE_DAY = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)
SIGN = "/cds-services/baclofen-order-sign"
SELECT = "/cds-services/baclofen-order-select"


def capture(name: str) -> dict[str, Any]:
    return json.loads((SANDBOX / name).read_text(encoding="utf-8"))


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink(known_cards_only=False)


@pytest.fixture
def client(engine, sink) -> Iterator[TestClient]:
    app = create_app(lambda: engine, sink=sink, auth=None, clock=lambda: CAPTURE_DAY)
    with TestClient(app) as test_client:
        yield test_client


def codes(response: Any) -> list[str]:
    return [c["source"]["topic"]["code"] for c in response.json()["cards"]]


def deviations(client: TestClient) -> dict[str, int]:
    return client.get("/healthz").json()["request_deviation_total"]


def test_sandbox_form_before_a_medication_is_chosen_is_200_without_cards(client, sink):
    response = client.post(SELECT, json=capture("01-order-select-before-medication-chosen.json"))
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}
    assert sink.evaluations == []


def test_sandbox_order_with_category_object_and_pill_dose_gets_cards(client, sink, caplog):
    caplog.set_level(logging.INFO, logger="cds_engine.service.deviations")
    before = deviations(client)
    response = client.post(SELECT, json=capture("03-order-select-baclofen-10mg-1-tablet-tid.json"))
    assert response.status_code == 200, response.text
    assert response.json()["cards"] and response_problems(response.json()) == []
    found = codes(response)
    assert "dose-unconvertible" not in " ".join(found)
    assert len(sink.evaluations) == 1
    after = deviations(client)
    assert after.get("category-object", 0) == before.get("category-object", 0) + 1
    line = next(r.getMessage() for r in caplog.records if "category-object" in r.getMessage())
    field = "context.draftOrders.entry[0].resource.category"
    assert line == f"request deviation tolerated: field={field} kind=category-object"


def test_pill_dose_is_converted_with_the_product_strength(engine, client):
    body = capture("03-order-select-baclofen-10mg-1-tablet-tid.json")
    resource = body["context"]["draftOrders"]["entry"][0]["resource"]
    resource["medicationCodeableConcept"] = {
        "text": "Baclofen 20 MG Oral Tablet",
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197392"}],
    }
    resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = 3
    response = client.post(SELECT, json=body)
    assert response.status_code == 200, response.text
    card = next(c for c in response.json()["cards"] if c["source"]["topic"]["code"] == "BAC-D01")
    assert card["indicator"] == "critical"
    assert "180" in card["summary"] + card.get("detail", "")


@pytest.mark.parametrize("unit", ["{pill}", "{tbl}", "{tablet}", "tablet(s)", "TAB"])
def test_every_tablet_spelling_converts(client, unit):
    body = capture("03-order-select-baclofen-10mg-1-tablet-tid.json")
    quantity = body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][
        0
    ]
    quantity["doseQuantity"] = (
        {"value": 3, "code": unit} if unit.startswith("{") else {"value": 3, "unit": unit}
    )
    body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"]["coding"][0][
        "code"
    ] = "197392"
    response = client.post(SELECT, json=body)
    assert response.status_code == 200, response.text
    assert "BAC-D01" in codes(response)


def _medication_draft(strength_mg: float | None, form: str = "Oral Tablet", n_ingredients: int = 1) -> dict:
    draft = medication_request(id="mr-1", dose=3, unit="{pill}", per_day=3)
    draft.pop("medicationCodeableConcept")
    draft["medicationReference"] = {"reference": "#med"}
    ingredient = {"itemCodeableConcept": {"text": "baclofen"}}
    if strength_mg is not None:
        ingredient["strength"] = {
            "numerator": {
                "value": strength_mg,
                "unit": "mg",
                "system": "http://unitsofmeasure.org",
                "code": "mg",
            },
            "denominator": {
                "value": 1,
                "unit": "tablet",
                "system": "http://unitsofmeasure.org",
                "code": "{tbl}",
            },
        }
    draft["contained"] = [
        {
            "resourceType": "Medication",
            "id": "med",
            "code": {
                "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197392"}],
                "text": "Baclofen 20 MG Oral Tablet",
            },
            "form": {"text": form},
            "ingredient": [ingredient] * n_ingredients,
        }
    ]
    return draft


def _patient_prefetch(pack) -> dict:
    fhir = LocalFhir([{"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"}])
    return fhir.prefetch(prefetch_templates(pack), {"patientId": "p1"})


def test_strength_sources_that_agree_convert_and_that_disagree_are_cannot_assess(client, pack):
    agree = hook_request("order-sign", "p1", [_medication_draft(20)], prefetch=_patient_prefetch(pack))
    response = client.post(SIGN, json=agree)
    assert response.status_code == 200, response.text
    assert "BAC-D01" in codes(response)
    disagree = hook_request("order-sign", "p1", [_medication_draft(10)], prefetch=_patient_prefetch(pack))
    response = client.post(SIGN, json=disagree)
    assert response.status_code == 200, response.text
    assert "BAC-D01" not in codes(response)
    text = " ".join(c["summary"] for c in response.json()["cards"])
    assert "not convertible to mg" in text  # the pack's "cannot assess" wording (missing_data.dose)


def test_pill_of_a_liquid_is_cannot_assess(client, pack):
    draft = medication_request(id="mr-1", dose=3, unit="{pill}", per_day=3)
    draft["medicationCodeableConcept"] = {"text": "baclofen 5 MG/ML Oral Solution"}
    draft["medicationCodeableConcept"] = {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1491325"}],
        "text": "baclofen 5 MG/ML Oral Solution",
    }
    from cds_engine.sources.dose_counts import reconcile_count_dose
    from cds_engine.vocabulary import Product

    liquid = Product("x", "s", "baclofen 5 MG/ML Oral Solution", "baclofen", "solution", "oral", None, 5.0)
    assert reconcile_count_dose("{pill}", liquid, None)[0] == "tablet count of a liquid product"
    tablet = Product("y", "s", "Baclofen 20 MG Oral Tablet", "baclofen", "tablet", "oral", 20.0, None)
    assert reconcile_count_dose("{pill}", tablet, None) == ("tablet", 1.0)
    assert reconcile_count_dose("mg", tablet, None) == ("mg", 1.0)


def test_unreadable_dose_in_one_draft_is_cannot_assess_not_400(client, pack, sink):
    good = medication_request(id="mr-good", dose=10, per_day=3)
    bad = medication_request(id="mr-bad", dose=10, per_day=3)
    bad["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = "ten"
    body = hook_request("order-sign", "p1", [good, bad], prefetch=_patient_prefetch(pack))
    before = deviations(client).get("dose-unreadable", 0)
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.text
    text = " ".join(c["summary"] for c in response.json()["cards"])
    assert "not convertible to mg" in text  # the pack's "cannot assess" wording (missing_data.dose)
    assert deviations(client).get("dose-unreadable", 0) == before + 1
    assert len(sink.evaluations) == 2


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        (lambda b: b["context"].pop("userId"), "user-id-missing"),
        (lambda b: b["context"].update(patientId="Patient/p1"), "patient-id-prefixed"),
        (lambda b: b["context"]["draftOrders"].pop("type"), "bundle-type-missing"),
        (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].pop("intent"), "intent-missing"),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(status="active"),
            "status-not-draft",
        ),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0].update(
                doseAndRate={"doseQuantity": {"value": 10, "unit": "mg", "code": "mg"}}
            ),
            "dose-and-rate-object",
        ),
    ],
)
def test_tolerated_deviations_are_counted(client, pack, sink, change, kind):
    body = hook_request("order-sign", "p1", [medication_request()], prefetch=_patient_prefetch(pack))
    change(body)
    before = deviations(client).get(kind, 0)
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["cards"]
    assert deviations(client).get(kind, 0) == before + 1
    if kind == "user-id-missing":
        assert sink.evaluations[-1].user_ref == "unknown"


def test_text_only_medication_is_read(client, pack):
    draft = medication_request()
    draft["medicationCodeableConcept"] = {"text": "baclofen 10 mg tablet"}
    body = hook_request("order-sign", "p1", [draft], prefetch=_patient_prefetch(pack))
    before = deviations(client).get("medication-text-only", 0)
    response = client.post(SIGN, json=body)
    assert response.status_code in (200, 412), response.text  # never a 400
    assert deviations(client).get("medication-text-only", 0) == before + 1


def test_odd_values_in_prefetched_records_become_unknown(client, pack):
    prefetch = _patient_prefetch(pack)
    prefetch["patient"]["birthDate"] = "0001-01-01"
    prefetch["observations"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "status": "final",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
                    "effectiveDateTime": "2026-12-01",
                    "valueQuantity": {"value": -45, "unit": "mL/min/{1.73_m2}"},
                }
            }
        ],
    }
    before = deviations(client)
    response = client.post(
        SIGN, json=hook_request("order-sign", "p1", [medication_request()], prefetch=prefetch)
    )
    assert response.status_code == 200, response.text
    after = deviations(client)
    assert after.get("date-out-of-range", 0) == before.get("date-out-of-range", 0) + 1
    assert after.get("number-negative", 0) == before.get("number-negative", 0) + 1
    assert "BAC-R00" in codes(response)  # the eGFR became unknown: said so, not treated as normal


SECRET = "Zq9-unique-value"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b["context"].update(patientId=f"{SECRET}\x00"), "context.patientId"),
        (lambda b: b["context"].update(encounterId=f"{SECRET}\ud800"), "context.encounterId"),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(
                note=[{"text": f"{SECRET}\x00"}]
            ),
            "context.draftOrders.entry[0].resource.note[0].text",
        ),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(authoredOn="2301-01-01"),
            "context.draftOrders.entry[0].resource.authoredOn",
        ),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0][
                "doseAndRate"
            ][0]["doseQuantity"].update(value=-10),
            "context.draftOrders.entry[0].resource.dosageInstruction[0].doseAndRate[0].doseQuantity.value",
        ),
    ],
)
def test_what_still_is_a_400_names_the_field_and_echoes_nothing(client, pack, change, field):
    body = hook_request("order-sign", "p1", [medication_request()], prefetch=_patient_prefetch(pack))
    change(body)
    raw = json.dumps(body).encode()
    response = client.post(SIGN, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == [field]
    assert SECRET not in response.text and "2301" not in response.text


def test_select_of_a_draft_without_medication_among_others(client, pack):
    empty = copy.deepcopy(capture("01-order-select-before-medication-chosen.json"))
    draft = empty["context"]["draftOrders"]["entry"][0]["resource"]
    body = hook_request(
        "order-select", "3afaeb2a-9f18-40b5-8fe7-dfd882de2f2b", [draft, medication_request(id="x")]
    )
    body["prefetch"] = capture("03-order-select-baclofen-10mg-1-tablet-tid.json")["prefetch"]
    response = client.post(SELECT, json=body)
    assert response.status_code == 200 and response.json() == {"cards": []}


@pytest.mark.parametrize("as_of", ["1899-12-31T12:00:00+00:00", "2201-01-01T12:00:00+00:00"])
def test_evaluate_as_of_is_bounded_to_1900_2200(client, as_of):
    response = client.post("/evaluate", json={"as_of": as_of})
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == ["as_of"]
    assert client.post("/evaluate", json={"as_of": "2026-12-05T12:00:00+00:00"}).status_code == 200
