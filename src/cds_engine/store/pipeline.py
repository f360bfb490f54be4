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

__all__ = ["array_texts", "compile_key", "execute_all", "pipelined", "translates_schema"]

_COMPILED: dict[tuple[int, tuple[Any, ...]], tuple[Executable, Compiled | None]] = {}
_COMPILED_MAX = 256  # statements x dialect configurations (about a dozen statements in practice)


def compile_key(conn: Connection) -> tuple[Any, ...]:
    """What a statement's compiled text depends on in ``conn``'s dialect, for caches of compiled text.

    The dialect class and driver, and what the compiler reads from this engine's dialect: its
    options (``label_length`` and ``max_identifier_length`` rename long labels; the parameter style
    decides whether ``%`` is doubled) and its server (the version, and ``standard_conforming_strings``,
    which decides how a backslash in a literal is written). Why not the dialect's name alone: two
    engines of one process (a test run, another database, an engine made with other options) each
    compile their own text; keyed by name, the second ran the first one's. Why not the dialect
    object: a new engine is a new dialect, and a long-lived process opens engine after engine."""
    d = conn.dialect
    return (type(d), d.driver, d.paramstyle, d.label_length, d.max_identifier_length,
            getattr(d, "_backslash_escapes", None), d.server_version_info)


def translates_schema(conn: Connection) -> bool:
    """Whether ``conn`` carries a ``schema_translate_map``: ``Connection.execute`` applies it to each
    statement, a text compiled once and sent to the driver would not — such a connection takes
    ``Connection.execute`` (never rows written to another schema than the caller's). A guard only:
    the store's engines (:func:`.db.create_db_engine`) set no map, and its ``text()`` statements
    (JSON-document inserts, patient upserts) name bare tables — a PostgreSQL schema is chosen with
    ``search_path`` in the URL's ``options``, which every statement honours."""
    return bool(conn.get_execution_options().get("schema_translate_map"))


def _compiled(statement: Executable, conn: Connection) -> Compiled | None:
    """The statement compiled for this dialect, or None when it cannot go through the pipeline."""
    key = (id(statement), compile_key(conn))
    found = _COMPILED.get(key)
    if found is None or found[0] is not statement:  # the statement object is kept: its id stays its own
        compiled: Compiled | None = statement.compile(dialect=conn.dialect)  # type: ignore[attr-defined]
        if compiled is not None and ("POSTCOMPILE" in compiled.string
                                     or not isinstance(getattr(compiled, "_bind_processors", None), dict)):
            compiled = None
        if len(_COMPILED) >= _COMPILED_MAX:  # bounded; clear is one step under the writer's threads
            _COMPILED.clear()
        found = _COMPILED[key] = (statement, compiled)
    return found[1]


def _bound(compiled: Compiled, params: Mapping[str, Any]) -> dict[str, Any]:
    """The driver's parameters, as ``Connection.execute`` makes them (SQLAlchemy's bind processors)."""
    values = compiled.construct_params(dict(params))
    processors: dict[str, Any] = compiled._bind_processors  # type: ignore[attr-defined]
    return {name: processors[name](value) if name in processors else value for name, value in values.items()}


_PIPELINES: dict[tuple[Any, ...], tuple[Sequence[Executable], bool]] = {}
_PIPELINES_MAX = 64


def pipelined(conn: Connection, statements: Sequence[Executable]) -> bool:
    """Whether :func:`execute_all` sends these statements as one pipeline on this connection
    (decided once per list of statements: the writer asks at every commit)."""
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg" or translates_schema(conn):
        return False
    key = (*map(id, statements), compile_key(conn))
    found = _PIPELINES.get(key)
    if found is None or any(a is not b for a, b in zip(found[0], statements, strict=True)):
        import psycopg

        supported = psycopg.Pipeline.is_supported() and all(
            _compiled(s, conn) is not None for s in statements)
        if len(_PIPELINES) >= _PIPELINES_MAX:
            _PIPELINES.clear()
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
        queries = _positional_all(raw, compiled)
        with raw.pipeline(), (raw.cursor() if queries is None else psycopg.RawCursor(raw)) as cursor:
            for number, each in enumerate(compiled):
                assert each is not None
                current = each.string
                values = _bound(each, params)
                for name, (listed, literal) in arrays.items():
                    if name in values and values[name] == listed:
                        values[name] = literal
                if queries is None:
                    cursor.execute(current, values)
                else:
                    query, names = queries[number]
                    cursor.execute(query, [values[name] for name in names])
    except psycopg.Error as error:
        raise sa_exc.DBAPIError.instance(current, None, error, psycopg.Error,
                                         dialect=conn.dialect) from error


_POSITIONAL: dict[tuple[str, str], tuple[bytes, tuple[str, ...]] | None] = {}  # (text, encoding)
_PLACEHOLDER = re.compile(rb"%(?:\(([^)]*)\)(.)|(.)|\Z)", re.DOTALL)


def positional(text: str, encoding: str) -> tuple[bytes, tuple[str, ...]] | None:
    """``text`` (SQLAlchemy's ``%(name)s`` placeholders) as PostgreSQL's ``$n`` query, and the names
    in ``$n`` order; None for a placeholder other than ``%(name)s`` or ``%%``. Made once per text.

    Why: psycopg converts a query's placeholders (a regular expression over the whole text) on
    every execution and keeps the result only for texts up to 4,096 bytes and 50 parameters. The
    rollup's episode merge and its two daily-sum moves are ~4.8 KB: they were split again at
    every group commit, ~0.2 ms of the writer's CPU (issue 19 item 2a). The pipeline runs them on
    psycopg's public ``RawCursor``, which converts nothing, with this conversion kept per text
    (the pipeline's texts are a fixed handful of module-level statements: the dict is bounded).
    It is psycopg's own: one ``$n`` per distinct name in order of first use, ``%%`` is ``%``."""
    key = (text, encoding)
    if key not in _POSITIONAL:
        _POSITIONAL[key] = _converted(text.encode(encoding), encoding)
    return _POSITIONAL[key]


Positional = tuple[bytes, tuple[str, ...]]  # the $n query and the parameter names in $n order


def _positional_all(raw: Any, compiled: Sequence[Compiled | None]) -> list[Positional] | None:
    """Every statement as :func:`positional` makes it, for a ``RawCursor``; None when one cannot be,
    or when the connection has its own cursor class (client-side binding, say): its cursor then."""
    import psycopg

    if raw.cursor_factory is not psycopg.Cursor:
        return None
    encoding = raw.info.encoding
    found = [positional(each.string, encoding) if each is not None else None for each in compiled]
    return None if None in found else found  # type: ignore[return-value]


def _converted(query: bytes, encoding: str) -> tuple[bytes, tuple[str, ...]] | None:
    """The conversion of :func:`positional`, made."""
    numbers: dict[str, bytes] = {}
    chunks: list[bytes] = []
    at = 0
    for match in _PLACEHOLDER.finditer(query):
        name, form, other = match.groups()
        chunks.append(query[at:match.start()])
        at = match.end()
        if name is not None and form == b"s" and name:
            chunks.append(numbers.setdefault(name.decode(encoding), b"$%d" % (len(numbers) + 1)))
        elif other == b"%":
            chunks.append(b"%")
        else:  # %s, %b, %t, a lone % (psycopg's own errors): not the pipeline's
            return None
    chunks.append(query[at:])
    return b"".join(chunks), tuple(numbers)


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
