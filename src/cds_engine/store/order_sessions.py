"""One order within one ordering session: the ``order_key`` that folds order-select and order-sign.

Clients reuse draft ids across sessions (a new ordering session numbers its drafts from 1 again),
so (issuer, patient, encounter, draft id) alone would fold two different orders into one queue
item and one analytics episode. The hook hashes that identity — with the ordered product, so a
reused id for another medicine is another order — into ``order_base``; the writer then decides
the session.

**The choice**: an ordering session is a run of hook calls on the same ``order_base`` with no
gap longer than :data:`ORDER_SESSION_GAP` (1 hour) between consecutive calls. Order-select and
order-sign of one order come minutes apart; a draft id reused after an hour of silence is a new
order. The hookInstance cannot chain them: CDS Hooks gives every call a fresh one and no link
to the previous call. The session's ``order_key`` is the base hashed with the first call's time,
so it is stable whichever later call of the session is looked at, and a spool replay (same
record, same ``as_of``) finds the session it belonged to.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import Connection, Table, select

from cds_engine.store.models import Evaluation

__all__ = ["ORDER_SESSION_GAP", "SessionKeys", "session_order_key"]

ORDER_SESSION_GAP = timedelta(hours=1)

_evaluations: Table = Evaluation.__table__  # type: ignore[assignment]


def session_order_key(conn: Connection, order_base: str, as_of: datetime,
                      gap: timedelta = ORDER_SESSION_GAP) -> str:
    """The ``order_key`` of the session ``as_of`` falls in: an earlier call's key, else a new one."""
    c = _evaluations.c
    previous = conn.execute(
        select(c.order_key).where(c.order_base == order_base, c.as_of >= as_of - gap, c.as_of <= as_of + gap,
                                  c.order_key.is_not(None))
        .order_by(c.as_of).limit(1)
    ).scalar()
    if previous is not None:
        return str(previous)
    return hashlib.sha256(f"{order_base}|{as_of.isoformat()}".encode()).hexdigest()[:32]


class SessionKeys:
    """Session keys for many records written in one statement (group commit): a record sees the
    sessions of the records before it in the same group, which are not in the table yet."""

    def __init__(self, conn: Connection, gap: timedelta = ORDER_SESSION_GAP) -> None:
        self.conn, self.gap = conn, gap
        self._seen: dict[str, list[tuple[datetime, str]]] = {}

    def key(self, order_base: str | None, as_of: datetime) -> str | None:
        if not order_base:
            return None
        for when, key in self._seen.get(order_base, []):
            if abs(when - as_of) <= self.gap:
                return key
        key = session_order_key(self.conn, order_base, as_of, self.gap)
        self._seen.setdefault(order_base, []).append((as_of, key))
        return key
