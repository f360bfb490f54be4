"""Sign-in sessions of the review page: server-side, cookie-held token, CSRF token per session.

* The cookie carries a random token; the database keeps only its SHA-256, so a copy of the
  database does not hand out live sessions.
* A session id is never reused across sign-in: the anonymous session that carried the login
  form's CSRF token is deleted and a new id is issued (no session fixation).
* Cookie: HttpOnly, SameSite=Lax, Path=/review, Secure when served over HTTPS (or forced).
* Every POST must carry the session's CSRF token (checked in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request, Response
from sqlalchemy import delete
from sqlalchemy.orm import Session

from cds_engine.store.db import utcnow
from cds_engine.store.models import ReviewSession, User

__all__ = ["COOKIE", "LoginTokens", "Visitor", "check_csrf", "clear_cookie", "csrf_of", "end_session",
           "load_visitor", "new_session", "set_cookie"]

COOKIE = "cds_review_session"
COOKIE_PATH = "/review"
SESSION_LIFETIME = timedelta(hours=8)
IDLE_TIMEOUT = timedelta(minutes=30)
ANONYMOUS_LIFETIME = timedelta(minutes=30)
_TOUCH_EVERY = timedelta(seconds=60)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Visitor:
    session: ReviewSession | None
    user: User | None

    @property
    def csrf(self) -> str:
        return self.session.csrf_token if self.session else ""

    @property
    def is_admin(self) -> bool:
        return self.user is not None and self.user.role == "admin"


def load_visitor(db: Session, request: Request) -> Visitor:
    """The session and user behind the request's cookie (either may be None)."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 128:
        return Visitor(None, None)
    row = db.get(ReviewSession, _digest(token))
    now = utcnow()
    if row is None or row.expires_at <= now:
        return Visitor(None, None)
    if row.user_id is None:
        return Visitor(row, None)
    user = db.get(User, row.user_id)
    if user is None or user.disabled or now - row.last_seen_at > IDLE_TIMEOUT:
        db.delete(row)
        return Visitor(None, None)
    if now - row.last_seen_at > _TOUCH_EVERY:
        row.last_seen_at = now
    return Visitor(row, user)


def new_session(db: Session, user: User | None, *, replace: ReviewSession | None = None) -> str:
    """Issue a fresh session (new id, new CSRF token), deleting ``replace``; returns the cookie token."""
    now = utcnow()
    if replace is not None:
        db.delete(replace)
    db.execute(delete(ReviewSession).where(ReviewSession.expires_at <= now))  # housekeeping
    token = secrets.token_urlsafe(32)
    lifetime = SESSION_LIFETIME if user is not None else ANONYMOUS_LIFETIME
    db.add(ReviewSession(token_hash=_digest(token), user_id=user.id if user else None,
                         csrf_token=secrets.token_urlsafe(32), created_at=now, last_seen_at=now,
                         expires_at=now + lifetime))
    db.flush()
    return token


def end_session(db: Session, row: ReviewSession) -> None:
    db.execute(delete(ReviewSession).where(ReviewSession.token_hash == row.token_hash))


def csrf_of(db: Session, token: str) -> str:
    row = db.get(ReviewSession, _digest(token))
    return row.csrf_token if row else ""


class LoginTokens:
    """The sign-in form's CSRF token without a server-side session (red-team L5).

    An anonymous visitor gets a signed random nonce in the session cookie; the form carries an
    HMAC of it under a per-process key (double submit). Nothing is written to the database until
    a sign-in succeeds, and that issues a brand-new session id (no fixation).
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def new_nonce(self) -> str:
        random = secrets.token_urlsafe(24)
        return f"{random}.{self._mac('nonce', random)[:32]}"

    def valid_nonce(self, nonce: str) -> bool:
        random, _, mac = nonce.partition(".")
        if not random or len(nonce) > 128:
            return False
        return hmac.compare_digest(mac, self._mac("nonce", random)[:32])

    def csrf(self, nonce: str) -> str:
        return self._mac("login", nonce)

    def check(self, nonce: str, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(self.csrf(nonce), submitted or "")


def check_csrf(visitor: Visitor, submitted: str | None) -> bool:
    expected = visitor.csrf
    return bool(expected and submitted) and hmac.compare_digest(expected, submitted or "")


def set_cookie(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(COOKIE, token, path=COOKIE_PATH, httponly=True, samesite="lax", secure=secure,
                        max_age=int(SESSION_LIFETIME.total_seconds()))


def clear_cookie(response: Response, *, secure: bool) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax", secure=secure)
