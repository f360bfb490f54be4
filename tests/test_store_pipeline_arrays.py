"""Issue 19 item 2a: the rollup's list parameters rendered once per group commit as PostgreSQL array
text (store/pipeline.py ``array_texts``) reach the server as psycopg's own list dump did.

What must hold: a list is rendered only when no element needs quoting in an array text, and then
its text is byte for byte psycopg's dump of the list, sent the same way (text format, unknown
type); any other list (commas, quotes, spaces, backslashes, braces, the word NULL, an empty
string, non-ASCII, a non-string) is left to psycopg; through ``execute_all`` the server receives
every element as it was, in order.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg import ClientCursor
from psycopg._queries import PostgresQuery
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import String, bindparam, select, text
from sqlalchemy.dialects import postgresql

from cds_engine.store import rollup
from cds_engine.store.models import AlertRow, Evaluation
from cds_engine.store.pipeline import _bound, array_texts, execute_all, pipelined
from cds_engine.store.writer import insert_evaluations
from store_helpers import NOW, make_alert, make_record, postgres_admin_url, store_for

PLAIN = [
    [str(uuid.uuid4()) for _ in range(40)],
    ["7f2158f5842911593a969b30283873b4"],
    ["Patient/abc-1", "nullx", "xnull", "a.b:c_d@e+f=g"],
]
QUOTED = [
    ["a,b"], ["a", "NULL"], ["null"], [""], ["x y"], ['q"uote'], ["back\\slash"], ["{brace}"],
    ["caf\u00e9"], ["tab\there"], ["a", "b,c", "d"],
]


@pytest.mark.parametrize("listed", PLAIN)
def test_plain_list_is_rendered_as_psycopg_dumps_it(listed: list[str]) -> None:
    found = array_texts({"ids": listed, "n": 3, "s": "text"})
    assert list(found) == ["ids"]
    same, literal = found["ids"]
    assert same is listed
    transformer = Transformer()
    as_list = transformer.get_dumper(listed, PyFormat.AUTO)
    as_text = transformer.get_dumper(literal, PyFormat.AUTO)
    assert bytes(as_text.dump(literal)) == bytes(as_list.dump(listed))
    assert (as_text.oid, as_text.format) == (as_list.oid, as_list.format)


@pytest.mark.parametrize("listed", [*QUOTED, [], [1, 2], ["a", None]])
def test_list_needing_quotes_is_left_to_psycopg(listed: list[object]) -> None:
    assert array_texts({"ids": listed}) == {}


@pytest.mark.skipif(postgres_admin_url() is None, reason="needs CDS_TEST_DATABASE_URL")
def test_postgresql_receives_every_element(tmp_path: Path) -> None:
    statement = text("INSERT INTO got_elements SELECT :tag, n, v "
                     "FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS u(v, n)").bindparams(
        bindparam("ids", type_=postgresql.ARRAY(String)), bindparam("tag", type_=String))
    cases = [*PLAIN, *QUOTED]
    with store_for("postgresql", tmp_path) as store, store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE got_elements (tag text, n int, v text)")
        assert pipelined(conn, [statement, statement])
        for number, listed in enumerate(cases):
            execute_all(conn, [statement, statement], {"ids": listed, "tag": f"case-{number}"})
        rows = conn.exec_driver_sql("SELECT tag, n, v FROM got_elements ORDER BY tag, n").all()
    for number, listed in enumerate(cases):
        got = [v for tag, n, v in rows if tag == f"case-{number}"]
        assert got == [v for v in listed for _ in range(2)], (number, got)


def _generic_plan(conn: Any, statement: Any, params: dict[str, Any]) -> str:
    """PostgreSQL's generic plan of a writer statement (as its prepared statement runs it)."""
    raw = conn.connection.driver_connection
    compiled = statement.compile(dialect=conn.dialect)
    values = _bound(compiled, params)
    query = PostgresQuery(Transformer(raw))
    query.convert(compiled.string, values)
    ordered = [values[name] for name in query._order or ()]
    marks = ", ".join(["%s"] * len(ordered))
    with raw.cursor() as cursor, ClientCursor(raw) as literal:
        cursor.execute(b"PREPARE writer_merge AS " + query.query)
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        literal.execute(f"EXPLAIN EXECUTE writer_merge({marks})".encode(), ordered)
        return "\n".join(row[0] for row in literal.fetchall())


@pytest.mark.skipif(postgres_admin_url() is None, reason="needs CDS_TEST_DATABASE_URL")
def test_postgresql_merge_looks_evaluations_up_by_key(tmp_path: Path) -> None:
    """The episode merge's generic plan reads each new row's evaluation by its primary key, never
    the whole evaluations table (it hashed all of them on every group commit: issue 19 item 2a)."""
    with store_for("postgresql", tmp_path) as store, store.engine.begin() as conn:
        items = [(make_record(hook_instance=str(uuid.uuid4()), order_key=f"order-{n}",
                              patient=f"Patient/{n}", alerts=[make_alert()],
                              as_of=NOW + timedelta(seconds=n)),
                  str(uuid.uuid4()), NOW) for n in range(400)]
        assert insert_evaluations(conn, items) == 400
        ids = list(conn.execute(select(AlertRow.id).limit(50)).scalars())
        orders = sorted(set(conn.execute(select(Evaluation.order_key)).scalars()))[:50]
        plan = _generic_plan(conn, rollup._add_statements("postgresql")[2], {"ids": ids, "orders": orders})
    assert "Seq Scan on evaluations" not in plan, plan
    assert "evaluations_pkey" in plan, plan
