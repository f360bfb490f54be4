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
import json
from bisect import bisect_left
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, String, Table, and_, bindparam, func, or_, select, true, union_all
from sqlalchemy.dialects import postgresql

from cds_engine.store.models import Evaluation

__all__ = ["ORDER_SESSION_GAP", "session_order_key", "session_order_keys"]

ORDER_SESSION_GAP = timedelta(hours=1)
BASES_PER_SELECT = 500  # bound parameters per statement stay far below every driver's limit
#: windows per lookup statement. Why a bound: a batch adopted from a journal of sparse calls over
#: weeks holds hundreds of windows, one UNION part each; SQLite refuses a compound SELECT of over
#: 500 parts ("too many terms") — the batch could never be stored — and PostgreSQL's plan time
#: grew with them (~1.7 s at 100). Windows do not overlap, so the statements' rows are disjoint.
WINDOWS_PER_SELECT = 32

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
    """Stored (as_of, order_key) of these bases near these times — every call that
    :func:`_first_stored` can pick for any of ``calls``, not every call near them.

    Per window [first - gap, last + gap] (:func:`_windows`) a call at ``t`` takes the earliest
    stored call from ``t - gap`` on, and ``t - gap`` lies in [first - gap, last - gap]: so the
    stored calls in that band, plus per base the earliest stored call after it (with its ties),
    are all it can take. Reading the whole window instead returned every call of the last hour
    on a base — an order evaluated thousands of times (bench/load.py signs one draft order on
    every call) made each group commit read thousands of rows."""
    stored: Stored = {}
    if not calls:
        return stored
    windows = _windows([t for _, t in calls], gap)
    bases = sorted({b for b, _ in calls})
    for first in range(0, len(windows), WINDOWS_PER_SELECT):  # disjoint windows: disjoint rows
        group = windows[first:first + WINDOWS_PER_SELECT]
        statement = _lookup(conn.dialect.name, len(group))
        times: dict[str, datetime] = {}
        for n, (low, high) in enumerate(group):
            times.update({f"low_{n}": low, f"mid_{n}": high - 2 * gap, f"high_{n}": high})
        for start in range(0, len(bases), BASES_PER_SELECT):
            chunk = bases[start:start + BASES_PER_SELECT]
            listed = chunk if conn.dialect.name == "postgresql" else json.dumps(chunk)
            for base, as_of, key in conn.execute(statement, {"bases": listed, **times}):
                stored.setdefault(base, []).append((as_of, str(key)))
    for sessions in stored.values():
        sessions.sort()
    return stored


_LOOKUPS: dict[tuple[str, int], Any] = {}


def _lookup(dialect: str, windows: int) -> Any:
    """The lookup for this many windows, built once: building and hashing a construct this size
    costs more of the writer's CPU (under the GIL) than the database spends running it. Bound:
    ``bases`` and per window ``low_n``, ``mid_n`` (= high - 2 gaps) and ``high_n``."""
    found = _LOOKUPS.get((dialect, windows))
    if found is None:
        c = _evaluations.c
        wanted = _bases(dialect)
        when = [{name: bindparam(f"{name}_{n}", type_=c.as_of.type) for name in ("low", "mid", "high")}
                for n in range(windows)]
        band = or_(*(and_(c.as_of >= w["low"], c.as_of <= w["mid"]) for w in when))
        parts = [_in_band(dialect, wanted, band),
                 *(_earliest_after(dialect, wanted, w["mid"], w["high"]) for w in when)]
        found = _LOOKUPS[(dialect, windows)] = union_all(*parts)
    return found


def _bases(dialect: str) -> Any:
    """The batch's bases as a one-column CTE (``base``) from ONE bound parameter ``bases`` — an
    array on PostgreSQL, a JSON list on SQLite — so the statement is the same for every batch and
    SQLAlchemy compiles it once (a ``VALUES`` list with the bases in it was compiled anew for each
    batch: ~2 ms of the writer's CPU, under the GIL)."""
    if dialect == "postgresql":
        bases = func.unnest(bindparam("bases", type_=postgresql.ARRAY(String)))
        return select(bases.label("base")).cte("wanted")
    listed = func.json_each(bindparam("bases", type_=String)).table_valued("value")
    return select(listed.c.value.label("base")).cte("wanted")


def _in_band(dialect: str, wanted: Any, band: Any) -> Select[Any]:
    """The stored calls of the batch's bases in the band (``band``: the windows' [low, mid]).

    PostgreSQL: read per base of ``wanted`` (:func:`_per_base`). ``order_base = ANY(:bases)`` got
    a generic plan, fixed while ``evaluations`` was small, that scanned and hashed the whole table
    on every group commit — a cost growing with the store (issue 19). Same rows: the bases are
    distinct. SQLite already searches the (order_base, as_of) index per base of the IN list."""
    c = _evaluations.c
    if dialect != "postgresql":
        return (select(c.order_base, c.as_of, c.order_key)
                .where(c.order_base.in_(select(wanted.c.base)), c.order_key.is_not(None), band))
    return _per_base(wanted, band, "in_band")


def _earliest_after(dialect: str, wanted: Any, after: Any, until: Any) -> Select[Any]:
    """Per base of ``wanted`` (a one-column CTE), its stored calls at the earliest ``as_of`` in
    (after, until]: one index probe per base (the (order_base, as_of) index read in order, first
    row only), then those rows (on PostgreSQL read per base too: :func:`_per_base`)."""
    c, e = _evaluations.c, _evaluations.alias("probed").c  # an alias: not correlated to _per_base's
    first = (select(e.as_of).where(e.order_base == wanted.c.base, e.order_key.is_not(None),
                                   e.as_of > after, e.as_of <= until)
             .order_by(e.as_of).limit(1).correlate(wanted).scalar_subquery())  # index order: the first
    if dialect == "postgresql":
        return _per_base(wanted, c.as_of == first, "earliest")
    firsts = select(wanted.c.base, first.label("first")).subquery()
    return (select(c.order_base, c.as_of, c.order_key)
            .join(firsts, and_(c.order_base == firsts.c.base, c.as_of == firsts.c.first))
            .where(c.order_key.is_not(None)))


def _per_base(wanted: Any, when: Any, name: str) -> Select[Any]:
    """The stored calls (with a key) matching ``when`` of each base of ``wanted``, looked up per base
    in the (order_base, as_of) index: a ``LATERAL`` on ``order_base =`` the base, as the rollup's
    ``_touched`` does. ``OFFSET 0`` keeps PostgreSQL from pulling the subquery up into a plain
    join, which its generic plan (no statistics when it was fixed) answered by reading every
    evaluation in the time range — or, for the earliest calls, hashing the whole table."""
    c = _evaluations.c
    found = (select(c.order_base, c.as_of, c.order_key)
             .where(c.order_base == wanted.c.base, c.order_key.is_not(None), when)
             .offset(0).lateral(name))
    return (select(found.c.order_base, found.c.as_of, found.c.order_key)
            .select_from(wanted).join(found, true()))
