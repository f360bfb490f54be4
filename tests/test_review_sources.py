"""Sources kept apart (issue #18 item 4): hook, batch screening of real therapy and hypothetical
screening (``--assume-order``) are labelled and filterable; hypothetical alerts are never in the
default queue or the default analytics. Also: migration 0002 backfills old batch runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from cds_engine.batch.runner import ScreenOptions, run_screen
from cds_engine.engine import Engine
from cds_engine.service.review.router import build_router
from cds_engine.store import Store, open_store
from cds_engine.store import users as user_admin
from cds_engine.store.migrate import upgrade
from cds_engine.store.models import AlertRow, BatchRun, Evaluation
from cds_engine.store.queries import AlertFilter, analytics, list_alerts, parse_filter
from conftest import RULES
from store_helpers import make_alert, make_record, postgres_database
from store_helpers import sign_in as shared_sign_in

PASSWORD = "correct-horse-battery"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/sources.db"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[Store]:
    s = open_store(db_url, spool_dir=tmp_path / "spool", start_drainer=False)
    s.sink.record_evaluation(make_record(source="hook", patient="Patient/h", order_key="o-h",
                                         alerts=[make_alert("TST-H01")]))
    s.sink.record_evaluation(make_record(source="batch", patient="Patient/b", order_key="o-b",
                                         alerts=[make_alert("TST-B01")]))
    hypo = make_record(source="batch", patient="Patient/x", order_key="o-x", alerts=[make_alert("TST-X01")])
    s.sink.record_evaluation(hypo.model_copy(update={"hypothetical": True}))
    yield s
    s.close()


def _rules(store: Store, f: AlertFilter) -> set[str]:
    with store.session() as db:
        return {a.rule_id for a, _ in list_alerts(db, f).rows}


def test_default_queue_leaves_hypothetical_out_and_each_source_filters(store: Store) -> None:
    assert _rules(store, parse_filter({})) == {"TST-H01", "TST-B01"}
    assert _rules(store, parse_filter({"source": "hook"})) == {"TST-H01"}
    assert _rules(store, parse_filter({"source": "batch"})) == {"TST-B01"}
    assert _rules(store, parse_filter({"source": "hypothetical"})) == {"TST-X01"}
    assert _rules(store, parse_filter({"source": "all"})) == {"TST-H01", "TST-B01", "TST-X01"}
    bad = parse_filter({"source": "<script>"})
    assert bad.errors == ["unknown source ignored"]
    assert _rules(store, bad) == {"TST-H01", "TST-B01"}  # an unknown choice never widens the queue


def test_default_analytics_leave_hypothetical_out(store: Store) -> None:
    with store.session() as db:
        assert {s.rule_id for s in analytics(db)} == {"TST-H01", "TST-B01"}
        assert {s.rule_id for s in analytics(db, source="hypothetical")} == {"TST-X01"}


def test_pages_label_and_filter_sources(store: Store, engine: Engine) -> None:
    with store.session() as db:
        user_admin.add_user(db, "ann", PASSWORD, "reviewer", actor="test")
    app = FastAPI()
    app.include_router(build_router(store, lambda: engine))
    client = TestClient(app)
    shared_sign_in(client, "ann", PASSWORD)
    page = client.get("/review/alerts").text
    assert "CDS Hooks call" in page and "Batch screening of current therapy" in page
    assert "TST-X01" not in page.split("<tbody>")[1]
    page = client.get("/review/alerts?source=hypothetical").text
    body = page.split("<tbody>")[1]
    assert "TST-X01" in body and "TST-H01" not in body
    assert "Hypothetical screening (assumed order)" in body
    assert "TST-X01" not in client.get("/review/analytics").text.split('id="rule-stats"')[1]
    assert "TST-X01" in client.get("/review/analytics?source=hypothetical").text.split('id="rule-stats"')[1]
    with store.session() as db:
        alert_id = db.scalars(select(AlertRow.id).where(AlertRow.rule_id == "TST-X01")).one()
    assert "Hypothetical screening (assumed order)" in client.get(f"/review/alerts/{alert_id}").text


def test_migration_0002_backfills_hypothetical_batch_runs(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        upgrade(engine, "0001")
        with engine.begin() as conn:
            runs = (("run-real", {"assumed_order": None}), ("run-hypo", {"assumed_order": "x 5 mg"}))
            for run, params in runs:
                conn.execute(text("INSERT INTO batch_runs (id, started_at, status, params, counts) "
                                  "VALUES (:id, CURRENT_TIMESTAMP, 'finished', :p, '{}')"),
                             {"id": run, "p": json.dumps(params)})
                conn.execute(text(
                    "INSERT INTO evaluations (id, source, as_of, recorded_at, pack_id, pack_version, "
                    "pack_hash, batch_run_id) VALUES (:id, 'batch', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
                    "'p', '1', 'h', :r)"),
                    {"id": f"e-{run}", "r": run})
        upgrade(engine)
        with engine.connect() as conn:
            flags = dict(conn.execute(text("SELECT batch_run_id, hypothetical FROM evaluations")).all())
        assert flags == {"run-real": False, "run-hypo": True}
    finally:
        engine.dispose()


def test_screen_store_flags_assumed_order_runs(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("patient_id,birth_date,egfr\np1,1950-01-01,20\np2,1960-01-01,80\n",
                                     encoding="utf-8")
    url = f"sqlite:///{tmp_path}/screen.db"
    for n, assumed in enumerate((None, "baclofen 5 mg PO TID")):
        run_screen(ScreenOptions(inputs=[tmp_path / "in.csv"], out=tmp_path / f"out{n}", rules=RULES,
                                 assume_order=assumed, as_of="2026-01-15T12:00:00+00:00", progress=False,
                                 store=True, store_url=url))
    s = open_store(url, spool_dir=tmp_path / "spool", start_drainer=False)
    try:
        with s.session() as db:
            rows = db.execute(select(Evaluation.hypothetical, BatchRun.params)
                              .join(BatchRun, Evaluation.batch_run_id == BatchRun.id)).all()
            assert rows and all(h == (params["assumed_order"] is not None) for h, params in rows)
            hypothetical_alerts = db.scalars(select(AlertRow.id).join(Evaluation)
                                             .where(Evaluation.hypothetical.is_(True))).all()
            assert hypothetical_alerts, "the assumed order must fire something for the test to mean anything"
            shown = {a.id for a, _ in list_alerts(db, parse_filter({}), page_size=10_000).rows}
            assert not shown & set(hypothetical_alerts)
    finally:
        s.close()
