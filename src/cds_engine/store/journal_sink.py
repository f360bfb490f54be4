""":class:`JournalSink`: the service's :class:`~cds_engine.store.api.EvaluationSink` when it has a journal.

``record_evaluation`` appends one journal line and returns — no database, no ``fsync`` on the
hook's path; the :class:`~cds_engine.store.group_commit.GroupWriter` stores it moments later.
Feedback goes through the same journal, so feedback on a card still in *this* process's journal
is written after the card. Feedback on a card this process never journaled is accepted when the
database knows the card, or when another process's journal is waiting (the card may be there —
the writer parks it until the row appears); otherwise it is an unknown card, as before. If the
journal cannot be written (disk full), the write goes the old way (:class:`StoreSink`: one
transaction, else the spool) and is counted.

With an external journal (``serve --writer process``) there is no writer in this process: nobody
calls :meth:`JournalSink.settled`, so the cards of this process's journal are kept per segment
file and forgotten when the writer process removes the file (all its lines are committed).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from cds_engine.store.api import EvaluationRecord, FeedbackRecord
from cds_engine.store.db import utcnow
from cds_engine.store.failures import count_not_stored
from cds_engine.store.journal import Journal, JournalItem
from cds_engine.store.sink import StoreSink, is_transient
from cds_engine.store.writer import known_card

__all__ = ["JournalSink", "evaluation_line"]

log = logging.getLogger("cds_engine.store")


class StoreWriter(Protocol):
    """The writer thread (``GroupWriter``) or the link to the writer process (``WriterLink``)."""

    @property
    def available(self) -> bool: ...

    def stats(self) -> dict[str, Any]: ...


class JournalSink:
    """Journal first, database later: the hook's sink in ``serve`` (see the module docstring)."""

    def __init__(self, engine: Engine, journal: Journal, direct: StoreSink) -> None:
        self._engine = engine
        self.journal = journal
        self.direct = direct
        self._cards: Counter[str] = Counter()  # card uuids in this process's journal, not yet written
        self._lock = threading.Lock()
        self._segment_cards: dict[Path, set[str]] = {}  # external journal: cards per segment on disk
        self._prune_at = 64  # segments remembered before the next look at which files are gone
        self.writer: StoreWriter | None = None

    def attach(self, writer: StoreWriter) -> None:
        self.writer = writer

    @property
    def available(self) -> bool:
        return self.writer.available if self.writer is not None else self.direct.available

    @property
    def migrated(self) -> bool:
        return self.direct.migrated

    def flush(self, timeout: float = 5.0) -> int:
        """At shutdown: give the writer up to ``timeout`` s to store what the journal holds; lines left.

        The service calls it from its lifespan's end, which runs even when uvicorn then re-raises
        SIGTERM (so ``serve``'s own ``finally`` may never run). What is left is replayed at the next
        start, or adopted by another worker."""
        deadline = time.monotonic() + timeout
        if self.journal.external:  # hand the open segment over first: the writer process removes it
            self.journal.retire()
            self.journal.flush()
        while self.journal.backlog() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.journal.flush()
        self.journal.retire()  # nothing for the next start to replay when all is written
        if self.writer is not None:
            log.info("store writer at stop: %s", self.writer.stats())
        return self.journal.backlog()

    def settled(self, items: list[JournalItem]) -> None:
        """The writer's callback: these lines are in the database (or rejected)."""
        with self._lock:
            for item in items:
                if item.entry.get("type") == "evaluation":
                    for card in _cards_of(item):
                        self._cards[card] -= 1
                        if self._cards[card] <= 0:
                            del self._cards[card]

    # -- EvaluationSink --------------------------------------------------------------------
    nonblocking = True  # a write() to the page cache: the hook calls it on its event loop, no thread hop

    def record_evaluation(self, record: EvaluationRecord) -> None:
        entry = {"type": "evaluation", "id": str(uuid.uuid4()), "recorded_at": utcnow().isoformat()}
        line = evaluation_line(entry, record)
        cards = [a.card_uuid for a in record.alerts if a.card_uuid]
        external = self.journal.external
        if not external:
            with self._lock:
                self._cards.update(cards)
        try:
            segment = self.journal.append(entry, record, line)
        except OSError as exc:
            if not external:
                with self._lock:
                    self._cards.subtract(cards)
            count_not_stored("journal-error")
            log.error("journal not writable (%s): writing this evaluation directly", type(exc).__name__)
            self.direct.record_evaluation(record)
            return
        if external and cards:
            with self._lock:
                self._segment_cards.setdefault(segment, set()).update(cards)
                if len(self._segment_cards) > self._prune_at:  # amortised: the database may be away long
                    self._forget_committed()
                    self._prune_at = max(64, 2 * len(self._segment_cards))

    def record_feedback(self, feedback: FeedbackRecord) -> bool:
        with self._lock:
            if self.journal.external:  # in a segment of ours not yet removed (= not all committed)
                ours = any(feedback.card_uuid in cards and path.exists()
                           for path, cards in self._segment_cards.items())
            else:
                ours = feedback.card_uuid in self._cards
        if not ours and not self._card_may_exist(feedback.card_uuid):
            return False
        entry = {"type": "feedback", "id": str(uuid.uuid4()), "received_at": utcnow().isoformat(),
                 "record": feedback.model_dump(mode="json")}
        try:
            self.journal.append(entry)
        except OSError as exc:
            count_not_stored("journal-error")
            log.error("journal not writable (%s): writing this feedback directly", type(exc).__name__)
            return self.direct.record_feedback(feedback)
        return True

    def _forget_committed(self) -> None:
        """External journal (lock held): drop the cards of segments the writer process removed."""
        for path in [p for p in self._segment_cards if not p.exists()]:
            del self._segment_cards[path]

    def _card_may_exist(self, card_uuid: str) -> bool:
        """In the database, or possibly in another process's journal (then the writer parks it)."""
        if self.available:
            try:
                with self._engine.connect() as conn:
                    if known_card(conn, card_uuid):
                        return True
            except Exception as exc:
                if not is_transient(exc):
                    raise
                return True  # the database is away: keep it, the writer decides when it is back
        else:
            return True
        return any(not p.name.startswith(f"journal-{self.journal.instance}-") for p in self.journal.files())


def evaluation_line(entry: dict[str, str], record: EvaluationRecord) -> bytes:
    """The journal line of an evaluation: ``entry`` (type, id, recorded_at) with the record's JSON.

    Byte for byte ``json.dumps(entry, separators=(",", ":"))`` with ``"record":`` and
    ``record.model_dump_json()`` as its last member, UTF-8, but cheaper on the hook's path (issue
    19): pydantic-core's serializer gives the record's UTF-8 bytes directly (``model_dump_json`` is
    those bytes decoded to a str, which the old line encoded back: two passes over ~7 KB, most
    records non-ASCII), and the head is formatted, not dumped — a uuid4 and an ``isoformat()``
    are ASCII with nothing JSON escapes (tests/test_journal_line.py holds both to the old way)."""
    record_json = record.__pydantic_serializer__.to_json(record)
    return b'{"type":"%s","id":"%s","recorded_at":"%s","record":%s}' % (
        entry["type"].encode(), entry["id"].encode(), entry["recorded_at"].encode(), record_json)


def _cards_of(item: JournalItem) -> list[str]:
    """Card uuids of a journaled evaluation (the record in memory, else the line's)."""
    if isinstance(item.value, EvaluationRecord):
        return [a.card_uuid for a in item.value.alerts if a.card_uuid]
    record = item.entry.get("record")
    alerts = record.get("alerts", []) if isinstance(record, dict) else []
    return [a["card_uuid"] for a in alerts if isinstance(a, dict) and a.get("card_uuid")]
