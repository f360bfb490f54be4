"""Limits and checks the second security re-audit found missing (reaudit-sec findings 4–9).

#5 request lists bounded on the model class (413 naming the field and the limit, before the items
are validated) and feedback repeats stored once; #7 ``fhirServer`` compared by normalised path
segments, odd URLs refused (no call-back, no token sent); #9 the hook deadline counted from the
request's arrival; #8 a request body deadline at the HTTP parser; #6 packs linked out of the rules
directory refused by the verifier (serve, reload, lint) and lint findings capped; #4 the per-process
replay fallback atomic with the store checks of the same process.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import REPO, RecordingSink, hook_request, medication_request, uvicorn_in_thread

from cds_engine.authoring.verify import MAX_FINDINGS_PER_PACK, verify_dir, verify_pack
from cds_engine.rules.errors import PackLoadError
from cds_engine.service import ServiceSettings, create_app
from cds_engine.service.callbacks import CallbackPolicy
from cds_engine.service.http_limits import bounded_protocol
from cds_engine.service.limits import MAX_ACCEPTED_SUGGESTIONS, MAX_FEEDBACK_ITEMS, MAX_SELECTIONS
from cds_engine.service.middleware import BodyLimitMiddleware
from cds_engine.service.models import HookRequest
from cds_engine.service.reload import EngineHolder
from cds_engine.service.replay import ReplayGuard, ReplaySettings

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FEEDBACK = "/cds-services/baclofen-order-sign/feedback"
SELECT = "/cds-services/baclofen-order-select"


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def client(engine, sink) -> Iterator[TestClient]:
    app = create_app(lambda: engine, sink=sink, auth=None, clock=lambda: NOW,
                     settings=ServiceSettings(max_body_bytes=20_000_000))
    with TestClient(app) as test_client:
        yield test_client


def _item(card: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"card": card or str(uuid.uuid4()), "outcome": "overridden",
            "outcomeTimestamp": "2025-03-01T12:05:00Z", **extra}


def _refused(response: Any, field: str, limit: int) -> None:
    assert response.status_code == 413, response.text
    issue = response.json()["issue"][0]
    assert issue["expression"] == [field] and str(limit) in issue["diagnostics"]


# ── #5 lists in request models ─────────────────────────────────────────────────────────────
def test_feedback_over_the_limit_is_413_naming_the_field_and_limit(client, sink):
    over = {"feedback": [_item() for _ in range(MAX_FEEDBACK_ITEMS + 1)]}
    _refused(client.post(FEEDBACK, json=over), "feedback", MAX_FEEDBACK_ITEMS)
    assert sink.feedback == []  # nothing written
    at = {"feedback": [_item() for _ in range(MAX_FEEDBACK_ITEMS)]}
    answer = client.post(FEEDBACK, json=at)
    assert answer.status_code == 200 and answer.json()["received"] == MAX_FEEDBACK_ITEMS


def test_an_oversized_feedback_list_is_refused_before_its_items_are_validated(client):
    junk = {"feedback": [{"not": "an item"}] * (MAX_FEEDBACK_ITEMS + 1)}
    _refused(client.post(FEEDBACK, json=junk), "feedback", MAX_FEEDBACK_ITEMS)


def test_repeated_feedback_items_are_stored_once_distinct_ones_all(client, sink):
    card = str(uuid.uuid4())
    same = _item(card)
    other_reason = _item(card, overrideReason={"userComment": "known patient"})
    answer = client.post(FEEDBACK, json={"feedback": [same, same, other_reason, same]})
    assert answer.status_code == 200 and answer.json()["received"] == 2
    assert [f.comment for f in sink.feedback] == [None, "known patient"]


def test_accepted_suggestions_and_selections_are_bounded(client):
    item = _item(outcome="accepted", acceptedSuggestions=[{"id": "s"}] * (MAX_ACCEPTED_SUGGESTIONS + 1))
    _refused(client.post(FEEDBACK, json={"feedback": [item]}),
             "feedback.acceptedSuggestions", MAX_ACCEPTED_SUGGESTIONS)
    body = hook_request("order-select", "p1", [medication_request()])
    body["context"]["selections"] = ["MedicationRequest/x"] * (MAX_SELECTIONS + 1)
    _refused(client.post(SELECT, json=body), "context.selections", MAX_SELECTIONS)
    body["context"]["selections"] = ["MedicationRequest/x"] * MAX_SELECTIONS
    assert client.post(SELECT, json=body).status_code != 413


# ── #7 fhirServer against the allow-list ───────────────────────────────────────────────────
ALLOWED = "https://ehr.example:8760/fhir"


@pytest.mark.parametrize("server", [
    ALLOWED, ALLOWED + "/", ALLOWED + "/r4", "https://EHR.example:8760/fhir", "https://ehr.example:8760/%66hir",
])
def test_bases_inside_the_allowed_path_pass(server):
    assert CallbackPolicy({"iss": (ALLOWED,)}).server_refusal(server, "iss") is None


@pytest.mark.parametrize("server", [
    ALLOWED + "/../admin", ALLOWED + "/%2e%2e/admin", ALLOWED + "/%2E%2E", ALLOWED + "/./r4", ALLOWED + "/..",
    ALLOWED + "?x=", ALLOWED + "#frag", ALLOWED + "%2fadmin", ALLOWED + "/a%5C..", ALLOWED + "\\..\\admin",
    "https://user@ehr.example:8760/fhir", ALLOWED + "x", "https://ehr.example:8760/admin",
    "https://ehr.example:8761/fhir",
])
def test_odd_or_escaping_bases_are_refused(server):
    assert CallbackPolicy({"iss": (ALLOWED,)}).server_refusal(server, "iss") is not None


def test_loopback_trial_bases_are_checked_for_dot_segments_too():
    policy = CallbackPolicy(None, allow_loopback=True)
    assert policy.server_refusal("http://127.0.0.1:8760/fhir", None) is None
    assert policy.server_refusal("http://127.0.0.1:8760/fhir/../admin", None) is not None


def test_a_refused_base_is_dropped_with_its_token():
    body = hook_request("order-sign", "p1", [medication_request()], fhir_server=ALLOWED + "/../admin")
    request = HookRequest.model_validate(body)
    served = CallbackPolicy({"iss": (ALLOWED,)}).apply(request, "iss")
    assert served.fhirServer is None and served.fhirAuthorization is None


# ── #9 the hook deadline counts from arrival ───────────────────────────────────────────────
def _slow_app(seconds: float, started: list[float]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(seconds)
        started.append(time.monotonic())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_a_hook_call_not_answered_by_the_deadline_is_503():
    started: list[float] = []
    slow = TestClient(BodyLimitMiddleware(_slow_app(3.0, started), max_bytes=1000, deadline_seconds=0.3))
    begin = time.monotonic()
    answer = slow.post("/cds-services/baclofen-order-sign", json={})  # no lifespan: a bare ASGI app
    assert answer.status_code == 503 and "did not finish in time" in answer.text
    assert time.monotonic() - begin < 2.5 and started == []  # cut at the deadline, not answered late
    a_bit_slow = TestClient(BodyLimitMiddleware(_slow_app(0.5, started), max_bytes=1000,
                                                deadline_seconds=0.3))
    assert a_bit_slow.post(FEEDBACK, json={}).status_code == 200  # feedback is not a hook call
    fast = TestClient(BodyLimitMiddleware(_slow_app(0.0, started), max_bytes=1000, deadline_seconds=0.3))
    assert fast.post("/cds-services/baclofen-order-sign", json={}).status_code == 200


# ── #8 the body deadline at the parser ─────────────────────────────────────────────────────
def test_a_drip_fed_body_is_cut_off_with_408():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (message := await receive()).get("more_body"):
            pass
        if message["type"] == "http.disconnect":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with uvicorn_in_thread(app, http=bounded_protocol(body_timeout=0.5), timeout_keep_alive=5) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST /review/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nu")
            begin = time.monotonic()
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - begin < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # a whole body: answered
            conn.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")


# ── #6 packs linked out of the rules directory; capped lint findings ──────────────────────
@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    """A rules folder of its own: the vocabulary and the baclofen pack."""
    root = tmp_path / "rules"
    root.mkdir()
    shutil.copytree(REPO / "rules" / "vocabulary", root / "vocabulary")
    (root / "baclofen").mkdir()
    shutil.copy(REPO / "rules" / "baclofen" / "pack.yaml", root / "baclofen" / "pack.yaml")
    return root


def _outside_pack(tmp_path: Path) -> Path:
    outside = tmp_path / "outside" / "evil"
    outside.mkdir(parents=True)
    (outside / "pack.yaml").write_text("id: evil\nleaked_secret_key: 1\n")
    return outside


@pytest.mark.parametrize("linked", ["file", "folder"])
def test_a_pack_linked_outside_is_refused_by_verify_reload_and_serve(rules_copy, tmp_path, linked):
    rules = rules_copy
    shutil.rmtree(rules / "baclofen")  # only the linked pack: its refusal is the whole report
    outside = _outside_pack(tmp_path)
    if linked == "file":
        (rules / "evil").mkdir()
        (rules / "evil" / "pack.yaml").symlink_to(outside / "pack.yaml")
    else:
        (rules / "evil").symlink_to(outside, target_is_directory=True)
    import cds_engine.authoring.verify as verify

    read: list[str] = []
    declared = verify.declared_parameters
    with pytest.MonkeyPatch.context() as patch:  # what verify_dir reads for the site settings
        patch.setattr(verify, "declared_parameters", lambda text, *a: read.append(text) or declared(text, *a))
        report = verify_dir(rules)
    assert not any("leaked_secret_key" in text for text in read)  # refused before it is read
    assert not report.ok
    assert any("outside the rules directory" in f.message for f in report.errors)
    assert not any("leaked_secret_key" in str(f) for f in report.findings)  # not read: no keys echoed
    alone = verify_pack(rules / "evil" / "pack.yaml", report.vocabulary)  # type: ignore[arg-type]
    assert not alone.ok and ["outside the rules directory" in f.message for f in alone.findings] == [True]
    with pytest.raises(PackLoadError):
        EngineHolder(rules)


def test_lint_findings_are_capped_and_an_error_stays_an_error(rules_copy):
    pack = rules_copy / "baclofen" / "pack.yaml"
    pack.write_text(pack.read_text() + "".join(f"unknown_key_{i}: 1\n" for i in range(5000)))
    report = verify_dir(rules_copy)
    findings = report.packs[0].findings
    assert len(findings) <= MAX_FINDINGS_PER_PACK and not report.ok
    assert findings[-1].severity == "error" and "more findings not shown" in findings[-1].message


# ── #4 the per-process replay fallback ─────────────────────────────────────────────────────
class _SharedStore:
    """A store that answers atomically, a little slower than a busy thread pool can take."""

    backend = "fake"

    def __init__(self, delay: float) -> None:
        self.delay, self.seen, self.lock = delay, set(), threading.Lock()

    def first_use(self, iss: str, jti: str, expires: float, now: float) -> bool:
        time.sleep(self.delay)
        with self.lock:
            new = (iss, jti) not in self.seen
            self.seen.add((iss, jti))
            return new

    def purge(self, now: float) -> int:
        return 0

    def live_counts(self, now: float) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.2])  # answered, answered while threads are busy, too late
def test_one_token_sent_at_once_many_times_is_accepted_once_per_process(delay):
    guard = ReplayGuard(ReplaySettings(timeout_seconds=0.05, threads=4), store=_SharedStore(delay))

    async def run() -> list[str]:
        return list(await asyncio.gather(*(guard.check("iss", "same", time.time() + 300) for _ in range(16))))

    try:
        verdicts = asyncio.run(run())
    finally:
        guard.close()
    assert verdicts.count("first-use") == 1 and verdicts.count("replayed") == 15


def test_the_app_gives_the_middleware_the_configured_hook_deadline(engine):
    """``serve``'s deadline setting reaches the deadline counted from arrival (not only the 10 s default)."""
    from cds_engine.service.limits import HookLimits

    settings = ServiceSettings(limits=HookLimits(deadline_seconds=2.5))
    app = create_app(lambda: engine, auth=None, settings=settings)
    body_limits = [m for m in app.user_middleware if m.cls is BodyLimitMiddleware]
    assert len(body_limits) == 1 and body_limits[0].kwargs.get("deadline_seconds") == 2.5
