"""Synthetic patients for parity tests and benchmarks — drawn from the pack's own vocabulary.

The generator knows no drug: products, classes and condition codes are sampled from the
vocabulary files, so it exercises whatever pack is loaded. Values are spread around typical
clinical thresholds on purpose, and every field is sometimes missing, so the three-valued
logic, the bounds (eGFR ">60") and the unit checks are all reached.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from cds_engine.facts.model import PatientFacts
from cds_engine.vocabulary import Vocabulary

__all__ = ["PatientGenerator"]

_AS_OF = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
_ROUTES = ["oral", "oral", "oral", "PO", "enteral", "intrathecal", "iv", "transdermal", "topical", None]
_ODD_ROUTES = ["rectal", "37839007", "per G tube", "127492001", "via banana", "PO/NG", None]
_FORMS = ["tablet", "tablet", "solution", "suspension", "granules", "capsule", "injection", "patch", None]
_UNITS = ["mg", "mg", "mg", "mcg", "mL", "g", "tablet", "drop", None]
_ACTIONS = ["new", "new", "modify", "continue", "continue", "discontinue", "hold"]
_REASONS = [None, "ineffective", "serious-adverse-reaction", "toxicity", "overdose", "patient-request"]


class PatientGenerator:
    """``PatientGenerator(vocab, drug_class).patient(rng)`` -> a valid :class:`PatientFacts` dict."""

    def __init__(self, vocab: Vocabulary, drug_class: str, as_of: datetime = _AS_OF) -> None:
        self.vocab = vocab
        self.drug_class = drug_class
        self.as_of = as_of
        self.today = as_of.date()
        by_group: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for (kind, system, code), groups in vocab.codes.items():
            for group in groups:
                by_group.setdefault((kind, group), []).append((system, code))
        self._codes = {k: sorted(v) for k, v in by_group.items()}
        self._drug_products = sorted(
            (p for p in vocab.products.values() if p.ingredient_group == drug_class), key=lambda p: p.code
        )
        self._classes = sorted(g for (kind, g) in self._codes if kind == "drug_class" and g != drug_class)
        self._conditions = sorted(
            {g for (kind, g) in [*self._codes, *vocab.term_texts] if kind == "condition_group"}
        )
        self._allergies = sorted(g for (kind, g) in self._codes if kind == "allergy_group")
        self._indications = sorted(vocab.known_groups("indication"))

    def _code(self, rng: random.Random, kind: str, group: str) -> dict[str, str]:
        """A coding of ``group``: a listed code, or (for term-only groups) free text naming it."""
        texts = self.vocab.term_texts.get((kind, group), [])
        if (kind, group) not in self._codes or (texts and rng.random() < 0.2):
            return {"display": rng.choice(texts)}
        system, code = rng.choice(self._codes[(kind, group)])
        return {"system": system, "code": code}

    def _day(self, rng: random.Random, lo: int, hi: int) -> str:
        return (self.today - timedelta(days=rng.randint(lo, hi))).isoformat()

    @staticmethod
    def _maybe(rng: random.Random, p_missing: float, value: Any) -> Any:
        return None if rng.random() < p_missing else value

    def patient(self, rng: random.Random) -> dict[str, Any]:
        """A PatientFacts-shaped dict (validate with ``PatientFacts.model_validate``)."""
        age_days = rng.choice(
            [rng.randint(0, 60), rng.randint(365, 365 * 20), rng.randint(365 * 20, 365 * 100)]
        )
        birth = self.today - timedelta(days=age_days)
        sex = rng.choice(["female", "male", None])
        facts: dict[str, Any] = {
            "as_of": self.as_of.isoformat(),
            "patient_id": f"syn-{rng.getrandbits(32):08x}",
        }
        if rng.random() > 0.05:
            facts["birth_date"] = birth.isoformat()
        facts["sex"] = sex
        renal: dict[str, Any] = {}
        if rng.random() > 0.12:
            egfr: dict[str, Any] = {
                "value": rng.choice(
                    [rng.uniform(5, 130), float(rng.choice([15, 29, 30, 49, 50, 59, 60, 80, 81, 90]))]
                ),
                "date": self._day(rng, 0, 500),
                "unit": rng.choice(["mL/min/{1.73_m2}", "mL/min", None]),
            }
            if rng.random() < 0.08:
                egfr["comparator"] = rng.choice([">", ">=", "<", "<="])
                egfr["value"] = float(rng.choice([15, 30, 60, 90]))
            renal["egfr"] = egfr
        renal["dialysis"] = rng.choice([None, None, "none", "none", "HD", "PD"])
        renal["dialysis_dependent"] = self._maybe(rng, 0.8, rng.random() < 0.3)
        if rng.random() < 0.05:
            renal["last_dialysis_procedure"] = self._day(rng, 0, 60)
        facts["renal"] = renal
        reproductive: dict[str, Any] = {}
        if sex == "female" and rng.random() < 0.3:
            reproductive["pregnant"] = rng.choice([True, False, None])
            reproductive["gestational_age_weeks"] = self._maybe(rng, 0.3, float(rng.randint(4, 41)))
            reproductive["taper_or_neonatal_plan_documented"] = rng.choice([True, False, None])
            reproductive["lactating"] = rng.choice([True, False, None])
        if age_days < 60:
            reproductive["maternal_exposure_at_delivery"] = rng.choice([True, False, None])
        facts["reproductive"] = reproductive
        facts["conditions"] = [
            {
                "code": self._code(rng, "condition_group", g),
                "clinical_status": rng.choice(["active", "active", "resolved", "inactive"]),
                "verification_status": rng.choice([None, "confirmed", "refuted"]),
                "onset": self._maybe(rng, 0.5, self._day(rng, 0, 900)),
            }
            for g in rng.sample(self._conditions, k=rng.randint(0, 4))
        ]
        facts["allergies"] = [
            {
                "substance": self._code(rng, "allergy_group", g),
                "verification_status": rng.choice([None, "refuted"]),
            }
            for g in rng.sample(self._allergies, k=rng.randint(0, 1) if rng.random() < 0.2 else 0)
        ]
        meds = [
            {
                "product": self._code(rng, "drug_class", c),
                "status": rng.choice(["active", "active", "stopped"]),
            }
            for c in rng.sample(self._classes, k=rng.randint(0, 4))
        ]
        drug_meds = rng.choice([0, 0, 1, 1, 2])
        for i in range(drug_meds):
            product = rng.choice(self._drug_products)
            meds.append(
                {
                    "id": f"m{i}",
                    "product": {"system": product.system, "code": product.code},
                    "route": rng.choice(["oral", "oral", "intrathecal"]),
                    "daily_dose_mg": self._maybe(rng, 0.3, float(rng.choice([15, 30, 60, 80, 0.4]))),
                    "setting": rng.choice(["home", "outpatient", "inpatient"]),
                    "concentration_mg_per_ml": rng.choice([None, None, 1.0, 2.0, 5.0]),
                    "form": rng.choice([None, "tablet", "solution"]),
                }
            )
        facts["medications"] = meds
        facts["alcohol_use_current"] = rng.choice([True, False, None, None])
        if rng.random() < 0.9:
            facts["order"] = self._order(rng)
        history: dict[str, Any] = {}
        if drug_meds or rng.random() < 0.4:
            history = {
                "therapy_start": self._maybe(rng, 0.2, self._day(rng, 0, 800)),
                "previous_daily_dose_mg": self._maybe(rng, 0.3, float(rng.choice([5, 15, 30, 45, 60, 80]))),
                "previous_max_single_dose_mg": self._maybe(rng, 0.3, float(rng.choice([5, 10, 15, 20]))),
                "last_dose_change": self._maybe(rng, 0.3, self._day(rng, 0, 60)),
                "stable_dose_since": self._maybe(rng, 0.3, self._day(rng, 0, 120)),
                "last_exposure": self._maybe(rng, 0.5, self._day(rng, 0, 30)),
            }
            if rng.random() < 0.2:
                history["last_dose_time"] = (self.as_of - timedelta(hours=rng.uniform(1, 60))).isoformat()
        facts["history"] = history
        facts["monitoring"] = {
            item: self._day(rng, 0, 800)
            for item in ("efficacy_assessment", "neurology_review", "lft", "glucose")
            if rng.random() < 0.5
        }
        if rng.random() < 0.15:
            facts["pump"] = {
                "present": True,
                "next_refill_date": self._maybe(
                    rng, 0.2, (self.today + timedelta(days=rng.randint(-3, 12))).isoformat()
                ),
                "alarm_active": rng.choice([None, False, True]),
            }
        if rng.random() < 0.2:
            facts["encounter"] = {
                "inpatient": True,
                "admission_time": self._maybe(
                    rng, 0.2, (self.as_of - timedelta(hours=rng.uniform(1, 72))).isoformat()
                ),
            }
        self._kidney_extras(random.Random(rng.getrandbits(32)), facts)
        self._odd_extras(random.Random(rng.getrandbits(32)), facts)
        return facts

    def _odd_extras(self, rng: random.Random, facts: dict[str, Any]) -> None:
        """Odd inputs (own stream): unrecognised or no-product routes, an unreadable newest eGFR,
        presumed replacements, PRN home orders."""
        order = facts.get("order")
        if order is not None and rng.random() < 0.2:
            order["route"] = rng.choice(_ODD_ROUTES)
        if order is not None and order.get("action") in ("modify", "continue") and rng.random() < 0.3:
            order.pop("replaces", None)
            order["replaces_presumed"] = True
        if rng.random() < 0.1:
            facts["renal"]["egfr_unreadable"] = {
                "date": self._day(rng, 0, 30),
                "problem": rng.choice(["no-value", "unit"]),
            }
        for med in facts["medications"]:
            if "id" in med and rng.random() < 0.3:
                med["prn"] = rng.choice([True, False])

    def _kidney_extras(self, rng: random.Random, facts: dict[str, Any]) -> None:
        """CrCl, race-stratified eGFR pairs, AKI flag and dated/encounter diagnoses (own stream)."""
        renal = facts["renal"]
        if rng.random() < 0.3:
            renal["crcl"] = {
                "value": float(rng.choice([10, 25, 29, 30, 45, 50, 65, 80, 81, 110])),
                "date": self._day(rng, 0, 400),
                "unit": rng.choice(["mL/min", None, "mL/min/{1.73_m2}", "mL/s"]),
            }
        egfr = renal.get("egfr")
        if egfr is not None and rng.random() < 0.25:
            pair = {**egfr, "value": float(rng.choice([20, 35, 55, 70])), "race_stratum": "black"}
            mate = {**egfr, "race_stratum": rng.choice(["non-black", None])}
            renal["egfr_results"] = rng.sample([pair, mate], k=2)
        if rng.random() < 0.15:
            renal["aki"] = True
        for condition in facts["conditions"]:
            if rng.random() < 0.3:
                condition["recorded"] = self._day(rng, 0, 400)
            if rng.random() < 0.1:
                condition["encounter_diagnosis"] = True

    def _order(self, rng: random.Random) -> dict[str, Any]:
        if self._drug_products and rng.random() < 0.85:
            product = rng.choice(self._drug_products)
            coding: dict[str, Any] = {"system": product.system, "code": product.code}
        else:
            cls = rng.choice(self._classes)
            coding = self._code(rng, "drug_class", cls)
        order: dict[str, Any] = {
            "product": coding,
            "route": rng.choice(_ROUTES),
            "form": rng.choice(_FORMS),
            "dose_unit": rng.choice(_UNITS),
            "action": rng.choice(_ACTIONS),
            "indication_group": rng.choice([*self._indications, None, None]),
            "reason": rng.choice(_REASONS),
            "prn": rng.random() < 0.15,
            "excipient_groups": rng.choice([[], [], ["wheat"]]),
        }
        if rng.random() < 0.2:
            order["schedule"] = [float(rng.choice([5, 10, 15, 20])) for _ in range(rng.randint(1, 5))]
        else:
            order["dose_amount"] = self._maybe(
                rng, 0.05, float(rng.choice([0.5, 2.5, 5, 10, 15, 20, 25, 30, 50, 400]))
            )
            order["doses_per_day"] = self._maybe(rng, 0.05, float(rng.choice([1, 2, 3, 4, 5])))
        if order["prn"]:
            order["prn_max_doses_per_day"] = self._maybe(rng, 0.3, float(rng.randint(1, 4)))
        if rng.random() < 0.4:
            order["concentration_mg_per_ml"] = rng.choice([1.0, 2.0, 5.0])
        if rng.random() < 0.3:
            order["taper"] = {
                "duration_days": self._maybe(rng, 0.2, float(rng.randint(1, 21))),
                "steps": rng.choice([[], [40.0, 20.0, 10.0]]),
            }
        return order

    def patients(self, n: int, seed: int = 0) -> list[PatientFacts]:
        rng = random.Random(seed)
        return [PatientFacts.model_validate(self.patient(rng)) for _ in range(n)]
