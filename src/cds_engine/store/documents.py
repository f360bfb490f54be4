"""Many rows in one statement on PostgreSQL: the rows as one JSON document, read by the server.

Why: the writer process spent most of its CPU per stored line binding values. psycopg binds an
``executemany`` row by row in Python (its dumpers, SQLAlchemy's bind processors, one protocol
message per row for the server), an array per column is no faster (its array dumper works per
element), and a multi-row ``VALUES`` is compiled again for every new row count and scanned by
psycopg with a regular expression on every execution. Here one encoding per batch builds the
parameter and PostgreSQL reads it with ``jsonb_populate_recordset``, converting each value with the
column type's own input function — the same check constraints, lengths and conflicts apply, in the
same row order.

Why ``jsonb`` and msgspec (issue 19 item 2a: the writer's and PostgreSQL's CPU per stored line slow
the hook on the other core): PostgreSQL parses the document once into ``jsonb`` and hands each JSON
column its value as ``jsonb`` already, where ``json_populate_recordset`` re-parsed every JSON value's
text (about a tenth of the backend's CPU per hook line). Every JSON column here is ``jsonb`` and
no column is a float, so the document's text does not reach a table: strings arrive decoded, numbers
as ``numeric``, objects normalized — the stored values are those of the former ``json.dumps`` text.
That frees the encoder: msgspec encodes the rows ~6 times faster than ``json.dumps`` (a sixth of
the writer process's CPU per hook line). Where the two encoders differ the outcome is kept: a
value of a type JSON has not (a date, a set, bytes, an object) is still refused (TypeError: the
line is rejected), see :func:`_encode`. A NaN or infinite float becomes ``null``
— what the journal line itself holds (pydantic writes them as ``null``), so the row equals the
line a replay would read; ``json.dumps`` wrote ``NaN``, which PostgreSQL refused.

The values are those ``Connection.execute`` would send: datetimes through the column type's bind
processor (``UTCDateTime``: a naive datetime still raises) and then ISO 8601, which
``timestamptz`` reads back exactly; JSON columns as nested JSON, stored as the same ``jsonb``
``json.dumps`` text gives. Rows this cannot carry the same way are refused (:func:`document_rows`
returns None) and the caller takes its statement-per-row way: rows with different keys, a JSON
column holding None (SQL NULL here, JSON ``null`` through SQLAlchemy), a column with a client-side
default left out (an ``executemany`` would fill it in). PostgreSQL only: SQLite keeps SQLAlchemy's
statements (its driver binds in C, and its JSON columns are text whose bytes would differ).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import msgspec
from sqlalchemy import JSON, String, Table, TextClause, bindparam, text
from sqlalchemy.dialects import postgresql

from cds_engine.store.db import UTCDateTime

__all__ = ["document_insert", "document_rows"]

_DIALECT = postgresql.psycopg.dialect()


def document_rows(table: Table, rows: Sequence[dict[str, Any]]) -> str | None:
    """``rows`` (all with the same keys, in the same order) as one JSON array for
    :func:`document_insert`, or None when they must take the statement-per-row way (module docstring)."""
    if not rows:
        return None
    names = tuple(rows[0])
    kinds = _column_kinds(table, names)
    if kinds is None:
        return None
    times, documents = kinds
    converted = []
    for row in rows:
        if tuple(row) != names:
            return None
        if times or documents:
            row = dict(row)
            for name in documents:
                if row[name] is None:
                    return None
            for name, column_type in times:
                value = column_type.process_bind_param(row[name], _DIALECT)
                row[name] = None if value is None else value.isoformat()
        converted.append(row)
    return _encode(converted)


def _plain(value: Any) -> Any:
    """msgspec's ``enc_hook``: a subclass of str, int or float as the plain value ``json.dumps``
    wrote for it (msgspec refuses them); any other type refused, as ``json.dumps`` refused it."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODER = msgspec.json.Encoder(enc_hook=_plain)


def _encode(rows: list[dict[str, Any]]) -> str:
    """The rows as compact JSON text (msgspec), refusing what ``json.dumps`` refused.

    msgspec also encodes, without calling ``enc_hook``, a few types ``json.dumps`` refuses (dates,
    UUIDs, decimals, sets, bytes, dataclasses). The writer's JSON values never hold one: orders and
    journal lines are parsed JSON, suggestions and sources are dumped in JSON mode, and evidence
    goes through ``writer._jsonable``, which refuses any such value (TypeError, as before)."""
    return _ENCODER.encode(rows).decode()


@cache
def _column_kinds(table: Table,
                  names: tuple[str, ...]) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]] | None:
    """(datetime columns with their type, JSON columns) among ``names``; None when a column with
    a client-side default is not among them."""
    if any(c.default is not None and c.name not in names for c in table.columns):
        return None
    times = []
    documents = []
    for name in names:
        column_type = table.c[name].type
        if isinstance(column_type, UTCDateTime):
            times.append((name, column_type))
        elif isinstance(column_type.dialect_impl(_DIALECT), JSON):
            documents.append(name)
    return tuple(times), tuple(documents)


@cache
def document_insert(table: Table, names: tuple[str, ...], *, ignore_conflicts: bool = False,
                    returning: str | None = None, conflict_keys: tuple[str, ...] = (),
                    update: tuple[str, ...] = ()) -> TextClause:
    """``INSERT INTO t (…) SELECT … FROM json_populate_recordset(NULL::t, :rows)``, built once per
    shape, with ``ON CONFLICT DO NOTHING`` (``ignore_conflicts``) or ``ON CONFLICT (conflict_keys)
    DO UPDATE SET`` each of ``update`` to the new row's value, and ``RETURNING returning``."""
    quote = _DIALECT.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in names)
    sql = (f"INSERT INTO {quote(table.name)} ({columns}) SELECT {columns} FROM "
           f"jsonb_populate_recordset(CAST(NULL AS {quote(table.name)}), CAST(:rows AS jsonb))")
    if ignore_conflicts:
        sql += " ON CONFLICT DO NOTHING"
    elif conflict_keys:
        targets = ", ".join(quote(name) for name in conflict_keys)
        assignments = ", ".join(f"{quote(name)} = excluded.{quote(name)}" for name in update)
        sql += f" ON CONFLICT ({targets}) DO UPDATE SET {assignments}"
    if returning:
        sql += f" RETURNING {quote(returning)}"
    return text(sql).bindparams(bindparam("rows", type_=String()))
