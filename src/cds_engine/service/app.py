"""The FastAPI application: discovery, hook services, feedback, ``/evaluate`` and ``/healthz``.

``create_app`` takes an *engine provider* (a zero-argument callable returning the current
:class:`Engine`) rather than an engine, so packs can be reloaded behind it without restarting;
every request asks the provider once and uses that engine throughout. Storage is an
:class:`EvaluationSink` (``NullSink`` keeps nothing), so the service runs with or without a
database. ``auth=None`` disables client authentication — for local trials only, and logged as such.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
from fastapi import APIRouter, FastAPI, Request, Response, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPBearer

from cds_engine.alerts import Alert
from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.governance import approval_state
from cds_engine.service.auth import AuthSettings, JwtVerifier
from cds_engine.service.bounds import require_clean_context, scrub_may_change, scrub_resources
from cds_engine.service.callbacks import CallbackLimits, CallbackPolicy, begin_hook, end_hook
from cds_engine.service.cards import LINK_HOSTS
from cds_engine.service.deviations import deviation_counts
from cds_engine.service.discovery import discovery, find_service
from cds_engine.service.errors import HookError, install_error_handlers
from cds_engine.service.fatigue import FatiguePolicy, client_key
from cds_engine.service.finite import require_finite
from cds_engine.service.hook import HookHandler
from cds_engine.service.json_body import FastJsonRoute
from cds_engine.service.limits import (
    MAX_FACT_LIST_ITEMS,
    HookLimits,
    check_nested_list_lengths,
    refusal_counts,
)
from cds_engine.service.middleware import AuthMiddleware, BodyLimitMiddleware, LoggedAndTimedMiddleware
from cds_engine.service.models import CardsResponse, DiscoveryResponse, FeedbackRequest, HookRequest
from cds_engine.service.orders import warm_up
from cds_engine.service.patient_view import PatientViewHandler, PatientViewRequest, patient_view_counts
from cds_engine.service.prefetch import FhirFetcher
from cds_engine.service.worker_info import worker_state
from cds_engine.store.api import EvaluationRecord, EvaluationSink, FeedbackRecord, IssuedAlert, NullSink
from cds_engine.store.failures import count_not_stored, not_stored_counts
from cds_engine.store.fatigue import FatigueStore

__all__ = ["ServiceSettings", "create_app"]

log = logging.getLogger("cds_engine.service")

_PROTECTED = ("/cds-services", "/evaluate")
# invalid bodies are 400 with an OperationOutcome (errors.py turns FastAPI's 422 into 400)
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request (OperationOutcome names the field)"},
    401: {"description": "Missing or invalid client JWT"},
    413: {"description": "Request body too large"},
    415: {"description": "The body is not application/json"},
}
_bearer = HTTPBearer(auto_error=False, description="Client JWT (ES384/RS384), aud = the called URL")


@dataclass(frozen=True)
class ServiceSettings:
    """Operational limits and policies (clinical content lives in the packs)."""

    max_body_bytes: int = 10 * 1024 * 1024
    fhir_timeout_seconds: float = 2.5
    cors_origins: tuple[str, ...] = ("*",)
    link_hosts: tuple[str, ...] = LINK_HOSTS
    store_threads: int = 2  # concurrent sink writes (more only contend for the database's write lock)
    limits: HookLimits = field(default_factory=HookLimits)  # drafts, resources per key, evaluation time
    callbacks: CallbackLimits = field(default_factory=CallbackLimits)  # calls, bytes, pages per hook
    allow_loopback_fhir: bool = False  # plain-http loopback fhirServer (local trials only)
    demographics: bool = True  # keep name, birth date, MRN for the review page (--no-demographics: off)


def _body_bytes(request: Request) -> int | None:
    """The body's declared size (the HTTP parser holds the body to it); None when sent chunked."""
    length = request.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


def create_app(
    engine_provider: Callable[[], Engine],
    *,
    sink: EvaluationSink | None = None,
    auth: AuthSettings | None,
    extra_routers: Sequence[APIRouter] = (),
    settings: ServiceSettings | None = None,
    fhir_transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    fatigue: FatigueStore | None = None,
) -> FastAPI:
    """Build the service. ``fhir_transport`` replaces the network for FHIR call-backs (tests)."""
    settings = settings or ServiceSettings()
    sink = sink if sink is not None else NullSink()
    # httpx logs every request URL at INFO; FHIR call-back URLs carry patient ids and search terms
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
    client = httpx.AsyncClient(
        transport=fhir_transport, timeout=settings.fhir_timeout_seconds, follow_redirects=False
    )
    fetcher = FhirFetcher(client, settings.fhir_timeout_seconds)
    callback_policy = CallbackPolicy(
        servers_by_issuer={iss: tuple(i.fhir_servers) for iss, i in auth.issuers.items()} if auth else None,
        allow_loopback=settings.allow_loopback_fhir,
    )
    if settings.allow_loopback_fhir:
        log.warning("ALLOW-LOOPBACK-FHIR: plain-http FHIR call-backs to this machine (local trials only)")
    handler = HookHandler(
        sink, fetcher, clock, settings.link_hosts, settings.store_threads, limits=settings.limits,
        demographics=settings.demographics,
    )
    # alert-fatigue state (shown once, repeat suppression) lives in the store: shared by every worker
    handler.fatigue = FatiguePolicy(fatigue)
    patient_view = PatientViewHandler(handler)
    jwks_client = httpx.AsyncClient(timeout=3.0) if auth is not None else None
    verifier = JwtVerifier(auth, client=jwks_client) if auth is not None else None

    async def warm_engine() -> None:
        """Build the evaluators before the first order, in a frame of its own: the lifespan's frame
        lives as long as the app, and an engine held there stayed alive (its packs, trees and
        vocabulary) after every hot reload had replaced it."""
        engine = engine_provider()  # fail at start-up, not on the first order, if packs do not load
        for pack in engine.packs:  # build each pack's evaluator in the thread that serves hooks
            engine.evaluate_pack(pack, PatientFacts(as_of=clock()))
        await anyio.to_thread.run_sync(handler.warm, engine, clock())  # and in each hook worker thread

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        warm_up()
        await warm_engine()
        yield
        flush = getattr(sink, "flush", None)  # a journaling sink: let its writer store what it holds
        if callable(flush):
            await anyio.to_thread.run_sync(flush)
        handler.close()
        await client.aclose()
        if jwks_client is not None:
            await jwks_client.aclose()
        if verifier is not None:
            verifier.close()

    app = FastAPI(
        title="cds-engine CDS Hooks service",
        version="2.0",
        description="CDS Hooks 2.0 order-select/order-sign services driven by declarative rule packs, "
        "plus a plain JSON /evaluate endpoint.",
        lifespan=lifespan,
    )
    app.router.route_class = FastJsonRoute  # JSON bodies parsed by msgspec, the stdlib as referee
    install_error_handlers(app)
    app.state.jwt_verifier = verifier  # serve --workers: the parent closes the one it built to check
    secured = [Security(_bearer)] if auth is not None else []  # the OpenAPI says what is enforced

    @app.get(
        "/cds-services",
        response_model=DiscoveryResponse,
        response_model_exclude_none=True,
        dependencies=secured,
        tags=["CDS Hooks"],
        summary="Discovery",
        responses={401: _ERRORS[401]},
    )
    def get_discovery() -> DiscoveryResponse:
        return discovery(engine_provider())

    @app.post(
        "/cds-services/{pack_id}-patient-view",
        response_model=CardsResponse,
        response_model_exclude_none=True,
        dependencies=secured,
        tags=["CDS Hooks"],
        summary="Chart open (patient-view): monitoring of current therapy",
        responses={**_ERRORS, 404: {"description": "Unknown service"}},
    )
    async def call_patient_view(
        pack_id: str, body: PatientViewRequest, request: Request, response: Response
    ) -> CardsResponse:
        engine = engine_provider()
        service_id = f"{pack_id}-patient-view"
        ref = find_service(engine, service_id)
        if ref is None:
            raise HookError(404, None, "no such service (see GET /cds-services)")
        request.state.log = {"hookInstance": body.hookInstance, "service": service_id}
        require_clean_context(body.model_dump(exclude={"prefetch"}))
        scrub_resources(body.prefetch, "prefetch")
        client = getattr(request.state, "client", None) or {}
        checked = callback_policy.apply(body, client.get("iss"))
        calls = begin_hook(settings.callbacks)
        try:
            result = await patient_view(ref, checked, engine, client.get("iss"), client.get("tenant"))
        finally:
            end_hook(calls)
        request.state.log["rules"] = result.rule_ids or "-"
        return result.response

    @app.post(
        "/cds-services/{service_id}",
        response_model=CardsResponse,
        response_model_exclude_none=True,
        dependencies=secured,
        tags=["CDS Hooks"],
        summary="Call a hook service",
        responses={
            **_ERRORS,
            404: {"description": "Unknown service"},
            412: {"description": "The patient or the draft order cannot be read"},
        },
    )
    async def call_service(
        service_id: str, body: HookRequest, request: Request, response: Response
    ) -> CardsResponse:
        engine = engine_provider()
        ref = find_service(engine, service_id)
        if ref is None:
            raise HookError(404, None, "no such service (see GET /cds-services)")
        request.state.log = {"hookInstance": body.hookInstance, "service": service_id}
        parsed_by_msgspec = getattr(request, "parsed_by_msgspec", False)
        if not parsed_by_msgspec:  # msgspec refuses NaN and Infinity: what it parsed is all finite
            require_finite(body.context.draftOrders, "context.draftOrders")
        require_clean_context(body.model_dump(exclude={"prefetch"}))
        if not parsed_by_msgspec or scrub_may_change(await request.body()):
            scrub_resources(body.prefetch, "prefetch")  # the record's odd values become unknown, counted
        issuer = (getattr(request.state, "client", None) or {}).get("iss")
        tenant = (getattr(request.state, "client", None) or {}).get("tenant")
        body = callback_policy.apply(body, issuer)  # fhirServer/token dropped when they must not be used
        calls = begin_hook(settings.callbacks)
        try:
            result = await handler(ref, body, engine, issuer, tenant, _body_bytes(request))
        finally:
            end_hook(calls)
        request.state.log["rules"] = result.rule_ids or "-"
        response.headers["Server-Timing"] = ", ".join(f"{k};dur={v:.2f}" for k, v in result.timings.items())
        return result.response

    @app.post(
        "/cds-services/{service_id}/feedback",
        dependencies=secured,
        tags=["CDS Hooks"],
        summary="Feedback on cards (accepted / overridden)",
        responses={**_ERRORS, 404: {"description": "Unknown service"}},
    )
    async def post_feedback(service_id: str, body: FeedbackRequest, request: Request) -> dict[str, Any]:
        if find_service(engine_provider(), service_id) is None:
            raise HookError(404, None, "no such service (see GET /cds-services)")
        require_clean_context(body.model_dump(mode="json"))  # a NUL could not be stored
        unknown: list[str] = []
        for item in body.feedback:
            reason = item.overrideReason.reason if item.overrideReason else None
            record = FeedbackRecord(
                service_id=service_id,
                card_uuid=item.card,
                outcome=item.outcome,
                accepted_suggestions=[s.id for s in item.acceptedSuggestions],
                override_reason_code=reason.code if reason else None,
                override_reason_display=reason.display if reason else None,
                comment=item.overrideReason.userComment if item.overrideReason else None,
                outcome_timestamp=item.outcomeTimestamp,
            )
            if not await anyio.to_thread.run_sync(sink.record_feedback, record):
                unknown.append(item.card)
            elif item.outcome == "overridden":  # may start a repeat-suppression window (same issuer only)
                client = getattr(request.state, "client", None) or {}
                await anyio.to_thread.run_sync(
                    handler.fatigue.on_override, item.card, reason.code if reason else None,
                    client_key(client.get("iss"), client.get("tenant")), clock(),
                )
        request.state.log = {
            "service": service_id,
            "feedback": len(body.feedback),
            "unknownCards": len(unknown),
        }
        return (
            {"received": len(body.feedback), "unknownCards": unknown}
            if unknown
            else {"received": len(body.feedback)}
        )

    @app.post(
        "/evaluate",
        response_model=list[Alert],
        dependencies=secured,
        tags=["Plain JSON"],
        responses=_ERRORS,
        summary="Evaluate patient facts (no FHIR): alerts of every applicable pack",
    )
    async def evaluate(facts: PatientFacts, request: Request, response: Response) -> list[Alert]:
        dumped = facts.model_dump()
        require_finite(dumped, "")
        check_nested_list_lengths(dumped, MAX_FACT_LIST_ITEMS)  # 413 naming the list, before any work
        require_clean_context({"facts": facts.model_dump(mode="json")})  # NUL, surrogates, dates 1900-2200
        engine = engine_provider()

        def work() -> tuple[list[Any], list[Any], list[Alert], list[EvaluationRecord]]:
            """Applicability and evaluation: CPU work (classifying every entry), never on the event loop."""
            found_all: list[Alert] = []
            made = []
            applicable, not_applicable = engine.applicability(facts)
            for pack in applicable:
                found = engine.evaluate_pack(pack, facts)
                found_all.extend(found)
                info = pack.spec.pack
                made.append(
                    EvaluationRecord(
                        source="evaluate",
                        patient_ref=facts.patient_id,
                        as_of=facts.as_of,
                        order=facts.order.model_dump(mode="json") if facts.order else None,
                        pack_id=info.id,
                        pack_version=info.version,
                        pack_hash=pack.content_hash,
                        alerts=[IssuedAlert(alert=a, card_uuid=None) for a in found],
                    )
                )
            return applicable, not_applicable, found_all, made

        applicable, not_applicable, alerts, records = await anyio.to_thread.run_sync(work)
        # [] is only an all-clear when a pack was evaluated: the headers say which ran, and why others did not
        response.headers["X-Packs-Evaluated"] = ", ".join(f"{p.id} {p.version}" for p in applicable) or "none"
        if not_applicable:
            response.headers["X-Packs-Not-Applicable"] = "; ".join(str(n) for n in not_applicable)
        for record in records:
            try:
                if getattr(sink, "nonblocking", False):  # a journal append (as the hooks): no thread hop
                    sink.record_evaluation(record)
                else:
                    await anyio.to_thread.run_sync(sink.record_evaluation, record)
            except Exception as exc:
                count_not_stored("sink-error")
                log.error("evaluation not recorded: %s", type(exc).__name__)
        alerts.sort(key=Alert.sort_key)
        request.state.log = {"rules": [a.rule_id for a in alerts] or "-"}
        return alerts

    @app.get("/healthz", tags=["Operations"], summary="Liveness and loaded packs")
    def healthz() -> dict[str, Any]:
        engine = engine_provider()
        return {
            "status": "ok",
            "auth": auth is not None,
            "request_deviation_total": deviation_counts(),
            "evaluation_not_stored_total": not_stored_counts(),
            "request_limited_total": refusal_counts(),
            "patient_view_total": patient_view_counts(),
            "jti_replay": verifier.replays.stats() if verifier is not None else None,
            "worker": worker_state(engine_provider),
            "packs": [
                {
                    "id": p.id,
                    "version": p.version,
                    "status": p.spec.pack.status,
                    "hash": p.content_hash,
                    "approval": approval_state(p.spec).as_dict(),
                }
                for p in engine.packs
            ],
        }

    for router in extra_routers:
        app.include_router(router)

    # innermost first: body limit → auth → CORS → request log and timing
    app.add_middleware(  # the hook deadline from arrival is the configured one (re-audit #9)
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        deadline_seconds=settings.limits.deadline_seconds,
    )
    if verifier is not None and auth is not None:
        app.add_middleware(
            AuthMiddleware, verifier=verifier, protected=_PROTECTED, public_base_url=auth.public_base_url
        )
    else:
        log.warning("CLIENT AUTHENTICATION IS OFF: any caller can use this service (local trials only)")
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Server-Timing"],
        max_age=600,
    )
    # outermost: logs and times the whole request, refusals included
    app.add_middleware(LoggedAndTimedMiddleware)
    return app
