"""CDS Hooks 2.0 wire models: what the EHR sends and what we answer.

There is no official JSON Schema for 2.0, so these pydantic models *are* our reading of the spec
(https://cds-hooks.hl7.org/2.0/; real requests in ``examples/cds-hooks``); they also document the
endpoints in the OpenAPI schema. Requests are lenient only where real EHRs deviate in known, harmless ways
(``Patient/``-prefixed ``patientId``, an empty ``prefetch`` object); anything else that breaks
the spec is a 400 naming the field. Responses are strict: optional elements are omitted, never
``null`` or empty.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cds_engine.service.deviations import note_deviation
from cds_engine.service.limits import (
    MAX_ACCEPTED_SUGGESTIONS,
    MAX_FEEDBACK_ITEMS,
    MAX_SELECTIONS,
    list_bound,
)

__all__ = [
    "Action",
    "Card",
    "CardsResponse",
    "CdsCoding",
    "CdsService",
    "DiscoveryResponse",
    "Feedback",
    "FeedbackRequest",
    "FhirAuthorization",
    "HookRequest",
    "Link",
    "OrderContext",
    "OverrideReason",
    "Source",
    "Suggestion",
]

_TYPE_ID = re.compile(r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


class _In(BaseModel):
    """Request side: unknown members (``extension``, 3.0 additions) are accepted and ignored."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ── requests ───────────────────────────────────────────────────────────────────────────────
class FhirAuthorization(_In):
    access_token: str = Field(..., min_length=1)
    token_type: Literal["Bearer", "bearer"]
    expires_in: int = Field(..., ge=0)
    scope: str = Field(..., min_length=1)
    subject: str = Field(..., min_length=1)
    patient: str | None = None


def _bare_id(value: str | None, resource_type: str) -> str | None:
    """Tolerated deviation: ``Patient/123`` where the spec wants ``123`` (counted)."""
    if value is None:
        return None
    value = value.strip()
    prefix = resource_type + "/"
    if value.startswith(prefix):
        note_deviation(f"context.{resource_type.lower()}Id", f"{resource_type.lower()}-id-prefixed")
        return value[len(prefix) :]
    return value


class OrderContext(_In):
    """Context of ``order-select`` (with ``selections``) and ``order-sign`` (without)."""

    userId: str | None = Field(
        None, description="Practitioner/… or PractitionerRole/… of the ordering user (missing: unknown)"
    )
    patientId: str = Field(
        ..., min_length=1, description="FHIR Patient.id (a 'Patient/' prefix is tolerated)"
    )
    encounterId: str | None = Field(None, min_length=1)
    selections: Annotated[list[str] | None, list_bound(MAX_SELECTIONS, "context.selections")] = Field(
        None, description="order-select: Type/id of the newly selected orders"
    )
    draftOrders: dict[str, Any] = Field(..., description="FHIR Bundle of the unsigned orders")

    @field_validator("userId")
    @classmethod
    def _user_reference(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _TYPE_ID.match(value.strip()):
            raise ValueError("must be a Type/id reference such as Practitioner/123")
        return value.strip()

    @field_validator("patientId")
    @classmethod
    def _patient(cls, value: str) -> str:
        return _bare_id(value, "Patient") or value

    @field_validator("encounterId")
    @classmethod
    def _encounter(cls, value: str | None) -> str | None:
        return _bare_id(value, "Encounter")

    @model_validator(mode="after")
    def _count_missing_user(self) -> OrderContext:
        if self.userId is None:
            note_deviation("context.userId", "user-id-missing")
        return self

    @field_validator("selections")
    @classmethod
    def _selections(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            if not _TYPE_ID.match(item):
                raise ValueError("every selection must be a Type/id reference")
        return value


class HookRequest(_In):
    hook: str = Field(..., min_length=1, examples=["order-sign"])
    hookInstance: str = Field(..., description="UUID of this hook invocation")
    fhirServer: str | None = Field(None, description="Base URL of the EHR's FHIR server")
    fhirAuthorization: FhirAuthorization | None = None
    context: OrderContext
    prefetch: dict[str, Any] | None = Field(
        None, description="Prefetch key → resource, searchset Bundle, OperationOutcome, or null"
    )

    @field_validator("hookInstance")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            uuid.UUID(value)
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError("must be a UUID") from exc
        return value

    @field_validator("fhirServer")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is required when fhirAuthorization is sent")
        return self


class FhirCoding(_In):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class OverrideReason(_In):
    reason: FhirCoding | None = None
    userComment: str | None = None


class AcceptedSuggestion(_In):
    id: str


class Feedback(_In):
    card: str = Field(..., min_length=1, description="uuid of the card")
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: Annotated[
        list[AcceptedSuggestion], list_bound(MAX_ACCEPTED_SUGGESTIONS, "feedback.acceptedSuggestions")
    ] = Field(default_factory=list)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime

    @model_validator(mode="before")
    @classmethod
    def _legacy_reason(cls, data: Any) -> Any:
        """Older sandbox builds put the Coding directly under ``overrideReason`` (sandbox PR #135)."""
        if isinstance(data, dict):
            reason = data.get("overrideReason")
            if isinstance(reason, dict) and "code" in reason and "reason" not in reason:
                data = {**data, "overrideReason": {"reason": reason}}
        return data

    @model_validator(mode="after")
    def _accepted_needs_suggestions(self) -> Feedback:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required when outcome is accepted")
        return self


class FeedbackRequest(_In):
    """At most :data:`~cds_engine.service.limits.MAX_FEEDBACK_ITEMS` items (413 beyond, before any
    item is validated); an item sent twice in one call is stored once (re-audit #5)."""

    feedback: Annotated[list[Feedback], list_bound(MAX_FEEDBACK_ITEMS, "feedback")] = Field(..., min_length=1)

    @field_validator("feedback")
    @classmethod
    def _dedupe(cls, value: list[Feedback]) -> list[Feedback]:
        """Drop exact repeats (every member equal, extensions included), first one kept in order.
        Items that differ in anything — another outcome or reason for the same card — all stay."""
        seen: set[str] = set()
        unique = []
        for item in value:
            key = item.model_dump_json()
            if key not in seen:
                seen.add(key)
                unique.append(item)
        return unique


# ── responses ──────────────────────────────────────────────────────────────────────────────
class CdsCoding(_Out):
    system: str
    code: str
    display: str | None = None


class Source(_Out):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: CdsCoding | None = None


class Action(_Out):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(_Out):
    label: str
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] = Field(..., min_length=1)


class Link(_Out):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Card(_Out):
    uuid: str
    summary: str = Field(..., max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[CdsCoding] | None = None
    links: list[Link] | None = None

    @model_validator(mode="after")
    def _selection_with_suggestions(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required with suggestions")
        return self


class CardsResponse(_Out):
    cards: list[Card] = Field(default_factory=list)


class CdsService(_Out):
    hook: str
    title: str
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class DiscoveryResponse(_Out):
    services: list[CdsService]
