"""Discovery: one ``order-select`` and one ``order-sign`` service per active pack, with prefetch templates.

The templates ask for everything the fact mapping reads, so a client that honours them needs
no call back to its FHIR server: the patient, the current encounter, medication requests of
*every* status (the therapy history), statements and administrations, conditions, allergies,
dialysis procedures and the observations of every vocabulary ``observation`` group (eGFR by
each of its LOINC codes, creatinine, pregnancy tests, monitoring labs). Codes come from the
vocabulary, so a new LOINC code in ``rules/vocabulary`` reaches the template without a code
change. Templates stay inside the 2.0 query subset: reads, ``patient=`` searches and token lists,
each search sorted newest first by its type's own date parameter with ``_count`` set to the
per-key cap (:mod:`cds_engine.service.limits`), so a long record arrives newest first and bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds_engine.engine import Engine
from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.governance import SHOWN_STATUSES
from cds_engine.rules.pack_memo import PackMemo
from cds_engine.service.hook_scope import offers_hook
from cds_engine.service.limits import DEFAULT_MAX_RESOURCES
from cds_engine.service.models import CdsService, DiscoveryResponse
from cds_engine.sources.fhir import GROUPS
from cds_engine.vocabulary import Vocabulary

__all__ = [
    "HOOKS",
    "PATIENT_VIEW",
    "ServiceRef",
    "discovery",
    "find_service",
    "patient_view_templates",
    "prefetch_templates",
    "service_id",
]

HOOKS = ("order-select", "order-sign")
PATIENT_VIEW = "patient-view"  # chart open: monitoring of current therapy (service/patient_view.py)
PATIENT = "{{context.patientId}}"


@dataclass(frozen=True, slots=True)
class ServiceRef:
    id: str
    hook: str
    pack: CompiledPack


def service_id(pack: CompiledPack, hook: str) -> str:
    return f"{pack.id}-{hook}"


def _codes(vocab: Vocabulary, kind: str, groups: set[str] | None = None) -> list[str]:
    found = sorted(
        {
            f"{system}|{code}"
            for (k, system, code), members in vocab.codes.items()
            if k == kind and system and (groups is None or members & groups)
        }
    )
    return found


def _templates_of(pack: CompiledPack) -> tuple[str, dict[str, str]]:
    """(the pack's content hash, its templates): a pack given another hash gets new templates."""
    return pack.content_hash, _build_templates(pack)


# per loaded pack object, held weakly (PackMemo): a table that held the packs themselves kept up to
# 33 hot reloads' old packs (trees, vocabulary, spec) alive
_TEMPLATES: PackMemo[tuple[str, dict[str, str]]] = PackMemo(
    _templates_of, valid=lambda held, pack: held[0] == pack.content_hash
)


def prefetch_templates(pack: CompiledPack) -> dict[str, str]:
    """Prefetch key → template for one pack (keys are stable: the hook handler relies on them).

    Built from the vocabulary once per loaded pack (every hook call needs them).
    """
    return dict(_TEMPLATES.get(pack)[1])


def _build_templates(pack: CompiledPack) -> dict[str, str]:
    vocab = pack.vocabulary
    templates = {
        "patient": f"Patient/{PATIENT}",
        "encounter": "Encounter/{{context.encounterId}}",
        "medicationRequests": f"MedicationRequest?patient={PATIENT}{_newest('-authoredon')}",
        "medicationStatements": f"MedicationStatement?patient={PATIENT}{_newest('-effective')}",
        "medicationAdministrations": (
            f"MedicationAdministration?patient={PATIENT}{_newest('-effective-time')}"
        ),
        "conditions": f"Condition?patient={PATIENT}{_newest('-recorded-date')}",
        "allergies": f"AllergyIntolerance?patient={PATIENT}{_newest('-date')}",
    }
    procedures = _codes(vocab, "condition_group", {GROUPS.dialysis_procedure})
    if procedures:
        templates["dialysisProcedures"] = (
            f"Procedure?patient={PATIENT}&code={','.join(procedures)}{_newest('-date')}"
        )
    observations = _codes(vocab, "observation")
    if observations:
        templates["observations"] = (
            f"Observation?patient={PATIENT}&code={','.join(observations)}{_newest('-date')}"
        )
    return templates


def patient_view_templates() -> dict[str, str]:
    """patient-view runs on every chart open: only the active medicines (the rest only when on the drug)."""
    return {
        "activeMedicationRequests": f"MedicationRequest?patient={PATIENT}&status=active",
        "activeMedicationStatements": f"MedicationStatement?patient={PATIENT}&status=active",
    }


def _newest(sort: str) -> str:
    """Newest first, one page of at most the per-key cap (each type's own date search parameter)."""
    return f"&_sort={sort}&_count={DEFAULT_MAX_RESOURCES}"


def _services(engine: Engine) -> list[ServiceRef]:
    return [
        ServiceRef(service_id(pack, hook), hook, pack)
        for pack in engine.packs
        if pack.spec.pack.status in SHOWN_STATUSES  # draft packs run silently: no service, no cards
        for hook in (*HOOKS, *((PATIENT_VIEW,) if _on_patient_view(pack) else ()))
    ]


def _on_patient_view(pack: CompiledPack) -> bool:
    """A pack offers patient-view when at least one of its rules or tiers runs there (``hooks:``)."""
    return offers_hook(pack, PATIENT_VIEW)


def find_service(engine: Engine, sid: str) -> ServiceRef | None:
    return next((s for s in _services(engine) if s.id == sid), None)


def discovery(engine: Engine) -> DiscoveryResponse:
    services = []
    for ref in _services(engine):
        info = ref.pack.spec.pack
        moment = "when a clinician selects" if ref.hook == "order-select" else "before a clinician signs"
        approval = (
            "" if info.approval.status == "approved" else " Approval pending local clinical validation."
        )
        description = (
            f"{info.title} (pack {info.id} {info.version}): checks {moment} an order of "
            f"{info.drug.display} or of an interacting drug class.{approval}"
        )
        if ref.hook == PATIENT_VIEW:
            description = (
                f"{info.title} (pack {info.id} {info.version}): monitoring at chart open for a patient "
                f"on {info.drug.display}; the rest of the record is read through fhirServer only then."
                f"{approval}"
            )
        services.append(
            CdsService(
                hook=ref.hook,
                title=f"{info.title} ({ref.hook})",
                description=description,
                id=ref.id,
                prefetch=(
                    patient_view_templates() if ref.hook == PATIENT_VIEW else prefetch_templates(ref.pack)
                ),
                usageRequirements=(
                    "Works best with the prefetch above; otherwise needs fhirServer and "
                    "fhirAuthorization to read the patient's record."
                ),
            )
        )
    return DiscoveryResponse(services=services)
