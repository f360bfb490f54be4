"""The ``draftOrders`` Bundle: validate the medication orders we advise on, pick the ones under review.

Draft MedicationRequests are the input the advice is about, so they are validated with the
``fhir.resources.R4B`` model (R4-compatible; the package's default models are R5). A draft that
is not a valid R4 MedicationRequest is a 400 naming the element, e.g.
``context.draftOrders.entry[0].resource.dosageInstruction[0].timing``. Other request types
(NutritionOrder, ServiceRequest …) are context only and are not validated here.

Tolerated deviations, each seen in real payloads (``examples/cds-hooks/README.md``, the sandbox
captures in ``examples/cds-hooks/sandbox/``), each counted and logged by field path and kind
(:mod:`cds_engine.service.deviations`): a Bundle without ``type`` (or of type ``transaction``),
drafts without ``id``, status ``active`` on order-sign (re-signed orders), ``doseAndRate`` or
``category`` sent as one object instead of a list (Inferno/CRD; the CDS Hooks Sandbox), no
``intent`` (read as an order), a draft with no medication yet (the sandbox, before one is picked:
nothing to check, no card), a medication named by text only. A dose that cannot be read (an
invalid ``doseAndRate`` or ``timing``) costs that draft its dose checks (cannot-assess), not the
request a 400; a negative dose stays a 400.

Validation with ``fhir.resources`` costs ~0.17 ms per small draft (a Python validator on every
nested element), the largest single step of mapping a hook call. The same draft is sent again and
again (order-select on each change, then order-sign; every draft of a multi-order call each
time), so the digests of draft contents that validated are remembered (bounded, per process): a
draft with the same JSON content is valid again without re-running the model. Only successes are
remembered, and only a SHA-256 digest (no PHI kept); a failing draft is validated each time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.medicationrequest import MedicationRequest
from pydantic import ValidationError

from cds_engine.service.deviations import note_deviation
from cds_engine.service.errors import HookError
from cds_engine.service.models import HookRequest

__all__ = ["DraftOrders", "read_draft_orders", "warm_up"]

_PREFIX = "context.draftOrders"
_SKIPPED_STATUS = frozenset({"entered-in-error"})


@dataclass(slots=True)
class DraftOrders:
    resources: list[dict[str, Any]]  # every resource of the bundle (contained Medications resolve from here)
    medication_requests: list[dict[str, Any]]  # valid draft MedicationRequests, in bundle order
    reviewed: list[dict[str, Any]]  # the ones under review: selections (order-select) or all (order-sign)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _writable_copy(resource: dict[str, Any]) -> dict[str, Any]:
    """A copy of the parts the tolerance rules and the dose dropping change (top level, instructions).

    Why not ``copy.deepcopy``: those are the only places written (here and in
    :func:`_drop_unreadable_dose`), the rest is read-only and may stay shared with the request;
    deepcopy cost as much as everything else in reading the drafts but the validation.
    """
    fixed = dict(resource)
    instructions = fixed.get("dosageInstruction")
    if isinstance(instructions, list):
        fixed["dosageInstruction"] = [dict(i) if isinstance(i, dict) else i for i in instructions]
    return fixed


def _tolerate(resource: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy with the known harmless deviations read the R4 way (each one counted)."""
    fixed = _writable_copy(resource)
    if isinstance(fixed.get("category"), dict):
        fixed["category"] = [fixed["category"]]
        note_deviation(f"{where}.category", "category-object")
    for i, dosage in enumerate(fixed.get("dosageInstruction") or []):
        if isinstance(dosage, dict) and isinstance(dosage.get("doseAndRate"), dict):
            dosage["doseAndRate"] = [dosage["doseAndRate"]]
            note_deviation(f"{where}.dosageInstruction[{i}].doseAndRate", "dose-and-rate-object")
    if "intent" not in fixed:
        fixed["intent"] = "order"
        note_deviation(f"{where}.intent", "intent-missing")
    concept = fixed.get("medicationCodeableConcept")
    if isinstance(concept, dict) and not any(
        isinstance(c, dict) and c.get("code") for c in concept.get("coding") or []
    ):
        note_deviation(f"{where}.medicationCodeableConcept", "medication-text-only")
    return fixed


def _has_medication(resource: dict[str, Any]) -> bool:
    return "medicationCodeableConcept" in resource or "medicationReference" in resource


def _validate(resource: dict[str, Any], where: str) -> dict[str, Any]:
    """The draft as the engine reads it, or a 400 naming the field that cannot be read. A draft
    nested deeper than the interpreter can walk (hostile or broken) cannot be read at all: a 400,
    never a 500."""
    try:
        return _validated(resource, where)
    except RecursionError as exc:
        raise HookError(400, where, "the draft is nested too deeply to be read") from exc


def _validated(resource: dict[str, Any], where: str) -> dict[str, Any]:
    negative = _negative_amount(resource)
    if negative is not None:
        raise HookError(400, f"{where}{negative}", "a dose amount cannot be negative")
    resource = _tolerate(resource, where)
    for _ in range(8):  # each round drops one unreadable dose element; a draft has few of them
        try:
            _check_r4(resource)
            return resource
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = tuple(p for p in err["loc"] if p != "__root__")
            if not _drop_unreadable_dose(resource, loc, where):
                raise HookError(400, f"{where}{_path(loc)}", str(err["msg"])) from exc
    raise HookError(400, f"{where}.dosageInstruction", "the dose instructions cannot be read")


_VALID_MAX = 4096  # digests of valid drafts kept (32 bytes each); all forgotten when full
_valid: set[bytes] = set()


def _content_digest(resource: dict[str, Any]) -> bytes | None:
    """SHA-256 of the draft's canonical JSON (sorted keys), None when it cannot be serialised.

    Two drafts with the same digest are the same JSON document, hence equally valid: key order
    never matters to the model, and ``1``/``1.0``/``true`` serialise apart.
    """
    try:
        text = json.dumps(resource, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):  # not JSON content: validate without remembering
        return None
    return hashlib.sha256(text.encode()).digest()


def _check_r4(resource: dict[str, Any]) -> None:
    """``MedicationRequest.model_validate``, skipped for content that validated before (module doc)."""
    digest = _content_digest(resource)
    if digest is not None and digest in _valid:
        return
    MedicationRequest.model_validate(resource)  # raises ValidationError: nothing remembered
    if digest is not None:
        if len(_valid) >= _VALID_MAX:
            _valid.clear()
        _valid.add(digest)


def _drop_unreadable_dose(resource: dict[str, Any], loc: tuple[int | str, ...], where: str) -> bool:
    """Forget the unreadable dose part of one instruction (its dose checks become cannot-assess).

    An invalid ``doseAndRate`` loses the amount; an invalid ``timing`` the frequency; anything
    else invalid inside the instruction loses the instruction. False when ``loc`` is no dose.
    """
    if len(loc) < 2 or loc[0] != "dosageInstruction" or not isinstance(loc[1], int):
        return False
    instructions = resource.get("dosageInstruction")
    if not isinstance(instructions, list) or not 0 <= loc[1] < len(instructions):
        return False
    instruction = instructions[loc[1]]
    part = loc[2] if len(loc) > 2 else None
    if isinstance(instruction, dict) and part in ("doseAndRate", "timing") and part in instruction:
        del instruction[part]
    else:
        del instructions[loc[1]]
        if not instructions:
            del resource["dosageInstruction"]
    note_deviation(f"{where}.dosageInstruction[{loc[1]}]" + (f".{part}" if part else ""), "dose-unreadable")
    return True


def _negative_amount(resource: dict[str, Any]) -> str | None:
    """The path of the first negative dose quantity, if any.

    R4 Quantity allows negative values, but a negative dose is always an entry error; mapping it
    would fail deep in the fact model (a 500), and flagging it needs the field's name.
    """
    for i, instruction in enumerate(resource.get("dosageInstruction") or []):
        if not isinstance(instruction, dict):
            continue
        rates = instruction.get("doseAndRate") or []
        for j, rate in enumerate([rates] if isinstance(rates, dict) else rates):
            if not isinstance(rate, dict):
                continue
            quantities = [("doseQuantity", rate.get("doseQuantity"))]
            dose_range = rate.get("doseRange") if isinstance(rate.get("doseRange"), dict) else {}
            quantities += [(f"doseRange.{end}", dose_range.get(end)) for end in ("low", "high")]
            for name, quantity in quantities:
                value = quantity.get("value") if isinstance(quantity, dict) else None
                if isinstance(value, int | float) and value < 0:
                    return f".dosageInstruction[{i}].doseAndRate[{j}].{name}.value"
    return None


def read_draft_orders(request: HookRequest) -> DraftOrders:
    bundle = request.context.draftOrders
    if bundle.get("resourceType") != "Bundle":
        raise HookError(400, f"{_PREFIX}.resourceType", "draftOrders must be a FHIR Bundle")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise HookError(400, f"{_PREFIX}.entry", "draftOrders has no entries")
    if "type" not in bundle:
        note_deviation(f"{_PREFIX}.type", "bundle-type-missing")
    resources: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        where = f"{_PREFIX}.entry[{i}].resource"
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise HookError(400, where, "every entry needs a resource with a resourceType")
        if resource["resourceType"] == "MedicationRequest":
            if not _has_medication(resource):
                # the sandbox's form before a medication is picked: nothing to check yet
                note_deviation(f"{where}.medication[x]", "medication-missing")
                resources.append(resource)
                continue
            resource = _validate(resource, where)
            if request.hook == "order-sign" and resource.get("status") != "draft":
                note_deviation(f"{where}.status", "status-not-draft")
            if resource.get("status") not in _SKIPPED_STATUS:
                requests.append(resource)
        resources.append(resource)
    reviewed = _selected(request, resources, requests) if request.hook == "order-select" else list(requests)
    return DraftOrders(resources=resources, medication_requests=requests, reviewed=reviewed)


def _selected(
    request: HookRequest, resources: list[dict[str, Any]], requests: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    selections = request.context.selections
    if not selections:
        raise HookError(400, "context.selections", "order-select needs the selected orders")
    keys = {f"{r['resourceType']}/{r.get('id')}" for r in resources if r.get("id")}
    for i, selection in enumerate(selections):
        if selection not in keys:
            raise HookError(400, f"context.selections[{i}]", "selection is not in draftOrders")
    chosen = set(selections)
    return [r for r in requests if f"MedicationRequest/{r.get('id')}" in chosen]


def warm_up() -> None:
    """Build the lazily compiled R4B validators once at start-up, not on the first clinician's order."""
    quantity = {"value": 1, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
    concept = {"coding": [{"system": "http://example.org", "code": "x", "display": "x"}], "text": "x"}
    period = {"start": "2025-01-01", "end": "2025-01-02"}
    reference = {"reference": "Patient/x", "display": "x"}
    MedicationRequest.model_validate(
        {
            "resourceType": "MedicationRequest",
            "id": "warm-up",
            "status": "draft",
            "intent": "order",
            "meta": {"lastUpdated": "2025-01-01T00:00:00Z", "profile": ["http://example.org/p"]},
            "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
            "extension": [{"url": "http://example.org/e", "valueString": "x"}],
            "identifier": [{"system": "http://example.org", "value": "x"}],
            "contained": [
                {
                    "resourceType": "Medication",
                    "id": "m",
                    "code": concept,
                    "form": concept,
                    "ingredient": [
                        {
                            "itemCodeableConcept": concept,
                            "strength": {"numerator": quantity, "denominator": quantity},
                        }
                    ],
                }
            ],
            "category": [concept],
            "statusReason": concept,
            "priority": "routine",
            "medicationReference": {"reference": "#m"},
            "subject": reference,
            "encounter": reference,
            "authoredOn": "2025-01-01T00:00:00Z",
            "requester": reference,
            "reasonCode": [concept],
            "reasonReference": [reference],
            "note": [{"text": "x"}],
            "courseOfTherapyType": concept,
            "priorPrescription": reference,
            "dosageInstruction": [
                {
                    "sequence": 1,
                    "text": "x",
                    "route": concept,
                    "asNeededCodeableConcept": concept,
                    "timing": {
                        "code": concept,
                        "repeat": {
                            "boundsPeriod": period,
                            "frequency": 1,
                            "period": 1,
                            "periodUnit": "d",
                            "when": ["MORN"],
                            "timeOfDay": ["08:00:00"],
                        },
                    },
                    "doseAndRate": [
                        {"type": concept, "doseQuantity": quantity},
                        {"doseRange": {"low": quantity, "high": quantity}},
                    ],
                    "maxDosePerPeriod": {"numerator": quantity, "denominator": quantity},
                }
            ],
            "dispenseRequest": {
                "validityPeriod": period,
                "numberOfRepeatsAllowed": 1,
                "quantity": quantity,
                "expectedSupplyDuration": {
                    "value": 1,
                    "unit": "d",
                    "system": "http://unitsofmeasure.org",
                    "code": "d",
                },
            },
            "substitution": {"allowedBoolean": True},
        }
    )
