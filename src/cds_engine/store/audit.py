"""The audit log: who did what, when, to what. Append-only — this module only ever inserts.

There is deliberately no update or delete function here or anywhere else; the database refuses
both too (triggers from the initial migration).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cds_engine.store.db import utcnow
from cds_engine.store.models import AuditEntry

__all__ = ["recent", "record"]

_MAX_TEXT = 2000


def _clip(value: Any) -> Any:
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if isinstance(value, dict):
        return {str(k)[:64]: _clip(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clip(v) for v in value]
    return value


def record(session: Session, *, actor: str, action: str, role: str | None = None,
           target_type: str | None = None, target_id: str | None = None,
           detail: dict[str, Any] | None = None, remote_addr: str | None = None) -> AuditEntry:
    """Add one entry to the session's transaction (it commits with the action it records)."""
    entry = AuditEntry(at=utcnow(), actor=actor[:64], role=role, action=action[:64], target_type=target_type,
                       target_id=None if target_id is None else str(target_id)[:256],
                       detail=_clip(detail or {}), remote_addr=remote_addr)
    session.add(entry)
    return entry


def recent(session: Session, *, limit: int = 100, action: str | None = None,
           target_id: str | None = None) -> list[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if target_id is not None:
        query = query.where(AuditEntry.target_id == target_id)
    return list(session.scalars(query))
