"""Issue 19 item 2a: the writer's cheaper alert rows and SQLite inserts leave the same rows.

What must hold: ``_jsonable`` (evidence into JSON column values) gives what the plain recursive
version gave for every kind of value; on SQLite the alert and order rows sent as one driver
``executemany`` are the rows ``Connection.execute(insert, rows)`` leaves (JSON text, booleans,
None, non-ASCII text), and rows that way cannot carry the same (other keys per row, a column with
a client-side default left out) take ``Connection.execute``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, select
from sqlalchemy.exc import StatementError

from cds_engine.store.models import AlertRow, Evaluation, OrderRow
from cds_engine.store.writer import _insert_rows, _jsonable
from store_helpers import NOW, store_for

_alerts: Table = AlertRow.__table__  # type: ignore[assignment]
_orders: Table = OrderRow.__table__  # type: ignore[assignment]
_evaluations: Table = Evaluation.__table__  # type: ignore[assignment]


class _Text(str):
    """A str subclass: kept as it is by both versions."""


def _reference(value: Any) -> Any:
    """``_jsonable`` as it was before the fast path (one call per item)."""
    if isinstance(value, dict):
        return {str(k): _reference(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_reference(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def test_jsonable_equals_the_recursive_version() -> None:
    evidence = {
        "flag": True, "count": 3, "ratio": 26.69, "none": None, "text": "é ≤ 5", 7: "int key",
        (1, 2): "tuple key", "when": datetime(2026, 1, 2, 3, 4, tzinfo=UTC), "day": date(2025, 3, 1),
        "list": [1, "a", None, date(2024, 1, 1), [2, {"deep": date(2023, 5, 6)}]],
        "tuple": (1.5, "b"), "set": {"only"}, "nested": {"x": {"y": [datetime(2020, 1, 1)]}},
        "sub": _Text("s"), _Text("k"): 1,
    }
    got = _jsonable(evidence)
    assert got == _reference(evidence)
    assert [type(k) for k in got] == [type(k) for k in _reference(evidence)]
    assert _jsonable([evidence, (evidence,)]) == _reference([evidence, (evidence,)])


def _evaluation(conn: Connection, evaluation_id: str) -> None:
    conn.execute(_evaluations.insert().values(
        id=evaluation_id, source="hook", hook="order-sign", patient_ref="Patient/1", as_of=NOW,
        recorded_at=NOW, pack_id="p", pack_version="1", pack_hash="h", hypothetical=False))


def _alert(n: int, evaluation_id: str, **changes: Any) -> dict[str, Any]:
    row = {
        "id": f"alert-{n}", "evaluation_id": evaluation_id, "position": n, "kind": "finding",
        "rule_id": f"R{n % 3}", "tier_id": f"R{n % 3}.t", "title": "Tïtle ≤ 5", "category": "renal",
        "severity": "warning", "summary": "s", "detail": "d\nmore",
        "evidence": {"renal_fn": 26.699149523456626, "flag": n % 2 == 0, "none": None, "text": "é"},
        "missing": [] if n % 2 else ["a.b"], "not_assessed": [],
        "suggestions": [{"label": "x", "action": "taper", "dose_mg_per_day": None, "note": None}],
        "sources": [{"id": "S1", "title": "t", "url": None}],
        "pack_id": "p", "pack_version": "1", "pack_hash": "h", "pack_url": "u", "approval": "approved",
        "card_uuid": None if n % 4 == 0 else f"card-{n}", "shown": n % 3 != 0,
        "card_suggestions": None if n % 2 else n, "review_status": "open",
    }
    row.update(changes)
    return row


def _dump(conn: Connection) -> list[list[Any]]:
    """Every alert and order row as the driver reads it back (JSON as its stored text)."""
    raw = conn.connection.driver_connection
    rows = raw.execute("SELECT * FROM alerts ORDER BY id").fetchall()  # type: ignore[union-attr]
    rows += raw.execute("SELECT * FROM orders ORDER BY evaluation_id").fetchall()  # type: ignore[union-attr]
    return [list(row) for row in rows]


def _both_ways(tmp_path: Path, batches: list[tuple[Table, list[dict[str, Any]]]]) -> list[list[list[Any]]]:
    dumps = []
    for way in ("writer", "statement"):
        (tmp_path / way).mkdir()
        with store_for("sqlite", tmp_path / way) as store, store.engine.begin() as conn:
            for evaluation_id in ("e1", "e2", "e3"):
                _evaluation(conn, evaluation_id)
            for table, rows in batches:
                if way == "writer":
                    _insert_rows(conn, table, [dict(row) for row in rows])
                else:
                    conn.execute(table.insert(), [dict(row) for row in rows])
            dumps.append(_dump(conn))
    return dumps


def test_sqlite_rows_sent_positionally_equal_statement_rows(tmp_path: Path) -> None:
    alerts = [_alert(n, "e1" if n < 5 else "e2") for n in range(9)]
    orders = [{"evaluation_id": e, "order_key": k, "body": b} for e, k, b in (
        ("e1", "k1", {"resourceType": "MedicationRequest", "note": "é"}), ("e2", None, {"a": [1, None]}),
        ("e3", "k3", None))]
    writer, statement = _both_ways(tmp_path, [(_alerts, alerts), (_orders, orders)])
    assert writer == statement
    assert len(writer) == 12


def test_sqlite_rows_it_cannot_carry_take_the_statement(tmp_path: Path) -> None:
    """Rows with other keys than the first's, and rows that leave out columns with a client-side
    default (``shown``, ``review_status``: SQLAlchemy fills them in), are stored as the statement
    stores them."""
    defaults_left_out = [{k: v for k, v in _alert(n, "e1").items() if k not in ("shown", "review_status")}
                         for n in range(3)]
    mixed = [_alert(10, "e2"), {**_alert(11, "e2"), "unknown": "ignored"}]  # later rows' extra keys
    writer, statement = _both_ways(tmp_path, [(_alerts, defaults_left_out), (_alerts, mixed)])
    assert writer == statement
    assert len(writer) == 5


def test_writer_alert_rows_read_back_as_written(tmp_path: Path) -> None:
    """The ORM reads what the writer's SQLite rows hold (JSON columns as values, booleans as such)."""
    with store_for("sqlite", tmp_path) as store, store.engine.begin() as conn:
        _evaluation(conn, "e1")
        _insert_rows(conn, _alerts, [_alert(n, "e1") for n in range(4)])
        found = conn.execute(select(_alerts.c.id, _alerts.c.evidence, _alerts.c.shown, _alerts.c.suggestions)
                             .order_by(_alerts.c.id)).all()
    expected = [_alert(n, "e1") for n in range(4)]
    assert [tuple(row) for row in found] == [
        (row["id"], row["evidence"], row["shown"], row["suggestions"]) for row in expected]


def test_sqlite_row_missing_a_key_fails_as_the_statement_does(tmp_path: Path) -> None:
    """A later row without a key the first has: the statement's own error (the group commit then
    takes the batch apart line by line, as before), not a ``KeyError`` from the writer."""
    rows = [_alert(1, "e1"), {k: v for k, v in _alert(2, "e1").items() if k != "card_uuid"}]
    errors = []
    for way in ("writer", "statement"):
        (tmp_path / way).mkdir()
        with store_for("sqlite", tmp_path / way) as store, store.engine.connect() as conn:
            _evaluation(conn, "e1")
            try:
                if way == "writer":
                    _insert_rows(conn, _alerts, rows)
                else:
                    conn.execute(_alerts.insert(), rows)
            except Exception as exc:  # the kind of error is what is compared
                errors.append(type(exc))
            conn.rollback()
    assert len(errors) == 2 and errors[0] is errors[1]
    assert errors[0] is StatementError
