"""Alert-fatigue state in the evaluation store, so every worker and host sees the same answer.

Three small tables (migration 0005):

* ``card_displays`` — which (patient scope, tier, facts hash) was already shown at chart open
  (patient-view): the first insert wins, atomically (``ON CONFLICT DO NOTHING RETURNING``), so two
  workers answering the same chart open at once still show the card once.
* ``fatigue_cards`` — per card sent on a suppressible tier (and per suppressed card): the key a
  later prescriber override starts a window on (patient, tier, facts hash, issuer, tenant), the
  override reasons the card offered, and for a card not shown why (``suppressed_by``).
* ``suppressions`` — windows started by an *override in feedback* (never by a card being shown).

Every read fails safe: a database error means "show the card" (never a card hidden because the
store could not be asked).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Engine, Index, String, Table, Text, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB

from cds_engine.store.db import UTCDateTime
from cds_engine.store.models import Base

__all__ = ["KEEP_DAYS", "FatigueStore", "card_displays", "fatigue_cards", "purge_fatigue", "suppressions"]

#: fatigue state older than this is deleted (hourly). Forgetting only ever makes a card show again:
#: a shown-once mark, a suppression window or a card key past it is as if it never was.
KEEP_DAYS = 30

log = logging.getLogger("cds_engine.store")

_Json = JSON().with_variant(JSONB(), "postgresql")

card_displays = Table(
    "card_displays",
    Base.metadata,
    Column("scope_key", String(64), primary_key=True),  # sha256(pack, patient, encounter or day)
    Column("tier_id", String(96), primary_key=True),
    Column("facts_hash", String(64), primary_key=True),
    Column("first_shown_at", UTCDateTime(), nullable=False),
)

fatigue_cards = Table(
    "fatigue_cards",
    Base.metadata,
    Column("card_uuid", String(64), primary_key=True),
    Column("pack_id", String(64), nullable=False),
    Column("tier_id", String(96), nullable=False),
    Column("suppress_key", String(64), nullable=False),  # sha256(patient, tier, facts hash, issuer, tenant)
    Column("client_key", String(64), nullable=False),  # sha256(issuer, tenant) of the evaluation
    Column("override_reasons", _Json, nullable=False),
    Column("suppressed_by", Text, nullable=True),  # set when the card was evaluated but not shown
    Column("recorded_at", UTCDateTime(), nullable=False),
)

suppressions = Table(
    "suppressions",
    Base.metadata,
    Column("id", String(36), primary_key=True),
    Column("suppress_key", String(64), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("card_uuid", String(64), nullable=False),
    Column("reason_code", String(64), nullable=False),
    Column("by_override", Boolean, nullable=False, default=True),
    Index("ix_suppressions_key_started", "suppress_key", "started_at"),
)


def _insert_ignore(engine: Engine, table: Table) -> Any:
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


class FatigueStore:
    """Reads and writes the fatigue tables; every method is one short transaction."""

    def __init__(self, engine: Engine, available: Callable[[], bool] = lambda: True) -> None:
        """``available``: the sink's view of the database — while it is down, no connection is tried
        (every card shows; the hook never waits on a connect timeout for the fatigue state)."""
        self._engine = engine
        self._available = available

    def first_display(self, scope_key: str, tier_id: str, facts_hash: str, now: datetime) -> bool:
        """True when this (scope, tier, facts) has not been shown before (and marks it shown)."""
        if not self._available():
            return True
        try:
            with self._engine.begin() as conn:
                inserted = conn.execute(
                    _insert_ignore(self._engine, card_displays)
                    .values(scope_key=scope_key, tier_id=tier_id, facts_hash=facts_hash, first_shown_at=now)
                    .returning(card_displays.c.tier_id)
                ).first()
            return inserted is not None
        except Exception as exc:  # fail safe: a card is shown again rather than hidden
            log.warning("display state not read (%s): card shown", type(exc).__name__)
            return True

    def suppressing(self, suppress_key: str, now: datetime, window_minutes: float) -> str | None:
        """The override reason of a window open on this key at ``now``, or None (show the card)."""
        if window_minutes <= 0 or not self._available():
            return None
        try:
            with self._engine.connect() as conn:
                row = conn.execute(
                    select(suppressions.c.reason_code, suppressions.c.started_at)
                    .where(suppressions.c.suppress_key == suppress_key)
                    .where(suppressions.c.started_at >= now - timedelta(minutes=window_minutes))
                    .where(suppressions.c.started_at <= now)
                    .order_by(suppressions.c.started_at.desc())
                    .limit(1)
                ).first()
        except Exception as exc:
            log.warning("suppression state not read (%s): card shown", type(exc).__name__)
            return None
        if row is None:
            return None
        return f"override ({row.reason_code}) at {row.started_at.isoformat(timespec='seconds')}"

    def remember_cards(self, rows: Iterable[dict[str, Any]], now: datetime) -> None:
        """Keep the key of each card a later override may start a window on (best effort)."""
        values = [{**row, "recorded_at": now} for row in rows]
        if not values or not self._available():
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(_insert_ignore(self._engine, fatigue_cards), values)
        except Exception as exc:
            log.warning("fatigue keys not stored (%s): no suppression can start on these cards",
                        type(exc).__name__)

    def start_window(self, card_uuid: str, reason_code: str | None, client_key: str, now: datetime) -> str:
        """An override in feedback: start a window on the card's key. Returns what happened (a word).

        Only a card this service sent on a suppressible tier, and only with one of the override
        reasons that card offered, and only from the issuer (and tenant) that received the card,
        starts one; anything else changes nothing.
        """
        with self._engine.begin() as conn:
            card = conn.execute(
                select(fatigue_cards).where(fatigue_cards.c.card_uuid == card_uuid)
            ).first()
            if card is None or card.suppressed_by is not None:
                return "not-suppressible"
            if card.client_key != client_key:
                return "other-issuer"
            if reason_code is None or reason_code not in (card.override_reasons or []):
                return "reason-not-offered"
            conn.execute(
                suppressions.insert().values(
                    id=str(uuid.uuid4()), suppress_key=card.suppress_key, started_at=now,
                    card_uuid=card_uuid, reason_code=reason_code, by_override=True,
                )
            )
        return "started"


def purge_fatigue(conn: Any, now: datetime, keep_days: float = KEEP_DAYS) -> int:
    """Delete fatigue rows older than ``keep_days`` (count). Fail safe: cards show again, never less."""
    cutoff = now - timedelta(days=keep_days)
    deleted = 0
    for table, column in ((card_displays, card_displays.c.first_shown_at),
                          (fatigue_cards, fatigue_cards.c.recorded_at),
                          (suppressions, suppressions.c.started_at)):
        deleted += int(conn.execute(table.delete().where(column < cutoff)).rowcount or 0)
    return deleted
