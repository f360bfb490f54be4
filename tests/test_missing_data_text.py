""""Cannot assess" cards speak the clinician's language; the fact names stay in the structured field.

The re-audit of 2026-12-08 found details ending "Missing facts: daily_dose_mg, combined_oral_daily_mg" —
engine identifiers in clinician-facing text. The names stay in ``Alert.missing`` (traceability).
"""

from __future__ import annotations

from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"


def test_missing_data_details_name_no_engine_fact(engine: Engine) -> None:
    facts = PatientFacts.model_validate(
        {
            "as_of": "2026-01-15T12:00:00+00:00",
            "birth_date": "1950-01-01",
            # no renal result, a dose in an unknown unit, an other order of unknown dose
            "medications": [
                {"product": {"system": RX, "code": "197391"}, "status": "draft", "route": "oral"}
            ],
            "order": {"product": {"system": RX, "code": "197391"}, "route": "oral", "dose_amount": 2,
                      "dose_unit": "puffs", "doses_per_day": 3},
        }
    )
    cannot = [a for a in engine.evaluate(facts) if a.kind == "cannot-assess"]
    assert cannot, "the case no longer produces a cannot-assess card: pick another"
    for alert in cannot:
        assert alert.missing, alert.tier_id  # the names are kept, structured
        for name in alert.missing:
            assert name not in alert.detail, (alert.tier_id, name)
        assert "Missing facts" not in alert.detail
