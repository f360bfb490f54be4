"""The write path of the hook: one evaluation (+ its alerts and order) in one short transaction.

Every write is idempotent so the spool can replay it: the evaluation insert is
``ON CONFLICT DO NOTHING`` on its id *and* on its dedup key (source, hookInstance, pack, order
key), and feedback rows carry their own id. Used by the live sink and by the spool drainer alike.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import JSON, Connection, Insert, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cds_engine.sources.demographics import PatientDemographics
from cds_engine.store import rollup
from cds_engine.store.api import EvaluationRecord, FeedbackRecord
from cds_engine.store.documents import document_insert, document_rows
from cds_engine.store.models import AlertRow, BatchRun, Evaluation, OrderRow, PrescriberFeedback
from cds_engine.store.order_sessions import session_order_key, session_order_keys
from cds_engine.store.patients import upsert_patient, upsert_patients
from cds_engine.store.pipeline import translates_schema

__all__ = ["apply_feedback", "dedup_key", "insert_evaluation", "insert_evaluations", "known_card"]

_evaluations: Table = Evaluation.__table__  # type: ignore[assignment]
_alerts: Table = AlertRow.__table__  # type: ignore[assignment]
_orders: Table = OrderRow.__table__  # type: ignore[assignment]
_batch_runs: Table = BatchRun.__table__  # type: ignore[assignment]
_feedback: Table = PrescriberFeedback.__table__  # type: ignore[assignment]


def _insert_ignore(conn: Connection, table: Table) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"unsupported database dialect {conn.dialect.name!r}")


def dedup_key(record: EvaluationRecord) -> str | None:
    """Identity of a hook call's evaluation of one order by one pack (None without a hookInstance)."""
    if not record.hook_instance:
        return None
    parts = [record.source, record.hook_instance, record.pack_id, record.order_key or ""]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def insert_evaluation(conn: Connection, record: EvaluationRecord, evaluation_id: str,
                      recorded_at: datetime) -> bool:
    """Insert one evaluation with its alerts and order; False if it was already stored."""
    if record.batch_run_id:
        conn.execute(_insert_ignore(conn, _batch_runs).values(
            id=record.batch_run_id, started_at=recorded_at, status="running", params={}, counts={}))
    order_key = session_order_key(conn, record.order_key, record.as_of) if record.order_key else None
    inserted = conn.execute(
        _insert_ignore(conn, _evaluations).values(
            id=evaluation_id, source=record.source, hook_instance=record.hook_instance,
            dedup_key=dedup_key(record), hook=record.hook,
            service_id=record.service_id, patient_ref=record.patient_ref, encounter_ref=record.encounter_ref,
            user_ref=record.user_ref, order_key=order_key, order_base=record.order_key, as_of=record.as_of,
            recorded_at=recorded_at,
            pack_id=record.pack_id, pack_version=record.pack_version, pack_hash=record.pack_hash,
            site_hash=record.site_hash, batch_run_id=record.batch_run_id,
            hypothetical=record.hypothetical,
        ).returning(_evaluations.c.id)
    ).first()
    if inserted is None:
        return False
    if record.order is not None:
        conn.execute(_orders.insert().values(evaluation_id=evaluation_id, order_key=order_key,
                                             body=record.order))
    rows = list(_alert_rows(record, evaluation_id))
    if rows:
        conn.execute(_alerts.insert(), rows)
        rollup.add_alerts(conn, [(order_key or row["id"], row["id"]) for row in rows])  # analytics
        # who the patient is: only for patients with something to review
        if record.demographics is not None and record.patient_ref:
            upsert_patient(conn, record.patient_ref, record.demographics, recorded_at)
    return True


def insert_evaluations(conn: Connection, items: list[tuple[EvaluationRecord, str, datetime]]) -> int:
    """Many hook evaluations in a constant number of statements (group commit); returns how many were new.

    Same rows and the same idempotence as :func:`insert_evaluation` (``ON CONFLICT DO NOTHING`` on
    the id and the dedup key; alerts and orders only for evaluations inserted now). Nothing here
    runs a statement per record — the session keys (one SELECT), the evaluations, orders, alerts,
    the patients (one multi-row upsert) and the rollup each take one statement per batch — because
    each round trip releases and re-takes the GIL the request threads share with the writer.
    Batch-run evaluations take the one-by-one path (their run row comes first).
    """
    if any(record.batch_run_id for record, _, _ in items):
        return sum(insert_evaluation(conn, r, eid, when) for r, eid, when in items)
    if not items:
        return 0
    found_keys = session_order_keys(conn, [(r.order_key, r.as_of) for r, _, _ in items])
    keys = {evaluation_id: key for (_, evaluation_id, _), key in zip(items, found_keys, strict=True)}
    rows = [{
        "id": evaluation_id, "source": r.source, "hook_instance": r.hook_instance, "dedup_key": dedup_key(r),
        "hook": r.hook, "service_id": r.service_id, "patient_ref": r.patient_ref,
        "encounter_ref": r.encounter_ref, "user_ref": r.user_ref, "order_key": keys[evaluation_id],
        "order_base": r.order_key, "as_of": r.as_of,
        "recorded_at": recorded_at, "pack_id": r.pack_id, "pack_version": r.pack_version,
        "pack_hash": r.pack_hash, "site_hash": r.site_hash, "batch_run_id": None,
        "hypothetical": r.hypothetical,
    } for r, evaluation_id, recorded_at in items]
    inserted = _insert_new(conn, rows)
    new = len(inserted)
    orders: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    patients: list[tuple[str, PatientDemographics, datetime]] = []
    for record, evaluation_id, record_time in items:
        if evaluation_id not in inserted:
            continue
        inserted.discard(evaluation_id)  # the same id twice in one batch (a replay) counts once
        if record.order is not None:
            orders.append({"evaluation_id": evaluation_id, "order_key": keys[evaluation_id],
                           "body": record.order})
        found = list(_alert_rows(record, evaluation_id))
        alerts.extend(found)
        if found and record.demographics is not None and record.patient_ref:
            patients.append((record.patient_ref, record.demographics, record_time))
    if orders:
        _insert_rows(conn, _orders, orders)
    if alerts:
        _insert_rows(conn, _alerts, alerts)
        rollup.add_alerts(conn, [(keys[row["evaluation_id"]] or row["id"], row["id"]) for row in alerts])
    upsert_patients(conn, patients)  # who the patient is: only for patients with something to review
    return new


def _insert_new(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert evaluation rows (``ON CONFLICT DO NOTHING``); the ids inserted now.

    PostgreSQL gets the whole batch as one JSON document (:mod:`cds_engine.store.documents`); SQLite
    keeps SQLAlchemy's multi-row insert (its driver binds values in C, no per-row statement scan)."""
    if conn.dialect.name == "postgresql":
        document = document_rows(_evaluations, rows)
        if document is not None:
            statement = document_insert(_evaluations, tuple(rows[0]), ignore_conflicts=True, returning="id")
            return set(conn.execute(statement, {"rows": document}).scalars().all())
    statement = _insert_ignore(conn, _evaluations).returning(_evaluations.c.id)
    return set(conn.execute(statement, rows).scalars().all())


def _insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Plain insert of many rows with the same keys: one JSON document on PostgreSQL, else executemany."""
    if conn.dialect.name == "postgresql":
        document = document_rows(table, rows)
        if document is not None:
            conn.execute(document_insert(table, tuple(rows[0])), {"rows": document})
            return
    if conn.dialect.name == "sqlite" and _insert_positional(conn, table, rows):
        return
    conn.execute(table.insert(), rows)


_Positional = tuple[str, tuple[str, ...], dict[str, Any]] | None
# (table, row keys, dialect) -> the compiled insert. Keyed by the dialect object: the processors come
# from it (JSON serializer, type decorators) and hold it. Bounded: each Engine is a new dialect, so a
# long-lived process that opens engine after engine (tests, the writer restarting) kept every one of
# their dialects and statements (a few entries an engine); cleared when full, the live engines' entries
# are compiled again (0.4-2.5 ms each), once.
_POSITIONAL: dict[tuple[Table, tuple[str, ...], Any], _Positional] = {}
_POSITIONAL_MAX = 64


def _insert_positional(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> bool:
    """SQLite: the rows as one driver ``executemany`` of the compiled insert; False (nothing done)
    for rows this cannot send as ``Connection.execute`` would.

    Why: ``Connection.execute(insert, rows)`` builds each row's parameters in Python (SQLAlchemy's
    ``construct_params`` per row, then the bind processors), for the ~4 alert rows of a hook call
    too. With :func:`_json_processors` this cut the SQLite writer thread's instructions by a tenth
    (callgrind, 612 real hook lines). Here the statement is compiled once per table and keys, and
    each row's values go through the same bind processors (JSON text, booleans) in the compiled
    order. Refused: rows with other keys than the first's, and keys that leave out a column with a
    client-side default (SQLAlchemy would fill it in), and a connection with a
    ``schema_translate_map`` (the compiled text would not be translated)."""
    if translates_schema(conn):
        return False
    names = tuple(rows[0])
    key = (table, names, conn.dialect)
    try:  # a hit is one lookup; a miss (and the bound) costs only on a miss
        found = _POSITIONAL[key]
    except KeyError:
        found = _POSITIONAL[key] = _compiled_insert(conn, table, names)
    if found is None:
        return False
    sql, order, processors = found
    wanted = set(names)
    if any(row.keys() != wanted for row in rows):
        return False
    steps = [(name, processors.get(name)) for name in order]
    conn.exec_driver_sql(sql, [tuple(row[name] if step is None else step(row[name]) for name, step in steps)
                               for row in rows])
    return True


def _compiled_insert(conn: Connection, table: Table, names: tuple[str, ...]) -> _Positional:
    """The entry of :data:`_POSITIONAL` for these keys (made once); the cache cleared first when full.

    Cleared, not trimmed: ``dict.clear`` is one step under the GIL, so a thread that reads the cache
    meanwhile finds its entry or compiles it again, never a half-trimmed dict."""
    compiled = table.insert().compile(dialect=conn.dialect, column_keys=list(names))
    order = tuple(compiled.positiontup or ())
    processors = getattr(compiled, "_bind_processors", None)
    usable = sorted(order) == sorted(names) and isinstance(processors, dict)
    if len(_POSITIONAL) >= _POSITIONAL_MAX:
        _POSITIONAL.clear()
    return (compiled.string, order, _json_processors(conn, table, dict(processors or {}))) if usable else None


def _json_processors(conn: Connection, table: Table, processors: dict[str, Any]) -> dict[str, Any]:
    """``processors`` with each JSON column's replaced by :func:`_json_text` for dicts and lists.

    Why: SQLAlchemy's JSON processor calls ``json.dumps`` per value, which builds a new C encoder
    each time — two fifths of the cost of encoding the ~19 small JSON values of a hook call's rows.
    The text is the same (``json.dumps``'s own encoder and settings). Only where SQLAlchemy would use
    plain ``json.dumps`` (no ``json_serializer`` on the engine, no string processing after it);
    anything but a dict or a list (None, SQLAlchemy's NULL markers) keeps SQLAlchemy's processor."""
    if _ENCODE is None or getattr(conn.dialect, "_json_serializer", None) is not None:
        return processors
    found = dict(processors)
    for name, process in processors.items():
        column_type = table.c[name].type.dialect_impl(conn.dialect)
        if isinstance(column_type, JSON) and column_type._str_impl.bind_processor(conn.dialect) is None:
            found[name] = partial(_json_text, process)
    return found


def _json_text(process: Any, value: Any) -> Any:
    """``json.dumps(value)`` for a dict or a list, through one encoder built once; else ``process``."""
    if type(value) is dict or type(value) is list:
        assert _ENCODE is not None
        return "".join(_ENCODE(value, 0))
    return process(value)


def _c_encoder() -> Any:
    """The C encoder ``json.dumps`` builds per call, with its settings, built once (None without C).

    No circular-reference markers: the values are rows built from JSON lines, never cyclic (a cycle
    would raise RecursionError instead of ValueError: the line is rejected either way)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return None
    plain = json.JSONEncoder()
    return make(None, plain.default, json.encoder.encode_basestring_ascii, None, plain.key_separator,
                plain.item_separator, plain.sort_keys, plain.skipkeys, plain.allow_nan)


_ENCODE = _c_encoder()


def _alert_rows(record: EvaluationRecord, evaluation_id: str) -> Iterable[dict[str, Any]]:
    for position, issued in enumerate(record.alerts):
        a = issued.alert
        yield {
            "id": str(uuid.uuid4()), "evaluation_id": evaluation_id, "position": position, "kind": a.kind,
            "rule_id": a.rule_id, "tier_id": a.tier_id, "title": a.title, "category": a.category,
            "severity": a.severity, "summary": a.summary, "detail": a.detail,
            "evidence": _jsonable(a.evidence), "missing": list(a.missing),
            "not_assessed": list(a.not_assessed),
            "suggestions": _dumped(a.suggestions), "sources": _dumped(a.sources),
            "pack_id": a.pack_id, "pack_version": a.pack_version, "pack_hash": a.pack_hash,
            "pack_url": a.pack_url, "approval": a.approval, "card_uuid": issued.card_uuid,
            "shown": issued.shown, "card_suggestions": issued.card_suggestions, "review_status": "open",
        }


def _dumped(values: list[Any]) -> list[Any]:
    """Each model's ``model_dump(mode="json")``; a dict as it is: a record read from a journal file
    holds its alerts' sources and suggestions already as those dicts (journal.py ``_LineAlert``)."""
    return [value if type(value) is dict else value.model_dump(mode="json") for value in values]


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _jsonable(value: Any) -> Any:
    """Evidence may hold dates; JSON columns need plain types.

    A plain value (the usual evidence: strings, numbers, flags) is kept without a call per item:
    a hook call's alerts carry dozens of evidence values, and one recursive call each cost ~13 µs
    of the writer's CPU per stored line (now ~3 µs). Any other value (bytes, a decimal, an
    object) is refused here, as ``json.dumps`` refused it: PostgreSQL's rows are encoded by msgspec,
    which would store such a value as a string (store/documents.py)."""
    if isinstance(value, dict):
        return {k if type(k) is str else str(k): v if type(v) in _PLAIN else _jsonable(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [v if type(v) in _PLAIN else _jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, str | int | float) or value is None:
        return value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def known_card(conn: Connection, card_uuid: str) -> bool:
    found = conn.execute(select(_alerts.c.id).where(_alerts.c.card_uuid == card_uuid).limit(1)).first()
    return found is not None


def apply_feedback(conn: Connection, feedback: FeedbackRecord, feedback_id: str,
                   received_at: datetime) -> bool:
    """Record prescriber feedback and make it the alert's outcome if it is the latest one.

    False when no alert carries that card uuid. Replaying the same ``feedback_id`` changes nothing.
    """
    query = select(_alerts.c.id).where(_alerts.c.card_uuid == feedback.card_uuid)
    alert_ids = conn.execute(query).scalars().all()
    if not alert_ids:
        return False
    accepted_suggestion = feedback.outcome == "accepted" and bool(feedback.accepted_suggestions)
    for alert_id in alert_ids:
        # One row per alert of the card (normally one), with an id stable across replays.
        row_id = str(uuid.uuid5(uuid.UUID(feedback_id), alert_id))
        conn.execute(_insert_ignore(conn, _feedback).values(
            id=row_id, alert_id=alert_id,
            card_uuid=feedback.card_uuid, service_id=feedback.service_id, outcome=feedback.outcome,
            accepted_suggestions=list(feedback.accepted_suggestions),
            override_reason_code=feedback.override_reason_code,
            override_reason_display=feedback.override_reason_display, comment=feedback.comment,
            user_id=feedback.user_id, outcome_timestamp=feedback.outcome_timestamp, received_at=received_at,
        ))
        # Latest outcome wins; an older feedback arriving late (spool replay) does not overwrite.
        conn.execute(
            update(_alerts)
            .where(_alerts.c.id == alert_id)
            .where((_alerts.c.prescriber_outcome_at.is_(None))
                   | (_alerts.c.prescriber_outcome_at <= feedback.outcome_timestamp))
            .values(prescriber_outcome=feedback.outcome, prescriber_outcome_at=feedback.outcome_timestamp,
                    suggestion_accepted=accepted_suggestion)
        )
    rollup.touch_alerts(conn, alert_ids)  # the analytics rollup follows the latest outcome
    return True
