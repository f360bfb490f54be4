"""A MedicationStatement that restates a MedicationRequest of the record is not a second medicine.

``sources/fhir_meds.py`` makes the record's request keys only when a statement is read (issue 19):
the statements that name a request of the record (``basedOn`` / ``derivedFrom``, a relative
reference) are still skipped, the others still counted, and a record without statements still
reads its requests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_engine.engine import Engine
from cds_engine.sources.fhir import facts_from_resources

RULES = Path(__file__).resolve().parent.parent / "rules"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def _medicine(rtype: str, rid: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": rtype, "id": rid, "status": "active", "subject": {"reference": "Patient/p"},
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]}, **extra}


def _ids(resources: list[dict[str, Any]]) -> list[str | None]:
    pack = Engine.from_dir(RULES).packs[0]
    facts = facts_from_resources([{"resourceType": "Patient", "id": "p"}, *resources], as_of=AS_OF,
                                 vocab=pack.vocabulary, drug_class=pack.context.drug_class)
    return [m.id for m in facts.medications]


def test_statements_naming_a_request_are_skipped_and_others_counted() -> None:
    resources = [
        _medicine("MedicationRequest", "mr-1", "105029", intent="order"),
        _medicine("MedicationStatement", "ms-1", "105029", basedOn=[{"reference": "MedicationRequest/mr-1"}]),
        _medicine("MedicationStatement", "ms-2", "105029",
                  derivedFrom=[{"reference": "https://ehr.example/fhir/MedicationRequest/mr-1"}]),
        _medicine("MedicationStatement", "ms-3", "105029", basedOn=[{"reference": "MedicationRequest/mr-9"}]),
        _medicine("MedicationStatement", "ms-4", "105029"),
    ]
    assert _ids(resources) == ["mr-1", "ms-2", "ms-3", "ms-4"]  # (an absolute reference is not read as one)


def test_requests_alone_and_statements_alone_read_as_ever() -> None:
    assert _ids([_medicine("MedicationRequest", "mr-1", "105029", intent="order")]) == ["mr-1"]
    statement = _medicine("MedicationStatement", "ms-1", "105029",
                          basedOn=[{"reference": "MedicationRequest/x"}])
    assert _ids([statement]) == ["ms-1"]
