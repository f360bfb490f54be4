"""Several bound statements in one round trip: PostgreSQL's pipeline mode, plain execution elsewhere.

The writer's rollup runs about ten statements per group commit. One round trip each costs a
scheduling wait for the backend and a GIL release and re-take in the writer thread (bench/load.py
write lag); one multi-statement *text* (the earlier way) needs the values written in, so PostgreSQL
parses and plans every statement afresh on every batch. The pipeline sends the same statement
texts with their parameters bound, in one round trip, and psycopg prepares each text on the
connection after a few executions (``prepare_threshold``), so the fixed cost per batch is the
execution only.

Statements are compiled once per dialect (they are module-level constructs) and their parameters
go through SQLAlchemy's bind processors as ``Connection.execute`` would; a statement whose
parameters are expanded at execution (``IN`` lists) is not sent this way — all of them then take
``Connection.execute``, one by one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Compiled

__all__ = ["array_texts", "execute_all", "pipelined"]

_COMPILED: dict[tuple[int, str], tuple[Executable, Compiled | None]] = {}


def _compiled(statement: Executable, conn: Connection) -> Compiled | None:
    """The statement compiled for this dialect, or None when it cannot go through the pipeline."""
    key = (id(statement), conn.dialect.name)
    found = _COMPILED.get(key)
    if found is None or found[0] is not statement:  # the statement object is kept: its id stays its own
        compiled: Compiled | None = statement.compile(dialect=conn.dialect)  # type: ignore[attr-defined]
        if compiled is not None and ("POSTCOMPILE" in compiled.string
                                     or not isinstance(getattr(compiled, "_bind_processors", None), dict)):
            compiled = None
        found = _COMPILED[key] = (statement, compiled)
    return found[1]


def _bound(compiled: Compiled, params: Mapping[str, Any]) -> dict[str, Any]:
    """The driver's parameters, as ``Connection.execute`` makes them (SQLAlchemy's bind processors)."""
    values = compiled.construct_params(dict(params))
    processors: dict[str, Any] = compiled._bind_processors  # type: ignore[attr-defined]
    return {name: processors[name](value) if name in processors else value for name, value in values.items()}


_PIPELINES: dict[tuple[int, ...], tuple[Sequence[Executable], bool]] = {}


def pipelined(conn: Connection, statements: Sequence[Executable]) -> bool:
    """Whether :func:`execute_all` sends these statements as one pipeline on this connection
    (decided once per list of statements: the writer asks at every commit)."""
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
        return False
    key = tuple(map(id, statements))
    found = _PIPELINES.get(key)
    if found is None or any(a is not b for a, b in zip(found[0], statements, strict=True)):
        import psycopg

        supported = psycopg.Pipeline.is_supported() and all(
            _compiled(s, conn) is not None for s in statements)
        found = _PIPELINES[key] = (tuple(statements), supported)
    return found[1]


def execute_all(conn: Connection, statements: Sequence[Executable], params: Mapping[str, Any]) -> None:
    """Run ``statements`` in order with the same ``params``, in the connection's transaction.

    PostgreSQL (psycopg): one pipeline, one round trip; a database error comes back as SQLAlchemy's
    exception of the same kind (``OperationalError`` stays transient for the writer's retry).
    Elsewhere, or for a statement that needs SQLAlchemy's parameter processing: one by one."""
    if not pipelined(conn, statements):
        for statement in statements:
            conn.execute(statement, dict(params))
        return
    import psycopg

    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    compiled = [_compiled(s, conn) for s in statements]
    arrays = array_texts(params)
    current = ""
    try:
        with raw.pipeline(), raw.cursor() as cursor:
            for each in compiled:
                assert each is not None
                current = each.string
                values = _bound(each, params)
                for name, (listed, literal) in arrays.items():
                    if name in values and values[name] == listed:
                        values[name] = literal
                cursor.execute(current, values)
    except psycopg.Error as error:
        raise sa_exc.DBAPIError.instance(current, None, error, psycopg.Error,
                                         dialect=conn.dialect) from error


_PLAIN_ITEMS = re.compile(r"[0-9A-Za-z_.:/@+=-]+(?:,[0-9A-Za-z_.:/@+=-]+)*")
_NULL_ITEM = re.compile(r"(?:^|,)null(?=,|$)", re.IGNORECASE)


def array_texts(params: Mapping[str, Any]) -> dict[str, tuple[list[str], str]]:
    """Per parameter holding a list of plain strings: (the list, its PostgreSQL array text).

    Why: psycopg dumps a list parameter element by element in Python (a regular expression per
    element for its quoting), for every statement that binds it — the rollup binds the batch's
    alert ids and orders nine times a group commit, ~300 µs a dump of 264 ids (issue 19 item 2a).
    The text is rendered once per batch and sent as a ``str`` instead: psycopg sends both the
    same way (text format, unknown type) and the same bytes — ``{a,b,c}`` — so the server parses,
    plans and stores exactly what it did. Only where no element needs quoting in an array text:
    non-empty ASCII letters, digits and ``_.:/@+=-``, never the word NULL; any other list is
    dumped by psycopg as before."""
    found: dict[str, tuple[list[str], str]] = {}
    for name, value in params.items():
        if type(value) is not list or not value or not all(type(item) is str for item in value):
            continue
        joined = ",".join(value)
        if (joined.count(",") == len(value) - 1 and _PLAIN_ITEMS.fullmatch(joined)
                and not _NULL_ITEM.search(joined)):
            found[name] = (value, "{" + joined + "}")
    return found
