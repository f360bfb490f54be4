"""Issue 19 goals 2(a)/(b): the writer process's CPU per stored line, and the workers' idle CPU.

What must hold after the changes that cut it: the journal's fsync thread sleeps while nothing is
appended (and still syncs within its interval after an append); an evaluation line read from a
file is validated once, straight from its bytes, and a line that way refuses is read and rejected
as before; on PostgreSQL the rows sent as one JSON document are the rows the statement-per-row
way leaves, and what that way cannot carry the same (a naive datetime, a JSON column's None) is
refused or sent the old way.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection

from cds_engine.sources.demographics import PatientDemographics
from cds_engine.store import documents, open_store
from cds_engine.store.api import EvaluationRecord
from cds_engine.store.db import utcnow
from cds_engine.store.group_commit import GroupWriter
from cds_engine.store.journal import Journal, JournalEntry
from cds_engine.store.journal_tail import JournalTail
from cds_engine.store.models import AlertRow, Evaluation
from cds_engine.store.writer import insert_evaluations
from store_helpers import NOW, STORE_KINDS, feedback, make_alert, make_record, store_for


def _line(record: EvaluationRecord, evaluation_id: str) -> tuple[JournalEntry, bytes]:
    """An evaluation line exactly as ``JournalSink.record_evaluation`` writes it."""
    entry = {"type": "evaluation", "id": evaluation_id, "recorded_at": utcnow().isoformat()}
    head = json.dumps(entry, separators=(",", ":"))[:-1].encode()
    return entry, head + b',"record":' + record.model_dump_json().encode() + b"}"


def test_fsync_thread_sleeps_while_nothing_is_appended(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync_interval=0.01).start()
    calls = []
    flush = journal.flush
    journal.flush = lambda: (calls.append(time.monotonic()), flush())[1]  # type: ignore[method-assign]
    try:
        time.sleep(0.3)
        assert len(calls) <= 1, "the flusher woke every interval with nothing to sync"  # was ~30
        record = make_record()
        entry, line = _line(record, str(uuid.uuid4()))
        appended = time.monotonic()
        journal.append(entry, record, line)
        deadline = time.monotonic() + 2
        while journal.fsyncs == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert journal.fsyncs >= 1
        assert calls and calls[-1] - appended < 0.2  # within the interval (generous on a busy host)
    finally:
        journal.close()


def test_external_segment_is_handed_over_by_age_while_idle(tmp_path: Path) -> None:
    """No append wakes the flusher, yet an old segment is still let go (the writer process then
    reads it to its end and removes it)."""
    journal = Journal(tmp_path, external=True, fsync_interval=0.01, segment_seconds=0.2).start()
    try:
        record = make_record()
        entry, line = _line(record, str(uuid.uuid4()))
        journal.append(entry, record, line)
        tail = JournalTail(tmp_path, lambda *_: None)
        deadline = time.monotonic() + 5
        while not all(t.segment.closed for t in tail._files.values()) or not tail._files:
            assert time.monotonic() < deadline, "the idle segment was never handed over"
            tail.scan()
            time.sleep(0.02)
        tail.close()
    finally:
        journal.close()


def test_tail_validates_an_evaluation_line_once_and_rejects_a_bad_one_as_before(tmp_path: Path) -> None:
    journal = Journal(tmp_path, external=True, fsync_interval=60).start()
    good = make_record(alerts=[make_alert(), make_alert("TST-R02", "critical")])
    good_entry, good_line = _line(good, str(uuid.uuid4()))
    bad_entry, bad_line = _line(good, str(uuid.uuid4()))
    bad_line = bad_line.replace(b'"pack_id":"test-pack","pack_version"', b'"pack_id":null,"pack_version"', 1)
    fed = feedback(good.alerts[0].card_uuid or "")
    journal.append(good_entry, good, good_line)
    journal.append(bad_entry, None, bad_line)
    journal.append({"type": "feedback", "id": str(uuid.uuid4()), "received_at": utcnow().isoformat(),
                    "record": fed.model_dump(mode="json")})
    journal.retire()
    journal.flush()
    tail = JournalTail(tmp_path, lambda *_: None)
    items = tail.take(10, 0)
    assert [i.entry["type"] for i in items] == ["evaluation", "evaluation", "feedback"]
    first, second, third = items
    assert isinstance(first.value, EvaluationRecord)  # no second parse later
    assert first.value.model_dump() == good.model_dump()  # a line's own record class (journal.py)
    assert first.entry == good_entry
    assert second.value is None and second.entry["record"]["pack_id"] is None  # the former way
    assert third.value is None and third.entry["record"]["card_uuid"] == fed.card_uuid
    tail.close()
    journal.close()


def test_a_refused_record_line_is_still_rejected_by_id(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/store.db", spool_dir=tmp_path / "spool", start_drainer=False)
    try:
        journal = Journal(tmp_path / "journal", external=True, fsync_interval=60).start()
        record = make_record()
        entry, line = _line(record, str(uuid.uuid4()))
        bad = line.replace(b'"source":"hook"', b'"source":"elsewhere"', 1)
        journal.append(entry, None, bad)
        journal.retire()
        journal.flush()
        rejected: list[JournalEntry] = []
        tail = JournalTail(tmp_path / "journal", lambda e, _x: rejected.append(e))
        writer = GroupWriter(store.engine, tail, lambda e, _x: rejected.append(e), adopt_interval=1e9)
        writer._write(tail.take(10, 0))
        assert [r["id"] for r in rejected] == [entry["id"]]
        tail.close()
        journal.close()
    finally:
        store.close()


def _batch(rng: random.Random, count: int) -> list[tuple[EvaluationRecord, str, Any]]:
    items = []
    for n in range(count):
        alerts = [make_alert()] if n % 3 else [make_alert(), make_alert("TST-R02", "critical")]
        record = make_record(hook="order-select" if n % 2 == 0 else "order-sign", patient=f"Patient/{n // 4}",
                             order_key=f"order-{n // 2}", as_of=NOW + timedelta(seconds=n), alerts=alerts)
        who = PatientDemographics(name=f"Name é {n // 4}", birth_date=None if n % 5 == 0 else "1950-01-01",
                                  identifiers=[("MRN", str(n // 4))])
        record = record.model_copy(update={"demographics": who})
        evaluation_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        items.append((record, evaluation_id, NOW + timedelta(minutes=n)))
    return items


def _dump(conn: Connection) -> dict[str, list[list[Any]]]:
    tables = ["evaluations", "orders", "alerts", "patients", "queue_items", "rollup_episodes", "rollup_daily"]
    return {t: sorted([str(v) for v in row] for row in conn.exec_driver_sql(f'SELECT * FROM "{t}"'))
            for t in tables}


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_document_rows_equal_statement_rows(kind: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The same batches (with a replayed line) through the JSON document and through the
    statement-per-row way leave the same rows (SQLite takes the statement way both times)."""
    dumps = []
    for way in ("document", "statements"):
        rng = random.Random(5)
        ids = random.Random(9)
        monkeypatch.setattr(uuid, "uuid4", lambda ids=ids: uuid.UUID(int=ids.getrandbits(128), version=4))
        if way == "statements":
            monkeypatch.setattr("cds_engine.store.writer.document_rows", lambda *_: None)
            monkeypatch.setattr("cds_engine.store.patients.document_rows", lambda *_: None)
        first, second = _batch(rng, 30), _batch(rng, 30)
        (tmp_path / way).mkdir()
        with store_for(kind, tmp_path / way) as store, store.engine.begin() as conn:
            assert insert_evaluations(conn, first) == 30
            assert insert_evaluations(conn, second + first[:3]) == 30  # a replay inserts nothing twice
            dumps.append(_dump(conn))
        monkeypatch.undo()
    assert dumps[0] == dumps[1]
    assert len(dumps[0]["evaluations"]) == 60 and len(dumps[0]["alerts"]) == 80


def test_document_rows_refuse_what_they_cannot_carry_the_same() -> None:
    table = Evaluation.__table__
    row = {"id": "x", "as_of": NOW, "recorded_at": NOW, "hypothetical": False}
    assert json.loads(documents.document_rows(table, [row]) or "") == [
        {"id": "x", "as_of": "2025-03-01T10:00:00+00:00", "recorded_at": "2025-03-01T10:00:00+00:00",
         "hypothetical": False}]
    with pytest.raises(ValueError, match="naive"):  # the column type's bind processor still decides
        documents.document_rows(table, [{**row, "as_of": NOW.replace(tzinfo=None)}])
    assert documents.document_rows(table, [row, {**row, "extra": 1}]) is None
    alerts = AlertRow.__table__
    defaults = {"id": "a", "shown": True, "review_status": "open"}
    assert documents.document_rows(alerts, [{**defaults, "evidence": {}}]) is not None
    assert documents.document_rows(alerts, [{**defaults, "evidence": None}]) is None  # JSON null ≠ SQL NULL
    assert documents.document_rows(alerts, [{"id": "a", "evidence": {}}]) is None  # defaults left out


def test_no_thread_left_behind(tmp_path: Path) -> None:
    before = threading.active_count()
    Journal(tmp_path).start().close()
    assert threading.active_count() <= before
