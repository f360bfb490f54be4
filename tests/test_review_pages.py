"""The review pages through FastAPI's TestClient: access control, CSRF, sessions, hostile input."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cds_engine.engine import Engine
from cds_engine.service.review.router import build_router
from cds_engine.store import Store, open_store
from cds_engine.store import users as user_admin
from cds_engine.store.api import EvaluationRecord, IssuedAlert
from cds_engine.store.models import AlertRow, AuditEntry, Evaluation, ReviewDecision, User
from store_helpers import csrf_of
from store_helpers import sign_in as shared_sign_in

PASSWORD = "correct-horse-battery"
XSS_PATIENT = '<script>alert("p")</script>'
XSS_SUMMARY = '<img src=x onerror=alert(1)>'
FACTS = {
    "as_of": "2025-03-01T10:00:00+00:00", "age_years": 70, "weight_kg": 70,
    "renal": {"egfr": {"value": 25, "unit": "mL/min/{1.73_m2}", "date": "2025-02-20"}, "dialysis": "none"},
    "order": {"product": {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "617298",
                          "display": "Baclofen 20 MG Disintegrating Oral Tablet"},
              "form": "tablet", "route": "oral", "dose_amount": 20, "dose_unit": "mg", "doses_per_day": 3,
              "action": "new"},
}


def seed(store: Store, engine: Engine) -> None:
    alerts = engine.evaluate(FACTS)
    assert alerts, "the seed facts must fire rules"
    pack = engine.packs[0]
    hostile = alerts[0].model_copy(update={"summary": XSS_SUMMARY})
    for n, (patient, fired) in enumerate([("Patient/1", alerts), (XSS_PATIENT, [hostile])]):
        store.sink.record_evaluation(EvaluationRecord(
            source="hook", hook_instance=str(uuid.uuid4()), hook="order-sign", service_id="order-sign",
            patient_ref=patient, order_key=f"order-{n}", order=FACTS["order"], as_of=datetime.now(UTC),
            pack_id=pack.id, pack_version=pack.version, pack_hash=pack.content_hash,
            alerts=[IssuedAlert(alert=a, card_uuid=str(uuid.uuid4())) for a in fired]))


@pytest.fixture
def store(tmp_path: Path, engine: Engine) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/review.db", spool_dir=tmp_path / "spool", start_drainer=False)
    with s.session() as db:
        user_admin.add_user(db, "ann", PASSWORD, "admin", actor="test")
        user_admin.add_user(db, "rita", PASSWORD, "reviewer", actor="test")
    seed(s, engine)
    yield s
    s.close()


def make_client(store: Store, engine: Engine, **router_options: bool) -> TestClient:
    app = FastAPI()
    app.include_router(build_router(store, lambda: engine, **router_options))
    return TestClient(app)


@pytest.fixture
def client(store: Store, engine: Engine) -> TestClient:
    return make_client(store, engine)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    return shared_sign_in(client, username, password)


def first_alert_id(store: Store, patient: str = "Patient/1") -> str:
    with store.session() as db:
        return db.scalars(select(AlertRow.id).join(Evaluation).where(Evaluation.patient_ref == patient)
                          .order_by(AlertRow.position)).first() or ""


def actions(store: Store) -> list[str]:
    with store.session() as db:
        return list(db.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


@pytest.mark.parametrize("path", ["/review/alerts", "/review/alerts/x", "/review/analytics", "/review/users",
                                  "/review/audit"])
def test_unauthenticated_pages_redirect_to_sign_in(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/review/login?next=")


def test_unauthenticated_post_is_refused(client: TestClient, store: Store) -> None:
    alert_id = first_alert_id(store)
    response = client.post(f"/review/alerts/{alert_id}/decision", data={"action": "acknowledge"},
                           follow_redirects=False)
    assert response.status_code == 401
    with store.session() as db:
        assert db.scalar(select(func.count()).select_from(ReviewDecision)) == 0


def test_post_without_or_with_a_wrong_csrf_token_is_403(client: TestClient, store: Store,
                                                        engine: Engine) -> None:
    assert client.post("/review/login", data={"username": "ann", "password": PASSWORD}).status_code == 403
    good = sign_in(client, "ann")
    alert_id = first_alert_id(store)
    for token in (None, "", "forged-token", good[:-1]):
        data = {"action": "acknowledge"} | ({"csrf_token": token} if token is not None else {})
        response = client.post(f"/review/alerts/{alert_id}/decision", data=data, follow_redirects=False)
        assert response.status_code == 403
    assert client.post("/review/users", data={"username": "eve", "role": "admin", "password": PASSWORD},
                       follow_redirects=False).status_code == 403
    other = make_client(store, engine)  # another browser
    other_token = sign_in(other, "rita")
    assert client.post(f"/review/alerts/{alert_id}/decision",  # a token of another session
                       data={"action": "acknowledge", "csrf_token": other_token}).status_code == 403
    with store.session() as db:
        assert db.scalar(select(func.count()).select_from(ReviewDecision)) == 0
        assert user_admin.get_user(db, "eve") is None
    assert actions(store).count("access.denied") == 6
    ok = client.post(f"/review/alerts/{alert_id}/decision",
                     data={"action": "acknowledge", "csrf_token": good},
                     follow_redirects=False)
    assert ok.status_code == 303


def test_session_id_rotates_at_sign_in_and_cookie_flags(client: TestClient, store: Store,
                                                        engine: Engine) -> None:
    form = client.get("/review/login")
    before = client.cookies.get("cds_review_session")
    assert before
    response = client.post("/review/login", data={"username": "rita", "password": PASSWORD,
                                                  "csrf_token": csrf_of(form.text)}, follow_redirects=False)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower() and "Path=/review" in cookie
    after = client.cookies.get("cds_review_session")
    assert after and after != before
    # the pre-login id (which an attacker could have planted) is worth nothing now
    planted = make_client(store, engine)
    planted.cookies.set("cds_review_session", before, path="/review")
    assert planted.get("/review/alerts", follow_redirects=False).status_code == 303
    secure = make_client(store, engine, secure_cookies=True)
    assert "Secure" in secure.get("/review/login").headers["set-cookie"]


def test_wrong_password_and_open_redirect(client: TestClient, store: Store) -> None:
    form = client.get("/review/login")
    bad = client.post("/review/login",
                      data={"username": "ann", "password": "nope", "csrf_token": csrf_of(form.text)})
    assert bad.status_code == 401 and "wrong password" in bad.text
    ok = client.post("/review/login", data={"username": "ann", "password": PASSWORD,
                                            "csrf_token": csrf_of(bad.text), "next": "https://evil.example/x"},
                     follow_redirects=False)
    assert ok.headers["location"] == "/review/alerts"
    assert "login.failed" in actions(store) and "login" in actions(store)


def test_reviewer_cannot_manage_users(client: TestClient, store: Store) -> None:
    token = sign_in(client, "rita")
    assert client.get("/review/users").status_code == 403
    assert client.get("/review/audit").status_code == 403
    add = client.post("/review/users", data={"username": "eve", "role": "admin", "password": PASSWORD,
                                             "csrf_token": token}, follow_redirects=False)
    assert add.status_code == 403
    assert client.post("/review/users/ann/disable", data={"csrf_token": token}).status_code == 403
    with store.session() as db:
        assert user_admin.get_user(db, "eve") is None
        ann = user_admin.get_user(db, "ann")
        assert ann is not None and not ann.disabled and ann.role == "admin"
    assert actions(store).count("access.denied") == 4


def test_admin_manages_users_and_disabling_ends_sessions(store: Store, engine: Engine) -> None:
    admin, reviewer = make_client(store, engine), make_client(store, engine)
    token = sign_in(admin, "ann")
    sign_in(reviewer, "rita")
    assert admin.get("/review/users").status_code == 200
    added = admin.post("/review/users", data={"username": "nina", "role": "reviewer", "password": PASSWORD,
                                              "csrf_token": token}, follow_redirects=False)
    assert added.status_code == 303 and added.headers["location"].endswith("saved=1")
    weak = admin.post("/review/users", data={"username": "x", "role": "reviewer", "password": "short",
                                             "csrf_token": token})
    assert "at least" in weak.text
    disabled = admin.post("/review/users/rita/disable", data={"csrf_token": token}, follow_redirects=False)
    assert disabled.status_code == 303
    assert reviewer.get("/review/alerts", follow_redirects=False).status_code == 303  # signed out now
    with store.session() as db:
        nina = user_admin.get_user(db, "nina")
        assert nina is not None and nina.role == "reviewer"
        assert db.scalars(select(User.disabled).where(User.username == "rita")).one()
    assert {"user.add", "user.disable", "view.users"} <= set(actions(store))


SQL_INJECTIONS = [
    "' OR '1'='1", "'; DROP TABLE alerts; --", "1) OR 1=1 --", "\" OR \"\"=\"", "%' OR 1=1 --",
    "' UNION SELECT id, password_hash FROM users --", "\\'; SELECT pg_sleep(5); --", "x\x00y", "*/ OR /*",
]


@pytest.mark.parametrize("field", ["severity", "rule", "category", "status", "outcome", "patient", "from",
                                   "to", "page"])
def test_sql_injection_in_filters_is_harmless(client: TestClient, store: Store, field: str) -> None:
    sign_in(client, "rita")
    for payload in SQL_INJECTIONS:
        response = client.get("/review/alerts", params={field: payload})
        assert response.status_code == 200, (field, payload)
        if field in ("rule", "category", "patient"):
            assert "0 alert(s)" in response.text  # matched literally, not as SQL
        assert "$argon2" not in response.text
        assert client.get("/review/analytics", params={"rule" if field == "rule" else field: payload}
                          ).status_code == 200
    with store.session() as db:
        assert db.scalar(select(func.count()).select_from(AlertRow)) >= 2
        assert db.scalar(select(func.count()).select_from(User)) == 2


def test_sql_injection_in_paths_and_forms(client: TestClient, store: Store) -> None:
    token = sign_in(client, "ann")
    assert client.get("/review/alerts/1' OR '1'='1").status_code == 404
    alert_id = first_alert_id(store)
    response = client.post(f"/review/alerts/{alert_id}/decision",
                           data={"action": "override", "reason": "' OR 1=1 --", "csrf_token": token})
    assert response.status_code == 400
    ok = client.post(f"/review/alerts/{alert_id}/decision",
                     data={"action": "acknowledge", "comment": "'); DROP TABLE audit_log; --",
                           "csrf_token": token})
    assert ok.status_code == 200
    with store.session() as db:
        comment = db.scalars(select(ReviewDecision.comment)).one()
    assert comment == "'); DROP TABLE audit_log; --"


def test_stored_xss_is_escaped(client: TestClient, store: Store) -> None:
    token = sign_in(client, "ann")
    listing = client.get("/review/alerts")
    assert XSS_PATIENT not in listing.text and XSS_SUMMARY not in listing.text
    assert "&lt;script&gt;alert(&#34;p&#34;)&lt;/script&gt;" in listing.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in listing.text
    assert "script-src" not in listing.headers["content-security-policy"]  # default-src 'none': no scripts
    alert_id = first_alert_id(store, XSS_PATIENT)
    client.post(f"/review/alerts/{alert_id}/decision",
                data={"action": "acknowledge", "comment": "<b onmouseover=alert(2)>hi</b>",
                      "csrf_token": token})
    detail = client.get(f"/review/alerts/{alert_id}")
    for raw in (XSS_PATIENT, XSS_SUMMARY, "<b onmouseover"):
        assert raw not in detail.text
    filtered = client.get("/review/alerts", params={"patient": XSS_PATIENT})
    assert "1 alert(s)" in filtered.text and XSS_PATIENT not in filtered.text
    audit_page = client.get("/review/audit")
    assert "<b onmouseover" not in audit_page.text


def test_override_persists_audits_and_shows_in_analytics(client: TestClient, store: Store) -> None:
    token = sign_in(client, "rita")
    alert_id = first_alert_id(store)
    detail = client.get(f"/review/alerts/{alert_id}")
    assert detail.status_code == 200 and "Evidence" in detail.text and "tolerated-before" in detail.text
    response = client.post(f"/review/alerts/{alert_id}/decision",
                           data={"action": "override", "reason": "tolerated-before",
                                 "comment": "stable for years", "csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    with store.session() as db:
        alert = db.get(AlertRow, alert_id)
        assert alert is not None and alert.review_status == "overridden"
        decision = db.scalars(select(ReviewDecision)).one()
        assert (decision.reason_code, decision.comment) == ("tolerated-before", "stable for years")
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "alert.overridden")).one()
        assert (entry.actor, entry.target_id) == ("rita", alert_id)
        assert entry.detail["reason"] == "tolerated-before"
    analytics = client.get("/review/analytics")
    assert analytics.status_code == 200 and "<svg" in analytics.text
    assert "1 (100%)" in analytics.text  # one reviewer override of one decision
    assert {"view.alerts", "view.alert", "view.analytics", "alert.overridden"} <= set(actions(store))


def test_logout_ends_the_session(client: TestClient) -> None:
    token = sign_in(client, "rita")
    response = client.post("/review/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert client.get("/review/alerts", follow_redirects=False).status_code == 303


def test_database_down_gives_503_not_500(tmp_path: Path, engine: Engine) -> None:
    store = open_store(f"sqlite:///{tmp_path}/missing/dir/x.db", spool_dir=tmp_path / "spool",
                       start_drainer=False)
    try:
        client = make_client(store, engine)
        form = client.get("/review/alerts")  # redirected to the sign-in form, which needs no database
        assert form.status_code == 200
        response = client.post("/review/login", data={"username": "ann", "password": "x" * 12,
                                                      "csrf_token": csrf_of(form.text)})
        assert response.status_code == 503
    finally:
        store.close()
