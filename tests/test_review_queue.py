"""The work queue (issue #18 item 3, without bulk actions): one item per (order, rule tier) across
order-select and order-sign, grouped by patient and encounter, most severe first; hypothetical
screenings and decided alerts stay out."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from cds_engine.service.review.router import build_router
from cds_engine.store import Store, open_store
from cds_engine.store import users as user_admin
from cds_engine.store.models import AlertRow, AuditEntry, Evaluation, User
from cds_engine.store.queries import decide, parse_filter, where
from cds_engine.store.work_queue import work_queue
from store_helpers import NOW, csrf_of, make_alert, make_record, postgres_database
from store_helpers import sign_in as shared_sign_in

PASSWORD = "correct-horse-battery"


def _put(store: Store, patient: str, encounter: str | None, order: str, rule: str, severity: str, *,
         hook: str = "order-sign", minutes: int = 0, hypothetical: bool = False) -> None:
    record = make_record(patient=patient, order_key=order, hook=hook, as_of=NOW + timedelta(minutes=minutes),
                         alerts=[make_alert(rule, severity)])
    store.sink.record_evaluation(record.model_copy(update={"encounter_ref": encounter,
                                                           "hypothetical": hypothetical}))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    def fill(s: Store) -> Store:
        _put(s, "Patient/a", "Encounter/1", "o1", "TST-W01", "warning", hook="order-select")
        _put(s, "Patient/a", "Encounter/1", "o1", "TST-W01", "warning", minutes=2)  # same order, signed
        _put(s, "Patient/a", "Encounter/1", "o2", "TST-C01", "critical", minutes=1)
        _put(s, "Patient/a", "Encounter/2", "o3", "TST-I01", "info", minutes=3)
        _put(s, "Patient/b", None, "o4", "TST-W02", "warning", minutes=4)
        _put(s, "Patient/c", None, "o5", "TST-C02", "critical", hypothetical=True)
        _put(s, "Patient/c", None, "o5", "TST-W01", "warning", hypothetical=True)
        _put(s, "Patient/d", None, "o6", "TST-C03", "critical")  # decided below: not in the queue
        with s.session() as db:
            user_admin.add_user(db, "ann", PASSWORD, "reviewer", actor="test")
            user = db.scalars(select(User)).one()
            alert = db.scalars(select(AlertRow).where(AlertRow.rule_id == "TST-C03")).one()
            decide(db, alert, user, "acknowledged", reason_code=None, reason_display=None, comment=None,
                   remote_addr=None)
        return s

    if request.param == "sqlite":
        s = fill(open_store(f"sqlite:///{tmp_path}/q.db", spool_dir=tmp_path / "spool", start_drainer=False))
        yield s
        s.close()
        return
    with postgres_database() as url:
        s = fill(open_store(url, spool_dir=tmp_path / "spool", start_drainer=False))
        yield s
        s.close()


def test_one_item_per_order_and_tier_grouped_most_severe_first(store: Store) -> None:
    with store.session() as db:
        groups, total = work_queue(db, where(parse_filter({})))
    assert total == 3
    assert [(g.patient_ref, g.encounter_ref, g.severity) for g in groups] == [
        ("Patient/a", "Encounter/1", "critical"), ("Patient/b", "", "warning"),
        ("Patient/a", "Encounter/2", "info")]
    first = groups[0].items
    assert [(i.rule_id, i.alert_rows) for i in first] == [("TST-C01", 1), ("TST-W01", 2)]
    with store.session() as db:
        newest = db.scalars(select(Evaluation.hook).join(AlertRow).where(AlertRow.id == first[1].alert_id))
        assert newest.one() == "order-sign"  # the newest row opens the item


def test_hypothetical_only_when_asked_and_paging(store: Store) -> None:
    with store.session() as db:
        groups, _ = work_queue(db, where(parse_filter({"source": "hypothetical"})))
        assert [g.patient_ref for g in groups] == ["Patient/c"]
        page2, total = work_queue(db, where(parse_filter({})), page=2, page_size=2)
        assert total == 3 and [g.patient_ref for g in page2] == ["Patient/a"]


def test_queue_page(store: Store) -> None:
    app = FastAPI()
    app.include_router(build_router(store, lambda: None))
    client = TestClient(app)
    shared_sign_in(client, "ann", PASSWORD)
    page = client.get("/review/queue").text
    assert page.index('data-patient="Patient/a"') < page.index('data-patient="Patient/b"')
    assert "TST-C02" not in page and "TST-C03" not in page
    assert "TST-C02" in client.get("/review/queue?source=hypothetical").text


class _Packs:
    """Just enough of an engine for the page: one pack allowing bulk acknowledgement of two rules."""

    def __init__(self, bulk: list[str]) -> None:
        spec = SimpleNamespace(bulk_acknowledge=bulk, override_reasons=[], pack=SimpleNamespace(title="t"),
                               sources={})
        self.packs = [SimpleNamespace(id="test-pack", spec=spec, rules=[], version="1.0.0",
                                      content_hash="f" * 64)]


def _client(store: Store, bulk: list[str]) -> tuple[TestClient, str]:
    app = FastAPI()
    packs = _Packs(bulk)
    app.include_router(build_router(store, lambda: packs))
    client = TestClient(app)
    shared_sign_in(client, "ann", PASSWORD)
    return client, csrf_of(client.get("/review/queue").text)


def _open(store: Store, rule: str) -> int:
    with store.session() as db:
        return len(db.scalars(select(AlertRow).where(AlertRow.rule_id == rule,
                                                     AlertRow.review_status == "open")).all())


def test_bulk_acknowledge_one_tier_with_an_audit_row_per_alert(store: Store) -> None:
    client, csrf = _client(store, ["TST-W01", "TST-C01"])
    page = client.get("/review/queue").text
    assert 'name="tier_id" value="TST-W01.main"' in page
    assert 'name="tier_id" value="TST-C01.main"' not in page  # critical: never offered
    assert 'name="tier_id" value="TST-W02.main"' not in page  # not listed by the pack
    form = {"csrf_token": csrf, "tier_id": "TST-W01.main"}
    response = client.post("/review/queue/bulk-acknowledge", data=form, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/review/queue?done=2"
    assert _open(store, "TST-W01") == 1  # the hypothetical one stays open
    with store.session() as db:
        rows = db.scalars(select(AuditEntry).where(AuditEntry.action == "alert.acknowledged")).all()
        bulk = [r for r in rows if r.detail.get("bulk_action")]
        bulk_ids = {r.detail["bulk_action"] for r in bulk}
        assert len(bulk) == 2 and len(bulk_ids) == 1 and len(rows) == 3  # + the one decided singly
        summary = db.scalars(select(AuditEntry).where(AuditEntry.action == "alert.bulk_acknowledged")).one()
        assert summary.detail == {"bulk_action": bulk_ids.pop(), "alerts": 2}


def test_bulk_refused_for_critical_unlisted_and_without_csrf(store: Store) -> None:
    client, csrf = _client(store, ["TST-W01", "TST-C01"])
    post = client.post
    assert post("/review/queue/bulk-acknowledge", data={"csrf_token": csrf, "tier_id": "TST-C01.main"},
                follow_redirects=False).status_code == 403  # critical tiers: always one by one
    assert post("/review/queue/bulk-acknowledge", data={"csrf_token": csrf, "tier_id": "TST-W02.main"},
                follow_redirects=False).status_code == 403  # the pack does not allow it
    assert post("/review/queue/bulk-acknowledge", data={"tier_id": "TST-W01.main"},
                follow_redirects=False).status_code == 403  # no CSRF token
    assert (_open(store, "TST-C01"), _open(store, "TST-W02"), _open(store, "TST-W01")) == (1, 1, 3)


def test_pack_bulk_list_must_name_its_own_rules() -> None:
    import yaml

    from cds_engine.rules.schema import Pack

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "rules/baclofen/pack.yaml").read_text())
    assert Pack.model_validate(data).bulk_acknowledge == []  # shipped: every alert decided one by one
    with pytest.raises(ValueError, match="unknown rule"):
        Pack.model_validate({**data, "bulk_acknowledge": ["NOPE-X01"]})
