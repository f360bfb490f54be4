"""Work the hook path no longer repeats (issue 19, speed changes), proved to answer as before.

The prefetch bundles are walked for drafts naming their product by reference only (last test).
The hook's one-click limits read the evaluator's tier outcomes instead of walking the trees again.

:meth:`Engine.one_click_truths` hands the Rete outcomes to :func:`~cds_engine.rules.one_click.limits`
only where they must equal the oracle on the flat facts (issue 19, a speed change). Proved here
on the seeded suggestion cases (every renal band, liquids, enteral routes, new / modify /
continue) and on every fixture of the pack: whenever it answers, it answers exactly the oracle's
truths, and the order's one-click offer is the same object with or without them. Where the
projection could read a fact differently (a key present as None, a default that is not the
leaf's) it answers None and the trees are walked as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds_engine.engine import Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.conditions import facts_of
from cds_engine.rules.one_click import tier_truths
from cds_engine.service.suggestions import order_one_click
from cds_engine.sources.fhir import facts_from_resources
from suggestion_cases import AS_OF, generate

ROOT = Path(__file__).resolve().parents[1]
CASES = 1500
FIXTURE = ROOT / "fixtures" / "baclofen" / "CA-egfr-gt60-new-start.json"
SEED = 20261206


def _same_offer(a, b) -> bool:
    """Equal offers (each suggestion carries a fresh random uuid: compared without it)."""
    dump = lambda o: None if o is None else o.model_dump(exclude={"uuid"})  # noqa: E731
    return (a.tier_id, a.regimen, a.note, a.reason, dump(a.suggestion)) == (
        b.tier_id, b.regimen, b.note, b.reason, dump(b.suggestion))


def _check(engine: Engine, pack, facts: PatientFacts, draft) -> tuple[bool, bool]:
    """(truths given, a suggestion offered); asserts equality with the oracle's walk."""
    flat = engine.flat_facts(pack, facts)
    alerts, outcomes = engine.evaluate_pack_outcomes(pack, facts, flat)
    assert alerts == engine.evaluate_pack(pack, facts, flat)
    truths = engine.one_click_truths(pack, flat, outcomes)
    if truths is not None:
        assert truths == tier_truths(pack, flat, pack.one_click)
    walked = order_one_click(pack, alerts, draft, facts.order, lambda: flat, facts)
    given = order_one_click(pack, alerts, draft, facts.order, lambda: flat, facts, truths)
    assert _same_offer(given, walked)
    return truths is not None, walked.suggestion is not None


def test_outcomes_stand_for_the_oracle_on_the_seeded_cases(engine, pack):
    used = offered = 0
    for case in generate(CASES, SEED):
        facts = facts_from_resources(case.resources, as_of=AS_OF, vocab=pack.vocabulary,
                                     drug_class=pack.context.drug_class, draft_orders=[case.draft])
        if facts.order is None:
            continue
        given, suggestion = _check(engine, pack, facts, case.draft)
        used += given
        offered += suggestion
    # the shortcut must actually be taken (else the hook walks the trees as before), on cases that offer
    assert used >= CASES * 0.9, used
    assert offered >= 30, offered


@pytest.mark.parametrize("path", sorted(FIXTURE.parent.glob("*.json")), ids=lambda p: p.stem)
def test_outcomes_stand_for_the_oracle_on_the_fixtures(engine, pack, path):
    facts = PatientFacts.model_validate(json.loads(path.read_text(encoding="utf-8"))["facts"])
    draft = {"resourceType": "MedicationRequest", "id": "order-1"}
    _check(engine, pack, facts, draft)


def test_a_key_present_as_none_falls_back_to_the_walk(engine, pack):
    """The projection drops a None (and may fill a default): then no outcomes are handed over."""
    facts = PatientFacts.model_validate(
        json.loads(FIXTURE.read_text(encoding="utf-8"))["facts"]
    )
    flat = engine.flat_facts(pack, facts)
    _, outcomes = engine.evaluate_pack_outcomes(pack, facts, flat)
    assert engine.one_click_truths(pack, flat, outcomes) is not None
    read = {leaf.fact for t in pack.tiers if t.id in pack.one_click for leaf in facts_of(t.node)}
    assert read
    for fact in sorted(read)[:10]:
        assert engine.one_click_truths(pack, {**flat, fact: None}, outcomes) is None, fact


def test_a_projection_default_unlike_the_leaf_falls_back(engine, pack):
    """A projection whose default for a fact is not the leaf's own: never handed over."""
    fact = next(leaf.fact for t in pack.tiers if t.id in pack.one_click for leaf in facts_of(t.node))
    odd = Engine(engine.packs)
    odd._referenced[pack.id] = {**odd._referenced[pack.id], fact: "not the leaf's default"}
    facts = PatientFacts.model_validate(
        json.loads(FIXTURE.read_text(encoding="utf-8"))["facts"]
    )
    flat = odd.flat_facts(pack, facts)
    assert odd.one_click_truths(pack, flat, {t: 0 for t in pack.one_click}) is None
    odd.close()


def test_the_hook_hands_the_outcomes_over(engine, pack, monkeypatch):
    """Through the service: an order-sign that offers a one-click change walks no one-click tier again,
    and its card is the one the walk gives (the old hook walked every one-click tier per order)."""
    from fastapi.testclient import TestClient
    from tests.service_helpers import LocalFhir, hook_request

    import cds_engine.rules.one_click as one_click_module
    from cds_engine.service import create_app
    from cds_engine.service.discovery import prefetch_templates

    walked: list[object] = []
    real = one_click_module.tier_truths

    def counting(pack_, flat, only=None):
        if only is pack_.one_click:
            walked.append(only)
        return real(pack_, flat, only)

    app = create_app(lambda: engine, auth=None, clock=lambda: AS_OF)
    offered = 0
    with TestClient(app) as client:
        for case in generate(60, SEED):
            patient = next(r for r in case.resources if r["resourceType"] == "Patient")["id"]
            prefetch = LocalFhir(case.resources).prefetch(prefetch_templates(pack), {"patientId": patient})
            body = hook_request("order-sign", patient, [case.draft], prefetch=prefetch)
            monkeypatch.setattr(one_click_module, "tier_truths", counting)
            new = client.post("/cds-services/baclofen-order-sign", json=body)
            monkeypatch.setattr(one_click_module, "tier_truths", real)
            assert not walked, case.n
            if new.status_code != 200 or not any(c.get("suggestions") for c in new.json()["cards"]):
                continue
            offered += 1
            alerts = engine.evaluate_pack(pack, facts_from_resources(
                case.resources, as_of=AS_OF, vocab=pack.vocabulary, drug_class=pack.context.drug_class,
                draft_orders=[case.draft]))
            assert any(a.tier_id in pack.one_click for a in alerts)
    assert offered >= 1  # the spy saw calls that really offered a change


def test_a_draft_naming_a_prefetched_medication_is_still_resolved(engine, pack):
    """``_parse`` walks the prefetch only for a draft without an inline concept: that walk still happens.

    The draft names its product by reference to a Medication carried in a prefetch bundle (not
    in draftOrders): it must be read as the pack's drug (cards), exactly as the inline draft is.
    """
    from fastapi.testclient import TestClient
    from tests.service_helpers import LocalFhir, hook_request, medication_request

    from cds_engine.service import create_app
    from cds_engine.service.discovery import prefetch_templates

    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"}
    inline = medication_request(id="mr-1", dose=40, per_day=4)
    referenced = {k: v for k, v in inline.items() if k != "medicationCodeableConcept"}
    referenced["medicationReference"] = {"reference": "Medication/med-1"}
    medication = {"resourceType": "Medication", "id": "med-1", "code": inline["medicationCodeableConcept"]}
    prefetch = LocalFhir([patient]).prefetch(prefetch_templates(pack), {"patientId": "p1"})
    prefetch["medications"] = {"resourceType": "Bundle", "type": "searchset",
                               "entry": [{"resource": medication}]}
    app = create_app(lambda: engine, auth=None, clock=lambda: AS_OF)
    with TestClient(app) as client:
        by_ref = client.post("/cds-services/baclofen-order-sign",
                             json=hook_request("order-sign", "p1", [referenced], prefetch=prefetch))
        by_concept = client.post("/cds-services/baclofen-order-sign",
                                 json=hook_request("order-sign", "p1", [inline], prefetch=prefetch))
    assert by_ref.status_code == by_concept.status_code == 200
    summaries = [c["summary"] for c in by_ref.json()["cards"]]
    assert summaries and summaries == [c["summary"] for c in by_concept.json()["cards"]]
