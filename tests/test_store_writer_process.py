"""Issue 19 item 2, the writer out of the request processes (``serve --writer process``).

The workers only append to their journals (``Journal(external=True)``); one writer process per
``serve`` tails every journal (``JournalTail``) and group-commits. What must hold: a line still
being written waits for its newline; a segment is read to its end once its lock is free (rotated,
stopped or dead worker) and removed only when every line is committed; a crash of the writer replays
and writes nothing twice; feedback in one worker's journal finds a card in another's; the process is
restarted when it dies; a worker's shutdown waits for its lines to be committed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.store_helpers import feedback, make_record, postgres_database
from tests.test_store_journal import _count, wait_for

from cds_engine.store import open_store
from cds_engine.store.db import utcnow
from cds_engine.store.group_commit import GroupWriter
from cds_engine.store.journal import Journal, JournalEntry, _try_lock
from cds_engine.store.journal_tail import JournalTail
from cds_engine.store.models import AlertRow, Evaluation, PrescriberFeedback
from cds_engine.store.writer_process import read_status
from cds_engine.store.writer_supervisor import attach_external_journal


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _entry(n: int = 0) -> JournalEntry:
    return {"type": "evaluation", "id": _id(n), "recorded_at": utcnow().isoformat(),
            "record": make_record(hook_instance=f"h-{n}").model_dump(mode="json")}


def _rejects() -> tuple[list[JournalEntry], object]:
    seen: list[JournalEntry] = []
    return seen, lambda entry, _exc: seen.append(entry)


def test_a_line_still_being_written_waits_for_its_newline(tmp_path: Path) -> None:
    journal = Journal(tmp_path, external=True, fsync_interval=60).start()
    rejected, reject = _rejects()
    tail = JournalTail(tmp_path, reject)  # type: ignore[arg-type]
    try:
        journal.append(_entry(1))
        line = json.dumps(_entry(2)).encode()
        assert journal._current is not None
        os.write(journal._current.fd, line[:40])  # the worker is half-way through its write
        first = tail.take(10, 0)
        assert [i.entry["id"] for i in first] == [_entry(1)["id"]]
        assert tail.take(10, 0) == []  # the partial line is not taken
        os.write(journal._current.fd, line[40:] + b"\n")
        second = tail.take(10, 0)
        assert [i.entry["id"] for i in second] == [_entry(2)["id"]]
        tail.done(first + second)
        files = journal.own_files()
        assert len(files) == 1  # live (locked): not removed although its lines are done
        journal.retire()
        journal.flush()  # the worker lets go of the segment: fsync, close, lock free
        assert tail.take(10, 0) == []
        assert not files[0].exists()  # closed and every line done: removed
        assert rejected == []
    finally:
        tail.close()
        journal.close()


def test_an_idle_workers_segment_is_handed_over_by_age(tmp_path: Path) -> None:
    """Nobody in the worker marks lines done: its flusher closes an old segment (lock released) so
    the writer can remove it; the next line opens a new segment."""
    journal = Journal(tmp_path, external=True, fsync_interval=0.01, segment_seconds=0.2).start()
    _rejected, reject = _rejects()
    tail = JournalTail(tmp_path, reject)  # type: ignore[arg-type]
    try:
        journal.append(_entry(1))
        first = journal.own_files()
        taken = tail.take(10, 0)
        tail.done(taken)
        assert first[0].exists()  # young and live: kept
        wait_for(lambda: tail.take(10, 0.01) == [] and not first[0].exists(), timeout=10)
        journal.append(_entry(2))
        assert journal.own_files() and journal.own_files() != first
        assert [i.entry["id"] for i in tail.take(10, 0)] == [_id(2)]
    finally:
        tail.close()
        journal.close()


def test_a_dead_workers_segment_is_read_to_its_end_and_a_torn_line_rejected(tmp_path: Path) -> None:
    path = tmp_path / "journal-deadbeef0000-000001.jsonl"
    worker = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    assert _try_lock(worker)
    os.write(worker, json.dumps(_entry(1)).encode() + b"\n" + b'{"type": "evalua')
    rejected, reject = _rejects()
    tail = JournalTail(tmp_path, reject)  # type: ignore[arg-type]
    try:
        first = tail.take(10, 0)
        assert len(first) == 1 and rejected == []  # alive: the torn tail may still be completed
        os.close(worker)  # the worker dies: the kernel drops its lock
        assert tail.take(10, 0) == []
        assert rejected == [{"file": path.name, "line": 2}]  # torn for good: rejected by position
        assert path.exists()  # its first line is not committed yet
        tail.done(first)
        assert not path.exists()
    finally:
        tail.close()


def _tail_writer(directory: Path, url: str) -> tuple[GroupWriter, JournalTail]:
    from cds_engine.store.db import create_db_engine

    _rejected, reject = _rejects()
    tail = JournalTail(directory, reject)  # type: ignore[arg-type]
    writer = GroupWriter(create_db_engine(url), tail, reject, wait=0.01, linger=0.0)  # type: ignore[arg-type]
    return writer, tail


def test_a_writer_crash_replays_the_live_journal_and_writes_nothing_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cds.db"
    spool = tmp_path / "spool"
    with open_store(url, spool_dir=spool, start_drainer=False) as store:
        journal = Journal(spool, external=True).start()
        try:
            for n in range(30):
                journal.append(_entry(n))
            writer, tail = _tail_writer(spool, url)
            writer.start()
            wait_for(lambda: _count(store) == 30, timeout=20)
            writer._stop.set()  # a crash: the segment (live) stays, nothing records what was done
            writer._thread.join(10)  # type: ignore[union-attr]
            tail.close()
            for n in range(30, 40):
                journal.append(_entry(n))
            again, tail = _tail_writer(spool, url)
            again.start()
            wait_for(lambda: _count(store) == 40, timeout=20)
            assert again.written == 40  # every line of the file again, idempotent by ids
            journal.retire()
            journal.flush()
            wait_for(lambda: not journal.own_files(), timeout=20)  # handed over and committed: removed
            again.close()
            tail.close()
            with store.session() as db:
                counts = db.execute(select(Evaluation.hook_instance, func.count())
                                    .group_by(Evaluation.hook_instance)).all()
            assert len(counts) == 40 and all(n == 1 for _h, n in counts)
        finally:
            journal.close()


def test_feedback_in_one_workers_journal_finds_a_card_in_another_workers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cds.db"
    spool = tmp_path / "spool"
    with open_store(url, spool_dir=spool, start_drainer=False) as store:
        first = Journal(spool, external=True).start()
        second = Journal(spool, external=True).start()
        record = make_record()
        card = record.alerts[0].card_uuid
        assert card is not None
        try:
            # the feedback is journaled (by another worker) before the card's evaluation
            second.append({"type": "feedback", "id": _id(9001), "received_at": utcnow().isoformat(),
                           "record": feedback(card).model_dump(mode="json")})
            writer, tail = _tail_writer(spool, url)
            writer.start()
            wait_for(lambda: writer.written == 0 and len(writer._parked) == 1, timeout=10)  # parked
            first.append({"type": "evaluation", "id": _id(9002), "recorded_at": utcnow().isoformat(),
                          "record": record.model_dump(mode="json")})
            wait_for(lambda: _count(store, PrescriberFeedback) == 1, timeout=20)
            with store.session() as db:
                assert db.scalar(select(AlertRow.prescriber_outcome).where(AlertRow.card_uuid == card)) == (
                    "overridden")
            writer.close()
            tail.close()
        finally:
            first.close()
            second.close()


def test_the_linger_grows_with_the_rate_and_stays_small_when_idle(tmp_path: Path) -> None:
    writer, _tail = _tail_writer(tmp_path, f"sqlite:///{tmp_path}/cds.db")
    writer.linger, writer.max_linger, writer.linger_rate = 0.05, 0.25, 50.0
    writer._rate = 0.0
    assert writer.adaptive_linger() == 0.05
    writer._rate = 200.0
    assert writer.adaptive_linger() == pytest.approx(0.2)
    writer._rate = 5000.0
    assert writer.adaptive_linger() == 0.25
    writer._rate, writer._last_take = 0.0, time.monotonic() - 0.5
    writer._observe_rate(100)  # 100 lines after half a second: 200/s, smoothed
    assert 50 < writer._rate <= 200



def test_the_writer_process_lingers_fully_from_a_modest_rate_and_briefly_when_idle(tmp_path: Path) -> None:
    """Its CPU (and the database's) is mostly per commit: 40 calls/s must not be committed a few at a time."""
    from cds_engine.store.db import create_db_engine
    from cds_engine.store.writer_process import MAX_LINGER, process_writer

    _rejected, reject = _rejects()
    writer = process_writer(create_db_engine(f"sqlite:///{tmp_path}/cds.db"), JournalTail(tmp_path, reject),
                            reject)  # type: ignore[arg-type]
    writer._rate = 0.0
    assert writer.adaptive_linger() <= 0.05  # one call now and then is stored at once
    writer._rate = 40.0
    assert writer.adaptive_linger() == MAX_LINGER == 0.5  # was 0.1 s: 4 calls per commit



def test_the_writer_process_scans_less_often_once_idle_and_often_when_lines_come(tmp_path: Path) -> None:
    """An idle host: a directory scan every 20 ms cost ~1.3% of a core; after a lull, every 100 ms."""
    from cds_engine.store.db import create_db_engine
    from cds_engine.store.writer_process import IDLE_AFTER, IDLE_WAIT, process_writer

    _rejected, reject = _rejects()
    writer = process_writer(create_db_engine(f"sqlite:///{tmp_path}/cds.db"), JournalTail(tmp_path, reject),
                            reject)  # type: ignore[arg-type]
    now = time.monotonic()
    assert writer.current_wait(now) == writer.wait == 0.02  # just started, or lines just came
    assert writer.current_wait(now + IDLE_AFTER + 0.01) == IDLE_WAIT == 0.1
    writer._observe_rate(3)  # lines again: back to the short wait at once
    assert writer.current_wait(time.monotonic()) == 0.02
    writer._observe_rate(0)  # an empty take does not count as activity
    assert writer.current_wait(time.monotonic() + IDLE_AFTER + 0.01) == 0.1

def test_the_writer_process_commits_40_calls_a_second_in_few_transactions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cds.db"
    spool = tmp_path / "spool"
    from cds_engine.store.writer_process import process_writer

    with open_store(url, spool_dir=spool, start_drainer=False) as store:
        journal = Journal(spool, external=True).start()
        _rejected, reject = _rejects()
        tail = JournalTail(spool, reject)  # type: ignore[arg-type]
        writer = process_writer(store.engine, tail, reject).start()  # type: ignore[arg-type]
        try:
            start = time.monotonic()
            for n in range(120):  # 3 s at 40 lines/s, as a worker appends them
                time.sleep(max(0.0, start + n / 40 - time.monotonic()))
                journal.append(_entry(n))
            wait_for(lambda: _count(store) == 120, timeout=20)
            # 0.5 s lingers once the rate is seen: ~7 commits (the earlier 0.1 s linger: ~30)
            assert writer.commits <= 15, writer.commits
        finally:
            writer.close()
            tail.close()
            journal.close()

def _journal_store(tmp_path: Path, url: str | None = None):  # type: ignore[no-untyped-def]
    from cds_engine.store.writer_supervisor import WriterSupervisor

    store = open_store(url or f"sqlite:///{tmp_path}/cds.db", spool_dir=tmp_path / "spool", journal=False)
    supervisor = WriterSupervisor(store.url, store.spool.directory).start()
    attach_external_journal(store, supervisor)
    return store, supervisor


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/cds.db"
        return
    with postgres_database() as url:
        yield url


def test_the_writer_process_stores_restarts_and_the_worker_flush_waits(tmp_path: Path, database: str) -> None:
    store, supervisor = _journal_store(tmp_path, database)
    try:
        records = [make_record() for _ in range(50)]
        card = records[0].alerts[0].card_uuid
        for record in records:
            store.sink.record_evaluation(record)
        assert store.sink.record_feedback(feedback(card)) is True  # ours: still in this journal, maybe
        assert store.sink.record_feedback(feedback("no-such-card")) is False
        wait_for(lambda: _count(store) == 50 and _count(store, PrescriberFeedback) == 1)
        wait_for(lambda: (read_status(tmp_path / "spool") or {}).get("written", 0) >= 51)
        assert store.sink.available
        first = supervisor.process
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: supervisor.restarts == 1 and supervisor.alive, timeout=20)
        for record in records[:10]:
            store.sink.record_evaluation(record)  # the same hook calls again: deduplicated
        more = [make_record() for _ in range(20)]
        for record in more:
            store.sink.record_evaluation(record)
        assert store.sink.flush(timeout=30) == 0  # the shutdown flush: every own line committed
        assert _count(store) == 70
        assert store.journal is not None and store.journal.fsyncs > 0
    finally:
        store.close()
    assert not supervisor.alive
    assert not list((tmp_path / "spool").glob("journal-*.jsonl"))
    assert (read_status(tmp_path / "spool") or {}).get("stopped") is True


def test_a_feedback_is_refused_for_a_card_no_journal_and_no_row_holds(tmp_path: Path) -> None:
    store, _supervisor = _journal_store(tmp_path)
    try:
        record = make_record()
        store.sink.record_evaluation(record)
        store.sink.flush(timeout=30)
        assert store.journal is not None and not store.journal.own_files()
        assert store.sink.record_feedback(feedback(record.alerts[0].card_uuid or "")) is True  # its row
        assert store.sink.record_feedback(feedback("no-such-card")) is False

    finally:
        store.close()


def test_serve_with_two_workers_and_one_writer_process_stores_each_call_once(tmp_path: Path) -> None:
    """The host's writer process is the parent's child (not a worker's); its journal depth and write
    lag reach /metrics summed with the workers'; every answered call is stored exactly once."""
    import httpx
    from tests.service_helpers import serve_process
    from tests.test_metrics_serve import _orders, _value

    from conftest import RULES

    token = "k" * 48
    (tmp_path / "metrics.token").write_text(token + "\n")
    db = f"sqlite:///{tmp_path}/cds.db"
    args = ["--no-auth", "--db", db, "--rules", str(RULES), "--workers", "2", "--writer", "process",
            "--metrics-token-file", str(tmp_path / "metrics.token"), "--log-format", "json"]
    spool = tmp_path / "spool"
    env = {"CDS_SPOOL_DIR": str(spool)}
    with serve_process(args, tmp_path, env=env, timeout=120) as (base, process, log):
        _orders(base, 8)
        wait_for(lambda: (read_status(spool) or {}).get("written", 0) >= 8, timeout=30)
        writer_pid = (read_status(spool) or {})["pid"]
        assert _parent_of(writer_pid) == process.pid  # the supervising parent's child, not a worker's
        auth = {"Authorization": f"Bearer {token}"}
        text = httpx.get(f"{base}/metrics", headers=auth, timeout=10).text
        assert _value(text, "cds_store_write_lag_seconds_count") == 8
        assert "cds_journal_depth" in text
    assert not _alive(writer_pid)  # stopped with serve
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(json.loads(line)["pid"] == writer_pid for line in lines), "the writer logs as serve does"
    with open_store(db, spool_dir=tmp_path / "other", start_drainer=False) as store, store.session() as s:
        counts = s.execute(select(Evaluation.hook_instance, func.count())
                           .group_by(Evaluation.hook_instance)).all()
    assert len(counts) == 8 and all(n == 1 for _h, n in counts)
    assert not list(spool.glob("journal-*.jsonl"))


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_unknown_writer_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cds_engine.cli import app
    from cds_engine.commands.serve import writer_mode

    result = CliRunner().invoke(app, ["serve", "--no-auth", "--db", "none", "--writer", "fork"])
    assert result.exit_code == 2 and "--writer" in result.output
    monkeypatch.setenv("CDS_STORE_WRITER", "thread")
    assert writer_mode(None) == "thread" and writer_mode("process") == "process"
    monkeypatch.delenv("CDS_STORE_WRITER")
    assert writer_mode(None) == "process"  # the default


def test_the_writer_process_runs_at_a_lower_priority_when_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CDS_WRITER_NICE=N: the writer yields a contended core to the workers (default 0: see the module)."""
    from cds_engine.store.writer_process import DEFAULT_NICE, NICE_ENV, lower_priority

    assert DEFAULT_NICE == 0
    monkeypatch.setenv(NICE_ENV, "5")
    store, supervisor = _journal_store(tmp_path)
    try:
        assert supervisor.process is not None
        pid = supervisor.process.pid
        wait_for(lambda: (read_status(tmp_path / "spool") or {}).get("pid") == pid)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.nice(0) + 5)
    finally:
        store.close()
    own = os.nice(0)
    assert lower_priority("0") == own and lower_priority("-5") == own and lower_priority("x") == own
