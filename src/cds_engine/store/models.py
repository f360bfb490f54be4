"""The tables. Migrations (``store/migrations``) create them; these models only read and write.

Two outcomes are kept apart on purpose: what the *prescriber* did with a card (CDS Hooks
feedback, ``prescriber_feedback``) and what a *reviewer* decided on the page
(``review_decisions``). Each alert row also carries the latest of each, for filtering.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cds_engine.store.db import UTCDateTime

__all__ = [
    "AlertRow",
    "AuditEntry",
    "Base",
    "BatchRun",
    "Evaluation",
    "OrderRow",
    "Patient",
    "PrescriberFeedback",
    "ReviewDecision",
    "ReviewSession",
    "User",
]

Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

SOURCES = ("hook", "evaluate", "batch", "patient-view")  # patient-view: migration 0005
SEVERITIES = ("info", "warning", "critical")
REVIEW_STATUSES = ("open", "acknowledged", "overridden")
PRESCRIBER_OUTCOMES = ("accepted", "overridden")
ROLES = ("reviewer", "admin")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(), dict[str, Any]: Json, list[Any]: Json,
    }


class BatchRun(Base):
    __tablename__ = "batch_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="running")
    description: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Evaluation(Base):
    """One pack evaluated for one patient at one moment (a hook call, /evaluate, a batch row)."""

    __tablename__ = "evaluations"
    __table_args__ = (
        CheckConstraint(_in("source", SOURCES), name="ck_evaluations_source"),
        Index("ix_evaluations_hypothetical_as_of", "hypothetical", "as_of"),
        Index("ix_evaluations_order_base_as_of", "order_base", "as_of"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    hook_instance: Mapped[str | None] = mapped_column(String(128))
    # sha256(source, hookInstance, pack, order key): a retried hook call stores nothing new, while
    # the several draft orders of one call (same hookInstance) are each kept. NULL without a hookInstance.
    dedup_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    hook: Mapped[str | None] = mapped_column(String(64))
    service_id: Mapped[str | None] = mapped_column(String(128))
    patient_ref: Mapped[str | None] = mapped_column(String(256), index=True)
    encounter_ref: Mapped[str | None] = mapped_column(String(256))
    user_ref: Mapped[str | None] = mapped_column(String(256))
    order_key: Mapped[str | None] = mapped_column(String(256), index=True)
    # The order without its ordering session (issuer, patient, encounter, draft id, product): the
    # writer finds the session's ``order_key`` through it (migration 0004, store/order_sessions.py).
    order_base: Mapped[str | None] = mapped_column(String(64))
    as_of: Mapped[datetime] = mapped_column(index=True)
    recorded_at: Mapped[datetime]
    pack_id: Mapped[str] = mapped_column(String(64))
    pack_version: Mapped[str] = mapped_column(String(32))
    pack_hash: Mapped[str] = mapped_column(String(128))
    site_hash: Mapped[str | None] = mapped_column(String(128))
    batch_run_id: Mapped[str | None] = mapped_column(ForeignKey("batch_runs.id"), index=True)
    # A screening of an assumed order (``screen --assume-order``): "what would fire", not an event.
    # Left out of the default queue and analytics (migration 0002).
    hypothetical: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Patient(Base):
    """Who the patient is, as the EHR sent it: one row per patient reference (migration 0004).

    Shown on the review pages only; purged ``demographics_retention_days`` after the patient's last
    alert is closed (store/patients.py); never written with ``--no-demographics``.
    """

    __tablename__ = "patients"

    patient_ref: Mapped[str] = mapped_column(String(256), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    birth_date: Mapped[str | None] = mapped_column(String(32))
    identifiers: Mapped[list[Any]] = mapped_column(default=list)
    updated_at: Mapped[datetime] = mapped_column(index=True)


class OrderRow(Base):
    """The order as written (FHIR JSON or facts), one per evaluation that had one."""

    __tablename__ = "orders"

    evaluation_id: Mapped[str] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    order_key: Mapped[str | None] = mapped_column(String(256))
    body: Mapped[dict[str, Any]]


class AlertRow(Base):
    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(_in("severity", SEVERITIES), name="ck_alerts_severity"),
        CheckConstraint(_in("review_status", REVIEW_STATUSES), name="ck_alerts_review_status"),
        CheckConstraint(
            f"prescriber_outcome IS NULL OR {_in('prescriber_outcome', PRESCRIBER_OUTCOMES)}",
            name="ck_alerts_prescriber_outcome",
        ),
        Index("ix_alerts_rule_severity", "rule_id", "severity"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    # indexed by ix_alerts_rule_severity (rule_id first): its own index was dropped (migration 0008)
    rule_id: Mapped[str] = mapped_column(String(64))
    tier_id: Mapped[str] = mapped_column(String(96))
    title: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]]
    missing: Mapped[list[Any]]
    not_assessed: Mapped[list[Any]]
    suggestions: Mapped[list[Any]]
    sources: Mapped[list[Any]]
    pack_id: Mapped[str] = mapped_column(String(64))
    pack_version: Mapped[str] = mapped_column(String(32))
    pack_hash: Mapped[str] = mapped_column(String(128))
    pack_url: Mapped[str | None] = mapped_column(Text)
    approval: Mapped[str | None] = mapped_column(String(48))
    card_uuid: Mapped[str | None] = mapped_column(String(64), index=True)
    shown: Mapped[bool] = mapped_column(Boolean, default=True)
    # Suggestions on the card as sent (may be fewer than the rule's); None: not known (migration 0003).
    card_suggestions: Mapped[int | None] = mapped_column(Integer)
    # Latest prescriber outcome (from feedback) — the history is in prescriber_feedback.
    prescriber_outcome: Mapped[str | None] = mapped_column(String(16))
    prescriber_outcome_at: Mapped[datetime | None]
    suggestion_accepted: Mapped[bool | None] = mapped_column(Boolean)
    # Latest reviewer decision — the history is in review_decisions.
    review_status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    reviewed_at: Mapped[datetime | None]
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class PrescriberFeedback(Base):
    """CDS Hooks feedback: what the prescriber did with the card."""

    __tablename__ = "prescriber_feedback"
    __table_args__ = (CheckConstraint(_in("outcome", PRESCRIBER_OUTCOMES), name="ck_feedback_outcome"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    card_uuid: Mapped[str] = mapped_column(String(64))
    service_id: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))
    accepted_suggestions: Mapped[list[Any]]
    override_reason_code: Mapped[str | None] = mapped_column(String(64))
    override_reason_display: Mapped[str | None] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(String(256))
    outcome_timestamp: Mapped[datetime]
    received_at: Mapped[datetime]


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="ck_users_role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class ReviewDecision(Base):
    """A reviewer's acknowledgement or override on the page (never mixed with prescriber feedback)."""

    __tablename__ = "review_decisions"
    __table_args__ = (
        CheckConstraint(_in("decision", ("acknowledged", "overridden")), name="ck_decisions_decision"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason_display: Mapped[str | None] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(Text)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime]


class ReviewSession(Base):
    """Server-side sessions of the page; only a hash of the cookie's token is stored."""

    __tablename__ = "review_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AuditEntry(Base):
    """Append-only: the code never updates or deletes; triggers refuse it in the database too."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    remote_addr: Mapped[str | None] = mapped_column(String(64))
