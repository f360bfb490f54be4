"""Helpers for the store and review-page tests: records, databases, a cuttable TCP proxy."""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_engine.alerts import Alert, AlertSource, AlertSuggestion
from cds_engine.store import Store, open_store
from cds_engine.store.api import EvaluationRecord, FeedbackRecord, IssuedAlert
from cds_engine.store.models import SEVERITIES

# The one way tests find PostgreSQL: an admin URL (any database on the server; trust or password in the
# URL). scripts/test.sh sets it to a throwaway cluster it starts and removes; an existing server is used
# only when the caller sets it. Never a guessed host or port.
PG_URL_ENV = "CDS_TEST_DATABASE_URL"
IN_CI = os.environ.get("CI", "").lower() == "true"
NOW = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


def make_alert(
    rule_id: str = "TST-R01",
    severity: str = "warning",
    *,
    summary: str = "Check the dose",
    suggestions: bool = True,
    category: str = "dose-range",
) -> Alert:
    return Alert(
        rule_id=rule_id,
        tier_id=f"{rule_id}.main",
        title=f"Test rule {rule_id}",
        category=category,
        severity=severity,
        summary=summary,
        detail="Detail with **markdown** and the patient's values.",
        evidence={"daily_dose_mg": 60.0, "egfr": 25, "since": "2025-01-01"},
        suggestions=[AlertSuggestion(label="Lower the dose", action="reduce-dose", dose_mg_per_day=15.0)]
        if suggestions
        else [],
        sources=[AlertSource(id="S1", title="A label", url="https://example.org/label")],
        pack_id="test-pack",
        pack_version="1.0.0",
        pack_hash="f" * 64,
        pack_url="https://example.org/pack",
        pack_status="active",
        approval="approved",
    )


def make_record(
    *,
    hook_instance: str | None = None,
    source: str = "hook",
    hook: str = "order-sign",
    patient: str = "Patient/1",
    order_key: str | None = "order-1",
    alerts: list[Alert] | None = None,
    as_of: datetime = NOW,
    pack_id: str = "test-pack",
    batch_run_id: str | None = None,
    pack_hash: str = "f" * 64,
    pack_version: str = "1.0.0",
) -> EvaluationRecord:
    alerts = [make_alert()] if alerts is None else alerts
    return EvaluationRecord(
        source=source,
        hook_instance=hook_instance or str(uuid.uuid4()),
        hook=hook,
        service_id=f"test-{hook}",
        patient_ref=patient,
        order_key=order_key,
        order={"resourceType": "MedicationRequest", "id": order_key},
        as_of=as_of,
        pack_id=pack_id,
        pack_version=pack_version,
        pack_hash=pack_hash,
        batch_run_id=batch_run_id,
        alerts=[IssuedAlert(alert=a, card_uuid=str(uuid.uuid4())) for a in alerts],
    )


def feedback(
    card_uuid: str,
    outcome: str = "overridden",
    *,
    at: datetime | None = None,
    accepted: list[str] | None = None,
) -> FeedbackRecord:
    return FeedbackRecord(
        service_id="test-order-sign",
        card_uuid=card_uuid,
        outcome=outcome,  # type: ignore[arg-type]
        accepted_suggestions=accepted or [],
        override_reason_code="tolerated-before" if outcome == "overridden" else None,
        comment="prescriber comment",
        user_id="Practitioner/7",
        outcome_timestamp=at or NOW + timedelta(minutes=1),
    )


# -- PostgreSQL ------------------------------------------------------------------------------


def _port_open(host: str, port: int) -> bool:
    with closing(socket.socket()) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def postgres_admin_url() -> str | None:
    """The admin URL from ``CDS_TEST_DATABASE_URL`` (``postgresql://user@host:port/db``), or None."""
    return os.environ.get(PG_URL_ENV) or None


def _admin_connect(admin_url: str):
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    return psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password,
        dbname=url.database or "postgres", autocommit=True, connect_timeout=5,
    )


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the server named by ``CDS_TEST_DATABASE_URL``, dropped afterwards.

    Not set: skip — except in CI, where skipping PostgreSQL is not allowed (``scripts/test.sh``
    always sets it, to a cluster it owns).
    """
    from sqlalchemy.engine import make_url

    admin_url = postgres_admin_url()
    if admin_url is None:
        message = f"{PG_URL_ENV} is not set (scripts/test.sh starts a throwaway PostgreSQL and sets it)"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests may not be skipped)")
        pytest.skip(message)
    url = make_url(admin_url)
    if not _port_open(url.host or "127.0.0.1", url.port or 5432):
        pytest.fail(f"{PG_URL_ENV} names a PostgreSQL server that does not answer ({url.host}:{url.port})")
    name = f"cds_test_{secrets.token_hex(6)}"
    with _admin_connect(admin_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with _admin_connect(admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    """Forwards 127.0.0.1:port → target while started: lets a test take a database away and back."""

    def __init__(self, target_port: int, port: int | None = None, target_host: str = "127.0.0.1") -> None:
        self.port = port or free_port()
        self.target = (target_host, target_port)
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            with suppress(OSError):  # wakes the thread blocked in accept()
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for s in self._conns:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._conns.clear()


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def sign_in(client: Any, username: str, password: str) -> str:
    """Sign in through the review page's form (CSRF token included); returns the alert list's token."""
    form = client.get("/review/login")
    response = client.post(
        "/review/login",
        follow_redirects=False,
        data={
            "username": username,
            "password": password,
            "csrf_token": csrf_of(form.text),
            "next": "/review/alerts",
        },
    )
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/review/alerts").text)


STORE_KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES, start=1)}  # as the store ranks them


@contextmanager
def store_for(kind: str, tmp_path: Path) -> Iterator[Store]:
    """A migrated store without a drainer thread: a SQLite file in ``tmp_path``, or a fresh
    PostgreSQL database (``kind`` "postgresql"), closed (and dropped) at the end."""
    if kind == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/store.db", spool_dir=tmp_path / "spool", start_drainer=False)
        try:
            yield s
        finally:
            s.close()
        return
    with postgres_database() as url:
        s = open_store(url, spool_dir=tmp_path / "spool", start_drainer=False)
        try:
            yield s
        finally:
            s.close()
