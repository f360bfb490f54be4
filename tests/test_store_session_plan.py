"""The ordering-session lookup reads the (order_base, as_of) index per base, never all evaluations
(issue 19).

Its band part was ``order_base = ANY(:bases)``: PostgreSQL's generic plan for it, fixed while
``evaluations`` was small, scanned and hashed the whole table on every group commit — a cost
growing with the store. It is now a per-base ``LATERAL``. What must hold: the generic plan uses
the index and no ``Seq Scan on evaluations`` (SQLite's plan: a SEARCH by the index, no SCAN), and
the lookup returns the same rows as the former ``ANY`` / ``IN`` statement (kept here as the oracle).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, String, and_, any_, bindparam, insert, or_, select, union_all
from sqlalchemy.dialects import postgresql

from cds_engine.store import order_sessions
from cds_engine.store.db import utcnow
from cds_engine.store.order_sessions import ORDER_SESSION_GAP
from store_helpers import NOW, STORE_KINDS, postgres_admin_url, store_for
from test_store_pipeline_arrays import _generic_plan

_evaluations: Any = order_sessions._evaluations
INDEX = "ix_evaluations_order_base_as_of"


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _former_lookup(dialect: str, windows: int) -> Any:
    """The lookup as it was before the per-base band: the oracle for the rows."""
    c = _evaluations.c
    wanted = order_sessions._bases(dialect)
    when = [
        {name: bindparam(f"{name}_{n}", type_=c.as_of.type) for name in ("low", "mid", "high")}
        for n in range(windows)
    ]
    band = or_(*(and_(c.as_of >= w["low"], c.as_of <= w["mid"]) for w in when))
    among = (
        c.order_base == any_(bindparam("bases", type_=postgresql.ARRAY(String)))
        if dialect == "postgresql"
        else c.order_base.in_(select(wanted.c.base))
    )
    return union_all(
        select(c.order_base, c.as_of, c.order_key).where(among, c.order_key.is_not(None), band),
        *(_former_earliest_after(wanted, w["mid"], w["high"]) for w in when),
    )


def _former_earliest_after(wanted: Any, after: Any, until: Any) -> Any:
    """The former per-window part: per base its earliest stored call in (after, until], joined back."""
    c = _evaluations.c
    first = (
        select(c.as_of)
        .where(c.order_base == wanted.c.base, c.order_key.is_not(None), c.as_of > after, c.as_of <= until)
        .order_by(c.as_of)
        .limit(1)
        .scalar_subquery()
    )
    firsts = select(wanted.c.base, first.label("first")).subquery()
    return (
        select(c.order_base, c.as_of, c.order_key)
        .join(firsts, and_(c.order_base == firsts.c.base, c.as_of == firsts.c.first))
        .where(c.order_key.is_not(None))
    )


def _params(conn: Connection, calls: list[tuple[str, datetime]]) -> dict[str, Any]:
    """The lookup's parameters for these calls, as ``_stored_sessions`` binds them."""
    params: dict[str, Any] = {}
    for n, (low, high) in enumerate(order_sessions._windows([t for _, t in calls], ORDER_SESSION_GAP)):
        params.update({f"low_{n}": low, f"mid_{n}": high - 2 * ORDER_SESSION_GAP, f"high_{n}": high})
    bases = sorted({b for b, _ in calls})
    params["bases"] = bases if conn.dialect.name == "postgresql" else order_sessions.json.dumps(bases)
    return params


def _fill(conn: Connection, rng: random.Random, rows: int, bases: int) -> None:
    """``rows`` stored calls on ``bases`` bases over ~10 hours, some without a key, ties in time."""
    values = [
        dict(
            id=str(uuid.uuid4()),
            source="hook",
            hook="order-sign",
            service_id="s",
            order_key=rng.choice([None, f"key-{rng.randint(0, 40)}"]),
            order_base=f"base-{rng.randrange(bases)}",
            as_of=NOW + timedelta(minutes=rng.randint(0, 600), seconds=rng.choice([0, 30])),
            recorded_at=utcnow(),
            pack_id="p",
            pack_version="1",
            pack_hash="f" * 64,
            site_hash="s",
            hypothetical=False,
        )
        for _ in range(rows)
    ]
    for start in range(0, rows, 1000):
        conn.execute(insert(_evaluations), values[start : start + 1000])


def test_lookup_returns_the_former_rows(kind: str, tmp_path: Path) -> None:
    rng = random.Random(19)
    with store_for(kind, tmp_path) as store:
        with store.engine.begin() as conn:
            _fill(conn, rng, 3000, 60)
        with store.engine.connect() as conn:
            dialect = conn.dialect.name
            for _ in range(40):
                calls = [
                    (
                        f"base-{rng.randrange(70)}",
                        NOW
                        + timedelta(
                            minutes=rng.choice([rng.randint(-70, 670), rng.randint(200, 230)]),
                            seconds=rng.choice([0, 30]),
                        ),
                    )
                    for _ in range(rng.randint(1, 40))
                ]
                params = _params(conn, calls)
                windows = len(order_sessions._windows([t for _, t in calls], ORDER_SESSION_GAP))
                new = Counter(conn.execute(order_sessions._lookup(dialect, windows), params).all())
                old = Counter(conn.execute(_former_lookup(dialect, windows), params).all())
                assert new == old
                assert new  # the calls hit stored sessions: the comparison is not vacuous


@pytest.mark.skipif(postgres_admin_url() is None, reason="needs CDS_TEST_DATABASE_URL")
def test_postgresql_generic_plan_reads_the_index_per_base(tmp_path: Path) -> None:
    with store_for("postgresql", tmp_path) as store, store.engine.begin() as conn:
        _fill(conn, random.Random(5), 4000, 400)
        calls = [(f"base-{n}", NOW + timedelta(hours=5 * (n % 2), minutes=n % 50)) for n in range(0, 400, 7)]
        windows = len(order_sessions._windows([t for _, t in calls], ORDER_SESSION_GAP))
        assert windows >= 2
        plan = _generic_plan(conn, order_sessions._lookup("postgresql", windows), _params(conn, calls))
    assert "Seq Scan on evaluations" not in plan, plan
    scans = [line for line in plan.splitlines() if " on evaluations" in line or "Index Scan on " in line]
    assert all(INDEX in line for line in scans), plan  # not a time range of every base (ix_evaluations_as_of)
    assert plan.count(INDEX) >= 1 + windows, plan  # the band, and per window its earliest call after


def test_sqlite_plan_searches_the_index(tmp_path: Path) -> None:
    with store_for("sqlite", tmp_path) as store, store.engine.connect() as conn:
        statement = order_sessions._lookup("sqlite", 2).compile(dialect=conn.dialect)
        params = _params(conn, [("base-1", NOW), ("base-2", NOW + timedelta(hours=5))])
        bound = statement.construct_params(params)
        values = [bound[name] for name in statement.positiontup or ()]
        plan = "\n".join(
            row[-1]
            for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement.string}", tuple(values)).all()
        )
    assert "SCAN evaluations" not in plan, plan
    assert f"SEARCH evaluations USING INDEX {INDEX}" in plan, plan


def test_a_batch_of_many_windows_is_looked_up_in_bounded_statements(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch adopted from a journal of sparse calls over weeks: 600 windows, more UNION parts than
    SQLite takes in one compound SELECT (500). The lookup runs in statements of at most
    WINDOWS_PER_SELECT windows and finds what one window a statement finds."""
    rng = random.Random(23)
    spaced = 3 * ORDER_SESSION_GAP  # more than two gaps apart: one window each
    with store_for(kind, tmp_path) as store:
        with store.engine.begin() as conn:
            _fill(conn, rng, 400, 5)
        calls = [(f"base-{n % 5}", NOW - timedelta(hours=500) + n * spaced) for n in range(600)]
        assert len(order_sessions._windows([t for _, t in calls], ORDER_SESSION_GAP)) == 600
        with store.engine.connect() as conn:
            found = order_sessions._stored_sessions(conn, calls, ORDER_SESSION_GAP)
            monkeypatch.setattr(order_sessions, "WINDOWS_PER_SELECT", 1)
            one_by_one = order_sessions._stored_sessions(conn, calls, ORDER_SESSION_GAP)
    assert found == one_by_one
    assert sum(len(v) for v in found.values()) > 0  # the windows over the stored calls found them
