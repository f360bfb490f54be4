"""Nothing answered and lost (security issue item 5, audit L3).

The four inputs that were answered but never stored on PostgreSQL (a NUL in ``patientId``, in a
draft's ``note.text``, in feedback's ``userComment`` and in ``/evaluate``'s ``patient_id``) are
each a 400 naming the field; an out-of-range ``as_of`` is a 400; the store's engine hides SQL
parameters; a spooled line that can never be applied is kept without its patient data; and an
evaluation that cannot be stored is an ERROR log and a metric in ``/healthz``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import hook_request, medication_request
from tests.store_helpers import postgres_database

from cds_engine.service import create_app
from cds_engine.store.api import EvaluationRecord
from cds_engine.store.db import create_db_engine
from cds_engine.store.failures import not_stored_counts
from cds_engine.store.spool import Spool

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SIGN = "/cds-services/baclofen-order-sign"
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}


def test_the_four_l3_inputs_on_postgresql_are_400_or_stored(engine):
    from cds_engine.store import open_store

    with postgres_database() as url:
        store = open_store(url)
        try:
            app = create_app(lambda: engine, sink=store.sink, auth=None, clock=lambda: NOW)
            with TestClient(app) as client:
                body = hook_request(
                    "order-sign", "p\x00nul", [medication_request()], prefetch={"patient": PATIENT}
                )
                raw = json.dumps(body).encode()
                response = client.post(SIGN, content=raw, headers={"content-type": "application/json"})
                assert response.status_code == 400
                assert response.json()["issue"][0]["expression"] == ["context.patientId"]

                draft = medication_request(note=[{"text": "a\x00b"}])
                body = hook_request("order-sign", "p1", [draft], prefetch={"patient": PATIENT})
                response = client.post(SIGN, json=body)
                assert response.status_code == 400
                assert response.json()["issue"][0]["expression"] == [
                    "context.draftOrders.entry[0].resource.note[0].text"
                ]

                feedback = {
                    "feedback": [
                        {
                            "card": "c1",
                            "outcome": "overridden",
                            "outcomeTimestamp": "2026-12-05T12:00:00Z",
                            "overrideReason": {"userComment": "x\x00y"},
                        }
                    ]
                }
                response = client.post(f"{SIGN}/feedback", json=feedback)
                assert response.status_code == 400
                assert response.json()["issue"][0]["expression"] == ["feedback[0].overrideReason.userComment"]

                response = client.post(
                    "/evaluate", json={"as_of": NOW.isoformat(), "patient_id": "nul\x00id"}
                )
                assert response.status_code == 400
                assert response.json()["issue"][0]["expression"] == ["patient_id"]

                stored = client.post(
                    SIGN,
                    json=hook_request(
                        "order-sign", "p1", [medication_request()], prefetch={"patient": PATIENT}
                    ),
                )
                assert stored.status_code == 200
                assert "x\x00y" not in response.text and "nul" not in response.text
        finally:
            store.close()


def test_out_of_range_as_of_is_400(engine):
    with TestClient(create_app(lambda: engine, auth=None)) as client:
        response = client.post("/evaluate", json={"as_of": "9999-12-31T23:59:59-14:00"})
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == ["as_of"]


def test_the_store_hides_sql_parameters(tmp_path: Path):
    assert create_db_engine(f"sqlite:///{tmp_path / 'x.db'}").hide_parameters is True
    assert create_db_engine("postgresql+psycopg://u@127.0.0.1:1/x").hide_parameters is True


def test_a_rejected_spool_line_keeps_no_patient_data(tmp_path: Path):
    spool = Spool(tmp_path)
    spool.append(
        {
            "type": "evaluation",
            "id": "e1",
            "recorded_at": NOW.isoformat(),
            "record": {"patient_ref": "Patient/Zzyzx-Secret", "order": {"note": "Quintessa"}},
        }
    )
    before = not_stored_counts().get("rejected", 0)

    def never(_entry: dict) -> None:
        raise ValueError("Patient/Zzyzx-Secret cannot be inserted [parameters: Quintessa]")

    spool.drain(never)
    text = (tmp_path / "rejected.jsonl").read_text(encoding="utf-8")
    assert "Zzyzx" not in text and "Quintessa" not in text
    assert json.loads(text.splitlines()[0]) == {
        "error": "ValueError",
        "entry": {"type": "evaluation", "id": "e1", "recorded_at": NOW.isoformat()},
    }
    assert not_stored_counts()["rejected"] == before + 1


class BrokenSink:
    def record_evaluation(self, record: EvaluationRecord) -> None:
        raise RuntimeError("the database refused it")

    def record_feedback(self, feedback: object) -> bool:
        return False


def test_an_evaluation_that_cannot_be_stored_is_an_error_log_and_a_metric(engine, caplog):
    caplog.set_level(logging.ERROR)
    app = create_app(lambda: engine, sink=BrokenSink(), auth=None, clock=lambda: NOW)
    with TestClient(app) as client:
        before = client.get("/healthz").json()["evaluation_not_stored_total"].get("sink-error", 0)
        body = hook_request("order-sign", "p1", [medication_request()], prefetch={"patient": PATIENT})
        assert client.post(SIGN, json=body).status_code == 200  # the advice is still given
        after = client.get("/healthz").json()["evaluation_not_stored_total"]["sink-error"]
    assert after == before + 1
    assert any(r.levelno == logging.ERROR and "not recorded" in r.getMessage() for r in caplog.records)


@pytest.fixture(autouse=True)
def _no_database_url(monkeypatch):
    monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
