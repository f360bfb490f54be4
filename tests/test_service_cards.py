"""Cards: the validator against the reference responses, and our cards against the validator and policy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tests.service_helpers import REFERENCE, REPO, load_reference, medication_request

from cds_engine.alerts import Alert
from cds_engine.engine import Engine
from cds_engine.rules.governance import approval_state
from cds_engine.rules.overrides import reasons_for
from cds_engine.service.cards import alert_card, allowed_link, override_reasons
from cds_engine.service.suggestions import order_one_click
from cds_engine.service.validate import card_problems, response_problems
from cds_engine.sources.fhir import facts_from_resources

AS_OF = datetime(2025, 3, 1, tzinfo=UTC)


def test_reference_valid_cards_are_valid():
    cards = load_reference("valid_cards.json")
    assert len(cards) == 7
    for card in cards:
        assert card_problems(card) == [], card.get("summary")
    assert response_problems(load_reference("crd_authorization_hook_response.json")) == []


def test_reference_invalid_responses_are_caught():
    with pytest.raises(UnicodeDecodeError):
        (REFERENCE / "warfarin-nsaids-cards.json").read_bytes().decode("utf-8")
    problems = response_problems(load_reference("warfarin-nsaids-cards.json"))
    assert any("selectionBehavior" in p for p in problems)
    assert any("resourceId: required for delete" in p for p in problems)
    assert any("at least one action" in p for p in problems)
    assert any("resource.status: required" in p for p in problems)
    rec08 = response_problems(load_reference("response-example-rec-08-on-benzodiazepine.json"))
    assert rec08 == ["cards[0].summary: 169 characters (must be < 140)"]


def test_validator_rejects_nulls_duplicates_and_bad_links():
    card = {
        "uuid": "a",
        "summary": "s",
        "indicator": "warning",
        "source": {"label": "x"},
        "detail": None,
        "links": [{"label": "l", "url": "https://x.org", "type": "absolute", "appContext": "c"}],
    }
    problems = card_problems(card)
    assert "card.detail: null is not allowed" in problems
    assert any("appContext" in p for p in problems)
    twice = {"cards": [{"uuid": "a", "summary": "s", "indicator": "info", "source": {"label": "x"}}] * 2}
    assert "cards: uuids must be unique" in response_problems(twice)


def _alerts(engine, pack, drafts, resources=()):
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1948-01-01", "gender": "male"}
    egfr = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3"}]},
        "effectiveDateTime": "2025-02-01",
        "valueQuantity": {"value": 45, "unit": "mL/min/{1.73_m2}"},
    }
    facts = facts_from_resources(
        [patient, egfr, *resources],
        as_of=AS_OF,
        vocab=pack.vocabulary,
        drug_class="baclofen",
        draft_orders=drafts,
    )
    return facts, engine.evaluate(facts)


def test_our_cards_conform_and_carry_rule_topic(engine, pack):
    draft = medication_request(dose=40, per_day="TID")
    facts, alerts = _alerts(engine, pack, [draft])
    assert alerts
    cards = []
    offer = order_one_click(pack, alerts, draft, facts.order, lambda: engine.flat_facts(pack, facts))
    for alert in alerts:
        alert, suggestions = offer.for_card(alert)
        card = alert_card(alert, pack, suggestions)
        cards.append(card.model_dump(mode="json", exclude_none=True))
    assert response_problems({"cards": cards}) == []
    rule_ids = {r.spec.id for r in pack.rules}
    for card, alert in zip(cards, alerts, strict=True):
        topic = card["source"]["topic"]
        assert topic["system"] == pack.spec.pack.url and topic["code"] == alert.rule_id
        assert alert.kind == "cannot-assess" or topic["code"] in rule_ids
        offered = [r.code for r in reasons_for(pack.spec, alert.rule_id)]
        assert [r["code"] for r in card["overrideReasons"]] == offered  # the rule's own, else the defaults
        assert "approval pending local clinical validation" in card["detail"]
        for link in card.get("links", []):
            assert allowed_link(link["url"]), link["url"]
        assert len(card["summary"]) < 140
    # sources that are not regulator/PubMed/DOI addresses never become links
    linked = {link["url"] for c in cards for link in c.get("links", [])}
    assert not any("ices.on.ca" in u or "mims.com" in u or "guidelinecentral" in u for u in linked)


def test_card_parts_shared_per_pack_equal_fresh_ones(engine):
    """Issue 19: the approval line and override reasons built once per pack are what a card built
    from scratch carries, for every rule of every pack; each card has its own reasons list, and a
    reloaded pack (a new object) gets its own parts."""
    def alert(pack, rule) -> Alert:
        tier = rule.tiers[0]
        return Alert.model_validate({
            "rule_id": rule.id, "tier_id": tier.id, "title": rule.title, "category": rule.category,
            "severity": tier.severity, "summary": "s", "detail": "d", "pack_id": pack.id,
            "pack_version": pack.version, "pack_hash": pack.content_hash, "pack_url": pack.spec.pack.url,
            "pack_status": "active", "approval": "approved"})

    for pack in engine.packs:
        sentence = approval_state(pack.spec).sentence()
        for rule in pack.spec.rules:
            first, second = alert_card(alert(pack, rule), pack), alert_card(alert(pack, rule), pack)
            fresh = override_reasons(pack, rule.id) or None
            assert first.overrideReasons == fresh and second.overrideReasons == fresh
            assert first.overrideReasons is None or first.overrideReasons is not second.overrideReasons
            assert first.detail == f"d\n\n_{sentence}_"
    reloaded = next(p for p in Engine.from_dir(REPO / "rules").packs if p.id == "baclofen")
    reloaded.spec = reloaded.spec.model_copy(deep=True)  # never touch a spec another test may hold
    reloaded.spec.pack.approval.status = "approved"  # before its first card: parts are per pack object
    shown = alert_card(alert(reloaded, reloaded.spec.rules[0]), reloaded).detail
    assert "approved (" in shown and "approval pending" not in shown
    original = next(p for p in engine.packs if p.id == "baclofen")
    assert "approval pending" in alert_card(alert(original, original.spec.rules[0]), original).detail
