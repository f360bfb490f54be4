"""No PHI in any log record during a whole service flow, with every logger at DEBUG.

A Synthea-like patient whose name, birth date and free text are distinctive strings goes through
order-select and order-sign (prefetch given, and fetched from the FHIR server), a malformed call,
feedback with a comment, ``POST /evaluate``, and the review pages (sign-in, list, detail,
analytics) over a SQLite store. Every log record — message, arguments, exception text — is
scanned for those strings. Logs may carry method, path, status, latency, hookInstance, service
and rule ids; never names, birth dates, free text, bodies or tokens.
"""

from __future__ import annotations

import logging
import re

from fastapi.testclient import TestClient
from tests.service_helpers import LocalFhir, hook_request, medication_request

from cds_engine.service.app import create_app
from cds_engine.service.discovery import prefetch_templates
from cds_engine.service.review.router import build_router
from cds_engine.store import open_store
from cds_engine.store import users as user_admin
from store_helpers import sign_in

NOW_ISO = "2025-03-01T12:00:00+00:00"
FHIR = "https://ehr.example/fhir"
FAMILY, GIVEN = "Qwertyuiopsdottir", "Xanthippe"
BIRTH = "1937-07-19"
FREE_TEXT = "Zzphi-reason spasticity after fall at Gloomwood farm"
COMMENT = "Zzphi-comment patient insists"
MRN = "Zzmrn-0042-77"  # an MRN-type identifier: stored for the review page (issue #18), never logged
SECRETS = (FAMILY, GIVEN, BIRTH, "19370719", FREE_TEXT, COMMENT, "Zzphi", MRN)
PASSWORD = "correct-horse-battery"


def record() -> list[dict]:
    return [
        {
            "resourceType": "Patient",
            "id": "phi-1",
            "birthDate": BIRTH,
            "gender": "female",
            "name": [{"use": "official", "family": FAMILY, "given": [GIVEN], "text": f"{GIVEN} {FAMILY}"}],
            "telecom": [{"system": "phone", "value": "555-0199"}],
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "MR"}], "text": "MRN"}, "value": MRN}],
            "address": [{"line": ["1 Gloomwood Lane"], "city": "Zzphi-town"}],
        },
        {
            "resourceType": "Observation",
            "id": "egfr-1",
            "status": "final",
            "subject": {"reference": "Patient/phi-1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
            "effectiveDateTime": "2025-02-01",
            "valueQuantity": {"value": 25, "unit": "mL/min/{1.73_m2}"},
            "note": [{"text": FREE_TEXT}],
        },
        {
            "resourceType": "Condition",
            "id": "c-1",
            "subject": {"reference": "Patient/phi-1"},
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "22298006"}], "text": FREE_TEXT},
        },
    ]


def test_whole_flow_logs_no_phi(tmp_path, engine, pack, caplog):
    caplog.set_level(logging.DEBUG)  # the root logger: every logger that propagates
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=tmp_path / "spool", start_drainer=False)
    with store.session() as db:
        user_admin.add_user(db, "rita", PASSWORD, "reviewer", actor="test")
    fhir = LocalFhir(record())
    app = create_app(
        lambda: engine,
        sink=store.sink,
        auth=None,
        extra_routers=[build_router(store, lambda: engine)],
        fhir_transport=fhir.transport(FHIR),
    )
    draft = medication_request(
        id="draft-phi",
        patient="phi-1",
        dose=20,
        per_day=4,
        reasonCode=[{"text": FREE_TEXT}],
        note=[{"text": FREE_TEXT}],
    )
    prefetch = fhir.prefetch(prefetch_templates(pack), {"patientId": "phi-1"})
    with TestClient(app) as client:
        cards = []
        for hook in ("order-select", "order-sign"):
            body = hook_request(hook, "phi-1", [draft], prefetch=prefetch)
            answer = client.post(f"/cds-services/{pack.id}-{hook}", json=body)
            assert answer.status_code == 200, answer.text
            cards = answer.json()["cards"]
        fetched = hook_request("order-sign", "phi-1", [draft], fhir_server=FHIR)  # no prefetch: call-back
        assert client.post(f"/cds-services/{pack.id}-order-sign", json=fetched).status_code == 200
        bad = hook_request("order-sign", "phi-1", [{**draft, "authoredOn": FREE_TEXT}], prefetch=prefetch)
        assert client.post(f"/cds-services/{pack.id}-order-sign", json=bad).status_code == 400
        assert cards
        feedback = {
            "feedback": [
                {
                    "card": cards[0]["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {"reason": cards[0]["overrideReasons"][0], "userComment": COMMENT},
                    "outcomeTimestamp": NOW_ISO,
                }
            ]
        }
        assert client.post(f"/cds-services/{pack.id}-order-sign/feedback", json=feedback).status_code == 200
        facts = {
            "as_of": NOW_ISO,
            "birth_date": BIRTH,
            "patient_id": "phi-1",
            "renal": {"egfr": {"value": 25, "date": "2025-02-01"}},
            "order": {
                "product": {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197391"},
                "route": "oral",
                "dose_amount": 20,
                "dose_unit": "mg",
                "doses_per_day": 4,
            },
        }
        assert client.post("/evaluate", json=facts).status_code == 200
        assert client.post("/evaluate", json={**facts, "birth_date": f"{BIRTH}x"}).status_code == 400

        sign_in(client, "rita", PASSWORD)
        listing = client.get("/review/alerts").text
        # the demographics were stored and are shown (so the scan below covers them too)
        assert f"{GIVEN} {FAMILY}" in listing and MRN in listing and BIRTH in listing
        for link in sorted(set(re.findall(r'href="(/review/alerts/[^"?#]+)"', listing)))[:3]:
            assert client.get(link).status_code == 200
        assert not [s for s in SECRETS if s in client.get("/healthz").text]  # nor in the metrics
        from cds_engine.metrics import exposition

        assert not [s for s in SECRETS if s in exposition()[0].decode()]
        assert client.get("/review/analytics").status_code == 200
        assert client.get("/review/alerts", params={"patient": "phi-1", "q": GIVEN}).status_code == 200
    store.close()

    assert any("hookInstance=" in r.getMessage() for r in caplog.records)  # the request log did run
    leaks = []
    for r in caplog.records:
        text = " ".join([r.getMessage(), r.exc_text or "", str(r.args)])
        leaks += [(r.name, r.levelname, s) for s in SECRETS if s in text]
    assert not leaks, leaks
    assert not any(s in caplog.text for s in SECRETS)
    # the FHIR call-back URLs carry the patient id and search terms: never logged (httpx logs URLs)
    assert fhir.calls and not any("ehr.example" in r.getMessage() for r in caplog.records)


def test_served_process_log_at_debug_has_no_phi(tmp_path, pack):
    """The real ``cds-engine serve`` at ``--log-level debug``: uvicorn's and every library's lines."""
    import httpx
    from tests.service_helpers import REPO, serve_process

    args = [
        "--rules",
        str(REPO / "rules"),
        "--db",
        f"sqlite:///{tmp_path}/cds.db",
        "--no-auth",
        "--log-level",
        "debug",
    ]
    with serve_process(args, tmp_path, env={"CDS_SPOOL_DIR": str(tmp_path / "spool")}) as (base, _, log_path):
        fhir = LocalFhir(record())
        prefetch = fhir.prefetch(prefetch_templates(pack), {"patientId": "phi-1"})
        draft = medication_request(
            id="d1", patient="phi-1", dose=20, per_day=4, reasonCode=[{"text": FREE_TEXT}]
        )
        url = f"{base}/cds-services/{pack.id}-order-sign"
        good = httpx.post(
            url, json=hook_request("order-sign", "phi-1", [draft], prefetch=prefetch), timeout=30
        )
        assert good.status_code == 200, good.text
        bad = hook_request("order-sign", "phi-1", [{**draft, "authoredOn": FREE_TEXT}], prefetch=prefetch)
        assert httpx.post(url, json=bad, timeout=30).status_code == 400
        facts = {"as_of": NOW_ISO, "birth_date": BIRTH, "patient_id": "phi-1"}
        assert httpx.post(f"{base}/evaluate", json=facts, timeout=30).status_code == 200
    text = log_path.read_text()
    assert "hookInstance=" in text and "Traceback" not in text
    assert not [s for s in SECRETS if s in text], [s for s in SECRETS if s in text]
