"""Users of the review page: argon2id password hashes, roles ``reviewer`` and ``admin``.

Shared by the CLI (``cds-engine users``) and the admin page; every change is audited in the
same transaction as the change itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from cds_engine.store import audit
from cds_engine.store.db import utcnow
from cds_engine.store.models import ROLES, ReviewSession, User

__all__ = ["ROLES", "UserError", "add_user", "authenticate", "get_user", "list_users", "set_disabled",
           "set_password"]

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 12
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-real-password-used-for-timing-only")


class UserError(ValueError):
    """A user operation that cannot be done (bad name, weak password, unknown user…)."""


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")


def get_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).first()


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def add_user(session: Session, username: str, password: str, role: str, *, actor: str,
             actor_role: str | None = None, remote_addr: str | None = None) -> User:
    if not _USERNAME.match(username):
        raise UserError("user name: 1-64 letters, digits or . _ @ -, starting with a letter or digit")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    _check_password(password)
    if get_user(session, username) is not None:
        raise UserError(f"user {username!r} already exists")
    user = User(username=username, password_hash=_hasher.hash(password), role=role, disabled=False,
                created_at=utcnow())
    session.add(user)
    session.flush()
    audit.record(session, actor=actor, role=actor_role, action="user.add", target_type="user",
                 target_id=username, detail={"role": role}, remote_addr=remote_addr)
    return user


def set_disabled(session: Session, username: str, disabled: bool, *, actor: str,
                 actor_role: str | None = None, remote_addr: str | None = None,
                 allow_last_admin: bool = False) -> User:
    user = get_user(session, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    if disabled and user.role == "admin" and not user.disabled:
        active_admins = session.scalar(
            select(func.count()).select_from(User).where(User.role == "admin", User.disabled.is_(False)))
        if (active_admins or 0) <= 1 and not allow_last_admin:
            raise UserError("cannot disable the last active admin")
    user.disabled = disabled
    if disabled:  # signed-in sessions end now, not when they expire
        session.execute(delete(ReviewSession).where(ReviewSession.user_id == user.id))
    audit.record(session, actor=actor, role=actor_role, action="user.disable" if disabled else "user.enable",
                 target_type="user", target_id=username, remote_addr=remote_addr)
    return user


def set_password(session: Session, username: str, password: str, *, actor: str, actor_role: str | None = None,
                 remote_addr: str | None = None) -> User:
    user = get_user(session, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    _check_password(password)
    user.password_hash = _hasher.hash(password)
    session.execute(delete(ReviewSession).where(ReviewSession.user_id == user.id))
    audit.record(session, actor=actor, role=actor_role, action="user.password", target_type="user",
                 target_id=username, remote_addr=remote_addr)
    return user


def authenticate(
    session: Session,
    username: str,
    password: str,
    run: Callable[[Callable[[], object]], object] | None = None,
) -> User | None:
    """The enabled user with that name and password, else None (same cost either way).

    ``run`` executes the argon2 check (the review page passes its bounded password-check pool).
    """
    user = get_user(session, username) if len(username) <= 64 else None
    stored = user.password_hash if user else _DUMMY_HASH
    try:
        if run is None:
            _hasher.verify(stored, password)
        else:
            run(lambda: _hasher.verify(stored, password))
    except (VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user
