"""Co-medications named by ``medicationReference``: resolved like the draft orders' products, or said.

A MedicationRequest, MedicationStatement or MedicationAdministration may name its product by a
reference to a Medication (R4). The draft orders' references were resolved (contained, in the
prefetch, or read from ``fhirServer``), but the patient's other medicines were not: an opioid
sent as ``Medication/x`` silently dropped out of the interaction checks (red-team finding 2,
``/tmp/reports/reaudit-sec.md``). Here the same three places are tried for every medicine of
the record; one whose product still cannot be identified makes its list incomplete, and the
data-unavailable card says an active medicine could not be identified.

Reads are bounded like the drafts': only ``Medication/<FHIR id>`` references, at most
:data:`MAX_READS` distinct ones per call, through the hook's :class:`FhirFetcher` (allow-listed
server, call and byte caps of :mod:`cds_engine.service.callbacks`), within the hook's budget.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cds_engine.service.callbacks import fhir_id_ok
from cds_engine.sources.fhir import medication_concept

if TYPE_CHECKING:
    from cds_engine.service.models import HookRequest
    from cds_engine.service.prefetch import FhirFetcher, Prefetched

__all__ = [
    "LIST_KEYS",
    "MAX_READS",
    "UNIDENTIFIED",
    "mark_unidentified",
    "readable_reference",
    "resolve_references",
    "unidentified",
]

# The order hooks' prefetch key each medicine type comes from (the card names the key).
LIST_KEYS: dict[str, str] = {
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
    "MedicationAdministration": "medicationAdministrations",
}
# Distinct Medication reads per hook call for co-medications (each is also a call-back under the
# hook's call cap): beyond, the medicine stays unidentified and the card says so.
MAX_READS = 16
UNIDENTIFIED = (
    "an active medicine could not be identified (its Medication reference could not be resolved): "
    "interaction checks cannot be assessed"
)


def readable_reference(resource: dict[str, Any]) -> str | None:
    """``Medication/<id>`` when the medicine names a Medication that may be read (a FHIR id only)."""
    reference = resource.get("medicationReference")
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if isinstance(ref, str) and ref.startswith("Medication/") and fhir_id_ok(ref[11:]):
        return ref
    return None


def unidentified(
    resources: list[dict[str, Any]], pool: list[dict[str, Any]], keys: dict[str, str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """key -> the medicines of ``resources`` whose product cannot be identified from ``pool``.

    Every status but ``entered-in-error`` counts: a stopped medicine still feeds the exposure
    facts, and an unknown status must not hide a medicine (fail-safe).
    """
    keys = LIST_KEYS if keys is None else keys
    out: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        key = keys.get(resource.get("resourceType"))  # type: ignore[arg-type]
        if key is None or resource.get("status") == "entered-in-error":
            continue
        if medication_concept(resource, pool) is None:
            out.setdefault(key, []).append(resource)
    return out


def mark_unidentified(prefetched: Prefetched, missing: dict[str, list[dict[str, Any]]]) -> None:
    """Each key with an unidentified medicine is unavailable: the card names it, lists count as incomplete."""
    for key in missing:
        prefetched.unavailable.setdefault(key, UNIDENTIFIED)


async def resolve_references(
    fetcher: FhirFetcher | None,
    request: HookRequest,
    resources: list[dict[str, Any]],
    pool: list[dict[str, Any]],
    deadline: float,
    keys: dict[str, str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Read the Medications co-medications name, into ``pool``; what stays unidentified, by key.

    Nothing is read without a fetcher and a ``fhirServer`` (the caller has checked the server
    against the allow-list); a read that fails or finds nothing leaves its medicines unidentified.
    """
    missing = unidentified(resources, pool, keys)
    if not missing or fetcher is None or request.fhirServer is None:
        return missing
    wanted: dict[str, str] = {}
    for medicines in missing.values():
        for medicine in medicines:
            ref = readable_reference(medicine)
            if ref is not None and ref not in wanted.values() and len(wanted) < MAX_READS:
                wanted[f"comedication{len(wanted)}"] = ref
    if not wanted:
        return missing
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    fetched = await fetcher.get_many(request.fhirServer, wanted, token, deadline - time.monotonic())
    for found in fetched.values():
        pool.extend(r for r in found or [] if isinstance(r, dict) and r.get("resourceType") == "Medication")
    return unidentified(resources, pool, keys)
