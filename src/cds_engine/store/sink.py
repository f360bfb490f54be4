"""The hook's way into the store: :class:`StoreSink`, an :class:`~cds_engine.store.api.EvaluationSink`.

The hook waits on at most one short transaction per evaluation, and never on a database
that is known to be away: after a failure the sink goes straight to the spool (no connection
attempt, so no connect timeout per request) until the drainer finds the database again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from cds_engine.store.api import EvaluationRecord, FeedbackRecord
from cds_engine.store.db import redact, utcnow
from cds_engine.store.failures import count_not_stored
from cds_engine.store.spool import Spool, SpoolEntry, TransientError
from cds_engine.store.writer import apply_feedback, insert_evaluation, known_card

__all__ = ["StoreSink", "is_transient"]

log = logging.getLogger("cds_engine.store")

_TRANSIENT = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError,
              ConnectionError, TimeoutError)


def is_transient(error: BaseException) -> bool:
    """Database away, locked or timed out — as opposed to data it will never accept."""
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, _TRANSIENT)


class StoreSink:
    """Writes evaluations and feedback; spools them while the database is unavailable."""

    def __init__(self, engine: Engine, spool: Spool, *, ready: bool, retry_interval: float = 2.0) -> None:
        self._engine = engine
        self.spool = spool
        self.retry_interval = retry_interval
        self._ready = ready  # migrations done
        self._down_since: float | None = None if ready else time.monotonic()
        self._state = threading.Lock()
        self._spooled_cards: set[str] = set()

    # -- state -----------------------------------------------------------------------------
    @property
    def migrated(self) -> bool:
        return self._ready

    @property
    def available(self) -> bool:
        return self._ready and self._down_since is None

    def mark_down(self, error: BaseException) -> None:
        with self._state:
            if self._down_since is None:
                log.warning("database %s unavailable (%s): spooling to %s", redact(self._engine.url),
                            type(error).__name__, self.spool.directory)
                self._down_since = time.monotonic()

    def mark_up(self) -> None:
        with self._state:
            if self._down_since is not None:
                log.warning("database %s available again after %.1f s", redact(self._engine.url),
                            time.monotonic() - self._down_since)
            self._down_since = None
            self._ready = True

    # -- EvaluationSink --------------------------------------------------------------------
    def record_evaluation(self, record: EvaluationRecord) -> None:
        evaluation_id, recorded_at = str(uuid.uuid4()), utcnow()
        if self.available:
            try:
                with self._engine.begin() as conn:
                    insert_evaluation(conn, record, evaluation_id, recorded_at)
                return
            except Exception as exc:
                if is_transient(exc):
                    self.mark_down(exc)
                else:  # never raise into the hook; the spool keeps it and the drainer rejects it visibly
                    count_not_stored("spooled-after-error")
                    log.error("evaluation not stored (%s); kept in the spool", type(exc).__name__)
        self._spool_evaluation(record, evaluation_id, recorded_at)

    def record_feedback(self, feedback: FeedbackRecord) -> bool:
        feedback_id, received_at = str(uuid.uuid4()), utcnow()
        if self.available:
            try:
                with self._engine.begin() as conn:
                    if apply_feedback(conn, feedback, feedback_id, received_at):
                        return True
                    if feedback.card_uuid not in self._spooled_cards:
                        return False
                # The card is still in the spool: queue the feedback behind it.
            except Exception as exc:
                if is_transient(exc):
                    self.mark_down(exc)
                else:
                    log.error("feedback not stored (%s); kept in the spool", type(exc).__name__)
        self.spool.append({"type": "feedback", "id": feedback_id, "received_at": received_at.isoformat(),
                           "record": feedback.model_dump(mode="json")})
        return True

    def record_evaluations(self, records: list[EvaluationRecord]) -> int:
        """Many evaluations in one transaction (batch runs); returns how many were new."""
        now = utcnow()
        pairs = [(r, str(uuid.uuid4())) for r in records]
        if self.available:
            try:
                with self._engine.begin() as conn:
                    return sum(insert_evaluation(conn, r, eid, now) for r, eid in pairs)
            except Exception as exc:
                if is_transient(exc):
                    self.mark_down(exc)
                else:
                    log.error("evaluations not stored (%s); kept in the spool", type(exc).__name__)
        for record, evaluation_id in pairs:
            self._spool_evaluation(record, evaluation_id, now)
        return 0

    def _spool_evaluation(self, record: EvaluationRecord, evaluation_id: str, recorded_at: datetime) -> None:
        self.spool.append({"type": "evaluation", "id": evaluation_id, "recorded_at": recorded_at.isoformat(),
                           "record": record.model_dump(mode="json")})
        self._spooled_cards.update(i.card_uuid for i in record.alerts if i.card_uuid)

    # -- draining ----------------------------------------------------------------------------
    def apply_spooled(self, entry: SpoolEntry) -> None:
        """Apply one spooled line (idempotent). Raises TransientError while the database is away."""
        try:
            kind, entry_id = entry["type"], entry["id"]
            when = datetime.fromisoformat(entry.get("recorded_at") or entry["received_at"])
            payload: Any = entry["record"]
            with self._engine.begin() as conn:
                if kind == "evaluation":
                    insert_evaluation(conn, EvaluationRecord.model_validate(payload), entry_id, when)
                elif kind == "feedback":
                    feedback = FeedbackRecord.model_validate(payload)
                    if not known_card(conn, feedback.card_uuid):
                        raise LookupError(f"feedback for unknown card {feedback.card_uuid}")
                    apply_feedback(conn, feedback, entry_id, when)
                else:
                    raise ValueError(f"unknown spool entry type {kind!r}")
        except (KeyError, ValidationError, ValueError, LookupError):
            raise
        except Exception as exc:
            if is_transient(exc):
                self.mark_down(exc)
                raise TransientError(str(exc)) from exc
            raise

    def drain(self) -> tuple[int, bool]:
        """Replay the spool; (lines applied, whether it got through without the database failing)."""
        applied, complete = self.spool.drain(self.apply_spooled)
        if not self.spool.pending():
            self._spooled_cards.clear()
        return applied, complete
