"""Issue 19 item 2a: the hook's store step is built cheaper, never differently.

``HookHandler._record`` used to build each record as ``EvaluationRecord(...)`` around one
``IssuedAlert(...)`` per alert; it now hands the same fields to pydantic-core's validator in one
call. ``_patient`` walks the record once for the 412 check and the
demographics. Here each is held to the old way: equal models, equal JSON bytes, the same fields
set, the same refusals.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from cds_engine.service.discovery import ServiceRef
from cds_engine.service.errors import HookError
from cds_engine.service.hook import HookHandler, _new_record, order_key
from cds_engine.service.models import HookRequest
from cds_engine.sources.demographics import from_fhir_patient
from cds_engine.store.api import EvaluationRecord, IssuedAlert, NullSink
from service_helpers import RecordingSink, hook_request, medication_request
from store_helpers import make_alert

AS_OF = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-02-03",
           "name": [{"use": "official", "given": ["Ada"], "family": "Líndqvist"}],
           "identifier": [{"type": {"coding": [{"code": "MR"}], "text": "MRN"}, "value": "12345"}]}


@dataclass
class _Card:
    """What ``_record`` reads of a card: its uuid and its suggestions."""

    uuid: str
    suggestions: list[Any] | None = field(default_factory=list)


def _old_record(ref: ServiceRef, request: HookRequest, as_of: datetime, draft: dict[str, Any],
                pairs: list[tuple[Any, Any]], shown: bool, issuer: str | None, who: Any,
                hidden: dict[str, str] | None) -> EvaluationRecord:
    """The record as ``HookHandler._record`` built it before (keyword construction per model)."""
    info = ref.pack.spec.pack
    return EvaluationRecord(
        source="hook", hook_instance=request.hookInstance, hook=request.hook, service_id=ref.id,
        patient_ref=f"Patient/{request.context.patientId}",
        encounter_ref=f"Encounter/{request.context.encounterId}" if request.context.encounterId else None,
        user_ref=request.context.userId or "unknown", order_key=order_key(request, draft, issuer),
        order=draft, as_of=as_of, pack_id=info.id, pack_version=info.version,
        pack_hash=ref.pack.content_hash,
        alerts=[IssuedAlert(alert=a, card_uuid=c.uuid if c else None,
                            shown=shown and not (c is not None and c.uuid in (hidden or {})),
                            card_suggestions=len(c.suggestions or []) if c else None)
                for a, c in pairs],
        demographics=who,
    )


def _request(encounter: str | None, user: bool) -> tuple[HookRequest, list[dict[str, Any]]]:
    drafts = [medication_request(id="mr-1", dose=20, per_day=3),
              medication_request(id="mr-2", dose=5, per_day=2)]
    body = hook_request("order-sign", "p1", drafts, encounter=encounter)
    if not user:
        del body["context"]["userId"]
    return HookRequest.model_validate(body), drafts


@pytest.mark.parametrize("shown", [True, False])
@pytest.mark.parametrize("encounter,user", [("e1", True), (None, False)])
def test_record_as_before(pack, shown: bool, encounter: str | None, user: bool) -> None:
    request, drafts = _request(encounter, user)
    ref = ServiceRef(id="baclofen-order-sign", hook="order-sign", pack=pack)
    alerts = [make_alert("TST-R01"), make_alert("TST-R02", "critical", summary="Stop — é ≥ 中文"),
              make_alert("TST-R03", "info", suggestions=False)]
    cards = [_Card("c-1", [object(), object()]), _Card("c-2", None), None]
    issued = [(drafts[0], None, list(zip(alerts, cards, strict=True))),
              (drafts[1], None, [(alerts[2], None)])]
    hidden = {"c-2": "not shown — repeat"}
    who = from_fhir_patient(PATIENT)
    sink = RecordingSink()
    handler = HookHandler(sink, None)
    asyncio.run(handler._record(ref, request, pack, AS_OF, issued, shown=shown, issuer="iss", who=who,
                                hidden=hidden))
    expected = [_old_record(ref, request, AS_OF, d, p, shown, "iss", who, hidden) for d, _, p in issued]
    assert sink.evaluations == expected
    for got, want in zip(sink.evaluations, expected, strict=True):
        assert got.model_dump_json() == want.model_dump_json()
        assert got.model_fields_set == want.model_fields_set
        assert [a.model_fields_set for a in got.alerts] == [a.model_fields_set for a in want.alerts]
    assert [a.shown for a in sink.evaluations[0].alerts] == [shown, False, shown]  # c-2 hidden
    assert [a.card_suggestions for a in sink.evaluations[0].alerts] == [2, 0, None]


def test_record_refuses_as_before() -> None:
    """A field the model refuses is refused the same way (a ValidationError, not a half record)."""
    fields = {"source": "hook", "as_of": AS_OF, "pack_id": "p", "pack_version": "1", "pack_hash": "h",
              "alerts": [{"alert": make_alert(), "card_uuid": None, "shown": "perhaps",
                          "card_suggestions": None}]}
    with pytest.raises(ValidationError):
        _new_record(fields)
    with pytest.raises(ValidationError):
        EvaluationRecord(**{**fields, "alerts": [IssuedAlert(**fields["alerts"][0])]})


@pytest.mark.parametrize("store", [True, False])
def test_patient_found_once(store: bool) -> None:
    """Demographics are the first matching Patient's (as before); 412 when the patient is absent."""
    handler = HookHandler(RecordingSink() if store else NullSink(), None)
    request, _ = _request("e1", True)
    other = {**PATIENT, "id": "p2", "name": [{"text": "Someone Else"}]}
    second = {**PATIENT, "name": [{"text": "A later copy"}]}
    pool = [{"resourceType": "Observation", "id": "p1"}, other, PATIENT, second]
    assert handler._patient(pool, request) == (from_fhir_patient(PATIENT) if store else None)
    with pytest.raises(HookError) as refused:
        handler._patient([other], request)
    assert refused.value.status == 412
