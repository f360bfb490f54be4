"""Migration 0008: ``ix_alerts_rule_id`` dropped, ``ix_alerts_rule_severity`` (rule_id, severity) serving
every query that filters by rule — on SQLite and on a real PostgreSQL server (issue 19).

The queries are the ones the review pages build (the rule filter's count and page, the missing-data
tier filter, the filter drop-down's loose index scan), planned with sequential scans discouraged on
PostgreSQL (a tiny table would otherwise be read whole, which says nothing about the index).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.orm import Session

from cds_engine.store.db import create_db_engine
from cds_engine.store.migrate import alembic_config, current_revision, upgrade
from cds_engine.store.models import AlertRow
from cds_engine.store.queries import AlertFilter, distinct_values, list_alerts
from store_helpers import postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        e = create_db_engine(f"sqlite:///{tmp_path}/cds.db")
        yield e
        e.dispose()
    else:
        with postgres_database() as url:
            e = create_db_engine(url)
            yield e
            e.dispose()


def alert_indexes(engine: Engine) -> dict[str, list[str]]:
    return {ix["name"]: list(ix["column_names"]) for ix in inspect(engine).get_indexes("alerts")}


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_models_index_rule_id_only_through_rule_severity() -> None:
    indexes = {ix.name: [c.name for c in ix.columns] for ix in AlertRow.__table__.indexes}
    assert "ix_alerts_rule_id" not in indexes
    assert indexes["ix_alerts_rule_severity"] == ["rule_id", "severity"]


def test_0008_drops_the_index_and_downgrade_recreates_it(engine: Engine) -> None:
    upgrade(engine, "0007")
    before = alert_indexes(engine)
    assert before["ix_alerts_rule_id"] == ["rule_id"]
    upgrade(engine)
    assert current_revision(engine) == "0008"
    after = alert_indexes(engine)
    assert "ix_alerts_rule_id" not in after
    assert after == {k: v for k, v in before.items() if k != "ix_alerts_rule_id"}  # nothing else moved
    downgrade(engine, "0007")
    assert current_revision(engine) == "0007"
    assert alert_indexes(engine) == before
    upgrade(engine)
    assert alert_indexes(engine) == after


def _plans(engine: Engine, run: Any) -> list[str]:
    """The plans of the SELECTs ``run(session)`` sends, one text each."""
    sent: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        with Session(engine) as db:
            run(db)
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    out = []
    with engine.connect() as conn:
        pg = conn.dialect.name == "postgresql"
        if pg:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
        for statement, parameters in sent:
            rows = conn.exec_driver_sql(("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + statement,
                                        parameters).all()
            out.append("\n".join(str(r[0] if pg else r[3]) for r in rows))
    return out


@pytest.mark.parametrize("run", [
    pytest.param(lambda db: list_alerts(db, AlertFilter(rule="TST-R01")), id="rule"),
    pytest.param(lambda db: list_alerts(db, AlertFilter(rule="TST-R01", source="all")), id="all-sources"),
    pytest.param(lambda db: list_alerts(db, AlertFilter(rule="missing-data.renal")), id="missing-data-tier"),
])
def test_rule_filter_uses_the_rule_severity_index(engine: Engine, run: Any) -> None:
    upgrade(engine)
    plans = _plans(engine, run)
    assert len(plans) == 2  # the count and the page
    for plan in plans:
        assert "ix_alerts_rule_severity" in plan, plan


def test_rule_drop_down_loose_scan_uses_the_index(engine: Engine) -> None:
    upgrade(engine)
    plans = _plans(engine, distinct_values)
    assert len(plans) == 2  # rule ids, categories
    assert "ix_alerts_rule_severity" in plans[0], plans[0]
    assert "Seq Scan on alerts" not in plans[0] and "SCAN alerts" not in plans[0], plans[0]
