"""The hook's one-hop path (no FHIR server to read) answers exactly as the two-hop path (issue 19).

Without a ``fhirServer`` (or without a fetcher) nothing can be read over FHIR, so the handler
parses, gathers the prefetch and evaluates in one step: one worker-thread call instead of two, or
inline on the event loop when the call is small. These tests run the same requests through the
paths — the two-hop one given a FHIR server that is never needed (everything prefetched) and must
never be called — and compare cards, stored records, refusals and the Server-Timing steps. Also:
which calls run inline (through HTTP too), the fatigue screen is skipped only when it could do
nothing, and ``local_prefetch`` equals ``gather_prefetch`` without a server.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import (
    REPO,
    LocalFhir,
    RecordingSink,
    hook_request,
    medication_request,
    synthea_files,
    synthea_resources,
)

from cds_engine.alerts import Alert
from cds_engine.engine import Engine
from cds_engine.service import ServiceSettings, create_app
from cds_engine.service.cards import alert_card
from cds_engine.service.discovery import find_service, prefetch_templates
from cds_engine.service.errors import HookError
from cds_engine.service.fatigue import FatiguePolicy
from cds_engine.service.hook import HookHandler
from cds_engine.service.limits import HookLimits
from cds_engine.service.models import HookRequest
from cds_engine.service.prefetch import FhirFetcher, gather_prefetch, local_prefetch

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FHIR = "https://ehr.example/fhir"
SIGN = "baclofen-order-sign"


class _NoFhir:
    """A transport that fails the test if the two-hop path reads anything."""

    calls: list[str]

    def __init__(self) -> None:
        self.calls = []

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.calls.append(str(request.url))
            return httpx.Response(500)

        return httpx.MockTransport(handle)


def _answer(
    handler: HookHandler, engine: Any, body: dict[str, Any], body_bytes: int | None = None
) -> tuple[str, Any]:
    ref = find_service(engine, SIGN if body["hook"] == "order-sign" else "baclofen-order-select")
    assert ref is not None
    request = HookRequest.model_validate(body)

    async def go() -> Any:
        return await handler(ref, request, engine, "https://ehr.example", None, body_bytes)

    try:
        result = asyncio.run(go())
    except HookError as exc:
        return "refused", (exc.status, exc.field, exc.message)
    cards = [c.model_dump(mode="json", exclude={"uuid"}) for c in result.response.cards]
    return "answered", (cards, result.rule_ids, sorted(result.timings))


def _records(sink: RecordingSink) -> list[dict[str, Any]]:
    out = []
    for record in sink.evaluations:
        row = record.model_dump(mode="json")
        for alert in row["alerts"]:
            alert.pop("card_uuid", None)
        out.append(row)
    return out


def _pair(engine: Any, body: dict[str, Any], reads: bool = False) -> None:
    """Same answer and records from the one-hop path (no fhirServer) and the two-hop path.

    ``reads``: the two-hop path reads something (which fails): both must refuse alike. The one-hop
    path runs twice: on a worker thread (size unknown) and inline on the event loop (a small body,
    issue 19) — the same answer, refusal and records either way."""
    one_sink, two_sink, inline_sink = RecordingSink(), RecordingSink(), RecordingSink()
    nofhir = _NoFhir()
    one = HookHandler(one_sink, None, clock=lambda: NOW)
    inline = HookHandler(inline_sink, None, clock=lambda: NOW)
    fetcher = FhirFetcher(httpx.AsyncClient(transport=nofhir.transport()), 2.5)
    two = HookHandler(two_sink, fetcher, clock=lambda: NOW)
    try:
        local = _answer(one, engine, body)
        on_loop = _answer(inline, engine, body, body_bytes=1000)
        remote = _answer(two, engine, {**body, "fhirServer": FHIR})
    finally:
        one.close()
        inline.close()
        two.close()
    assert on_loop == local
    assert _records(inline_sink) == _records(one_sink)
    assert bool(nofhir.calls) == reads  # all prefetched: the two-hop path read nothing either
    if local[0] == "refused":  # the 412 for a missing patient names whether a server was given
        assert remote[0] == "refused" and local[1][:2] == remote[1][:2]
        return
    assert local == remote
    assert _records(one_sink) == _records(two_sink)


def test_small_calls_run_on_the_event_loop_large_ones_on_the_workers(engine):
    """Inline only under both bounds (body bytes, draft orders) and a known size (H1, issue 19)."""
    handler = HookHandler(RecordingSink(), None, clock=lambda: NOW,
                          limits=HookLimits(inline_max_bytes=5000, inline_max_drafts=2))
    threads: list[str] = []
    real = handler._local_call

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args)

    handler._local_call = spy  # type: ignore[method-assign]
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"}
    prefetch = _prefetch(engine, [patient], "p1")
    one = hook_request("order-sign", "p1", [medication_request()], prefetch=prefetch)
    drafts = [medication_request(id=f"m{i}") for i in range(3)]
    three = hook_request("order-sign", "p1", drafts, prefetch=prefetch)
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on this thread
    try:
        cases = [(one, 5000, True), (one, 5001, False), (one, None, False), (three, 100, False)]
        for body, size, expected in cases:
            threads.clear()
            assert _answer(handler, engine, body, size)[0] == "answered"
            assert threads and (threads[0] == loop_thread) == expected, (size, threads)
        assert handler.inline(HookRequest.model_validate(one), 0) is True  # 0 bytes: small
        off = HookHandler(RecordingSink(), None, limits=HookLimits(inline_max_bytes=0))
        assert off.inline(HookRequest.model_validate(one), 1) is False  # 0: never inline
        off.close()
    finally:
        handler.close()


def _prefetch(engine: Any, resources: list[dict[str, Any]], patient: str) -> dict[str, Any]:
    pack = engine.packs[0]
    return LocalFhir(resources).prefetch(prefetch_templates(pack), {"patientId": patient})


@pytest.mark.parametrize("dose,per_day", [(5, 3), (20, 3), (40, 4), (None, 3), (10, None)])
def test_one_hop_equals_two_hops_on_synthea_patients(engine, dose, per_day):
    for path in synthea_files(4):
        resources = synthea_resources(path)
        patient = next(r for r in resources if r["resourceType"] == "Patient")["id"]
        draft = medication_request(patient=patient, dose=dose, per_day=per_day)
        body = hook_request("order-sign", patient, [draft], prefetch=_prefetch(engine, resources, patient))
        _pair(engine, body)


def test_one_hop_equals_two_hops_on_edge_requests(engine):
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"}
    full = _prefetch(engine, [patient], "p1")
    other_drug = medication_request(id="mr-2")
    other_drug["medicationCodeableConcept"] = {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049221"}]
    }
    unresolved = medication_request(id="mr-3")
    del unresolved["medicationCodeableConcept"]
    unresolved["medicationReference"] = {"reference": "Medication/m-404"}
    no_patient = {k: v for k, v in full.items() if k != "patient"}
    two_drafts = [medication_request(id="a", dose=40, per_day=4), medication_request(id="b", dose=5)]
    for body in (
        hook_request("order-sign", "p1", [medication_request()], prefetch=full),
        hook_request("order-sign", "p1", [other_drug], prefetch=full),  # no pack's drug: no cards
        hook_request("order-sign", "p1", two_drafts, prefetch=full),  # one card naming both orders
        hook_request("order-select", "p1", two_drafts, prefetch=full),
    ):
        _pair(engine, body)
    # 412: the medication cannot be resolved (the two-hop path tries to read it, and fails)
    _pair(engine, hook_request("order-sign", "p1", [unresolved], prefetch=full), reads=True)
    # 412: the patient was not prefetched (the two-hop path tries to read it, and fails)
    _pair(engine, hook_request("order-sign", "p1", [medication_request()], prefetch=no_patient), reads=True)


def test_local_prefetch_equals_gather_without_a_server(engine):
    pack = engine.packs[0]
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01"}
    full = _prefetch(engine, [patient], "p1")
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    paged = {"resourceType": "Bundle", "type": "searchset", "entry": [],
             "link": [{"relation": "next", "url": f"{FHIR}/MedicationRequest?page=2"}]}
    for prefetch in (full, None, {"patient": patient}, {**full, "conditions": outcome},
                     {**full, "medicationRequests": paged}, {**full, "extra": {"resourceType": "Bundle"}}):
        body = hook_request("order-sign", "p1", [medication_request()], prefetch=prefetch)
        request = HookRequest.model_validate(body)
        templates = prefetch_templates(pack)
        expected = asyncio.run(gather_prefetch(request, templates, None))
        assert local_prefetch(request, templates) == expected


def _suppressible_rules(directory: Path) -> Path:
    """A copy of rules/ where BAC-R04.beers is suppressible (as test_patient_view does)."""
    rules = directory / "rules"
    shutil.copytree(REPO / "rules", rules)
    pack = rules / "baclofen" / "pack.yaml"
    text = pack.read_text()
    marker = "      - id: BAC-R04.beers\n        severity: warning\n"
    assert marker in text
    pack.write_text(text.replace(marker, marker + "        suppressible: true\n"))
    return rules


def test_fatigue_screen_skipped_only_when_it_could_do_nothing(tmp_path):
    """``needs_store`` is False only when ``screen`` would neither read nor keep anything.

    (It may say True and the screen then find nothing to do: the hop is only skipped when safe.)"""
    pack = next(p for p in Engine.from_dir(_suppressible_rules(tmp_path)).packs if p.id == "baclofen")

    class Spy:
        def __init__(self) -> None:
            self.used: list[str] = []

        def suppressing(self, *args: Any) -> None:
            self.used.append("suppressing")

        def first_display(self, *args: Any) -> bool:
            self.used.append("first_display")
            return True

        def remember_cards(self, rows: Any, now: Any) -> None:
            if list(rows):
                self.used.append("remember_cards")

    alerts = [Alert.model_validate(_alert(pack, s)) for s in (True, False)]
    cards = [(a, alert_card(a, pack)) for a in alerts]
    for pairs in (cards, cards[1:], cards[:1], []):
        for scope in (None, "scope"):
            spy = Spy()
            policy = FatiguePolicy(spy)  # type: ignore[arg-type]
            screened = policy.screen(pack, "Patient/p1", "client", pairs, NOW, once_scope=scope)
            needs = policy.needs_store(pack, pairs, scope)
            assert needs or not spy.used, (pairs, scope, spy.used)
            assert needs == (scope is not None or any(a.tier_id == alerts[0].tier_id for a, _ in pairs))
            if not needs:
                assert screened.hidden == {} and screened.shown == pairs
    assert FatiguePolicy(None).needs_store(pack, cards, "scope") is False


def _alert(pack: Any, suppressible: bool) -> dict[str, Any]:
    """An alert on a tier of the pack that is (or is not) suppressible."""
    rule, tier = next((r, t) for r in pack.spec.rules for t in r.tiers if t.suppressible == suppressible)
    return {"rule_id": rule.id, "tier_id": tier.id, "title": rule.title, "category": rule.category,
            "severity": tier.severity, "summary": "s", "detail": "d", "pack_id": pack.id,
            "pack_version": pack.version, "pack_hash": pack.content_hash, "pack_url": pack.spec.pack.url,
            "pack_status": "active", "approval": "approved"}


@pytest.mark.parametrize("inline_max_bytes,on_pool", [(128 * 1024, False), (10, True)])
def test_the_service_passes_the_body_size(engine, monkeypatch, inline_max_bytes, on_pool):
    """Through HTTP: a small order-sign is evaluated on the event loop, one over the bound on a worker."""
    threads: list[str] = []
    real = HookHandler._local_call

    def spy(self: HookHandler, *args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(self, *args)

    monkeypatch.setattr(HookHandler, "_local_call", spy)
    settings = ServiceSettings(limits=HookLimits(inline_max_bytes=inline_max_bytes))
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"}
    prefetch = _prefetch(engine, [patient], "p1")
    body = hook_request("order-sign", "p1", [medication_request()], prefetch=prefetch)
    with TestClient(create_app(lambda: engine, auth=None, settings=settings)) as client:
        answer = client.post(f"/cds-services/{SIGN}", json=body)
    assert answer.status_code == 200 and answer.json()["cards"]
    assert len(threads) == 1 and threads[0].startswith("cds-eval") == on_pool, threads
