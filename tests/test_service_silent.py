"""Silent mode: a draft pack is evaluated and stored on hook calls, never shown as a card."""

from __future__ import annotations

from fastapi.testclient import TestClient
from tests.service_helpers import LocalFhir, RecordingSink, hook_request
from tests.test_service_api import FHIR, NOW, patient_record

from cds_engine.engine import Engine
from cds_engine.service.app import create_app
from cds_engine.service.discovery import prefetch_templates
from conftest import RULES


def _gabapentin_order() -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": "mr-g",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "gabapentin 600 mg tablet"},
        "dosageInstruction": [
            {
                "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]},
                "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 600, "unit": "mg"}}],
            }
        ],
    }


def test_draft_pack_is_stored_not_shown():
    engine = Engine.from_dir(RULES, statuses=("active", "draft"))
    draft_pack = next(p for p in engine.packs if p.spec.pack.status == "draft")
    active_pack = next(p for p in engine.packs if p.spec.pack.status == "active")
    sink = RecordingSink()
    fhir = LocalFhir(patient_record(egfr=25))
    app = create_app(
        lambda: engine, sink=sink, auth=None, fhir_transport=fhir.transport(FHIR), clock=lambda: NOW
    )
    prefetch = fhir.prefetch(prefetch_templates(active_pack), {"patientId": "p1"})
    body = hook_request("order-sign", "p1", [_gabapentin_order()], prefetch=prefetch)
    with TestClient(app) as client:
        services = {s["id"] for s in client.get("/cds-services").json()["services"]}
        assert not any(s.startswith(draft_pack.id) for s in services)
        response = client.post(f"/cds-services/{active_pack.id}-order-sign", json=body)
    assert response.status_code == 200
    assert response.json()["cards"] == []  # not on the active drug; draft: silent
    silent = [r for r in sink.evaluations if r.pack_id == draft_pack.id]
    assert silent, "the draft pack was not evaluated"
    alerts = [a for r in silent for a in r.alerts]
    assert alerts and all(not a.shown and a.card_uuid is None for a in alerts)
    assert all(a.alert.pack_status == "draft" for a in alerts)
