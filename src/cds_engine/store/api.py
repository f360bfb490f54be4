"""The contract between the ways in (hook, /evaluate, batch) and the alert store.

The service depends only on this protocol, so it runs (and is tested) with or without a
database, and the store can spool to disk when the database is down without the hook knowing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from cds_engine.alerts import Alert
from cds_engine.sources.demographics import PatientDemographics

__all__ = ["EvaluationRecord", "EvaluationSink", "FeedbackRecord", "IssuedAlert", "NullSink"]


class IssuedAlert(BaseModel):
    alert: Alert
    card_uuid: str | None = Field(None, description="uuid of the CDS Hooks card that showed it")
    shown: bool = Field(True, description="False for silent-mode (draft pack) alerts")
    card_suggestions: int | None = Field(
        None, description="Suggestions on the card as sent (None: no card, or not known)")


class EvaluationRecord(BaseModel):
    source: Literal["hook", "evaluate", "batch", "patient-view"]
    hook_instance: str | None = None
    hook: str | None = None
    service_id: str | None = None
    patient_ref: str | None = Field(None, description="Opaque patient reference (no name, no birth date)")
    encounter_ref: str | None = None
    user_ref: str | None = None
    order_key: str | None = Field(
        None, description="The order's identity (issuer, patient, encounter, draft id, product); the writer "
        "folds it into an ordering session so order-select and order-sign of one order count once")
    order: dict[str, Any] | None = Field(None, description="The order as written (FHIR JSON or facts)")
    as_of: datetime
    pack_id: str
    pack_version: str
    pack_hash: str
    site_hash: str | None = None
    batch_run_id: str | None = None
    hypothetical: bool = Field(False, description="A screening of an assumed order, not an order written")
    alerts: list[IssuedAlert] = Field(default_factory=list)
    demographics: PatientDemographics | None = Field(
        None, description="Who the patient is, as sent (one row per patient_ref; None: not sent or not kept)")


class FeedbackRecord(BaseModel):
    service_id: str
    card_uuid: str
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: list[str] = Field(default_factory=list)
    override_reason_code: str | None = None
    override_reason_display: str | None = None
    comment: str | None = None
    user_id: str | None = None
    outcome_timestamp: datetime


class EvaluationSink(Protocol):
    """Where evaluations go. Implementations must not raise into the hook: spool instead."""

    def record_evaluation(self, record: EvaluationRecord) -> None: ...

    def record_feedback(self, feedback: FeedbackRecord) -> bool:
        """Store prescriber feedback; False when no card with that uuid is known."""
        ...


class NullSink:
    """Keeps nothing (``--db none``, unit tests)."""

    def record_evaluation(self, record: EvaluationRecord) -> None:
        return None

    def record_feedback(self, feedback: FeedbackRecord) -> bool:
        return True
