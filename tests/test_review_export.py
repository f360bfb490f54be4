"""The alert list as a CSV download (issue #18 item 6: 10,000 rows within 300 ms at 1M alerts in
bench/review.py): the list's filter, newest first, formula cells neutralised, capped, audited,
hypothetical screenings only when asked, and never who the patient is."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from cds_engine.service.review.router import build_router
from cds_engine.sources.demographics import PatientDemographics
from cds_engine.store import Store
from cds_engine.store import users as user_admin
from cds_engine.store.alert_export import export_rows
from cds_engine.store.models import AuditEntry
from cds_engine.store.queries import parse_filter
from store_helpers import NOW, STORE_KINDS, make_alert, make_record, store_for
from store_helpers import sign_in as shared_sign_in

PASSWORD = "correct-horse-battery"


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def test_alert_csv_is_filtered_neutralised_audited_and_without_names(store: Store) -> None:
    hostile = make_alert("TST-X01", summary="=HYPERLINK(\"http://evil\")")
    record = make_record(order_key="x1", alerts=[hostile], as_of=NOW)
    named = record.model_copy(update={"demographics": PatientDemographics(name="Ada Lovelace-Unique")})
    store.sink.record_evaluation(named)
    store.sink.record_evaluation(make_record(order_key="x2", alerts=[make_alert("TST-X01")],
                                             as_of=NOW - timedelta(days=1)))
    store.sink.record_evaluation(make_record(order_key="x3", alerts=[make_alert("TST-X01")], as_of=NOW)
                                 .model_copy(update={"hypothetical": True}))
    store.sink.record_evaluation(make_record(order_key="x4", alerts=[make_alert("TST-OTHER")], as_of=NOW))
    with store.session() as db:
        user_admin.add_user(db, "ann", PASSWORD, "reviewer", actor="test")
    app = FastAPI()
    app.include_router(build_router(store, lambda: None))
    client = TestClient(app)
    shared_sign_in(client, "ann", PASSWORD)
    assert 'href="/review/alerts.csv?rule=TST-X01"' in client.get("/review/alerts?rule=TST-X01").text
    response = client.get("/review/alerts.csv", params={"rule": "TST-X01"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert response.headers["cache-control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["summary"] for r in rows] == ["'=HYPERLINK(\"http://evil\")", "Check the dose"]  # newest first
    assert {r["source"] for r in rows} == {"hook"} and {r["rule"] for r in rows} == {"TST-X01"}
    assert "Lovelace" not in response.text
    hypothetical = client.get("/review/alerts.csv", params={"rule": "TST-X01", "source": "hypothetical"})
    assert [r["source"] for r in csv.DictReader(io.StringIO(hypothetical.text))] == ["hypothetical"]
    with store.session() as db:
        entries = db.scalars(select(AuditEntry).where(AuditEntry.action == "export.alerts")).all()
        assert len(entries) == 2 and entries[0].actor == "ann"
        assert entries[0].detail["filter"] == {"rule": "TST-X01"}
        assert len(list(export_rows(db, parse_filter({}), limit=2))) == 2  # capped
    anonymous = TestClient(app)
    assert anonymous.get("/review/alerts.csv", follow_redirects=False).status_code == 303  # sign in first


def test_export_cells_follow_the_shared_neutraliser() -> None:
    from cds_engine.service.review.alerts_csv import _cell
    from cds_engine.service.review.csv_export import neutralise

    for value in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "plain", "", " =not first", "'quoted"):
        assert _cell(value) == neutralise(value), value
    assert _cell(None) == "" and _cell(3) == 3
