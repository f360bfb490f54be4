"""Security issue 15, item 3 (red-team M2, L5): sign-in throttling without a lockout.

* after 5 failures per (account, address) a delay doubling to 60 s; ≤ 20 attempts a minute per
  address; a per-account ceiling across addresses that never slows an address that signed in
  before (an attacker cannot lock a pharmacist out);
* a refused attempt is 429 with Retry-After and costs no password check;
* the client address is the peer's; X-Forwarded-For counts only from a trusted proxy;
* argon2 on 2 threads with a queue of 8, more → 429;
* failed sign-ins are audited in aggregate; anonymous page views write no session or audit row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from cds_engine.engine import Engine
from cds_engine.service.review.router import build_router
from cds_engine.service.review.throttle import Busy, PasswordPool, SignInThrottle
from cds_engine.store import Store, open_store
from cds_engine.store import users as user_admin
from cds_engine.store.models import AuditEntry, ReviewSession
from store_helpers import csrf_of

PASSWORD = "correct-horse-battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ── the throttle itself ────────────────────────────────────────────────────────────────────
def test_delay_doubles_after_five_failures_and_caps_at_a_minute():
    clock = Clock()
    throttle = SignInThrottle(clock=clock)
    for _ in range(5):
        assert throttle.wait_seconds("ann", "10.0.0.1") == 0
        throttle.failure("ann", "10.0.0.1")
    assert throttle.wait_seconds("ann", "10.0.0.1") == pytest.approx(1)
    delays = []
    for _ in range(10):
        clock.now += 61  # wait out whatever delay there is
        assert throttle.wait_seconds("ann", "10.0.0.1") == 0
        throttle.failure("ann", "10.0.0.1")
        delays.append(throttle.wait_seconds("ann", "10.0.0.1"))
    assert delays[:6] == pytest.approx([2, 4, 8, 16, 32, 60])
    assert max(delays) == 60  # never more than a minute: no lockout
    assert throttle.wait_seconds("ann", "10.0.0.2") == 0  # another address is not slowed by this pair
    clock.now += 61
    throttle.success("ann", "10.0.0.1")
    throttle.failure("ann", "10.0.0.1")
    assert throttle.wait_seconds("ann", "10.0.0.1") == 0  # a success starts the count afresh


def test_twenty_attempts_a_minute_per_address():
    clock = Clock()
    throttle = SignInThrottle(clock=clock)
    for n in range(20):
        assert throttle.wait_seconds(f"user{n}", "10.0.0.9") == 0
    assert throttle.wait_seconds("someone", "10.0.0.9") > 0
    assert throttle.wait_seconds("someone", "10.0.0.10") == 0
    clock.now += 60
    assert throttle.wait_seconds("someone", "10.0.0.9") == 0


def test_account_ceiling_slows_new_addresses_but_never_the_pharmacists_own():
    clock = Clock()
    throttle = SignInThrottle(clock=clock)
    throttle.success("ann", "10.1.1.1")  # her workstation
    for n in range(60):  # a botnet guessing from 60 addresses
        clock.now += 1
        throttle.failure("ann", f"192.0.2.{n}")
    assert throttle.wait_seconds("ann", "198.51.100.7") > 0  # one more new address: delayed
    assert throttle.wait_seconds("ann", "10.1.1.1") == 0  # her own: not locked out
    clock.now += 3600
    assert throttle.wait_seconds("ann", "198.51.100.7") == 0  # and the ceiling passes


def test_failures_are_audited_in_aggregate():
    clock = Clock()
    throttle = SignInThrottle(clock=clock)
    due = [throttle.failure("ann", "10.0.0.1") for _ in range(4)]
    assert due == [1, None, None, None]  # the first at once, the rest counted
    clock.now += 601
    assert throttle.failure("ann", "10.0.0.1") == 4  # window closed: this one + the 3 counted
    throttle.failure("ann", "10.0.0.1")
    assert throttle.success("ann", "10.0.0.1") == 1  # the 6th, counted in the new window: written now


def test_password_pool_has_two_threads_and_a_queue_of_eight():
    pool = PasswordPool(threads=2, queue=8)
    release = threading.Event()
    running = threading.Semaphore(0)
    started = 0

    def slow() -> None:
        running.release()
        release.wait(10)

    workers = [threading.Thread(target=pool.run, args=(slow,)) for _ in range(10)]
    for worker in workers:
        worker.start()
    for _ in range(2):
        assert running.acquire(timeout=5)
        started += 1
    time.sleep(0.2)
    assert not running.acquire(timeout=0.2)  # only 2 checks run at once; 8 wait
    with pytest.raises(Busy):
        pool.run(lambda: None)  # the 11th is refused at once
    release.set()
    for worker in workers:
        worker.join(5)
    assert started == 2 and pool.run(lambda: 42) == 42


# ── through the sign-in page ───────────────────────────────────────────────────────────────
@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/review.db", spool_dir=tmp_path / "spool", start_drainer=False)
    with s.session() as db:
        user_admin.add_user(db, "ann", PASSWORD, "admin", actor="test")
    yield s
    s.close()


def app_for(store: Store, engine: Engine, throttle: SignInThrottle, trusted: str | None = None) -> TestClient:
    app = FastAPI()
    app.include_router(build_router(store, lambda: engine, sign_in_throttle=throttle))
    if trusted is None:
        return TestClient(app)
    return TestClient(ProxyHeadersMiddleware(app, trusted_hosts=trusted))  # type: ignore[arg-type]


def count(store: Store, model: type, **where: str) -> int:
    with store.session() as db:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return int(db.execute(query).scalar_one())


def test_sixth_wrong_password_is_429_and_no_password_is_checked(store: Store, engine: Engine, monkeypatch):
    clock = Clock()
    client = app_for(store, engine, SignInThrottle(clock=clock))
    token = csrf_of(client.get("/review/login").text)
    for n in range(5):
        wrong = {"username": "ann", "password": f"wrong-{n}", "csrf_token": token}
        assert client.post("/review/login", data=wrong).status_code == 401
    checks: list[tuple] = []

    class Spy:
        def verify(self, *args: object) -> None:
            checks.append(args)

    monkeypatch.setattr(user_admin, "_hasher", Spy())
    right = {"username": "ann", "password": PASSWORD, "csrf_token": token}
    blocked = client.post("/review/login", data=right, follow_redirects=False)
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "1"
    assert checks == []  # refused before argon2
    monkeypatch.undo()
    assert count(store, AuditEntry, action="login.failed") == 1  # five failures, one row so far
    clock.now += 2  # the delay ends by itself: no lockout
    ok = client.post("/review/login", data={"username": "ann", "password": PASSWORD, "csrf_token": token},
                     follow_redirects=False)
    assert ok.status_code == 303
    with store.session() as db:
        rows = db.execute(select(AuditEntry).where(AuditEntry.action == "login.failed")).scalars().all()
        assert sorted(r.detail["failures"] for r in rows) == [1, 4]  # every failure counted


def test_forwarded_for_counts_only_from_a_trusted_proxy(store: Store, engine: Engine):
    untrusted = app_for(store, engine, SignInThrottle(), trusted="10.0.0.5")  # the test client is not it
    token = csrf_of(untrusted.get("/review/login").text)
    for n in range(5):
        spoofed = {"X-Forwarded-For": f"203.0.113.{n}"}  # a new "address" per try: ignored
        untrusted.post("/review/login", headers=spoofed,
                       data={"username": "ann", "password": "nope-nope-nope", "csrf_token": token})
    sixth = untrusted.post("/review/login", headers={"X-Forwarded-For": "203.0.113.99"},
                           data={"username": "ann", "password": "nope-nope-nope", "csrf_token": token})
    assert sixth.status_code == 429
    trusted = app_for(store, engine, SignInThrottle(), trusted="*")
    token = csrf_of(trusted.get("/review/login").text)
    for n in range(6):  # behind a trusted proxy each forwarded address is its own client
        answer = trusted.post("/review/login", headers={"X-Forwarded-For": f"203.0.113.{n % 2}"},
                              data={"username": "ann", "password": "nope-nope-nope", "csrf_token": token})
        assert answer.status_code == 401


def test_anonymous_page_views_write_no_session_or_audit_row(store: Store, engine: Engine):
    client = app_for(store, engine, SignInThrottle())
    sessions, audits = count(store, ReviewSession), count(store, AuditEntry)
    for _ in range(30):
        TestClient(client.app).get("/review/login")  # cookie-less visits
        TestClient(client.app).get("/review/alerts")
    assert count(store, ReviewSession) == sessions
    assert count(store, AuditEntry) == audits
    form = client.get("/review/login")
    signed = client.post("/review/login", data={"username": "ann", "password": PASSWORD,
                                                "csrf_token": csrf_of(form.text)}, follow_redirects=False)
    assert signed.status_code == 303 and count(store, ReviewSession) == sessions + 1
    forged = TestClient(client.app).post("/review/login", data={"username": "ann", "password": PASSWORD,
                                                                "csrf_token": csrf_of(form.text)})
    assert forged.status_code == 403  # the token is bound to the form's cookie
