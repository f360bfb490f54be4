"""Routes of the review pages. Each handler: who is asking, one transaction, one audit entry, a page.

Handlers are plain ``def`` (FastAPI runs them in its thread pool) because the store is
synchronous SQLAlchemy; a slow page never blocks the hook's event loop.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from datetime import date, timedelta
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Form, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from sqlalchemy import exc as sa_exc

from cds_engine.service.review import alert_view, auth
from cds_engine.service.review.alerts_csv import alerts_csv_chunks
from cds_engine.service.review.charts import day_chart
from cds_engine.service.review.csv_export import analytics_csv
from cds_engine.service.review.packs import PackLookup
from cds_engine.service.review.rendering import render
from cds_engine.service.review.throttle import Busy, PasswordPool, SignInThrottle
from cds_engine.store import audit, queries
from cds_engine.store import users as user_admin
from cds_engine.store.alert_export import MAX_EXPORT, export_rows
from cds_engine.store.db import utcnow
from cds_engine.store.models import ROLES, SEVERITIES, AlertRow
from cds_engine.store.patients import patients_by_ref
from cds_engine.store.queue_items import work_queue_from_items
from cds_engine.store.store import Store
from cds_engine.store.work_queue import bulk_candidates, bulk_refused

if TYPE_CHECKING:
    from cds_engine.engine import Engine

__all__ = ["EngineProvider", "PageError", "build_router"]

EngineProvider = Callable[[], "Engine | None"]  # the current rule engine (hot reload swaps it)

PAGE_SIZE = 50
QUEUE_GROUPS = 25  # patients/encounters per queue page
WINDOWS = ("30", "90", "365", "all")  # analytics windows in days, ending today (UTC)
MAX_COMMENT = 2000

_SECURITY_HEADERS = {
    # No scripts at all; inline <style> only; forms post back here; never framed.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class PageError(Exception):
    """Ends a request with an error page (or a redirect when ``location`` is set)."""

    def __init__(self, status: int, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.location = status, message, location

    def response(self) -> Response:
        if self.location:
            return RedirectResponse(self.location, status_code=303)
        return HTMLResponse(render("error.html", status=self.status, message=self.message, user=None),
                            status_code=self.status)


class _PageRoute(APIRoute):
    """Turns PageError, invalid input and an unavailable database into pages; adds security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except PageError as exc:
                response = exc.response()
            except RequestValidationError:
                response = PageError(400, "The request was not understood.").response()
            except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError):
                response = PageError(503, "The alert database is not available right now; "
                                          "advice to prescribers continues. Try again shortly.").response()
            for name, value in _SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return page


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _safe_next(target: str | None) -> str:
    """Only local review paths: never an open redirect."""
    if target and target.startswith("/review") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return "/review/alerts"


def _analytics_filter(request: Request) -> tuple[queries.AlertFilter, str, bool]:
    """(filter, window, dates chosen explicitly): a window of days ends today (UTC); dates win."""
    flt = queries.parse_filter({k: request.query_params.get(k) for k in ("rule", "source", "from", "to")})
    request_dates = bool(flt.date_from or flt.date_to)
    window = request.query_params.get("window") or "all"
    if window not in WINDOWS:
        flt.errors.append("unknown window ignored; showing all")
        window = "all"
    if window != "all" and not request_dates:
        today = utcnow().date()
        flt.date_from, flt.date_to = today - timedelta(days=int(window) - 1), today
    return flt, window, request_dates


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def build_router(store: Store, engine_provider: EngineProvider | Any = None, *,
                 secure_cookies: bool | None = None,
                 sign_in_throttle: SignInThrottle | None = None) -> APIRouter:
    """The review pages over ``store``, mounted under ``/review``. ``engine_provider`` returns the
    current rule engine (for rule titles, sources and the packs' override reasons)."""
    packs = PackLookup(engine_provider)
    throttle = sign_in_throttle or SignInThrottle()
    passwords = PasswordPool(threads=2, queue=8)
    login_tokens = auth.LoginTokens()
    router = APIRouter(prefix="/review", route_class=_PageRoute, include_in_schema=False)

    def secure(request: Request) -> bool:
        return secure_cookies if secure_cookies is not None else request.url.scheme == "https"

    def page(request: Request, template: str, visitor: auth.Visitor, status: int = 200,
             **context: Any) -> HTMLResponse:
        return HTMLResponse(render(template, user=visitor.user, csrf=visitor.csrf, path=request.url.path,
                                   **context), status_code=status)

    def signed_in(request: Request, *, csrf: str | None = None, admin: bool = False,
                  what: str = "") -> auth.Visitor:
        """The signed-in visitor, or a redirect (GET) / 401 (POST); 403 on a bad CSRF token or role.

        Runs in its own short transaction so that a refusal is audited even though the request
        goes no further.
        """
        refused: PageError | None = None
        why = ""
        with store.session() as db:
            visitor = auth.load_visitor(db, request)
            user = visitor.user
            if user is None:
                if request.method == "GET":
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    login = "/review/login?" + urlencode({"next": target})
                    refused = PageError(303, "sign in", location=login)
                else:
                    refused = PageError(401, "Sign in first.")
            elif request.method != "GET" and not auth.check_csrf(visitor, csrf):
                refused = PageError(403, "The form had expired or was not sent by this page. "
                                         "Reload it and try again.")
                why = "csrf"
            elif admin and not visitor.is_admin:
                refused = PageError(403, "Only an admin can do this.")
                why = "role"
            if refused is not None and user is not None:
                audit.record(db, actor=user.username, role=user.role, action="access.denied",
                             target_type="page", target_id=request.url.path,
                             detail={"why": why, "what": what, "method": request.method},
                             remote_addr=_client(request))
        if refused is not None:
            raise refused
        return visitor

    # -- sign in / out ---------------------------------------------------------------------
    @router.get("", response_class=HTMLResponse)
    @router.get("/", response_class=HTMLResponse)
    def home() -> Response:
        return RedirectResponse("/review/alerts", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str | None = None) -> Response:
        with store.session() as db:
            visitor = auth.load_visitor(db, request)
            if visitor.user is not None:
                return RedirectResponse(_safe_next(next), status_code=303)
        # No server-side session and no audit row for an anonymous visitor (red-team L5): the
        # form's CSRF token is bound to a signed cookie nonce instead (double submit).
        nonce = request.cookies.get(auth.COOKIE) or ""
        fresh = not login_tokens.valid_nonce(nonce)
        if fresh:
            nonce = login_tokens.new_nonce()
        response = HTMLResponse(render("login.html", user=None, csrf=login_tokens.csrf(nonce),
                                       next=_safe_next(next), error=None, path=request.url.path))
        if fresh:
            auth.set_cookie(response, nonce, secure=secure(request))
        return response

    def refused_sign_in(request: Request, csrf: str, target: str, wait: float, message: str) -> Response:
        response = HTMLResponse(render("login.html", user=None, csrf=csrf, next=target, error=message,
                                       path=request.url.path), status_code=429)
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response

    @router.post("/login", response_class=HTMLResponse)
    def login(request: Request, username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
              csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "") -> Response:
        target = _safe_next(next)
        nonce = request.cookies.get(auth.COOKIE) or ""
        if not login_tokens.valid_nonce(nonce) or not login_tokens.check(nonce, csrf_token):
            raise PageError(403, "The sign-in form had expired. Reload the page and try again.")
        csrf = login_tokens.csrf(nonce)
        name = username.strip()[:64]
        address = _client(request) or "unknown"
        wait = throttle.wait_seconds(name, address)
        if wait > 0:  # no password check at all while a delay runs (and no lockout: it ends)
            return refused_sign_in(request, csrf, target, wait,
                                   f"Too many sign-in attempts. Try again in {math.ceil(wait)} seconds.")
        with store.session() as db:
            visitor = auth.load_visitor(db, request)
            try:
                user = user_admin.authenticate(db, name, password, run=passwords.run)
            except Busy:
                return refused_sign_in(request, csrf, target, 5, "The service is busy. Try again shortly.")
            if user is None:
                failures = throttle.failure(name, address)
                if failures:  # in aggregate: the first of a window at once, the rest as one count
                    audit.record(db, actor=name or "anonymous", action="login.failed", target_type="user",
                                 target_id=name, detail={"failures": failures}, remote_addr=address)
                return HTMLResponse(render("login.html", user=None, csrf=csrf, next=target,
                                           error="Unknown user or wrong password.", path=request.url.path),
                                    status_code=401)
            pending = throttle.success(name, address)
            if pending:
                audit.record(db, actor=name, action="login.failed", target_type="user", target_id=name,
                             detail={"failures": pending}, remote_addr=address)
            # New session id at sign-in: whatever id the browser had before is dead now.
            token = auth.new_session(db, user, replace=visitor.session)
            user.last_login_at = utcnow()
            audit.record(db, actor=user.username, role=user.role, action="login", target_type="user",
                         target_id=user.username, remote_addr=address)
        response = RedirectResponse(target, status_code=303)
        auth.set_cookie(response, token, secure=secure(request))
        return response

    @router.post("/logout", response_class=HTMLResponse)
    def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
        visitor = signed_in(request, csrf=csrf_token, what="logout")
        assert visitor.user is not None and visitor.session is not None
        with store.session() as db:
            audit.record(db, actor=visitor.user.username, role=visitor.user.role, action="logout",
                         target_type="user", target_id=visitor.user.username, remote_addr=_client(request))
            auth.end_session(db, visitor.session)
        response = RedirectResponse("/review/login", status_code=303)
        auth.clear_cookie(response, secure=secure(request))
        return response

    # -- alerts ----------------------------------------------------------------------------
    @router.get("/alerts", response_class=HTMLResponse)
    def alert_list(request: Request) -> Response:
        params = {k: request.query_params.get(k) for k in
                  ("severity", "rule", "category", "status", "outcome", "patient", "source", "from", "to")}
        flt = queries.parse_filter(params)
        try:
            page_no = max(1, min(int(request.query_params.get("page") or 1), 1_000_000))
        except ValueError:
            page_no = 1
            flt.errors.append("page is not a number; showing the first page")
        visitor = signed_in(request)
        with store.session() as db:
            assert visitor.user is not None
            result = queries.list_alerts(db, flt, page=page_no, page_size=PAGE_SIZE)
            choices = queries.distinct_values(db)
            audit.record(db, actor=visitor.user.username, role=visitor.user.role, action="view.alerts",
                         target_type="alerts", detail={"filter": flt.as_params(), "page": page_no,
                                                       "shown": len(result.rows)},
                         remote_addr=_client(request))
            filter_params = flt.as_params()
            return page(request, "alerts.html", visitor, result=result, flt=flt, choices=choices,
                        patients=patients_by_ref(db, (e.patient_ref for _, e in result.rows)),
                        severities=SEVERITIES, statuses=("open", "acknowledged", "overridden"),
                        sources=queries.SOURCE_LABELS, source_kind=queries.source_kind,
                        page_link=lambda n: "/review/alerts?" + urlencode({**filter_params, "page": n}))

    @router.get("/alerts.csv")
    def alerts_export(request: Request) -> Response:
        """The filtered alert list (newest first, at most 10,000 rows) as CSV, streamed; audited."""
        params = {k: request.query_params.get(k) for k in
                  ("severity", "rule", "category", "status", "outcome", "patient", "source", "from", "to")}
        flt = queries.parse_filter(params)
        visitor = signed_in(request, what="alerts.csv")
        with store.session() as db:
            assert visitor.user is not None
            audit.record(db, actor=visitor.user.username, role=visitor.user.role, action="export.alerts",
                         target_type="alerts", detail={"filter": flt.as_params(), "max_rows": MAX_EXPORT},
                         remote_addr=_client(request))

        def chunks() -> Iterator[str]:
            with store.session() as db:
                yield from alerts_csv_chunks(export_rows(db, flt))

        return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="alerts.csv"'})

    @router.get("/alerts/{alert_id}", response_class=HTMLResponse)
    def alert_page(request: Request, alert_id: str, saved: str | None = None) -> Response:
        visitor = signed_in(request)
        with store.session() as db:
            assert visitor.user is not None
            detail = queries.alert_detail(db, alert_id[:64])
            audit.record(db, actor=visitor.user.username, role=visitor.user.role, action="view.alert",
                         target_type="alert", target_id=alert_id[:64],
                         detail={"found": detail is not None}, remote_addr=_client(request))
            if detail is None:
                return page(request, "error.html", visitor, status=404, message="No such alert.")
            info = packs.describe(detail.alert)
            kind = queries.source_kind(detail.evaluation)
            ref = detail.evaluation.patient_ref
            patient = patients_by_ref(db, [ref]).get(ref or "")
            return page(request, "alert.html", visitor, d=detail, info=info, saved=saved, patient=patient,
                        source_kind=kind, source_label=queries.SOURCE_LABELS[kind],
                        detail_html=alert_view.render_markdown(detail.alert.detail),
                        evidence=alert_view.evidence_rows(detail.alert.evidence or {}),
                        order_sentence=alert_view.order_sentence(
                            detail.order.body if detail.order else None, detail.alert.evidence or {},
                            loaded.vocabulary if (loaded := packs.pack(detail.alert.pack_id)) else None),
                        order_json=alert_view.order_json(detail.order.body if detail.order else None))

    @router.post("/alerts/{alert_id}/decision", response_class=HTMLResponse)
    def alert_decision(request: Request, alert_id: str, csrf_token: Annotated[str, Form()] = "",
                       action: Annotated[str, Form()] = "", reason: Annotated[str, Form()] = "",
                       comment: Annotated[str, Form()] = "") -> Response:
        visitor = signed_in(request, csrf=csrf_token, what="decision")
        with store.session() as db:
            assert visitor.user is not None
            alert = db.get(AlertRow, alert_id[:64])
            if alert is None:
                raise PageError(404, "No such alert.")
            comment = comment.strip()
            if len(comment) > MAX_COMMENT:
                raise PageError(400, f"The comment is longer than {MAX_COMMENT} characters.")
            if action == "acknowledge":
                queries.decide(db, alert, visitor.user, "acknowledged", reason_code=None, reason_display=None,
                               comment=comment or None, remote_addr=_client(request))
            elif action == "override":
                reasons = packs.override_reasons(alert.pack_id)
                if reason not in reasons:
                    raise PageError(400, "Choose one of the pack's override reasons.")
                queries.decide(db, alert, visitor.user, "overridden", reason_code=reason,
                               reason_display=reasons[reason], comment=comment or None,
                               remote_addr=_client(request))
            else:
                raise PageError(400, "Unknown action.")
        return RedirectResponse(f"/review/alerts/{alert.id}?saved=1", status_code=303)

    @router.get("/queue", response_class=HTMLResponse)
    def queue_page(request: Request) -> Response:
        flt = queries.parse_filter({k: request.query_params.get(k) for k in ("severity", "rule", "source")})
        try:
            page_no = max(1, min(int(request.query_params.get("page") or 1), 1_000_000))
        except ValueError:
            page_no, _ = 1, flt.errors.append("page is not a number; showing the first page")
        visitor = signed_in(request)
        with store.session() as db:
            assert visitor.user is not None
            groups, total = work_queue_from_items(db, severity=flt.severity, rule=flt.rule, source=flt.source,
                                                  page=page_no, page_size=QUEUE_GROUPS)
            audit.record(db, actor=visitor.user.username, role=visitor.user.role, action="view.queue",
                         target_type="queue", detail={"filter": flt.as_params(), "page": page_no,
                                                      "groups": len(groups)},
                         remote_addr=_client(request))
            filter_params = flt.as_params()
            return page(request, "queue.html", visitor, groups=groups, total=total, page_no=page_no,
                        patients=patients_by_ref(db, (g.patient_ref for g in groups)),
                        bulk_rules=packs.bulk_rules(), done=request.query_params.get("done", "")[:8],
                        pages=max(1, -(-total // QUEUE_GROUPS)), flt=flt, sources=queries.SOURCE_LABELS,
                        severities=SEVERITIES,
                        page_link=lambda n: "/review/queue?" + urlencode({**filter_params, "page": n}))

    @router.post("/queue/bulk-acknowledge", response_class=HTMLResponse)
    def queue_bulk(request: Request, csrf_token: Annotated[str, Form()] = "",
                   tier_id: Annotated[str, Form()] = "", comment: Annotated[str, Form()] = "") -> Response:
        """Acknowledge the open alerts of ONE rule tier: only rules the pack lists in
        ``bulk_acknowledge``, never a critical or hypothetical alert; one audit row per alert."""
        visitor = signed_in(request, csrf=csrf_token, what="bulk-acknowledge")
        tier_id, comment = tier_id.strip()[:96], comment.strip()
        if len(comment) > MAX_COMMENT:
            raise PageError(400, f"The comment is longer than {MAX_COMMENT} characters.")
        with store.session() as db:
            assert visitor.user is not None
            if bulk_refused(db, tier_id):
                raise PageError(403, "This rule's alerts must be decided one by one.")
            alerts = bulk_candidates(db, tier_id)
            if not alerts:
                raise PageError(400, "Nothing open to acknowledge in bulk for this rule tier.")
            if {a.rule_id for a in alerts} - packs.bulk_rules():
                raise PageError(403, "This rule's alerts must be decided one by one.")
            bulk_id = f"bulk-{uuid.uuid4()}"
            for alert in alerts:
                queries.decide(db, alert, visitor.user, "acknowledged", reason_code=None, reason_display=None,
                               comment=comment or None, remote_addr=_client(request), bulk=bulk_id,
                               roll_up=False)
            queries.roll_up_decisions(db, [a.id for a in alerts])  # analytics and queue: once, set-based
            audit.record(db, actor=visitor.user.username, role=visitor.user.role,
                         action="alert.bulk_acknowledged", target_type="tier", target_id=tier_id,
                         remote_addr=_client(request),
                         detail={"bulk_action": bulk_id, "alerts": len(alerts)})
        return RedirectResponse(f"/review/queue?done={len(alerts)}", status_code=303)

    # -- analytics -------------------------------------------------------------------------
    @router.get("/analytics.csv")
    def analytics_export(request: Request) -> Response:
        flt, window, _ = _analytics_filter(request)
        visitor = signed_in(request, what="analytics.csv")
        with store.session() as db:
            assert visitor.user is not None
            stats = queries.analytics(db, date_from=flt.date_from, date_to=flt.date_to, rule=flt.rule,
                                      source=flt.source)
            audit.record(db, actor=visitor.user.username, role=visitor.user.role, action="export.analytics",
                         target_type="analytics", detail={"filter": flt.as_params(), "window": window,
                                                          "rows": len(stats)},
                         remote_addr=_client(request))
        titles = {s.rule_id: packs.rule_title(s.rule_id) or s.title for s in stats}
        body = analytics_csv(stats, titles, date_from=flt.date_from, date_to=flt.date_to,
                             source=flt.source or "real orders")
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="rule-analytics.csv"'})

    @router.get("/analytics", response_class=HTMLResponse)
    def analytics_page(request: Request) -> Response:
        flt, window, request_dates = _analytics_filter(request)
        visitor = signed_in(request)
        with store.session() as db:
            assert visitor.user is not None
            stats = queries.analytics(db, date_from=flt.date_from, date_to=flt.date_to, rule=flt.rule,
                                      source=flt.source)
            audit.record(db, actor=visitor.user.username, role=visitor.user.role, action="view.analytics",
                         target_type="analytics", detail={"filter": flt.as_params(), "window": window},
                         remote_addr=_client(request))
            choices = queries.distinct_values(db)
        total: Counter[date] = Counter()
        for s in stats:
            total.update(s.per_day)
        charts: dict[str, Any] = {}
        overall = None
        if total:
            start, end = flt.date_from or min(total), flt.date_to or max(total)
            overall = day_chart(total, start, end)
            charts = {s.rule_id: day_chart(s.per_day, start, end, height=120) for s in stats}
        titles = {s.rule_id: packs.rule_title(s.rule_id) or s.title for s in stats}
        return page(request, "analytics.html", visitor, stats=stats, charts=charts, overall=overall, flt=flt,
                    window=window, windows=WINDOWS, request_dates=request_dates,
                    export_query=urlencode({k: v for k, v in {
                        "rule": flt.rule, "source": flt.source, "window": window,
                        "from": flt.date_from.isoformat() if request_dates and flt.date_from else None,
                        "to": flt.date_to.isoformat() if request_dates and flt.date_to else None,
                    }.items() if v}),
                    first_day=min(total) if total else None, last_day=max(total) if total else None,
                    titles=titles, pct=_pct, choices=choices, sources=queries.SOURCE_LABELS)

    # -- users and audit (admin) -------------------------------------------------------------
    @router.get("/users", response_class=HTMLResponse)
    def users_page(request: Request, error: str | None = None, saved: str | None = None) -> Response:
        visitor = signed_in(request, admin=True, what="users")
        with store.session() as db:
            assert visitor.user is not None
            audit.record(db, actor=visitor.user.username, role=visitor.user.role, action="view.users",
                         target_type="users", remote_addr=_client(request))
            return page(request, "users.html", visitor, users=user_admin.list_users(db), roles=ROLES,
                        error=error, saved=saved, min_password=user_admin.MIN_PASSWORD_LENGTH)

    @router.post("/users", response_class=HTMLResponse)
    def users_add(request: Request, csrf_token: Annotated[str, Form()] = "",
                  username: Annotated[str, Form()] = "", role: Annotated[str, Form()] = "",
                  password: Annotated[str, Form()] = "") -> Response:
        visitor = signed_in(request, csrf=csrf_token, admin=True, what="user.add")
        with store.session() as db:
            assert visitor.user is not None
            try:
                user_admin.add_user(db, username.strip(), password, role, actor=visitor.user.username,
                                    actor_role=visitor.user.role, remote_addr=_client(request))
            except user_admin.UserError as exc:  # raised before anything was written
                return RedirectResponse("/review/users?" + urlencode({"error": str(exc)}), status_code=303)
        return RedirectResponse("/review/users?saved=1", status_code=303)

    @router.post("/users/{username}/{change}", response_class=HTMLResponse)
    def users_change(request: Request, username: str, change: str,
                     csrf_token: Annotated[str, Form()] = "") -> Response:
        if change not in ("disable", "enable"):
            raise PageError(404, "Unknown action.")
        visitor = signed_in(request, csrf=csrf_token, admin=True, what=f"user.{change}")
        with store.session() as db:
            assert visitor.user is not None
            try:
                user_admin.set_disabled(db, username, change == "disable", actor=visitor.user.username,
                                        actor_role=visitor.user.role, remote_addr=_client(request))
            except user_admin.UserError as exc:  # raised before anything was written
                return RedirectResponse("/review/users?" + urlencode({"error": str(exc)}), status_code=303)
        return RedirectResponse("/review/users?saved=1", status_code=303)

    @router.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request) -> Response:
        visitor = signed_in(request, admin=True, what="audit")
        with store.session() as db:
            assert visitor.user is not None
            entries = audit.recent(db, limit=200)
            audit.record(db, actor=visitor.user.username, role=visitor.user.role, action="view.audit",
                         target_type="audit", remote_addr=_client(request))
            return page(request, "audit.html", visitor, entries=entries)

    return router
