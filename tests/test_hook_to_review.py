"""End to end in one app: a hook call's alerts are stored and appear on the review page, and the
prescriber's feedback shows in the rule analytics."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.service_helpers import LocalFhir, hook_request, medication_request
from tests.test_service_api import FHIR, NOW, patient_record

from cds_engine.service.app import create_app
from cds_engine.service.discovery import prefetch_templates
from cds_engine.service.review.router import build_router
from cds_engine.store import open_store
from cds_engine.store import users as user_admin
from cds_engine.store.models import AlertRow
from store_helpers import sign_in

PASSWORD = "correct-horse-battery"


def test_hook_alerts_reach_the_review_page(tmp_path, engine, pack):
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=tmp_path / "spool", start_drainer=False)
    with store.session() as db:
        user_admin.add_user(db, "rita", PASSWORD, "reviewer", actor="test")
    fhir = LocalFhir(patient_record(egfr=25))
    app = create_app(
        lambda: engine,
        sink=store.sink,
        auth=None,
        extra_routers=[build_router(store, lambda: engine)],
        fhir_transport=fhir.transport(FHIR),
        clock=lambda: NOW,
    )
    prefetch = fhir.prefetch(prefetch_templates(pack), {"patientId": "p1"})
    body = hook_request("order-sign", "p1", [medication_request(dose=10, per_day=3)], prefetch=prefetch)
    with TestClient(app) as client:
        cards = client.post(f"/cds-services/{pack.id}-order-sign", json=body).json()["cards"]
        codes = {c["source"]["topic"]["code"] for c in cards}
        assert "BAC-R02" in codes  # eGFR 25: severe CKD
        r02 = next(c for c in cards if c["source"]["topic"]["code"] == "BAC-R02")
        feedback = {
            "feedback": [
                {
                    "card": r02["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {
                        "reason": {"code": "benefit-outweighs-risk", "system": pack.spec.pack.url}
                    },
                    "outcomeTimestamp": NOW.isoformat(),
                }
            ]
        }
        assert client.post(f"/cds-services/{pack.id}-order-sign/feedback", json=feedback).status_code == 200

        sign_in(client, "rita", PASSWORD)
        listing = client.get("/review/alerts").text
        assert "BAC-R02" in listing and "Patient/p1" in listing
        analytics = client.get("/review/analytics").text
        assert "BAC-R02" in analytics
    with store.session() as db:
        row = db.scalars(select(AlertRow).where(AlertRow.rule_id == "BAC-R02")).one()
        assert row.prescriber_outcome == "overridden" and row.card_uuid == r02["uuid"]
    store.close()
