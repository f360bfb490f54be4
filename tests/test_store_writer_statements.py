"""Issue 19 item 2a: the writer's rollup statements cost less per group commit, with the same rows.

What must hold:
* PostgreSQL: the pipeline's statement texts are converted to ``$n`` placeholders once per process
  by our own code and run on psycopg's public ``RawCursor`` (which converts nothing), also the
  texts over psycopg's own 4,096-byte cache limit (the episode merge and the daily-sum moves were
  split by a regular expression at every commit); the conversion is psycopg's: the same query
  bytes, parameters, types and formats reach the server.
* SQLite: the add statements bind their id and order lists as one JSON text, so each has one SQL
  text whatever the batch holds (the driver's statement cache is hit; an expanding ``IN`` gave a
  new text, prepared again, for every list length).
* The queue merge's materialized CTE of the new alert rows carries only the columns the item
  query reads, not every alert's text and JSON.

That the rollup and the queue items still equal a recompute from the rows is the property test
of ``test_store_rollup_add.py`` (both databases).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import _queries
from psycopg.adapt import Transformer
from sqlalchemy import event, select
from sqlalchemy.dialects import postgresql, sqlite

from cds_engine.store import rollup
from cds_engine.store.models import AlertRow, Evaluation
from cds_engine.store.pipeline import _bound, execute_all, positional
from cds_engine.store.writer import insert_evaluations
from store_helpers import NOW, make_alert, make_record, postgres_admin_url, store_for

_DIALECT = postgresql.psycopg.dialect()


def _statements() -> list[Any]:
    return [rollup._LOCKS, *rollup._add_statements("postgresql")]


def _params(count: int) -> dict[str, Any]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    return {"locked": ids[:3], "orders": ids[:3], "ids": ids}


def test_some_pipeline_texts_are_over_psycopgs_own_cache_limit() -> None:
    """The case this is about: without the kept conversion these would be split at every commit."""
    lengths = [len(s.compile(dialect=_DIALECT).string.encode()) for s in _statements()]
    assert max(lengths) > _queries.MAX_CACHED_STATEMENT_LENGTH, lengths


def test_positional_conversion_is_psycopgs_own() -> None:
    for statement in _statements():
        compiled = statement.compile(dialect=_DIALECT)
        values = _bound(compiled, _params(5))
        converted = positional(compiled.string, "utf-8")
        assert converted is not None
        assert positional(compiled.string, "utf-8") is converted  # kept: made once per text
        query, names = converted
        mine, theirs = _queries.PostgresRawQuery(Transformer()), _queries.PostgresQuery(Transformer())
        mine.convert(query, [values[name] for name in names])
        theirs.convert(compiled.string, values)
        assert mine.query == theirs.query
        assert mine.params == theirs.params
        assert (mine.types, mine.formats) == (theirs.types, theirs.formats)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT %(a)s, %(b)s, %(a)s", (b"SELECT $1, $2, $1", ("a", "b"))),
        ("SELECT 'x%%' || %(b)s WHERE y LIKE '%%z'", (b"SELECT 'x%' || $1 WHERE y LIKE '%z'", ("b",))),
        ("SELECT %(caf\u00e9)s", (b"SELECT $1", ("caf\u00e9",))),
        ("SELECT 1", (b"SELECT 1", ())),
    ],
)
def test_positional_numbers_each_name_once(text: str, expected: tuple[bytes, tuple[str, ...]]) -> None:
    assert positional(text, "utf-8") == expected
    query, _formats, order, _ = _queries._query2pg_nocache(text.encode(), "utf-8")
    assert (query, tuple(order or ())) == expected


@pytest.mark.parametrize(
    "text", ["SELECT %s", "SELECT %(a)b", "SELECT %(a)t", "SELECT 5 % 2", "SELECT %", "x %()s"]
)
def test_other_placeholders_are_left_to_psycopg(text: str) -> None:
    assert positional(text, "utf-8") is None


def _inserted(conn: Any, count: int, offset: int) -> dict[str, Any]:
    items = [
        (
            make_record(
                hook_instance=str(uuid.uuid4()),
                order_key=f"order-{offset + n}",
                patient=f"Patient/{n}",
                alerts=[make_alert(), make_alert("TST-R02")],
                as_of=NOW + timedelta(seconds=offset + n),
            ),
            str(uuid.uuid4()),
            NOW,
        )
        for n in range(count)
    ]
    assert insert_evaluations(conn, items) == count
    ids = list(conn.execute(select(AlertRow.id).limit(count)).scalars())
    orders = sorted(set(conn.execute(select(Evaluation.order_key)).scalars()))[:count]
    return {"locked": orders, "orders": orders, "ids": ids}


@pytest.mark.skipif(postgres_admin_url() is None, reason="needs CDS_TEST_DATABASE_URL")
def test_postgresql_commit_splits_no_statement_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits: list[int] = []
    split = _queries._split_query

    def counted(query: bytes, *args: Any, **kwargs: Any) -> Any:
        splits.append(len(query))
        return split(query, *args, **kwargs)

    monkeypatch.setattr(_queries, "_split_query", counted)
    with store_for("postgresql", tmp_path) as store, store.engine.begin() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        cursors: list[type] = []
        execute = psycopg.RawCursor.execute

        def seen(cursor: Any, *args: Any, **kwargs: Any) -> Any:
            cursors.append(type(cursor))
            return execute(cursor, *args, **kwargs)

        monkeypatch.setattr(psycopg.RawCursor, "execute", seen)
        for count, offset in ((4, 0), (7, 100)):  # the first commit converts too: ours, not psycopg's
            params = _inserted(conn, count, offset)
            splits.clear()
            cursors.clear()
            execute_all(conn, _statements(), params)
            assert splits == [], splits
            assert cursors == [psycopg.RawCursor] * len(_statements())


def test_sqlite_add_statements_keep_one_text_for_any_batch(tmp_path: Path) -> None:
    texts: dict[int, list[str]] = {}
    with store_for("sqlite", tmp_path) as store:
        for count in (1, 3, 8):
            seen: list[str] = []

            def keep(conn: Any, cursor: Any, statement: str, *args: Any, seen: list[str] = seen) -> None:
                seen.append(statement)

            event.listen(store.engine, "before_cursor_execute", keep)
            try:
                with store.engine.begin() as conn:
                    params = _inserted(conn, count, count * 1000)
                    seen.clear()
                    rollup.add_alerts(
                        conn, [(o, a) for o, a in zip(params["orders"], params["ids"], strict=False)]
                    )
            finally:
                event.remove(store.engine, "before_cursor_execute", keep)
            texts[count] = list(seen)
    assert len(texts[1]) == len(rollup._add_statements("sqlite"))
    assert texts[1] == texts[3] == texts[8]


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_queue_merge_carries_only_the_columns_it_reads(dialect: str) -> None:
    module = postgresql if dialect == "postgresql" else sqlite
    merge = rollup._add_statements(dialect)[-1]
    sql = str(merge.compile(dialect=module.dialect()))
    written, rest = sql.split("INSERT INTO queue_items", 1)
    for wide in ("evidence", "sources", "detail", "suggestions", "title"):
        assert f"alerts.{wide}" not in written
    for read in ("id", "evaluation_id", "rule_id", "tier_id", "severity", "summary", "review_status"):
        assert f"alerts.{read} AS {read}" in written
    assert "alerts." not in rest  # every column the item query reads comes from the CTE
