"""The alert detail reads like the card (issue #18 item 1): markdown rendered with raw HTML off and
sanitised, the order in one sentence with the FHIR folded away, evidence under catalog labels and
units with the interacting medicines by name. Hostile stored text stays inert (see also the
Playwright check in test_review_browser.py)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.service_helpers import LocalFhir, hook_request, medication_request
from tests.test_service_api import FHIR, NOW, patient_record

from cds_engine.service.app import create_app
from cds_engine.service.discovery import prefetch_templates
from cds_engine.service.review.alert_view import evidence_rows, order_sentence, render_markdown
from cds_engine.service.review.router import build_router
from cds_engine.store import open_store
from cds_engine.store import users as user_admin
from cds_engine.store.api import EvaluationRecord, IssuedAlert
from cds_engine.store.models import AlertRow
from store_helpers import make_alert, sign_in

PASSWORD = "correct-horse-battery"
HOSTILE_DETAIL = (
    "**Bold** and _pack note_.\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n"
    "[click](javascript:alert(3)) [label](https://example.org/label)\n\n<iframe src=\"https://evil\"></iframe>"
)


def _card_detail(page: str) -> str:
    return page.split('<div class="card-detail">')[1].split("</div>")[0]


def test_markdown_is_rendered_and_hostile_html_is_inert() -> None:
    html = str(render_markdown(HOSTILE_DETAIL))
    assert "<strong>Bold</strong>" in html and "<em>pack note</em>" in html
    assert "<script" not in html and "<img" not in html and "<iframe" not in html
    assert not re.search(r"<a [^>]*href=\"javascript", html)
    assert '<a href="https://example.org/label" rel="noopener noreferrer">label</a>' in html
    assert "&lt;script&gt;" in html  # shown as text, not dropped silently


def test_evidence_uses_catalog_labels_units_and_names_the_interacting_medicine() -> None:
    rows = {r.fact: r for r in evidence_rows({
        "egfr": 25, "egfr__lt": 30, "daily_dose_mg": 60.0, "meds.opioid_agonist": 1,
        "meds_named.opioid_agonist": "oxycodone 5 mg tablet", "cond.peptic_ulcer": True,
        "not_in_catalog": "x"})}
    assert rows["egfr"].label == "Most recent eGFR" and rows["egfr"].value == "25 mL/min/1.73 m2"
    assert rows["egfr__lt"].value == "< 30 mL/min/1.73 m2"
    assert rows["daily_dose_mg"].value == "60 mg/day"
    assert rows["meds.opioid_agonist"].value == "1 (oxycodone 5 mg tablet)"
    assert rows["meds.opioid_agonist"].label.endswith(": opioid agonist")
    assert "meds_named.opioid_agonist" not in rows  # folded into its count
    assert rows["cond.peptic_ulcer"].value == "yes"
    assert rows["not_in_catalog"].label == "not_in_catalog"  # unknown names shown as they are


def test_order_sentence_from_facts_and_unknown_shapes() -> None:
    facts = {"product": {"display": "Some drug 10 MG Oral Tablet"}, "route": "oral", "dose_amount": 10,
             "dose_unit": "mg", "doses_per_day": 3, "action": "new"}
    assert order_sentence(facts, {"daily_dose_mg": 30}) == (
        "Some drug 10 MG Oral Tablet — 10 mg oral 3 times per day (30 mg/day), new start")
    assert order_sentence(facts, {}) == order_sentence(facts, {"daily_dose_mg": 30})  # computed when absent
    assert "mg/day" not in (order_sentence({**facts, "dose_unit": "tablet"}, {}) or "")  # never a guess
    assert order_sentence({"resourceType": "Observation"}, {}) is None
    assert order_sentence(None, {}) is None


def test_hook_alert_detail_reads_like_the_card(tmp_path, engine, pack) -> None:
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=tmp_path / "spool", start_drainer=False)
    with store.session() as db:
        user_admin.add_user(db, "rita", PASSWORD, "reviewer", actor="test")
    fhir = LocalFhir(patient_record(egfr=25))
    app = create_app(lambda: engine, sink=store.sink, auth=None,
                     extra_routers=[build_router(store, lambda: engine)],
                     fhir_transport=fhir.transport(FHIR), clock=lambda: NOW)
    prefetch = fhir.prefetch(prefetch_templates(pack), {"patientId": "p1"})
    body = hook_request("order-sign", "p1", [medication_request(dose=10, per_day=3)], prefetch=prefetch)
    with TestClient(app) as client:
        cards = client.post(f"/cds-services/{pack.id}-order-sign", json=body).json()["cards"]
        r02 = next(c for c in cards if c["source"]["topic"]["code"] == "BAC-R02")
        with store.session() as db:
            alert_id = db.scalars(select(AlertRow.id).where(AlertRow.card_uuid == r02["uuid"])).one()
        sign_in(client, "rita", PASSWORD)
        page = client.get(f"/review/alerts/{alert_id}").text
    store.close()
    detail = _card_detail(page)
    assert "<strong>" in detail and "**" not in detail  # rendered, not raw markdown
    sentence = page.split('<p id="order-sentence">')[1].split("</p>")[0]
    assert "10 mg" in sentence and "(30 mg/day)" in sentence, sentence
    assert "<details><summary>The order as received (raw JSON)</summary><pre>" in page
    assert "MedicationRequest" in page.split("<details>")[1]  # the raw FHIR is still there, folded
    evidence = page.split('id="evidence"')[1].split("</table>")[0]
    assert "Days between the eGFR result and as_of" in evidence and "25 mL/min/1.73 m2" in evidence
    assert "Order action" in evidence and "new |" not in evidence


def test_hostile_stored_detail_is_inert_on_the_page(tmp_path, engine) -> None:
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=tmp_path / "spool", start_drainer=False)
    with store.session() as db:
        user_admin.add_user(db, "rita", PASSWORD, "reviewer", actor="test")
    alert = make_alert().model_copy(update={
        "detail": HOSTILE_DETAIL, "evidence": {"egfr": "<svg onload=alert(4)>"}})
    store.sink.record_evaluation(EvaluationRecord(
        source="hook", hook_instance=str(uuid.uuid4()), patient_ref="Patient/x", as_of=datetime.now(UTC),
        pack_id="test-pack", pack_version="1", pack_hash="f" * 64,
        order={"resourceType": "MedicationRequest", "note": [{"text": "<script>alert(5)</script>"}]},
        alerts=[IssuedAlert(alert=alert, card_uuid=str(uuid.uuid4()))]))
    app = FastAPI()
    app.include_router(build_router(store, lambda: engine))
    client = TestClient(app)
    sign_in(client, "rita", PASSWORD)
    with store.session() as db:
        alert_id = db.scalars(select(AlertRow.id)).one()
    page = client.get(f"/review/alerts/{alert_id}").text
    store.close()
    for tag in ("<script", "<img", "<iframe", "<svg onload"):
        assert tag not in page, tag
    assert 'href="javascript' not in page
