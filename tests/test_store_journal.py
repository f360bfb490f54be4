"""Issue 19, item 2: the answer never waits for the store — a local journal and one group-commit writer.

Functional only (no timing asserts; the timed goals are in ``bench/hook.py --alternate`` and
``bench/load.py``): lines reach the database through the writer, exactly once; a process that is
killed (a real ``cds-engine serve`` with SIGKILL mid-load, and a bare journal) loses nothing,
because a surviving or restarted process adopts its journal; feedback that arrives before its
card's row still finds it; journal files are private.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from tests.service_helpers import (
    REPO,
    LocalFhir,
    hook_request,
    medication_request,
    serve_process,
    stored_per_hook_instance,
    wait_for,
)
from tests.store_helpers import NOW, feedback, make_record
from tests.test_service_api import patient_record

from cds_engine.service.discovery import prefetch_templates
from cds_engine.store import open_store
from cds_engine.store.journal_sink import JournalSink
from cds_engine.store.models import AlertRow, Evaluation, PrescriberFeedback


def _count(store, model=Evaluation) -> int:
    with store.session() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def test_the_journal_sink_writes_through_the_writer_exactly_once(tmp_path: Path):
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=tmp_path / "spool", journal=True)
    try:
        assert isinstance(store.sink, JournalSink)
        records = [make_record() for _ in range(60)]
        for record in records:
            store.sink.record_evaluation(record)
        store.sink.record_evaluation(records[0])  # the same hook call again: deduplicated
        journal_files = list((tmp_path / "spool").glob("journal-*.jsonl"))
        assert journal_files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in journal_files)
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        wait_for(lambda: store.journal is not None and store.journal.backlog() == 0)
        assert _count(store) == 60
        assert _count(store, AlertRow) == 60
        assert store.writer is not None and store.writer.commits <= 61
    finally:
        store.close()
    assert not list((tmp_path / "spool").glob("journal-*.jsonl"))  # everything written: nothing left


def test_feedback_on_a_card_still_in_the_journal_is_written_after_it(tmp_path: Path):
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=tmp_path / "spool", journal=True)
    try:
        record = make_record()
        card = record.alerts[0].card_uuid
        assert card is not None
        store.sink.record_evaluation(record)
        assert store.sink.record_feedback(feedback(card)) is True  # before its row exists, usually
        # unknown, and no other journal may hold it
        assert store.sink.record_feedback(feedback("no-such-card")) is False
        wait_for(lambda: _count(store, PrescriberFeedback) == 1)
        with store.session() as db:
            outcome = db.scalar(select(AlertRow.prescriber_outcome).where(AlertRow.card_uuid == card))
        assert outcome == "overridden"
    finally:
        store.close()


# A process that journals evaluations (and never writes them: it has no writer), then waits to be killed.
_JOURNALER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{repo!r}, {src!r}]
    from tests.store_helpers import make_record
    from cds_engine.store.journal import Journal
    from cds_engine.store.db import utcnow
    journal = Journal({directory!r}).start()
    for n in range({count}):
        record = make_record(hook_instance=f"orphan-{{n}}")
        journal.append({{"type": "evaluation", "id": f"00000000-0000-4000-8000-{{n:012d}}",
                         "recorded_at": utcnow().isoformat(), "record": record.model_dump(mode="json")}})
        if n == 0:
            print(record.alerts[0].card_uuid, flush=True)
    print("journaled", flush=True)
    time.sleep(600)
""")


def _journaler(spool: Path, count: int) -> tuple[subprocess.Popen[str], str]:
    script = _JOURNALER.format(repo=str(REPO), src=str(REPO / "src"), directory=str(spool), count=count)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    card = process.stdout.readline().strip()
    assert process.stdout.readline().strip() == "journaled"
    return process, card


def test_a_dead_process_journal_is_adopted_and_its_parked_feedback_finds_the_card(tmp_path: Path):
    spool = tmp_path / "spool"
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=spool, journal=True)
    process, card = _journaler(spool, 25)
    try:
        # The other process is alive (its segment is locked): its lines are its own, not adopted.
        time.sleep(1.5)
        assert _count(store) == 0
        # Feedback on a card that is only in the other process's journal: accepted and parked.
        assert store.sink.record_feedback(feedback(card)) is True
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        wait_for(lambda: _count(store) == 25, timeout=10)  # adopted within 10 s
        wait_for(lambda: _count(store, PrescriberFeedback) == 1, timeout=10)
        wait_for(lambda: not list(spool.glob("journal-*.jsonl")) or store.journal.backlog() == 0)
    finally:
        if process.poll() is None:
            process.kill()
        store.close()
    with open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=spool, start_drainer=False) as again:
        assert _count(again) == 25  # nothing twice


def test_a_journal_left_behind_is_replayed_at_the_next_start(tmp_path: Path):
    spool = tmp_path / "spool"
    process, _card = _journaler(spool, 10)
    process.kill()
    process.wait(10)
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=spool, journal=True)
    try:
        wait_for(lambda: _count(store) == 10, timeout=10)
    finally:
        store.close()


# -- a real service, killed mid-load --------------------------------------------------------------
def _drive(base: str, bodies: list[dict], answered: list[str], stop: threading.Event) -> None:
    with httpx.Client(timeout=10) as http:
        for body in bodies:
            if stop.is_set():
                return
            try:
                response = http.post(f"{base}/cds-services/baclofen-order-sign", json=body)
            except httpx.HTTPError:
                return  # the server was killed under this call: it was not answered
            if response.status_code == 200:
                answered.append(body["hookInstance"])


@pytest.mark.parametrize("kill_after", [40])
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_sigkill_mid_load_loses_nothing_and_writes_nothing_twice(tmp_path: Path, kill_after: int, writer: str,
                                                                 pack):
    """``process``: serve is killed, its writer process notices and stops; the restarted serve's
    writer waits for the directory's lock, then reads the dead journal to its end."""
    db = f"sqlite:///{tmp_path}/cds.db"
    args = ["--rules", str(REPO / "rules"), "--db", db, "--no-auth", "--writer", writer]
    env = {"CDS_SPOOL_DIR": str(tmp_path / "spool")}
    prefetch = LocalFhir(patient_record(egfr=25)).prefetch(prefetch_templates(pack), {"patientId": "p1"})
    draft = medication_request(id="draft-1", patient="p1", dose=20, per_day=4)
    bodies = [[hook_request("order-sign", "p1", [draft], prefetch=prefetch) for _ in range(60)]
              for _ in range(4)]
    answered: list[str] = []
    stop = threading.Event()
    with serve_process(args, tmp_path, env=env) as (base, process, _log):
        threads = [threading.Thread(target=_drive, args=(base, b, answered, stop)) for b in bodies]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(answered) >= kill_after, timeout=60)
        os.kill(process.pid, signal.SIGKILL)  # no shutdown: what the writer had not written is in the journal
        process.wait(10)
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(answered) >= kill_after
    with serve_process(args, tmp_path, env=env):  # the restarted service replays the journal
        store = open_store(db, spool_dir=tmp_path / "other-spool", start_drainer=False)
        try:
            def stored() -> dict[str, int]:
                return stored_per_hook_instance(store)

            wait_for(lambda: set(answered) <= set(stored()), timeout=20)
            counts = stored()
            assert all(counts[h] == 1 for h in answered), "an answered hookInstance stored twice"
            assert all(n == 1 for n in counts.values())
        finally:
            store.close()


def test_a_locked_database_only_grows_the_journal_and_it_drains_after(tmp_path: Path):
    import sqlite3

    path = tmp_path / "cds.db"
    store = open_store(f"sqlite:///{path}", spool_dir=tmp_path / "spool", journal=True)
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # the database paused: no writer gets in
        for _ in range(30):
            store.sink.record_evaluation(make_record())  # returns: the line is in the journal
        assert store.journal is not None
        wait_for(lambda: not store.sink.available)  # the writer found it locked, and keeps the lines
        assert store.journal.backlog() == 30
        assert not list((tmp_path / "spool").glob("spool-*.jsonl"))  # not the old spool: the journal
        locker.execute("ROLLBACK")
        wait_for(lambda: store.journal.backlog() == 0 and store.sink.available)
        assert _count(store) == 30
        assert store.journal.fsyncs > 0  # the background flusher synced the journal
    finally:
        locker.close()
        store.close()


def test_a_line_the_database_refuses_is_rejected_and_the_rest_of_its_batch_is_stored(tmp_path: Path):
    spool = tmp_path / "spool"
    store = open_store(f"sqlite:///{tmp_path}/cds.db", spool_dir=spool, journal=True)
    try:
        assert store.journal is not None
        good = [make_record() for _ in range(5)]
        store.journal.append({"type": "evaluation", "id": "bad-1", "recorded_at": NOW.isoformat(),
                              "record": {"source": "hook", "patient_ref": "Patient/secret-name"}})
        for record in good:
            store.sink.record_evaluation(record)
        wait_for(lambda: store.journal.backlog() == 0)
        assert _count(store) == 5
        rejected = (spool / "rejected.jsonl").read_text()
        assert '"bad-1"' in rejected and "secret-name" not in rejected  # ids only, never the content
    finally:
        store.close()
