"""The alert store on SQLite and on a real PostgreSQL server (a fresh database per test).

PostgreSQL: the server named by ``CDS_TEST_DATABASE_URL`` (``scripts/test.sh`` starts a throwaway
cluster and sets it); unset, the PostgreSQL cases skip, except under CI=true where they fail.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import delete, func, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from cds_engine.store import Store, audit, open_store, queries
from cds_engine.store import users as user_admin
from cds_engine.store.migrate import current_revision, head_revision
from cds_engine.store.models import (
    AlertRow,
    AuditEntry,
    Base,
    BatchRun,
    Evaluation,
    OrderRow,
    PrescriberFeedback,
    ReviewDecision,
)
from service_helpers import wait_for
from store_helpers import NOW, TcpProxy, feedback, free_port, make_alert, make_record, postgres_database

SRC = Path(__file__).resolve().parents[1] / "src" / "cds_engine"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/cds.db"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[Store]:
    s = open_store(db_url, spool_dir=tmp_path / "spool", drain_interval=0.2)
    yield s
    s.close()


def count(store: Store, model: type[Base], *where: object) -> int:
    with store.session() as db:
        return db.scalar(select(func.count()).select_from(model).where(*where)) or 0  # type: ignore[arg-type]




def test_migrations_from_empty(db_url: str, tmp_path: Path) -> None:
    store = open_store(db_url, spool_dir=tmp_path / "spool", start_drainer=False)
    try:
        assert current_revision(store.engine) == head_revision()
        tables = set(inspect(store.engine).get_table_names())
        assert {"evaluations", "alerts", "orders", "prescriber_feedback", "review_decisions", "batch_runs",
                "users", "review_sessions", "audit_log"} <= tables
        with store.engine.connect() as conn:  # the migrations build exactly what the models describe
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    Base.metadata) == []
            if store.engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.close()
    again = open_store(db_url, spool_dir=tmp_path / "spool", start_drainer=False)  # idempotent on restart
    assert current_revision(again.engine) == head_revision()
    again.close()


def test_same_hook_instance_stores_one_evaluation(store: Store) -> None:
    record = make_record(hook_instance="hook-1", alerts=[make_alert("TST-R01"), make_alert("TST-R02")])
    store.sink.record_evaluation(record)
    store.sink.record_evaluation(record)  # the EHR retried
    store.sink.record_evaluation(make_record(hook_instance="hook-1"))  # same call, rebuilt
    assert count(store, Evaluation) == 1
    assert count(store, AlertRow) == 2
    assert count(store, OrderRow) == 1
    store.sink.record_evaluation(make_record(hook_instance="hook-1", pack_id="other-pack"))  # a second pack
    store.sink.record_evaluation(make_record(hook_instance="hook-1", order_key="order-2"))  # a second draft
    store.sink.record_evaluation(make_record(hook_instance="hook-1", order_key="order-2"))
    store.sink.record_evaluation(make_record(hook_instance="hook-1", source="evaluate"))  # another source
    assert count(store, Evaluation) == 4
    with store.session() as db:
        stored = db.scalars(select(AlertRow).order_by(AlertRow.position)).first()
        assert stored is not None and stored.evidence["daily_dose_mg"] == 60.0 and stored.suggestions
        evaluation = db.scalars(select(Evaluation).where(Evaluation.pack_id == "test-pack",
                                                         Evaluation.source == "hook",
                                                         Evaluation.order_base == "order-1")).one()
        assert evaluation.as_of == NOW and evaluation.as_of.tzinfo is not None


def test_concurrent_hooks_store_each_evaluation_once(store: Store) -> None:
    records = [make_record(hook_instance=f"h-{i}") for i in range(40)]

    def worker() -> None:
        for r in records:
            store.sink.record_evaluation(r)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count(store, Evaluation) == 40
    assert count(store, AlertRow) == 40
    assert not store.spool.pending()


def test_feedback_updates_the_prescriber_outcome(store: Store) -> None:
    record = make_record()
    store.sink.record_evaluation(record)
    card = record.alerts[0].card_uuid
    assert card is not None
    assert store.sink.record_feedback(feedback(card, "overridden", at=NOW + timedelta(minutes=1)))
    with store.session() as db:
        alert = db.scalars(select(AlertRow)).one()
        assert (alert.prescriber_outcome, alert.review_status) == ("overridden", "open")
        row = db.scalars(select(PrescriberFeedback)).one()
        assert (row.override_reason_code, row.user_id) == ("tolerated-before", "Practitioner/7")
    later = feedback(card, "accepted", at=NOW + timedelta(minutes=5), accepted=["suggestion-1"])
    assert store.sink.record_feedback(later)
    late_arrival = feedback(card, "overridden", at=NOW + timedelta(minutes=2))
    assert store.sink.record_feedback(late_arrival)
    with store.session() as db:
        alert = db.scalars(select(AlertRow)).one()
        assert (alert.prescriber_outcome, alert.suggestion_accepted) == ("accepted", True)
    assert count(store, PrescriberFeedback) == 3
    assert store.sink.record_feedback(feedback(str(uuid.uuid4()))) is False  # unknown card


def test_reviewer_decision_is_kept_apart_from_prescriber_feedback(store: Store) -> None:
    record = make_record()
    store.sink.record_evaluation(record)
    assert record.alerts[0].card_uuid
    store.sink.record_feedback(feedback(record.alerts[0].card_uuid, "overridden"))
    with store.session() as db:
        reviewer = user_admin.add_user(db, "rita", "a-long-enough-password", "reviewer", actor="test")
        alert = db.scalars(select(AlertRow)).one()
        queries.decide(db, alert, reviewer, "acknowledged", reason_code=None, reason_display=None,
                       comment="seen", remote_addr=None)
    with store.session() as db:
        alert = db.scalars(select(AlertRow)).one()
        assert (alert.prescriber_outcome, alert.review_status) == ("overridden", "acknowledged")
        decision = db.scalars(select(ReviewDecision)).one()
        assert (decision.decision, decision.comment) == ("acknowledged", "seen")
        fb = db.scalars(select(PrescriberFeedback)).one()
        assert fb.outcome == "overridden"  # untouched by the reviewer
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "alert.acknowledged")).one()
        assert entry.actor == "rita"


def test_order_select_and_order_sign_count_once(store: Store) -> None:
    select_call = make_record(hook="order-select", order_key="order-A", as_of=NOW)
    sign_call = make_record(hook="order-sign", order_key="order-A", as_of=NOW + timedelta(minutes=3))
    other_order = make_record(hook="order-sign", order_key="order-B", as_of=NOW + timedelta(days=1))
    no_key = make_record(order_key=None, as_of=NOW + timedelta(days=1))
    for r in (select_call, sign_call, other_order, no_key):
        store.sink.record_evaluation(r)
    # overridden at order-select, then accepted at order-sign: the order counts once, as accepted
    store.sink.record_feedback(feedback(select_call.alerts[0].card_uuid or "", "overridden",
                                        at=NOW + timedelta(minutes=1)))
    store.sink.record_feedback(feedback(sign_call.alerts[0].card_uuid or "", "accepted",
                                        at=NOW + timedelta(minutes=4), accepted=["s1"]))
    store.sink.record_feedback(feedback(other_order.alerts[0].card_uuid or "", "overridden",
                                        at=NOW + timedelta(days=1, minutes=1)))
    with store.session() as db:
        (stats,) = queries.analytics(db)
    assert (stats.rule_id, stats.alert_rows, stats.fired) == ("TST-R01", 4, 3)
    assert (stats.prescriber_decided, stats.prescriber_overridden) == (2, 1)
    assert stats.override_rate == 0.5
    assert (stats.suggestions_decided, stats.suggestions_accepted) == (2, 1)
    assert stats.per_day == {NOW.date(): 1, (NOW + timedelta(days=1)).date(): 2}
    with store.session() as db:  # the date range filter
        (only_first_day,) = queries.analytics(db, date_from=NOW.date(), date_to=NOW.date())
    assert only_first_day.fired == 1


def test_batch_runs_are_recorded(store: Store) -> None:
    records = [make_record(source="batch", hook_instance=None, patient=f"Patient/{i}", batch_run_id="run-1")
               for i in range(5)]
    assert store.sink.record_evaluations(records) == 5
    assert count(store, BatchRun) == 1
    assert count(store, Evaluation, Evaluation.batch_run_id == "run-1") == 5


Switch = Callable[[], None]


def _unreachable(db_url: str, tmp_path: Path) -> tuple[str, Switch, Switch, Switch]:
    """A URL for the same database: unreachable until ``up()``, again after ``down()``; then ``cleanup()``.

    SQLite: a file in a folder that does not exist yet, then a write lock held by another
    connection. PostgreSQL: a TCP proxy in front of the server, not listening until ``up()``.
    """
    if db_url.startswith("sqlite"):
        path = tmp_path / "later" / "cds.db"  # SQLite cannot open a file in a missing folder
        holder: dict[str, sqlite3.Connection] = {}

        def up() -> None:
            path.parent.mkdir(exist_ok=True)
            if "lock" in holder:
                holder.pop("lock").rollback()

        def down() -> None:  # another process holds the write lock: writes fail after the busy timeout
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            holder["lock"] = conn

        def cleanup() -> None:
            if "lock" in holder:
                holder.pop("lock").close()

        return f"sqlite:///{path}", up, down, cleanup
    proxy = TcpProxy(target_port=make_url(db_url).port or 5432, port=free_port())
    proxied = make_url(db_url).set(port=proxy.port).render_as_string(hide_password=False)
    return proxied, proxy.start, proxy.stop, proxy.stop


def test_spool_while_the_database_is_unreachable_then_drain(db_url: str, tmp_path: Path) -> None:
    url, up, down, cleanup = _unreachable(db_url, tmp_path)
    spool_dir = tmp_path / "spool"
    store = open_store(url, spool_dir=spool_dir, drain_interval=0.2)
    try:
        assert not store.ready
        first = [make_record(hook_instance=f"early-{i}") for i in range(10)]
        started = time.monotonic()
        for r in first:
            store.sink.record_evaluation(r)  # must not raise
        store.sink.record_evaluation(first[0])  # a retried hook while down
        assert store.sink.record_feedback(feedback(first[1].alerts[0].card_uuid or "", "overridden"))
        assert time.monotonic() - started < 5, "the hook must not wait on a database that is away"
        lines = sum(len(p.read_text().splitlines()) for p in spool_dir.glob("*.jsonl"))
        assert lines == 12

        up()  # the drainer migrates, then writes everything once
        wait_for(lambda: store.ready and not store.spool.pending(), 20)
        assert count(store, Evaluation) == 10
        assert count(store, AlertRow) == 10
        assert count(store, PrescriberFeedback) == 1

        down()  # gone again while serving
        second = [make_record(hook_instance=f"late-{i}") for i in range(5)]
        started = time.monotonic()
        for r in second:
            store.sink.record_evaluation(r)
        assert time.monotonic() - started < 10
        assert not store.ready and store.spool.pending()
        up()
        wait_for(lambda: store.ready and not store.spool.pending(), 20)
        for r in [*first, *second]:  # everything there, exactly once
            assert count(store, Evaluation, Evaluation.hook_instance == r.hook_instance) == 1
        assert count(store, Evaluation) == 15
        assert not (spool_dir / "rejected.jsonl").exists()
    finally:
        store.close()
        cleanup()


def test_spool_replay_after_a_crash_duplicates_nothing(db_url: str, tmp_path: Path) -> None:
    url, up, _down, cleanup = _unreachable(db_url, tmp_path)
    spool_dir = tmp_path / "spool"
    store = open_store(url, spool_dir=spool_dir, start_drainer=False)
    try:
        records = [make_record(hook_instance=f"crash-{i}") for i in range(6)]
        for r in records:
            store.sink.record_evaluation(r)
        store.sink.record_feedback(feedback(records[0].alerts[0].card_uuid or "", "overridden"))
        (spooled,) = spool_dir.glob("spool-*.jsonl")
        copy = tmp_path / "copy.jsonl"
        shutil.copy(spooled, copy)
        up()
        store.drain_now()
        assert count(store, Evaluation) == 6
        # a drainer that died after writing but before deleting its file: the same lines again
        shutil.copy(copy, spool_dir / "drain-crashed-1.jsonl")
        store.drain_now()
        assert not store.spool.pending()
        assert count(store, Evaluation) == 6
        assert count(store, AlertRow) == 6
        assert count(store, PrescriberFeedback) == 1
    finally:
        store.close()
        cleanup()


def test_audit_log_is_append_only(store: Store) -> None:
    with store.session() as db:
        audit.record(db, actor="tester", action="view.alerts", target_type="alerts", detail={"x": 1})
    with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.execute(update(AuditEntry).values(actor="mallory"))
    with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.execute(delete(AuditEntry))
    with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE actor = 'tester'"))
    with store.session() as db:
        assert [e.actor for e in audit.recent(db)] == ["tester"]


def test_no_code_path_updates_or_deletes_the_audit_log() -> None:
    offenders = []
    for path in [*SRC.joinpath("store").rglob("*.py"), *SRC.joinpath("service").rglob("*.py")]:
        source = path.read_text()
        for needle in ("update(AuditEntry", "delete(AuditEntry", "UPDATE audit_log", "DELETE FROM audit_log"):
            if needle in source:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []


def test_users_cli(tmp_path: Path) -> None:
    from cds_engine.cli import app

    url = f"sqlite:///{tmp_path}/cli.db"
    runner = CliRunner()
    result = runner.invoke(app, ["users", "add", "ann", "--role", "admin", "--password-stdin", "--db", url],
                           input="a-long-enough-password\n")
    assert result.exit_code == 0, result.output
    weak = runner.invoke(app, ["users", "add", "bob", "--password-stdin", "--db", url], input="short\n")
    assert weak.exit_code == 1
    bad_role = runner.invoke(app, ["users", "add", "bob", "--role", "boss", "--password-stdin", "--db", url],
                             input="a-long-enough-password\n")
    assert bad_role.exit_code != 0
    listed = runner.invoke(app, ["users", "list", "--db", url])
    assert "ann" in listed.output and "admin" in listed.output and "bob" not in listed.output
    assert runner.invoke(app, ["users", "disable", "ann", "--db", url]).exit_code == 0
    store = open_store(url, start_drainer=False)
    try:
        with store.session() as db:
            ann = user_admin.get_user(db, "ann")
            assert ann is not None and ann.disabled and ann.password_hash.startswith("$argon2id$")
            assert user_admin.authenticate(db, "ann", "a-long-enough-password") is None  # disabled
            actions = [e.action for e in audit.recent(db)]
        assert actions == ["user.disable", "user.add"]
    finally:
        store.close()
