"""The closure test (issue #10 item 4): no one-click suggestion creates an order the pack would flag.

For each of 5,000 seeded FHIR cases (``tests/suggestion_cases.py``: every renal band incl.
dialysis, no or stale eGFR, ages around 65, AUD, new / modify / continue, marketed and
not-marketed tablets counted or in mg, liquids with and without a concentration, oral and
enteral routes) and for every fixture of the pack: evaluate, take the order's one-click
suggestion, apply its ``create`` resource in place of the draft (mapped back through the FHIR
path; fixtures, which are facts, get the regimen applied to the order) and evaluate again. No
tier the pack marks ``dose_dependent: true`` may then be TRUE, at any severity (every tier is
checked, not only the one each rule reports). The created order keeps the draft's product,
route and action kind; its doses are never higher and, for a patient taking the drug now, at
most ``suggestion_max_step_pct`` lower per day than the dose taken now.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from cds_engine.facts.model import PatientFacts
from cds_engine.rules.conditions import TRUE
from cds_engine.rules.one_click import tier_truths
from cds_engine.service.suggestions import order_one_click, would_fire
from cds_engine.sources.fhir import facts_from_resources
from suggestion_cases import AS_OF, generate

ROOT = Path(__file__).resolve().parents[1]
CASES = 5000
SEED = 20261205


def _facts(pack, resources, draft) -> PatientFacts:
    return facts_from_resources(
        resources,
        as_of=AS_OF,
        vocab=pack.vocabulary,
        drug_class=pack.context.drug_class,
        draft_orders=[draft],
    )


def _fired_dose_dependent(engine, pack, facts: PatientFacts) -> list[str]:
    flat = engine.flat_facts(pack, facts)
    truths = tier_truths(pack, flat)
    alerts = engine.evaluate_pack(pack, facts)
    fired = {t for t in pack.dose_dependent if truths.get(t) == TRUE}
    fired |= {a.tier_id for a in alerts if a.tier_id in pack.dose_dependent}
    return sorted(fired)


def test_dose_dependent_tiers_are_declared(pack):
    expected = {
        "BAC-D01.daily", "BAC-D01.single", "BAC-D02.start", "BAC-D03.fast", "BAC-D04.high",
        "BAC-D04.mortality", "BAC-R04.high_start", "BAC-W01.abrupt", "BAC-W01.monitored",
        "BAC-F03.unit", "BAC-F03.liquid", "BAC-F04.not_marketed",
    }  # fmt: skip
    assert expected <= pack.dose_dependent
    assert {t.id for r in pack.rules if r.spec.id == "BAC-R01" for t in r.tiers} <= pack.dose_dependent
    assert "BAC-F03.concentrations" not in pack.dose_dependent  # several concentrations on file: not the dose
    assert not {"BAC-R04.beers", "BAC-R00.stale"} & pack.dose_dependent


def test_no_suggestion_creates_an_order_the_pack_flags(engine, pack):
    started = time.perf_counter()
    stats: Counter[str] = Counter()
    covered: dict[str, set] = defaultdict(set)
    failures: list[str] = []
    step = float(pack.params["suggestion_max_step_pct"])
    for case in generate(CASES, SEED):
        facts = _facts(pack, case.resources, case.draft)
        if facts.order is None:
            stats["no order"] += 1
            continue
        alerts = engine.evaluate_pack(pack, facts)
        flat = engine.flat_facts(pack, facts)
        offer = order_one_click(pack, alerts, case.draft, facts.order, lambda flat=flat: flat)
        for dim in ("band", "action", "indication", "route"):
            covered[dim].add(case.dims[dim])
        covered["liquid"].add(case.dims["product"] == "liquid")
        covered["65+"].add(case.dims["age"] >= 65)
        if offer.suggestion is None:
            stats["no suggestion"] += 1
            continue
        stats["suggestion"] += 1
        stats[f"suggestion from {offer.tier_id}"] += 1
        actions = offer.suggestion.actions
        assert [a.type for a in actions] == ["delete", "create"]
        assert actions[0].resourceId == f"MedicationRequest/{case.draft['id']}"
        created = dict(actions[1].resource or {}, id="created-1")
        after = _facts(pack, case.resources, created)
        assert after.order is not None, case.n
        fired = _fired_dose_dependent(engine, pack, after)
        before_flat, after_flat = flat, engine.flat_facts(pack, after)
        problems = []
        if fired:
            problems.append(f"fires {fired}")
        for key in ("order_product_route", "order_route", "order_form"):
            if before_flat.get(key) != after_flat.get(key):
                problems.append(f"{key} {before_flat.get(key)} -> {after_flat.get(key)}")
        if after.order.product.code != facts.order.product.code:
            problems.append("product changed")
        kind = {"new": "new", "modify": "ongoing", "continue": "ongoing"}
        if kind[after.order.action] != kind[facts.order.action]:
            problems.append(f"action {facts.order.action} -> {after.order.action}")
        new_daily, old_daily = after_flat.get("daily_dose_mg"), before_flat.get("daily_dose_mg")
        if new_daily is None or new_daily > old_daily + 1e-9:
            problems.append(f"daily {old_daily} -> {new_daily}")
        if after_flat.get("max_single_dose_mg", 0) > before_flat["max_single_dose_mg"] + 1e-9:
            problems.append("single dose raised")
        current = before_flat.get("previous_daily_dose_mg")
        if current and new_daily is not None and new_daily < current * (1 - step / 100) - 1e-9:
            problems.append(f"cut {current} -> {new_daily} is larger than {step}%")
        if would_fire(pack, facts, offer.regimen):  # the service's own re-check agrees
            problems.append(f"facts-level re-check: {would_fire(pack, facts, offer.regimen)}")
        if problems:
            failures.append(f"case {case.n} {case.dims}: {'; '.join(problems)} ({offer.suggestion.label})")
    elapsed = time.perf_counter() - started
    print(f"closure: {CASES} cases in {elapsed:.1f} s; {dict(sorted(stats.items()))}")
    assert not failures, "\n".join(failures[:20])
    # every renal band incl. dialysis, each action, AUD, 65+, tablet and liquid, enteral routes
    assert covered["band"] == {"N", "L", "M", "S", "D", "none", "stale"}
    assert covered["action"] == {"new", "modify", "continue"} and covered["indication"] == {
        "aud",
        "spasticity",
    }
    assert covered["liquid"] == {True, False} and covered["65+"] == {True, False}
    assert {"127492001", "127490009", "Per G tube"} <= covered["route"]
    # the test is only as strong as the suggestions it sees: enough of them, from several tiers
    assert stats["suggestion"] >= 100, stats
    assert sum(1 for k in stats if k.startswith("suggestion from")) >= 3, stats


def _fixture_files() -> list[Path]:
    return sorted((ROOT / "fixtures" / "baclofen").glob("*.json"))


@pytest.mark.parametrize("path", _fixture_files(), ids=lambda p: p.stem)
def test_no_suggestion_on_a_fixture_creates_a_flagged_order(engine, pack, path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    facts = PatientFacts.model_validate(raw["facts"])
    if facts.order is None:
        return
    alerts = engine.evaluate_pack(pack, facts)
    # fixtures are facts, not FHIR: a stand-in draft with an id and one dosage instruction
    draft = {"resourceType": "MedicationRequest", "id": "fixture-draft", "dosageInstruction": [{}]}
    offer = order_one_click(pack, alerts, draft, facts.order, lambda: engine.flat_facts(pack, facts))
    if offer.regimen is None:
        return
    regimen = offer.regimen
    unit = (facts.order.dose_unit or "mg").strip().lower()
    amount = regimen.dose_mg if unit in ("mg", "milligram") else regimen.units
    order = facts.order.model_copy(update={"dose_amount": amount, "doses_per_day": float(regimen.per_day)})
    after = facts.model_copy(update={"order": order})
    assert _fired_dose_dependent(engine, pack, after) == [], (
        path.stem,
        offer.suggestion and offer.suggestion.label,
    )
