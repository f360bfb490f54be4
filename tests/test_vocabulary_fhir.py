"""Issue #16 end to end from FHIR: Condition resources -> facts the rules read (cond.*, cond_history.*).

A negated or family-history problem-list text never becomes an active condition, a history text or
code of a group with its own history fact becomes ``cond_history``, and coded entries are recognised.
Psychosis and stroke codes are known gaps until their VSAC value sets are in shared/
(tests/test_vocabulary_coverage.py), so those entries carry a display the term fallback reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cds_engine.sources.fhir import facts_from_resources

AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-05-01", "gender": "female"}
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"


def problem(code: dict[str, Any], clinical: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}
            ]
        },
        "code": code,
        "onsetDateTime": "2020-01-01",
    }


def flat(engine: Any, pack: Any, *conditions: dict[str, Any]) -> dict[str, Any]:
    facts = facts_from_resources(
        [PATIENT, *conditions], as_of=AS_OF, vocab=pack.vocabulary, drug_class=pack.context.drug_class
    )
    return engine.flat_facts(pack, facts)


@pytest.mark.parametrize(
    ("code", "fact"),
    [
        ({"text": "No history of suicidal ideation"}, "cond.depression_suicidality"),
        ({"text": "Major depressive disorder, severe without psychotic features"}, "cond.psychosis"),
        ({"text": "Family history of epilepsy"}, "cond.epilepsy"),
        ({"text": "Heat stroke"}, "cond.stroke"),
        (
            {"coding": [{"system": ICD10CM, "code": "G47.32"}], "text": "High altitude periodic breathing"},
            "cond.respiratory_impairment",
        ),
        ({"text": "Personal history of peptic ulcer disease"}, "cond.peptic_ulcer"),
    ],
)
def test_negated_history_and_removed_entries_are_not_active(engine, pack, code, fact) -> None:
    assert not flat(engine, pack, problem(code)).get(fact)


@pytest.mark.parametrize(
    ("code", "fact"),
    [
        ({"coding": [{"system": SNOMED, "code": "58214004", "display": "Schizophrenia"}]}, "cond.psychosis"),
        (
            {"coding": [{"system": ICD10CM, "code": "I61.9", "display": "Intracerebral haemorrhage"}]},
            "cond.stroke",
        ),
        (
            {
                "coding": [{"system": ICD10CM, "code": "Z86.73"}],
                "text": "Personal history of cerebral infarction",
            },
            "cond.stroke",
        ),
        ({"text": "Epilepsy; no history of status epilepticus"}, "cond.epilepsy"),
        ({"text": "History of stroke"}, "cond.stroke"),
        ({"text": "Personal history of peptic ulcer disease"}, "cond_history.peptic_ulcer"),
        ({"coding": [{"system": ICD10CM, "code": "Z87.11"}]}, "cond_history.peptic_ulcer"),
        (
            {"coding": [{"system": SNOMED, "code": "999999999"}, {"system": ICD10CM, "code": "Z87.11"}]},
            "cond_history.peptic_ulcer",
        ),
        ({"text": "Gastric ulcer"}, "cond.peptic_ulcer"),
    ],
)
def test_genuine_entries_are_recognised(engine, pack, code, fact) -> None:
    assert flat(engine, pack, problem(code)).get(fact) is True
