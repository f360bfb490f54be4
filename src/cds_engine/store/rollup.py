"""The analytics rollup: per day, the rule counts that ``rule_stats`` would compute, kept as rows change.

Analytics over a year or "all" cannot re-read a million alerts per page (issue #18 item 6), so the
writer, prescriber feedback and reviewer decisions keep four tables (migration 0006):

* ``rollup_episodes`` — one row per *episode* exactly as :mod:`cds_engine.store.rule_stats` defines
  it (rule key, patient, order: order-select and order-sign of one order count once; its latest
  prescriber outcome and latest reviewer decision), plus the source kind, so real and hypothetical
  screenings stay apart. The episode's day is the UTC day it was first seen.
* ``rollup_daily`` — the sums of those episodes per (day, pack, rule key, source kind, severity,
  kind): what the analytics page reads.
* ``rollup_episode_reasons`` / ``rollup_reasons`` — override reasons per episode and their daily
  counts ("top reasons").

When rows of an order change (:func:`touch`: feedback, reviewer decisions), that order's episodes
are recomputed *from the alert rows* with the same SQL as ``rule_stats``, and the daily sums move by
(new - old) in the same transaction, so the rollup never drifts from the rows and a replayed write
changes nothing. The writer's *new* rows take :func:`add_alerts` instead: the episodes of just
those rows merged into the stored ones (exact for rows as the writer inserts them; see there),
so a group commit costs what it writes, not what its orders already hold.
:func:`rebuild` recomputes everything (the migration's backfill, and after a bulk fill).
Episodes are kept per source kind: an order seen both from a hook call and from ``/evaluate``
counts once per kind here, where the direct SQL would merge it (it never happens with real
clients: a batch or /evaluate order key is not a hook's).
Cards kept back by the fatigue controls are counted when the alert is written (the filter
remembers them first); purging ``fatigue_cards`` later does not change the rollup.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Date,
    Integer,
    Select,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import visitors
from sqlalchemy.sql.util import ClauseAdapter

from cds_engine.results import MISSING_DATA_RULE
from cds_engine.store import queue_items
from cds_engine.store.fatigue import fatigue_cards
from cds_engine.store.models import SEVERITIES, AlertRow, Base, Evaluation, PrescriberFeedback
from cds_engine.store.pipeline import compile_key, execute_all, translates_schema
from cds_engine.store.rule_stats import flag, utc_day

__all__ = ["EPISODE_KEY", "SUMS", "add_alerts", "rebuild", "rollup_daily", "rollup_episode_reasons",
           "rollup_episodes", "rollup_reasons", "touch", "touch_alerts"]

_RANK = {name: rank for rank, name in enumerate(SEVERITIES, start=1)}
EPISODE_KEY = ("o", "k", "src", "p")  # primary key of an episode (the order first: touch deletes by it)
_DAILY_KEY = ("day", "pack_id", "k", "src", "sev", "kind")
_REASON_KEY = ("day", "pack_id", "k", "src", "reason")
TOUCH_CHUNK = 500  # orders recomputed per statement
_LOCK_SPACE = 0x0CD5  # first key of the two-key advisory locks on orders (apart from migrate's lock)
_ORDER_LOCKS = ("SELECT pg_advisory_xact_lock(:space, h) FROM (SELECT DISTINCT hashtext(o) AS h "
                "FROM unnest(CAST(:orders AS text[])) AS o ORDER BY h) AS ordered")


def _key_columns() -> list[Column[Any]]:
    return [Column("o", String(256), primary_key=True), Column("k", String(96), primary_key=True),
            Column("src", String(16), primary_key=True), Column("p", String(256), primary_key=True)]


rollup_episodes = Table(
    "rollup_episodes", Base.metadata,
    *_key_columns(),
    Column("day", Date, nullable=False), Column("pack_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False), Column("sev", Integer, nullable=False),
    Column("title", Text, nullable=False),
    Column("alert_rows", Integer, nullable=False), Column("shown", Integer, nullable=False),
    Column("carried", Integer, nullable=False), Column("outcome", String(16), nullable=True),
    Column("accepted", Integer, nullable=False), Column("review", String(16), nullable=True),
    Column("kept", Integer, nullable=False),  # cards kept back by the alert-fatigue controls
)

SUMS = ("alert_rows", "fired", "silent", "suppressed", "never_shown_kept", "p_decided", "p_overridden",
         "s_decided", "s_accepted", "r_decided", "r_overridden")

rollup_daily = Table(
    "rollup_daily", Base.metadata,
    Column("day", Date, primary_key=True), Column("pack_id", String(64), primary_key=True),
    Column("k", String(96), primary_key=True), Column("src", String(16), primary_key=True),
    Column("sev", Integer, primary_key=True), Column("kind", String(16), primary_key=True),
    Column("title", Text, nullable=False),
    *(Column(name, Integer, nullable=False) for name in SUMS),
)

rollup_episode_reasons = Table(
    "rollup_episode_reasons", Base.metadata,
    *_key_columns(),
    Column("reason", Text, primary_key=True),
    Column("day", Date, nullable=False), Column("pack_id", String(64), nullable=False),
)

rollup_reasons = Table(
    "rollup_reasons", Base.metadata,
    Column("day", Date, primary_key=True), Column("pack_id", String(64), primary_key=True),
    Column("k", String(96), primary_key=True), Column("src", String(16), primary_key=True),
    Column("reason", Text, primary_key=True),
    Column("orders", Integer, nullable=False),
)


def _episode_parts(evaluation: Any = Evaluation) -> tuple[Any, Any, Any, Any]:
    """(source kind, rule key, patient, order): the same episode as rule_stats, per source kind
    (``evaluation``: where the alert's evaluation columns come from, the table by default)."""
    src = case((evaluation.hypothetical.is_(True), "hypothetical"), else_=evaluation.source)
    key = case((AlertRow.rule_id == MISSING_DATA_RULE, AlertRow.tier_id), else_=AlertRow.rule_id)
    order = func.coalesce(evaluation.order_key, AlertRow.id)
    return src, key, func.coalesce(evaluation.patient_ref, ""), order


def _episodes(dialect: str, where: list[ColumnElement[bool]], *, few: bool = False) -> Select[Any]:
    """Episodes of the alert rows matching ``where``, as rows of ``rollup_episodes`` (window functions
    rank each episode's rows for its latest outcome and decision, as in rule_stats).

    ``few``: the rows are a handful (the writer's new rows): whether a card was kept back is
    looked up per row (a scalar subquery on the card's primary key, which PostgreSQL cannot turn
    into a hashed scan as it may an EXISTS) instead of an outer join.
    The writer's statement is prepared, and the generic plan PostgreSQL fixed while
    ``fatigue_cards`` was small hashed the whole table on every batch (22 ms a batch at the end
    of a 60 s bench/load.py run). Same value: a card has one row at most.
    PostgreSQL, ``few``: each row's evaluation is looked up by its primary key (a ``LATERAL …
    LIMIT 1``, as in :func:`_touched`) — the generic plan fixed while ``evaluations`` was small
    hashed the whole table on every batch (5 ms a batch of 80 hook lines at 3,000 evaluations,
    growing with the store; issue 19 item 2a). Same rows: every alert has its one evaluation."""
    array_length = func.jsonb_array_length if dialect == "postgresql" else func.json_array_length
    evaluation: Any = Evaluation
    if few and dialect == "postgresql":
        evaluations: Table = Evaluation.__table__  # type: ignore[assignment]
        evaluation = (select(evaluations).where(evaluations.c.id == AlertRow.evaluation_id).limit(1)
                      .lateral("evaluation")).c
    src, key, patient, order = _episode_parts(evaluation)
    episode = [src, key, patient, order]
    shown = AlertRow.shown.is_(True)
    unknown = AlertRow.card_suggestions.is_(None)
    carried = and_(shown, or_(AlertRow.card_suggestions > 0,
                              and_(unknown, array_length(AlertRow.suggestions) > 0)))
    ranked = select(
        src.label("src"), key.label("k"), patient.label("p"), order.label("o"),
        AlertRow.pack_id.label("pack_id"), AlertRow.kind.label("kind"), AlertRow.title.label("title"),
        evaluation.as_of.label("as_of"), flag(shown).label("shown"), flag(carried).label("carried"),
        case(_RANK, value=AlertRow.severity, else_=0).label("sev"),
        AlertRow.prescriber_outcome.label("outcome"),
        flag(AlertRow.suggestion_accepted.is_(True)).label("accepted"),
        case((AlertRow.review_status != "open", AlertRow.review_status)).label("review"),
        flag(select(literal(1)).where(fatigue_cards.c.card_uuid == AlertRow.card_uuid,
                                      fatigue_cards.c.suppressed_by.is_not(None))
             .limit(1).scalar_subquery().is_not(None) if few
             else fatigue_cards.c.suppressed_by.is_not(None)).label("kept"),
        func.row_number().over(partition_by=episode,
                               order_by=(AlertRow.prescriber_outcome_at.desc().nulls_last(),
                                         AlertRow.id)).label("orank"),  # id: ties pick the same row
        func.row_number().over(partition_by=episode, order_by=(
            flag(AlertRow.review_status != "open").desc(), AlertRow.reviewed_at.desc().nulls_last(),
            AlertRow.id,
        )).label("rrank"),
    ).select_from(AlertRow)
    if evaluation is Evaluation:
        ranked = ranked.join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
    else:
        ranked = ranked.join(evaluation.id.table, true())
    if not few:
        ranked = ranked.outerjoin(fatigue_cards, fatigue_cards.c.card_uuid == AlertRow.card_uuid)
    rows = ranked.where(*where).subquery()
    r = rows.c
    return select(
        r.o, r.k, r.src, r.p, utc_day(func.min(r.as_of), dialect).label("day"),
        func.max(r.pack_id).label("pack_id"), func.max(r.kind).label("kind"), func.max(r.sev).label("sev"),
        func.max(r.title).label("title"), func.count().label("alert_rows"), func.max(r.shown).label("shown"),
        func.max(r.carried).label("carried"), func.max(case((r.orank == 1, r.outcome))).label("outcome"),
        func.max(case((r.orank == 1, r.accepted), else_=0)).label("accepted"),
        func.max(case((r.rrank == 1, r.review))).label("review"), func.sum(r.kept).label("kept"),
    ).group_by(r.src, r.k, r.p, r.o)


def _episode_reasons(dialect: str, where: list[ColumnElement[bool]]) -> Select[Any]:
    """(episode, reason, day, pack) of prescriber overrides: each reason once per episode."""
    src, key, patient, order = _episode_parts()
    f = PrescriberFeedback
    reason = func.coalesce(f.override_reason_display, f.override_reason_code, "no reason given")
    first = (select(src.label("src"), key.label("k"), patient.label("p"), order.label("o"),
                    func.min(Evaluation.as_of).label("first"), func.max(AlertRow.pack_id).label("pack"))
             .select_from(AlertRow).join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
             .where(*where).group_by(src, key, patient, order).subquery())
    given = (select(src.label("src"), key.label("k"), patient.label("p"), order.label("o"),
                    reason.label("reason"))
             .select_from(f).join(AlertRow, f.alert_id == AlertRow.id)
             .join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
             .where(f.outcome == "overridden", *where).distinct().subquery())
    return (select(given.c.o, given.c.k, given.c.src, given.c.p, given.c.reason,
                   utc_day(first.c.first, dialect).label("day"), first.c.pack.label("pack_id"))
            .join(first, and_(first.c.o == given.c.o, first.c.k == given.c.k, first.c.src == given.c.src,
                              first.c.p == given.c.p)))


def _daily_sums(episodes: Any, sign: int) -> Select[Any]:
    e = episodes.c
    decided = e.outcome.is_not(None)
    carried_decided = and_(decided, e.carried == 1)
    never_kept = and_(e.shown == 0, e.kept > 0)
    parts = {
        "alert_rows": e.alert_rows, "fired": literal(1), "silent": 1 - e.shown, "suppressed": e.kept,
        "never_shown_kept": flag(never_kept), "p_decided": flag(decided),
        "p_overridden": flag(e.outcome == "overridden"), "s_decided": flag(carried_decided),
        "s_accepted": flag(and_(carried_decided, e.accepted == 1)),
        "r_decided": flag(e.review.is_not(None)),
        "r_overridden": flag(e.review == "overridden"),
    }
    return (select(*(e[c] for c in _DAILY_KEY), func.max(e.title),
                   *(sign * func.sum(parts[name]) for name in SUMS))
            .where(true()).group_by(*(e[c] for c in _DAILY_KEY)))


def _reason_sums(reasons: Any, sign: int) -> Select[Any]:
    r = reasons.c
    return select(*(r[c] for c in _REASON_KEY), sign * func.count()).where(true()).group_by(
        *(r[c] for c in _REASON_KEY))


def _add(dialect_name: str, table: Table, key: tuple[str, ...], query: Select[Any],
         title: str = "replace") -> Any:
    """``INSERT … SELECT … ON CONFLICT DO UPDATE SET n = n + excluded.n`` (sums move by deltas).

    ``title`` of a row that exists: "replace" (the added episodes' greatest), "keep", or
    "greatest" (of the row's and the added episodes')."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    columns = [c.name for c in table.columns]
    statement = dialect.insert(table).from_select(columns, query)
    sums = {c: table.c[c] + statement.excluded[c] for c in columns if c not in key and c != "title"}
    if "title" in columns and title != "keep":
        sums["title"] = (statement.excluded.title if title == "replace"
                         else _greatest(dialect_name)(table.c.title, statement.excluded.title))
    return statement.on_conflict_do_update(index_elements=list(key), set_=sums)


Among = Callable[[Any], ColumnElement[bool]]  # "this column's value is one of the orders (ids)"


def _moves(dialect: str, among: Among, sign: int) -> list[Any]:
    """Add (sign 1) or take away (sign -1) the stored episodes of the orders from the daily sums."""
    stored = select(rollup_episodes).where(among(rollup_episodes.c.o)).subquery()
    return [_add(dialect, rollup_daily, _DAILY_KEY, _daily_sums(stored, sign)),
            _reason_move(dialect, among, sign)]


def _reason_move(dialect: str, among: Among, sign: int) -> Any:
    """Add or take away the override reasons of the orders' episodes from the daily reason counts."""
    reasons = select(rollup_episode_reasons).where(among(rollup_episode_reasons.c.o)).subquery()
    return _add(dialect, rollup_reasons, _REASON_KEY, _reason_sums(reasons, sign))


def _inserts(dialect: str, where: list[ColumnElement[bool]]) -> list[Any]:
    return [rollup_episodes.insert().from_select([c.name for c in rollup_episodes.columns],
                                                 _episodes(dialect, where)),
            rollup_episode_reasons.insert().from_select([c.name for c in rollup_episode_reasons.columns],
                                                        _episode_reasons(dialect, where))]


# Built once per dialect with the orders as one expanding parameter: building these constructs
# costs ~15 ms per call in Python, ten times the SQL they run (the hook's write path calls this).
_TOUCH: dict[str, list[Any]] = {}


def _touch_statements(dialect: str) -> list[Any]:
    found = _TOUCH.get(dialect)
    if found is None:
        found = _TOUCH[dialect] = _touch_parts(dialect, bindparam("orders", expanding=True))
    return found


def _touch_parts(dialect: str, orders: Any) -> list[Any]:
    def among(column: Any) -> ColumnElement[bool]:
        return column.in_(orders)

    return [*_moves(dialect, among, -1),
            delete(rollup_episode_reasons).where(rollup_episode_reasons.c.o.in_(orders)),
            delete(rollup_episodes).where(rollup_episodes.c.o.in_(orders)),
            *_inserts(dialect, queue_items.rows_of_orders(orders)),
            *_moves(dialect, among, 1),
            *queue_items.refresh_statements(orders)]  # the work queue's items, likewise


# PostgreSQL: the order locks and every statement above as ONE round trip (a multi-statement text
# with the orders written in), instead of eleven. Under load each round trip waits for the
# database backend to be scheduled and then for this thread to get the GIL back from the request
# threads; eleven of them were most of a group commit's time (bench/load.py write lag). The text
# is compiled once with a placeholder order; only plain keys (the writer's hex session keys and
# alert uuids) are written in, anything else takes the statements above.
_PLACEHOLDER = "cds-touch-orders"
_PLAIN_KEY = re.compile(r"[0-9A-Za-z_.:-]{1,256}")
_SCRIPTS: dict[tuple[Any, ...], str] = {}
_SCRIPTS_MAX = 8  # dialect configurations a process holds a script for (one or two in practice)


def _touch_script(conn: Connection) -> str | None:
    """The one-round-trip text (cached per the dialect's :func:`.pipeline.compile_key`); None if it
    does not come out as expected (then the statements run one by one — never an error on the write
    path), and on a connection with a ``schema_translate_map``: the driver text would not be translated, where
    ``Connection.execute`` translates the statements."""
    if translates_schema(conn):
        return None
    key = compile_key(conn)
    found = _SCRIPTS.get(key)
    if found is None:
        statements = _touch_parts("postgresql", [_PLACEHOLDER])
        lock = _ORDER_LOCKS.replace(":space", str(_LOCK_SPACE)).replace(
            "CAST(:orders AS text[])", f"CAST(ARRAY['{_PLACEHOLDER}'] AS text[])")
        texts = [lock, *(str(s.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                         for s in statements)]
        found = ";\n".join(texts)
        if "%" in found or not all(f"'{_PLACEHOLDER}'" in t for t in texts):
            found = ""  # a literal the driver would read as a placeholder, or orders not written in
        if len(_SCRIPTS) >= _SCRIPTS_MAX:  # bounded (clear: one atomic step under the writer's threads)
            _SCRIPTS.clear()
        _SCRIPTS[key] = found
    return found or None


def touch(conn: Connection, orders: Iterable[str]) -> None:
    """Recompute the episodes of these orders (``order_key``, or the alert id of an alert without
    one) from their alert rows and move the daily sums by the difference; refresh their work-queue
    items too. Same transaction as the change; call after the rows are written."""
    wanted = sorted({o for o in orders if o})
    dialect = conn.dialect.name
    one_trip = wanted and dialect == "postgresql" and len(wanted) <= TOUCH_CHUNK  # one lock statement
    script = _touch_script(conn) if one_trip else None
    if script and all(_PLAIN_KEY.fullmatch(o) for o in wanted):
        listed = ", ".join(f"'{o}'" for o in wanted)
        conn.exec_driver_sql(script.replace(f"'{_PLACEHOLDER}'", listed)).close()
        return
    if wanted and dialect == "postgresql":
        # Two workers touching one order at once would each miss the other's rows: take the orders'
        # locks (all of them, in one hash order: no deadlock) until this transaction ends. Every
        # statement after it sees the other's committed rows (READ COMMITTED). SQLite: one writer.
        conn.execute(text(_ORDER_LOCKS), {"space": _LOCK_SPACE, "orders": wanted})
    statements = _touch_statements(dialect) if wanted else []
    for start in range(0, len(wanted), TOUCH_CHUNK):
        chunk = {"orders": wanted[start:start + TOUCH_CHUNK]}
        for statement in statements:
            conn.execute(statement, chunk)


# ── New alert rows (the writer's inserts): merged into their episodes and items, not recomputed ──
# Recomputing an order from all its rows costs what the order holds: a client that evaluates one
# order again and again (bench/load.py signs the same draft order on every call, so one episode
# grew to thousands of rows) made every group commit scan them all — PostgreSQL CPU per answer
# grew with the run (issue #19). New rows only *add* to an episode, and the merge is exact:
# counts add, day / pack / kind / severity / title / shown / carried take the least or greatest,
# cards kept back add; the latest outcome and decision cannot move, because a new row has no
# outcome time (feedback always sets one — it ranks last), no accepted suggestion and is open.
# Queue items merge the same way (rows add, the highest severity, the newest row by (time, id)).

def _bound_list(dialect: str, name: str) -> Among:
    """Membership in a list parameter. PostgreSQL: ``column = ANY(:name)``, one statement text for
    any count (prepared once per connection), and its generic plan still looks the keys up by
    index — ``IN (SELECT unnest(…))`` was planned as a hash join over a scan of the whole table
    (every open alert, every episode), with or without statistics. SQLite: ``IN (SELECT value FROM
    json_each(:name))`` with the list as one JSON text (:func:`_listed`) — also one text for any
    count: an expanding ``IN`` wrote a new text for every list length, which SQLAlchemy expanded
    and SQLite parsed and planned again at every group commit for each of the seven statements
    (the SQLite writer's CPU a hook line −8–12 % at 20 lines a commit; issue 19 item 2a). SQLite
    still looks each value up by the column's index. One limit of the JSON text: SQLite's
    ``json_each`` cuts a value at a NUL character (``"\\u0000"``), so a key holding one would never
    match (its rollup left unmerged — not a wrong match). The keys listed here are ids we make
    (uuid4 strings, 32-hex-digit sha256 prefixes of the order's identity), never a client's text,
    so none holds a NUL."""
    if dialect == "postgresql":
        array = bindparam(name, type_=postgresql.ARRAY(String))
        return lambda column: column == any_(array)
    listed = select(func.json_each(bindparam(name, type_=String)).table_valued("value").c.value)
    return lambda column: column.in_(listed)


def _greatest(dialect: str) -> Any:
    return func.greatest if dialect == "postgresql" else func.max  # SQLite: max(a, b) is scalar


def _least(dialect: str) -> Any:
    return func.least if dialect == "postgresql" else func.min


def _merge_episodes(dialect: str, ids: Among) -> Any:
    d = postgresql if dialect == "postgresql" else sqlite
    new = _episodes(dialect, [ids(AlertRow.id)], few=True).where(true())  # WHERE: SQLite's upsert parse
    statement = d.insert(rollup_episodes).from_select([c.name for c in rollup_episodes.columns], new)
    old, added = rollup_episodes.c, statement.excluded
    larger, smaller = _greatest(dialect), _least(dialect)
    extremes = ("pack_id", "kind", "sev", "title", "shown", "carried")
    merged = {"day": smaller(old.day, added.day), "alert_rows": old.alert_rows + added.alert_rows,
              "kept": old.kept + added.kept, **{c: larger(old[c], added[c]) for c in extremes}}
    return statement.on_conflict_do_update(index_elements=list(EPISODE_KEY), set_=merged)


def _follow_episode_days(orders: Among) -> Any:
    """Override reasons carry their episode's day and pack (both may move when rows are added)."""
    reasons, episodes = rollup_episode_reasons.c, rollup_episodes.c
    same = and_(*(episodes[c] == reasons[c] for c in EPISODE_KEY))
    return (rollup_episode_reasons.update().where(orders(reasons.o))
            .values(day=select(episodes.day).where(same).scalar_subquery(),
                    pack_id=select(episodes.pack_id).where(same).scalar_subquery()))


def _merge_queue_items(dialect: str, ids: Among) -> Any:
    d = postgresql if dialect == "postgresql" else sqlite
    # The queue's own definition of an item, over the rows just written (a materialized CTE): its
    # "open alerts" condition must not lead PostgreSQL's generic plan to read the review-status
    # index for every open alert (it did, without statistics: 9 ms a batch at 5,000 open alerts).
    alerts: Table = AlertRow.__table__  # type: ignore[assignment]
    columns, every = queue_items.item_rows([])
    written = (select(*_columns_read(every, alerts)).where(ids(alerts.c.id)).cte("written")
               .prefix_with("MATERIALIZED"))
    new = ClauseAdapter(written).traverse(every)
    table = queue_items.queue_items
    statement = d.insert(table).from_select(columns, new)
    old, added = table.c, statement.excluded
    newer = or_(added.last_seen > old.last_seen,
                and_(added.last_seen == old.last_seen, added.alert_id < old.alert_id))
    merged = {"alert_rows": old.alert_rows + added.alert_rows, "sev": _greatest(dialect)(old.sev, added.sev),
              **{c: case((newer, added[c]), else_=old[c]) for c in ("rule_id", "summary", "alert_id",
                                                                   "last_seen")}}
    keys = [c.name for c in table.primary_key.columns]
    return statement.on_conflict_do_update(index_elements=keys, set_=merged)


def _columns_read(query: Any, table: Table) -> list[Column[Any]]:
    """The columns of ``table`` that ``query`` reads, in the table's order.

    Why: the queue merge's materialized CTE of the new alert rows held every column — the text and
    JSON of each alert (~1.7 KB a real hook alert) copied into the CTE's store for the seven short
    columns the item query reads (issue 19 item 2a). Taken from the query itself, so a column
    ``item_rows`` starts to read is carried too (the adapter would otherwise leave it on ``alerts``)."""
    read = {element.key for element in visitors.iterate(query)
            if isinstance(element, Column) and element.table is table}
    return [column for column in table.columns if column.key in read]


def _touched(dialect: str, ids: Among) -> Any:
    """The keys of the episodes the new rows (alert ids) fall in: the only episodes a merge changes.

    PostgreSQL: each row's evaluation (and in :func:`_touched_move` each episode) is looked up by
    its primary key (a ``LATERAL … LIMIT 1``): without statistics the planner hashed the whole
    evaluations and episodes tables on every batch, a cost growing with the store."""
    src, key, patient, order = _episode_parts()
    columns = [order.label("o"), key.label("k"), src.label("src"), patient.label("p")]
    query = select(*columns).select_from(AlertRow).join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
    if dialect == "postgresql":
        evaluations: Table = Evaluation.__table__  # type: ignore[assignment]
        found = (select(evaluations).where(evaluations.c.id == AlertRow.evaluation_id).limit(1)
                 .lateral("evaluation"))
        adapt = ClauseAdapter(found)
        query = select(*(adapt.traverse(c) for c in columns)).select_from(AlertRow).join(found, true())
    return query.where(ids(AlertRow.id)).distinct().subquery("touched")


def _touched_move(dialect: str, ids: Among, sign: int) -> Any:
    """Take away (sign -1, before the merge) or add (sign 1, after it) the daily sums of only the
    episodes the new rows fall in, not of every episode of their orders.

    Why: every other episode of the batch's orders was taken away and added back unchanged, so its
    share of the sums cancelled — but the pass cost PostgreSQL ~0.12 ms per stored line (issue 19)
    and grew with the episodes an order collects. The sums are integers: the same totals.
    The title: a taken-away episode leaves it as it is, an added one can only raise it (the
    greatest title of the row's episodes, as :func:`rebuild` computes it). The former pass set it
    to the greatest title among the batch's orders only: the same wherever a rule has one title
    per day and group (every title of the packs), and a lower one than a rebuild's where not."""
    touched, stored = _touched(dialect, ids), rollup_episodes
    same = and_(*(stored.c[c] == touched.c[c] for c in EPISODE_KEY))
    if dialect == "postgresql":  # one primary-key lookup per episode (see _touched)
        stored = select(stored).where(same).limit(1).lateral("episode")
        same = true()
    episodes = select(stored).select_from(touched).join(stored, same).subquery()
    title = "keep" if sign < 0 else "greatest"
    return _add(dialect, rollup_daily, _DAILY_KEY, _daily_sums(episodes, sign), title)


_ADD: dict[str, list[Any]] = {}


def _add_statements(dialect: str) -> list[Any]:
    found = _ADD.get(dialect)
    if found is None:
        orders, ids = _bound_list(dialect, "orders"), _bound_list(dialect, "ids")
        found = _ADD[dialect] = [
            _touched_move(dialect, ids, -1), _reason_move(dialect, orders, -1), _merge_episodes(dialect, ids),
            _follow_episode_days(orders), _touched_move(dialect, ids, 1), _reason_move(dialect, orders, 1),
            _merge_queue_items(dialect, ids)]
    return found


# as touch: two writers adding to one order take its lock (all orders of the batch, in hash order)
_LOCKS = text(_ORDER_LOCKS.replace(":orders", ":locked")).bindparams(
    bindparam("space", _LOCK_SPACE), bindparam("locked", type_=postgresql.ARRAY(String)))


def add_alerts(conn: Connection, alerts: Iterable[tuple[str, str]]) -> None:
    """Add alert rows *just inserted* by the writer — (order, alert id): the order key, or the
    alert's own id without one — to the rollup and the queue items, in the same transaction.

    Costs what the new rows hold, not what their orders already hold. Only for rows as the writer
    inserts them (open, no outcome); a changed row takes :func:`touch`."""
    pairs = sorted({(o, a) for o, a in alerts if o and a})
    statements = _add_statements(conn.dialect.name)
    locked = sorted({o for o, _ in pairs})
    for start in range(0, len(pairs), TOUCH_CHUNK):
        chunk = pairs[start:start + TOUCH_CHUNK]
        first = start == 0 and conn.dialect.name == "postgresql"  # the locks go with the first chunk
        execute_all(conn, [_LOCKS, *statements] if first else statements,
                    _listed(conn, {"locked": locked, "orders": sorted({o for o, _ in chunk}),
                                   "ids": [a for _, a in chunk]}))


def _listed(conn: Connection, params: dict[str, list[str]]) -> dict[str, Any]:
    """The lists as :func:`_bound_list` binds them: arrays on PostgreSQL, JSON text elsewhere."""
    if conn.dialect.name == "postgresql":
        return params
    return {name: json.dumps(value) for name, value in params.items()}


def touch_alerts(conn: Connection, alert_ids: Iterable[str]) -> None:
    """:func:`touch` the orders these alerts belong to (after feedback or a reviewer's decision)."""
    ids = sorted(set(alert_ids))
    if not ids:
        return
    order = func.coalesce(Evaluation.order_key, AlertRow.id)
    orders: set[str] = set()
    for start in range(0, len(ids), TOUCH_CHUNK):
        orders.update(conn.execute(select(order).select_from(AlertRow)
                                   .join(Evaluation, AlertRow.evaluation_id == Evaluation.id)
                                   .where(AlertRow.id.in_(ids[start:start + TOUCH_CHUNK]))).scalars())
    touch(conn, orders)


def rebuild(conn: Connection) -> None:
    """Recompute the whole rollup from the alert rows (set-based: four INSERT … SELECT)."""
    for table in (rollup_reasons, rollup_daily, rollup_episode_reasons, rollup_episodes):
        conn.execute(delete(table))
    dialect = conn.dialect.name
    for statement in _inserts(dialect, []):
        conn.execute(statement)
    conn.execute(_add(dialect, rollup_daily, _DAILY_KEY, _daily_sums(rollup_episodes, 1)))
    conn.execute(_add(dialect, rollup_reasons, _REASON_KEY, _reason_sums(rollup_episode_reasons, 1)))


def source_kinds(source: str | None) -> list[str] | None:
    """The source kinds an analytics filter covers (None: every kind); hypothetical only when asked."""
    if source == "all":
        return None
    if source:
        return [source]
    return ["hook", "evaluate", "batch", "patient-view"]
