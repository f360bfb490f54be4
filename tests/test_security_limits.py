"""Security issue 15, item 1 (red-team H1): bounded work per hook call, never refusing the sickest.

* more than 250 draft orders → 413 OperationOutcome naming the field, counted; 250 are answered;
* the fact mapper is linear in the drafts (counted: each draft read once, no medicine list
  re-validated per reviewed draft);
* mapping and evaluation run off the event loop: ``/healthz`` answers within 1 s while a real
  server works on a 250-draft call (the one timed assertion the project allows, stated here);
* per prefetch key at most N resources: observations the newest N per group with no card (the
  newest value is what the facts read), any other key active first then newest, and a
  data-unavailable card naming the key; templates sorted newest first with ``_count``.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import REPO, LocalFhir, hook_request, medication_request, serve_process

from cds_engine.facts.model import PatientFacts
from cds_engine.service import ServiceSettings, create_app
from cds_engine.service.discovery import prefetch_templates
from cds_engine.service.limits import HookLimits, cap_resources, refusal_counts
from cds_engine.sources.fhir import facts_for_drafts, facts_from_resources
from cds_engine.sources.fhir_meds import MedicineReader

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SIGN = "/cds-services/baclofen-order-sign"
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"}
OPIOID = {
    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049621"}],
    "text": "oxycodone hydrochloride 5 MG Oral Tablet",
}


def drafts(n: int) -> list[dict]:
    return [medication_request(id=f"mr-{i}") for i in range(n)]


def egfr(i: int, value: float, day: datetime) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"egfr-{i}",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
        "effectiveDateTime": day.date().isoformat(),
        "valueQuantity": {"value": value, "unit": "mL/min/{1.73_m2}"},
    }


@pytest.fixture
def client(engine) -> Iterator[TestClient]:
    app = create_app(lambda: engine, auth=None, clock=lambda: NOW, settings=ServiceSettings())
    with TestClient(app) as test_client:
        yield test_client


# ── drafts ─────────────────────────────────────────────────────────────────────────────────
def test_251_drafts_are_413_counted_and_250_are_answered(client):
    before = refusal_counts().get("drafts-over-limit", 0)
    prefetch = {"patient": PATIENT}
    over = client.post(SIGN, json=hook_request("order-sign", "p1", drafts(251), prefetch=prefetch))
    assert over.status_code == 413
    body = over.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == ["context.draftOrders.entry"]
    assert refusal_counts()["drafts-over-limit"] == before + 1
    assert client.get("/healthz").json()["request_limited_total"]["drafts-over-limit"] == before + 1
    ok = client.post(SIGN, json=hook_request("order-sign", "p1", drafts(250), prefetch=prefetch))
    assert ok.status_code == 200 and ok.json()["cards"]


def test_only_pack_relevant_drafts_are_reviewed_the_rest_are_co_medication(engine):
    pack = engine.packs[0]
    other = medication_request(id="nsaid", medicationCodeableConcept={"text": "ibuprofen 200 mg"})
    opioid = medication_request(id="op", medicationCodeableConcept=OPIOID)
    own = medication_request(id="own")
    facts = facts_for_drafts(
        [PATIENT], [other, opioid, own], [own, opioid], as_of=NOW, vocab=pack.vocabulary,
        drug_class=pack.context.drug_class,
    )
    assert [f.order.id for f in facts] == ["own", "own"]  # a partner draft is judged with the pack's drug
    assert {m.id for m in facts[0].medications} >= {"op"}
    # the same facts as mapping each reviewed draft with every other draft, one at a time
    for draft, mapped in zip([own, opioid], facts, strict=True):
        others = [d for d in (other, opioid, own) if d is not draft]
        alone = facts_from_resources(
            [PATIENT], as_of=NOW, vocab=pack.vocabulary, drug_class=pack.context.drug_class,
            draft_orders=[draft, *others],
        )
        assert sorted(m.id or "" for m in alone.medications) == sorted(m.id or "" for m in mapped.medications)
        assert alone.order == mapped.order


def test_mapper_reads_each_draft_once(engine, monkeypatch):
    """Linear in the drafts, counted rather than timed (a timing ratio flaked on a loaded CI machine).

    Before, each reviewed draft re-mapped every other draft: n² medicine reads (≈16× the work for
    4× the drafts). Now the record and each draft are read once however many drafts are reviewed;
    what stays per reviewed draft is putting the shared medicines in its list.
    """
    pack = engine.packs[0]
    reads: list[int] = []
    validated: list[int] = []
    read_medicine = MedicineReader._read_medicine
    patient_facts_init = PatientFacts.__init__

    def counted_read(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(1)
        return read_medicine(self, *args, **kwargs)

    def counted_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        validated.append(len(kwargs.get("medications") or ()))  # a list handed here is re-validated
        patient_facts_init(self, *args, **kwargs)

    monkeypatch.setattr(MedicineReader, "_read_medicine", counted_read)
    monkeypatch.setattr(PatientFacts, "__init__", counted_init)
    for n in (100, 400):
        reads.clear()
        validated.clear()
        batch = drafts(n)
        facts = facts_for_drafts(
            [PATIENT],
            batch,
            batch,
            as_of=NOW,
            vocab=pack.vocabulary,
            drug_class=pack.context.drug_class,
        )
        assert len(facts) == n and all(len(f.medications) == n - 1 for f in facts)
        assert len(reads) == n, (n, len(reads))  # each draft read once, not once per reviewed draft
        assert len(validated) == n and sum(validated) == 0, (n, sum(validated))  # no list re-checked


def test_healthz_answers_within_a_second_during_a_250_draft_call(tmp_path: Path):
    """The one timed assertion of the suite (security issue 15): the event loop stays free."""
    body = hook_request("order-sign", "p1", drafts(250), prefetch={"patient": PATIENT})
    rules = tmp_path / "rules"  # the drug's pack only: the call is about one pack's work
    shutil.copytree(REPO / "rules" / "vocabulary", rules / "vocabulary")
    shutil.copytree(REPO / "rules" / "baclofen", rules / "baclofen")
    args = ["--no-auth", "--db", "none", "--rules", str(rules)]
    with serve_process(args, tmp_path, timeout=240) as (base, _process, _log):  # slow start under load
        statuses: list[int] = []
        done = threading.Event()

        def call() -> None:
            try:
                statuses.append(httpx.post(base + SIGN, json=body, timeout=60).status_code)
                over = hook_request("order-sign", "p1", drafts(251), prefetch={"patient": PATIENT})
                statuses.append(httpx.post(base + SIGN, json=over, timeout=60).status_code)
            finally:
                done.set()

        worker = threading.Thread(target=call)
        worker.start()
        slowest = 0.0
        polls = 0
        with httpx.Client(base_url=base, timeout=5) as poll:
            while not done.is_set():
                start = time.perf_counter()
                assert poll.get("/healthz").status_code == 200
                slowest = max(slowest, time.perf_counter() - start)
                polls += 1
                time.sleep(0.05)
        worker.join()
        assert statuses == [200, 413]
        assert polls >= 1 and slowest < 1.0, f"/healthz took {slowest:.2f}s during the call"


# ── resources per key ──────────────────────────────────────────────────────────────────────
def test_cap_keeps_active_first_then_newest():
    conditions = [
        {
            "resourceType": "Condition",
            "id": f"c{i}",
            "clinicalStatus": {"coding": [{"code": "active" if i == 0 else "resolved"}]},
            "recordedDate": f"{2000 + i}-01-01",
        }
        for i in range(10)
    ]
    kept, dropped = cap_resources(conditions, 3)
    assert dropped == 7
    assert [c["id"] for c in kept] == ["c0", "c9", "c8"]  # the oldest one is active: kept first


def test_cap_keeps_the_newest_per_observation_group():
    start = datetime(2010, 1, 1, tzinfo=UTC)
    labs = [egfr(i, 90, start + timedelta(days=i)) for i in range(5)]
    pregnancy = {**egfr(99, 1, start), "id": "hcg", "code": {"coding": [{"code": "hcg"}]}}
    kept, dropped = cap_resources([pregnancy, *labs], 2, lambda r: {r["code"]["coding"][0]["code"]})
    assert dropped == 3
    assert {r["id"] for r in kept} == {"egfr-4", "egfr-3", "hcg"}  # an old result of another group stays


def test_years_of_labs_are_answered_with_the_newest_egfr_and_no_card(engine):
    """A dialysis patient with 1,500 eGFR results: never refused; the newest (low) value decides."""
    start = NOW - timedelta(days=1600)
    labs = [egfr(i, 90, start + timedelta(days=i)) for i in range(1499)]
    labs.append(egfr(1499, 20, NOW - timedelta(days=1)))
    labs.reverse()  # the EHR sent them oldest last
    conditions = [
        {
            "resourceType": "Condition",
            "id": f"c{i}",
            "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"code": "resolved"}]},
            "code": {"text": f"old problem {i}"},
            "recordedDate": "2001-01-01",
        }
        for i in range(1001)
    ]
    fhir = LocalFhir([PATIENT, *labs, *conditions])
    prefetch = fhir.prefetch(prefetch_templates(engine.packs[0]), {"patientId": "p1"})
    settings = ServiceSettings(max_body_bytes=5 << 20)
    app = create_app(lambda: engine, auth=None, clock=lambda: NOW, settings=settings)
    with TestClient(app) as test_client:
        answer = test_client.post(SIGN, json=hook_request("order-sign", "p1", drafts(1), prefetch=prefetch))
    assert answer.status_code == 200
    cards = answer.json()["cards"]
    unavailable = [c for c in cards if c["source"].get("topic", {}).get("code") == "data-unavailable"]
    assert len(unavailable) == 1 and "conditions" in unavailable[0]["detail"]
    assert "observations" not in unavailable[0]["detail"]
    assert any("eGFR 20" in c["summary"] for c in cards)  # the newest value, not one of the old 90s
    assert not any("eGFR 90" in c["summary"] + c["detail"] for c in cards)


def test_templates_sort_newest_first_with_count(engine):
    templates = prefetch_templates(engine.packs[0])
    expected = {
        "observations": "_sort=-date",
        "dialysisProcedures": "_sort=-date",
        "allergies": "_sort=-date",
        "medicationRequests": "_sort=-authoredon",
        "conditions": "_sort=-recorded-date",
        "medicationStatements": "_sort=-effective",
        "medicationAdministrations": "_sort=-effective-time",
    }
    for key, sort in expected.items():
        assert f"&{sort}&_count={HookLimits().max_resources_per_key}" in templates[key], key
    assert "?" not in templates["patient"]
