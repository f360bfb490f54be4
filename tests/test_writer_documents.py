"""Issue 19 item 2a: PostgreSQL's row documents encoded by msgspec and read as ``jsonb`` store what
``json.dumps`` and ``json_populate_recordset`` stored, and refuse what they refused.

What must hold: the writer's document insert leaves the rows SQLAlchemy's own statement leaves
(every column as PostgreSQL prints it, JSON columns as their ``jsonb`` text) for values that test
the encoders' differences (non-ASCII and control characters, escapes, big integers, float
spellings, subclasses of str/int/float); a value of a type JSON has not is refused with the
TypeError ``json.dumps`` raised (never stored as a string); a NaN is encoded as ``null`` — as the
journal line itself holds it.
"""

from __future__ import annotations

import json
import math
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Table

from cds_engine.store.api import EvaluationRecord
from cds_engine.store.documents import _encode, document_insert
from cds_engine.store.models import AlertRow, Evaluation, OrderRow
from cds_engine.store.writer import _insert_rows, _jsonable
from store_helpers import NOW, make_record, postgres_admin_url, store_for

_alerts: Table = AlertRow.__table__  # type: ignore[assignment]
_orders: Table = OrderRow.__table__  # type: ignore[assignment]
_evaluations: Table = Evaluation.__table__  # type: ignore[assignment]


class _Text(str):
    def __str__(self) -> str:  # json.dumps writes the characters, not str()
        return "not this"


class _Int(int):
    def __int__(self) -> int:
        return -1


class _Float(float):
    def __repr__(self) -> str:
        return "0"


_ODD = {
    "text": "é ≤ 5 \u2028 \x01 \"quoted\" back\\slash \t tab / \U0001f600", "big": 2**70, "neg": -(2**63),
    "floats": [26.699149523456626, 1e16, 1e-7, -0.0, 0.1, 1.5e300], "empty": [{}, []], "none": None,
    "sub": [_Text("s"), _Int(5), _Float(2.5)], _Text("key"): True,
}


def _alert(n: int, evaluation_id: str) -> dict[str, Any]:
    return {
        "id": f"alert-{n}", "evaluation_id": evaluation_id, "position": n, "kind": "finding",
        "rule_id": f"R{n}", "tier_id": f"R{n}.t", "title": _Text("Tïtle ≤ 5"), "category": "renal",
        "severity": "warning", "summary": "s\u2028", "detail": "d\nmore \"x\" \\",
        "evidence": _jsonable(_ODD), "missing": ["a.b"] if n % 2 else [], "not_assessed": [],
        "suggestions": [{"label": "x", "action": "taper", "dose_mg_per_day": 12.5, "note": None}],
        "sources": [{"id": "S1", "title": "t", "url": None}],
        "pack_id": "p", "pack_version": "1", "pack_hash": "h", "pack_url": "u", "approval": "approved",
        "card_uuid": None if n % 2 else f"card-{n}", "shown": n % 2 == 0,
        "card_suggestions": None if n % 2 else _Int(n), "review_status": "open",
    }


def _evaluation(conn: Connection, evaluation_id: str) -> None:
    conn.execute(_evaluations.insert().values(
        id=evaluation_id, source="hook", hook="order-sign", patient_ref="Patient/1", as_of=NOW,
        recorded_at=NOW, pack_id="p", pack_version="1", pack_hash="h", hypothetical=False))


def _dump(conn: Connection) -> list[tuple[Any, ...]]:
    """Every alert and order row as PostgreSQL prints it (``jsonb`` columns as their text)."""
    raw = conn.connection.driver_connection
    found: list[tuple[Any, ...]] = []
    for table, key in (("alerts", "id"), ("orders", "evaluation_id")):
        found += raw.execute(  # type: ignore[union-attr]
            f"SELECT t::text FROM {table} AS t ORDER BY {key}").fetchall()
    return found


@pytest.mark.skipif(postgres_admin_url() is None, reason="needs CDS_TEST_DATABASE_URL")
def test_postgresql_document_rows_equal_statement_rows(tmp_path: Path) -> None:
    alerts = [_alert(n, "e1") for n in range(4)]
    body = {"resourceType": "MedicationRequest", **_ODD}
    orders = [{"evaluation_id": "e1", "order_key": "k", "body": body}]
    dumps = []
    for way in ("document", "statement"):
        (tmp_path / way).mkdir()
        with store_for("postgresql", tmp_path / way) as store, store.engine.begin() as conn:
            _evaluation(conn, "e1")
            for table, rows in ((_alerts, alerts), (_orders, orders)):
                if way == "document":
                    _insert_rows(conn, table, [dict(row) for row in rows])
                else:
                    conn.execute(table.insert(), [dict(row) for row in rows])
            dumps.append(_dump(conn))
    assert dumps[0] == dumps[1]
    assert len(dumps[0]) == 5
    assert "jsonb_populate_recordset" in str(document_insert(_alerts, tuple(alerts[0])))


def test_encoded_document_is_the_json_dumps_document() -> None:
    rows = [{"a": _ODD, "b": [_Text("x"), _Int(3), _Float(1.25)], "c": None}]
    assert json.loads(_encode(rows)) == json.loads(json.dumps(rows, ensure_ascii=False))


@pytest.mark.parametrize("value", [object(), 1j, Path("x")])
def test_values_json_has_not_are_refused(value: Any) -> None:
    """Types msgspec does not know either (the ones it knows are refused by ``_jsonable``, below)."""
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        _encode([{"evidence": {"x": [value]}}])


@pytest.mark.parametrize("value", [b"ab", Decimal("1.5"), object(), bytearray(b"x")])
def test_evidence_json_has_not_is_refused_before_the_rows(value: Any) -> None:
    """``_jsonable`` keeps dates (as ISO text) and refuses the rest, as ``json.dumps`` would."""
    assert _jsonable({"d": [date(2026, 1, 2)]}) == {"d": ["2026-01-02"]}
    with pytest.raises(TypeError):
        _jsonable({"x": {"y": [value]}})


def test_non_finite_float_is_stored_as_the_journal_line_holds_it() -> None:
    """A NaN in evidence becomes ``null``: what pydantic writes in the journal line, so the row a
    replay of the line stores is the same (``json.dumps`` wrote ``NaN``, which PostgreSQL refused)."""
    record = make_record()
    alert = record.alerts[0].alert.model_copy(update={"evidence": {"ratio": math.nan}})
    record = record.model_copy(update={"alerts": [record.alerts[0].model_copy(update={"alert": alert})]})
    replayed = EvaluationRecord.model_validate_json(record.model_dump_json())
    assert replayed.alerts[0].alert.evidence == {"ratio": None}
    assert json.loads(_encode([{"evidence": _jsonable(alert.evidence)}])) == [{"evidence": {"ratio": None}}]
