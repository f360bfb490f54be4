"""Who the patient is (issue #18 item 2) and one order per ordering session (item 3).

Demographics: read as sent from a FHIR Patient (MRN-type identifiers only, bidi controls
stripped), one ``patients`` row per patient reference, shown on the queue, list and detail pages
inside ``<bdi>``, purged after the retention period once the patient's last alert is closed, and
never written with ``--no-demographics``. Order sessions: a reused draft id after an hour of
silence is a new order; order-select and order-sign of one order are one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cds_engine.rules.schema import Pack
from cds_engine.service.review.router import build_router
from cds_engine.sources.demographics import PatientDemographics, clean_text, from_fhir_patient
from cds_engine.store import Store, open_store
from cds_engine.store import users as user_admin
from cds_engine.store.db import utcnow
from cds_engine.store.models import AlertRow, AuditEntry, Evaluation, Patient, User
from cds_engine.store.queries import decide
from cds_engine.store.work_queue import work_queue
from cds_engine.store.writer import insert_evaluations
from store_helpers import NOW, STORE_KINDS, csrf_of, make_alert, make_record, store_for
from store_helpers import sign_in as shared_sign_in

PASSWORD = "correct-horse-battery"
RLO, PDI, LRI = "\u202e", "\u2069", "\u2066"
MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "MRN"}
SSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]}


def fhir_patient(pid: str = "p1", name: str = "Ada Lovelace") -> dict:
    given, family = name.split(" ", 1)
    return {
        "resourceType": "Patient", "id": pid, "birthDate": "1815-12-10",
        "name": [{"use": "old", "family": "Byron", "period": {"end": "1835"}},
                 {"use": "official", "given": [given], "family": family}],
        "identifier": [{"type": MR, "value": f"MRN-{pid}"}, {"type": SSN, "value": "123-45-6789"},
                       {"value": "no-type"}],
    }


def test_demographics_as_sent_mrn_only_and_bidi_stripped() -> None:
    who = from_fhir_patient(fhir_patient())
    assert who == PatientDemographics(name="Ada Lovelace", birth_date="1815-12-10",
                                      identifiers=[("MRN", "MRN-p1")])  # not the SSN, not the untyped one
    hostile = from_fhir_patient({**fhir_patient(), "name": [{"text": f"Eve{RLO}lanimirc{PDI} {LRI}x\u200b"}]})
    assert hostile is not None and hostile.name == "Evelanimirc x"
    assert clean_text("a\x00b\nc" + "z" * 500) == "ab c" + "z" * 196
    assert from_fhir_patient({"resourceType": "Patient", "id": "x"}) is None  # nothing sent: no row
    assert from_fhir_patient({"resourceType": "Observation"}) is None


def _record(patient: str, order: str, *, minutes: int = 0, rule: str = "TST-W01", severity: str = "warning",
            who: PatientDemographics | None = None, category: str = "dose-range", alerts: bool = True):
    record = make_record(patient=patient, order_key=order, as_of=NOW + timedelta(minutes=minutes),
                         alerts=[make_alert(rule, severity, category=category)] if alerts else [])
    return record.model_copy(update={"demographics": who})


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_for(request.param, tmp_path) as s:
        yield s


def _patients(store: Store) -> dict[str, Patient]:
    with store.session() as db:
        return {p.patient_ref: p for p in db.scalars(select(Patient))}


def test_one_row_per_patient_refreshed_and_only_with_alerts(store: Store) -> None:
    ada = from_fhir_patient(fhir_patient("p1"))
    store.sink.record_evaluation(_record("Patient/p1", "o1", who=ada))
    store.sink.record_evaluation(_record("Patient/p1", "o2", who=ada.model_copy(update={"name": "Ada King"})))
    store.sink.record_evaluation(_record("Patient/p2", "o3", who=from_fhir_patient(fhir_patient("p2")),
                                         alerts=False))  # nothing to review: nothing kept
    store.sink.record_evaluation(_record("Patient/p3", "o4", who=None))  # --no-demographics
    rows = _patients(store)
    assert list(rows) == ["Patient/p1"]
    assert (rows["Patient/p1"].name, rows["Patient/p1"].identifiers) == ("Ada King", [["MRN", "MRN-p1"]])
    with store.session() as db:  # not copied into evaluations: they keep the opaque reference only
        assert db.scalar(select(func.count()).select_from(Evaluation)) == 4


def _close_all(store: Store, patient: str, at_days_ago: int) -> None:
    with store.session() as db:
        user = db.scalars(select(User)).first()
        if user is None:
            user = user_admin.add_user(db, "ann", PASSWORD, "reviewer", actor="test")
            db.flush()
        ids = db.scalars(select(AlertRow.id).join(Evaluation).where(Evaluation.patient_ref == patient)).all()
        for alert_id in ids:
            alert = db.get(AlertRow, alert_id)
            assert alert is not None
            decide(db, alert, user, "acknowledged", reason_code=None, reason_display=None, comment=None,
                   remote_addr=None)
            alert.reviewed_at = utcnow() - timedelta(days=at_days_ago)


def test_purged_after_retention_once_the_last_alert_is_closed(store: Store) -> None:
    old = NOW  # 2025: far beyond any retention from today
    for pid in ("p1", "p2", "p3"):
        record = _record(f"Patient/{pid}", f"o-{pid}", who=from_fhir_patient(fhir_patient(pid)))
        store.sink.record_evaluation(record.model_copy(update={"as_of": old}))
    with store.engine.begin() as conn:  # rows written long ago
        conn.execute(Patient.__table__.update().values(updated_at=old))
    _close_all(store, "Patient/p1", at_days_ago=400)  # closed 400 days ago: forgotten
    _close_all(store, "Patient/p2", at_days_ago=10)  # closed recently: kept for now
    # p3's alert is still open: kept however old
    assert store.purge_demographics(365) == 1
    assert sorted(_patients(store)) == ["Patient/p2", "Patient/p3"]
    assert store.purge_demographics(5) == 1  # a shorter retention forgets p2 as well
    assert sorted(_patients(store)) == ["Patient/p3"]
    assert store.forget_all_demographics() == 1 and _patients(store) == {}


class _Packs:
    def __init__(self, bulk: list[str]) -> None:
        spec = SimpleNamespace(bulk_acknowledge=bulk, override_reasons=[], pack=SimpleNamespace(title="t"),
                               sources={}, rules=[])
        self.packs = [SimpleNamespace(id="test-pack", spec=spec, rules=[], version="1.0.0", vocabulary=None,
                                      content_hash="f" * 64)]


def _client(store: Store, bulk: list[str]) -> TestClient:
    with store.session() as db:
        if db.scalars(select(User)).first() is None:
            user_admin.add_user(db, "ann", PASSWORD, "reviewer", actor="test")
    app = FastAPI()
    packs = _Packs(bulk)
    app.include_router(build_router(store, lambda: packs))
    client = TestClient(app)
    shared_sign_in(client, "ann", PASSWORD)
    return client


def test_pages_show_who_the_patient_is_inside_bdi(store: Store) -> None:
    hostile = from_fhir_patient({**fhir_patient("p1"), "name": [{"text": f"Eve{RLO} <b>x</b>"}]})
    store.sink.record_evaluation(_record("Patient/p1", "o1", who=hostile))
    store.sink.record_evaluation(_record("Patient/p9", "o9"))  # no demographics: the reference only
    client = _client(store, [])
    for page in (client.get("/review/queue").text, client.get("/review/alerts").text):
        assert '<bdi class="who-name">Eve &lt;b&gt;x&lt;/b&gt;</bdi>' in page and RLO not in page
        assert "born <bdi>1815-12-10</bdi>" in page and 'MRN <bdi class="who-id">MRN-p1</bdi>' in page
        assert "<bdi>Patient/p9</bdi>" in page
    with store.session() as db:
        alert_id = db.scalars(select(AlertRow.id).join(Evaluation)
                              .where(Evaluation.patient_ref == "Patient/p1")).one()
    detail = client.get(f"/review/alerts/{alert_id}").text
    assert '<bdi class="who-name">Eve &lt;b&gt;x&lt;/b&gt;</bdi>' in detail


# -- item 3: ordering sessions ------------------------------------------------------------------

def _order_keys(store: Store) -> list[str]:
    with store.session() as db:
        return list(db.scalars(select(Evaluation.order_key).order_by(Evaluation.as_of)))


def test_reused_draft_id_after_an_hour_is_another_order(store: Store) -> None:
    for minutes in (0, 5, 50, 100):  # select, sign, and two more calls each < 1 h after the last
        store.sink.record_evaluation(_record("Patient/p1", "base-1", minutes=minutes))
    store.sink.record_evaluation(_record("Patient/p1", "base-1", minutes=100 + 61))  # a new session
    store.sink.record_evaluation(_record("Patient/p1", "base-2", minutes=1))  # another order
    keys = _order_keys(store)
    # in time order: base-1 @0, base-2 @1, base-1 @5, @50, @100, @161
    assert len({keys[0], keys[2], keys[3], keys[4]}) == 1  # one session: no gap over an hour
    assert keys[1] != keys[0]  # base-2: another order
    assert keys[-1] not in keys[:-1]  # after 61 minutes of silence: a new order
    with store.session() as db:
        groups, _ = work_queue(db, [Evaluation.hypothetical.is_(False)])
    assert sorted(i.alert_rows for g in groups for i in g.items) == [1, 1, 4]


def test_group_commit_finds_sessions_within_the_group(store: Store) -> None:
    items = [(_record("Patient/p1", "base-g", minutes=m), f"00000000-0000-0000-0000-00000000000{i}", NOW)
             for i, m in enumerate((0, 3, 200))]
    with store.engine.begin() as conn:
        assert insert_evaluations(conn, items) == 3
    keys = _order_keys(store)
    assert keys[0] == keys[1] != keys[2]


def test_hook_order_key_names_issuer_and_product() -> None:
    from cds_engine.service.hook import order_key

    draft = {"resourceType": "MedicationRequest", "id": "1",
             "medicationCodeableConcept": {"coding": [{"system": "rx", "code": "A"}]}}
    request = SimpleNamespace(fhirServer="https://ehr-a/fhir",
                              context=SimpleNamespace(patientId="p", encounterId="e"))
    base = order_key(request, draft, "iss-a")  # type: ignore[arg-type]
    assert base == order_key(request, dict(draft), "iss-a")  # type: ignore[arg-type]
    assert base != order_key(request, draft, "iss-b")  # type: ignore[arg-type]
    other = {**draft, "medicationCodeableConcept": {"coding": [{"system": "rx", "code": "B"}]}}
    assert base != order_key(request, other, "iss-a")  # type: ignore[arg-type]  # reused id, other drug


# -- item 3: bulk refusals -----------------------------------------------------------------------

@pytest.mark.parametrize(("category", "severity"), [
    ("discontinuation", "warning"), ("allergy", "warning"), ("order-error", "info"), ("pregnancy", "warning"),
    ("dose-range", "critical")])
def test_bulk_refused_for_tiers_that_always_show(store: Store, category: str, severity: str) -> None:
    for n in range(2):
        store.sink.record_evaluation(_record(f"Patient/p{n}", f"o{n}", rule="TST-X01", severity=severity,
                                             category=category))
    client = _client(store, ["TST-X01"])  # even when the pack (wrongly) lists the rule
    csrf = csrf_of(client.get("/review/queue").text)
    form = {"csrf_token": csrf, "tier_id": "TST-X01.main"}
    answer = client.post("/review/queue/bulk-acknowledge", data=form, follow_redirects=False)
    assert answer.status_code == 403
    with store.session() as db:
        still_open = select(func.count()).select_from(AlertRow).where(AlertRow.review_status == "open")
        assert db.scalar(still_open) == 2
        assert not db.scalars(select(AuditEntry).where(AuditEntry.action == "alert.acknowledged")).all()


def test_pack_may_not_list_always_shown_rules_for_bulk() -> None:
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "rules/baclofen/pack.yaml").read_text())
    for rule in ("BAC-W01", "BAC-A01", "BAC-F01", "BAC-P01"):
        with pytest.raises(ValueError, match="decided one by one"):
            Pack.model_validate({**data, "bulk_acknowledge": [rule]})
    assert Pack.model_validate({**data, "bulk_acknowledge": ["BAC-M01"]}).bulk_acknowledge == ["BAC-M01"]


# -- item 5: top override reasons -----------------------------------------------------------------

def test_top_override_reasons_per_rule_count_orders_once(store: Store) -> None:
    from cds_engine.store.api import FeedbackRecord
    from cds_engine.store.queries import analytics

    def override(order: str, reason: str, *, hooks: int = 1) -> None:
        for n in range(hooks):  # order-select and order-sign of one order, both overridden
            record = _record("Patient/p1", order, minutes=n)
            store.sink.record_evaluation(record)
            store.sink.record_feedback(FeedbackRecord(
                service_id="s", card_uuid=str(record.alerts[0].card_uuid), outcome="overridden",
                override_reason_code=reason.lower(), override_reason_display=reason,
                outcome_timestamp=NOW + timedelta(minutes=n + 1)))

    override("o1", "=Tolerated before", hooks=2)
    override("o2", "=Tolerated before")
    override("o3", "Palliative care")
    override("o4", "Palliative care")
    override("o5", "Benefit outweighs risk")
    override("o6", "Will monitor")
    with store.session() as db:
        (stats,) = analytics(db, source="all")
    assert stats.top_override_reasons == [("=Tolerated before", 2), ("Palliative care", 2),
                                          ("Benefit outweighs risk", 1)]
    client = _client(store, [])
    page = client.get("/review/analytics?window=all").text
    assert "=Tolerated before (2)" in page and "Will monitor" not in page
    csv_text = client.get("/review/analytics.csv?window=all").text
    assert "'=Tolerated before (2); Palliative care (2); Benefit outweighs risk (1)" in csv_text


# -- the real command: serve with and without demographics ---------------------------------------

@pytest.mark.parametrize("keep", [True, False])
def test_serve_keeps_demographics_unless_told_not_to(tmp_path: Path, pack: Any, keep: bool) -> None:
    import httpx
    from tests.service_helpers import REPO, LocalFhir, hook_request, medication_request, serve_process
    from tests.test_security_phi import record

    from cds_engine.service.discovery import prefetch_templates

    url = f"sqlite:///{tmp_path}/cds.db"
    with open_store(url, spool_dir=tmp_path / "spool", start_drainer=False) as s:  # a row from before
        s.sink.record_evaluation(_record("Patient/old", "o1", who=from_fhir_patient(fhir_patient("old"))))
    flags = [] if keep else ["--no-demographics"]
    args = ["--rules", str(REPO / "rules"), "--db", url, "--no-auth", *flags]
    with serve_process(args, tmp_path, env={"CDS_SPOOL_DIR": str(tmp_path / "spool")}) as (base, _, _):
        prefetch = LocalFhir(record()).prefetch(prefetch_templates(pack), {"patientId": "phi-1"})
        draft = medication_request(id="d1", patient="phi-1", dose=20, per_day=4)
        body = hook_request("order-sign", "phi-1", [draft], prefetch=prefetch)
        answer = httpx.post(f"{base}/cds-services/{pack.id}-order-sign", json=body, timeout=30)
        assert answer.status_code == 200 and answer.json()["cards"], answer.text
    with open_store(url, spool_dir=tmp_path / "spool", start_drainer=False) as s, s.session() as db:
        rows = {p.patient_ref: p for p in db.scalars(select(Patient))}
        assert db.scalar(select(func.count()).select_from(Evaluation)) >= 2  # the hook call was stored
    if keep:
        assert sorted(rows) == ["Patient/old", "Patient/phi-1"]
        assert rows["Patient/phi-1"].identifiers == [["MRN", "Zzmrn-0042-77"]]
    else:
        assert rows == {}  # none kept, and the one stored before deleted at start


def test_batch_outputs_and_store_carry_no_demographics(tmp_path: Path) -> None:
    """A screened bundle's patient name, birth date and MRN appear in no batch CSV, no report.html,
    and the store gets no ``patients`` row from a batch run (only hook calls keep demographics)."""
    from tests.service_helpers import REPO, medication_request
    from tests.test_security_phi import BIRTH, FAMILY, GIVEN, MRN, record

    from cds_engine.batch.runner import ScreenOptions, run_screen

    therapy = medication_request(id="active-1", patient="phi-1", dose=20, per_day=4, status="active",
                                 authoredOn="2025-01-10")
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in [*record(), therapy]]}
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "b.json").write_text(json.dumps(bundle))
    url = f"sqlite:///{tmp_path}/cds.db"
    out = tmp_path / "out"
    options = ScreenOptions(inputs=[inputs], out=out, rules=REPO / "rules", store=True, store_url=url,
                            as_of="2025-03-01", progress=False)
    result = run_screen(options)
    assert result.summary["counts"]["alerts"] > 0  # something was screened and kept
    texts = {p.name: p.read_text(encoding="utf-8", errors="replace") for p in out.iterdir()
             if p.suffix in (".csv", ".html")}
    assert "report.html" in texts and "alerts.csv" in texts
    leaks = {name: s for name, text in texts.items() for s in (FAMILY, GIVEN, BIRTH, MRN) if s in text}
    assert not leaks, leaks
    with open_store(url, start_drainer=False) as s, s.session() as db:
        assert db.scalar(select(func.count()).select_from(AlertRow)) > 0
        assert db.scalar(select(func.count()).select_from(Patient)) == 0
