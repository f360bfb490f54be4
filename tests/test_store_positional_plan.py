"""Issue 19 item 2a: the SQLite writer's positional rows (``writer._insert_positional``) are the rows
``Connection.execute(insert, rows)`` stores.

What must hold, per table shape: every column in the statement's order whatever the rows' key
order, each processed column (JSON, booleans, dates) through its processor and no other, a table
with no processed column and a one-column insert, and texts a driver or a placeholder scan could
trip on (quotes, ``?``, ``%s``, NUL, long, non-ASCII).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import JSON, Boolean, Column, Integer, MetaData, String, Table, create_engine

from cds_engine.store.db import UTCDateTime
from cds_engine.store.writer import _insert_positional

_META = MetaData()
_MIXED = Table("mixed", _META, Column("n", Integer, primary_key=True), Column("text", String),
               Column("body", JSON), Column("flag", Boolean), Column("at", UTCDateTime),
               Column("items", JSON), Column("other", Boolean))
_PLAIN = Table("plain", _META, Column("a", String), Column("b", Integer), Column("c", String))
_ONE = Table("one", _META, Column("only", String))

_TEXTS = ["it's \"q\" \\", "? :a %s %(x)s $1", "ünï ✓ 患者 \U0001F600", "nul\x00inside", "x" * 20_000, ""]


def _mixed_rows() -> list[dict[str, Any]]:
    rows = []
    for n, text in enumerate(_TEXTS * 2):
        row = {"items": [] if n % 2 else [text, n, None], "flag": n % 3 == 0, "text": text, "n": n,
               "body": None if n % 4 == 0 else {"k": text, "nested": {"v": [1.5, True]}},
               "at": datetime(2025, 3, 1, 10, n, tzinfo=UTC), "other": None if n % 2 else False}
        rows.append(row)
    return rows


def _stored(table: Table, rows: list[dict[str, Any]], positional: bool) -> list[tuple[Any, ...]]:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        table.create(conn)
        if positional:
            assert _insert_positional(conn, table, [dict(row) for row in rows])
        else:
            conn.execute(table.insert(), [dict(row) for row in rows])
        raw = conn.connection.driver_connection
        found = raw.execute(f"SELECT * FROM {table.name} ORDER BY rowid").fetchall()  # type: ignore[union-attr]
    engine.dispose()
    return [tuple(row) for row in found]


@pytest.mark.parametrize(("table", "rows"), [
    (_MIXED, _mixed_rows()),
    (_PLAIN, [{"c": text, "a": text[::-1], "b": n} for n, text in enumerate(_TEXTS)]),
    (_ONE, [{"only": text} for text in _TEXTS]),
], ids=["processed-columns", "no-processor", "one-column"])
def test_positional_rows_equal_statement_rows(table: Table, rows: list[dict[str, Any]]) -> None:
    positional = _stored(table, rows, positional=True)
    assert positional == _stored(table, rows, positional=False)
    assert len(positional) == len(rows)


def test_processed_columns_hold_their_processors_text() -> None:
    """The stored JSON and flags are the processors' output, not the Python values' repr."""
    stored = _stored(_MIXED, _mixed_rows()[:2], positional=True)
    assert stored[0][2] == "null"  # body None: SQLAlchemy's JSON null
    assert stored[1][2] == '{"k": "? :a %s %(x)s $1", "nested": {"v": [1.5, true]}}'
    assert stored[0][3] == 1 and stored[1][3] == 0
    assert stored[0][5] == '["it\'s \\"q\\" \\\\", 0, null]' and stored[1][5] == "[]"

