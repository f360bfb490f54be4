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

**Many at once** (group commit): :func:`session_order_keys` reads the stored sessions of every
base in a batch with one SELECT (per 500 bases) and decides in Python, so the writer does not
pay one round trip — and one GIL release and re-acquire — per record. A call sees the sessions
of the calls before it in the same batch, which are not in the table yet, before the stored ones;
that is exactly what writing the batch one record at a time would give.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, Table, and_, or_, select

from cds_engine.store.models import Evaluation

__all__ = ["ORDER_SESSION_GAP", "session_order_key", "session_order_keys"]

ORDER_SESSION_GAP = timedelta(hours=1)
BASES_PER_SELECT = 500  # bound parameters per statement stay far below every driver's limit

_evaluations: Table = Evaluation.__table__  # type: ignore[assignment]

Stored = dict[str, list[tuple[datetime, str]]]  # order_base -> (as_of, order_key), sorted


def session_order_key(conn: Connection, order_base: str, as_of: datetime,
                      gap: timedelta = ORDER_SESSION_GAP) -> str:
    """The ``order_key`` of the session ``as_of`` falls in: an earlier call's key, else a new one."""
    key = session_order_keys(conn, [(order_base, as_of)], gap)[0]
    assert key is not None  # a non-empty base always gets a key
    return key


def session_order_keys(conn: Connection, calls: Sequence[tuple[str | None, datetime]],
                       gap: timedelta = ORDER_SESSION_GAP) -> list[str | None]:
    """The ``order_key`` of each (order_base, as_of), in order, as if written one by one.

    A call takes the key of the first earlier call *in this batch* on the same base within
    ``gap``; else the stored call on that base within ``gap`` of it with the earliest ``as_of``;
    else a new key (the base hashed with its own time). No base (or an empty one): None."""
    stored = _stored_sessions(conn, [(b, t) for b, t in calls if b], gap)
    seen: dict[str, list[tuple[datetime, str]]] = {}
    keys: list[str | None] = []
    for base, as_of in calls:
        if not base:
            keys.append(None)
            continue
        earlier = seen.setdefault(base, [])
        key = (next((k for when, k in earlier if abs(when - as_of) <= gap), None)
               or _first_stored(stored.get(base, []), as_of, gap)
               or hashlib.sha256(f"{base}|{as_of.isoformat()}".encode()).hexdigest()[:32])
        earlier.append((as_of, key))
        keys.append(key)
    return keys


def _first_stored(sessions: list[tuple[datetime, str]], as_of: datetime, gap: timedelta) -> str | None:
    """The key of the earliest stored call within ``gap`` of ``as_of`` (``sessions`` sorted)."""
    at = bisect_left(sessions, as_of - gap, key=lambda session: session[0])
    if at < len(sessions) and sessions[at][0] <= as_of + gap:
        return sessions[at][1]
    return None


def _windows(times: list[datetime], gap: timedelta) -> list[tuple[datetime, datetime]]:
    """[first - gap, last + gap] per run of times less than 2 gaps apart: a batch holding an old
    adopted journal and today's calls reads two narrow windows, not the days between them."""
    times = sorted(times)
    windows = [(times[0] - gap, times[0] + gap)]
    for when in times[1:]:
        low, high = windows[-1]
        if when - gap <= high:
            windows[-1] = (low, when + gap)
        else:
            windows.append((when - gap, when + gap))
    return windows


def _stored_sessions(conn: Connection, calls: list[tuple[str, datetime]], gap: timedelta) -> Stored:
    """Stored (as_of, order_key) of these bases near these times — a superset of what any call can
    match; :func:`_first_stored` applies the exact window per call."""
    stored: Stored = {}
    if not calls:
        return stored
    c = _evaluations.c
    near = or_(*(and_(c.as_of >= low, c.as_of <= high)
                 for low, high in _windows([t for _, t in calls], gap)))
    bases = sorted({b for b, _ in calls})
    for start in range(0, len(bases), BASES_PER_SELECT):
        rows = conn.execute(select(c.order_base, c.as_of, c.order_key).where(
            c.order_base.in_(bases[start:start + BASES_PER_SELECT]), near, c.order_key.is_not(None)))
        for base, as_of, key in rows:
            stored.setdefault(base, []).append((as_of, str(key)))
    for sessions in stored.values():
        sessions.sort()
    return stored
