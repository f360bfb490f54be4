"""The Rete (durable_rules) evaluator must agree with the plain-Python oracle on every patient."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_engine.engine import Engine, OracleEvaluator, project
from cds_engine.facts.model import PatientFacts
from cds_engine.results import build_alerts
from cds_engine.rules.conditions import TRUE, UNKNOWN
from cds_engine.rules.rete import ReteEvaluator
from cds_engine.synthetic import PatientGenerator


def _both(pack, engine: Engine, rete: ReteEvaluator, oracle: OracleEvaluator, facts: PatientFacts):
    flat = engine.flat_facts(pack, facts)
    projected = project(flat, pack.referenced_facts())
    return flat, rete.outcomes(projected), oracle.outcomes(projected)


@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rete_equals_oracle_on_generated_patients(engine, pack, seed):
    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    facts = PatientFacts.model_validate(gen.patient(random.Random(seed)))
    rete = _rete(pack)
    flat, r, o = _both(pack, engine, rete, OracleEvaluator(pack), facts)
    assert r == o, {k: (o[k], r[k]) for k in o if o[k] != r[k]}
    assert build_alerts(pack, flat, r) == build_alerts(pack, flat, o)


_RETE: dict[str, ReteEvaluator] = {}


def _rete(pack) -> ReteEvaluator:
    if pack.content_hash not in _RETE:
        _RETE[pack.content_hash] = ReteEvaluator(pack, slot="parity")
    return _RETE[pack.content_hash]


def test_parity_sweep_reaches_every_outcome(engine, pack):
    """5,000 patients: identical outcomes, and the sweep really exercises TRUE and UNKNOWN."""
    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    rete, oracle = ReteEvaluator(pack, slot="sweep"), OracleEvaluator(pack)
    rng = random.Random(20261125)
    seen_true: set[str] = set()
    unknown = 0
    for _ in range(5000):
        facts = PatientFacts.model_validate(gen.patient(rng))
        _, r, o = _both(pack, engine, rete, oracle, facts)
        assert r == o
        seen_true |= {k for k, v in r.items() if v == TRUE}
        unknown += sum(v == UNKNOWN for v in r.values())
    tiers = {t.id for t in pack.tiers}
    assert len(seen_true) >= len(tiers) - 2, sorted(tiers - seen_true)
    assert unknown > 100
    assert rete.leftover_facts() == []
    rete.close()


def test_parity_on_arbitrary_flat_facts(pack):
    """Beyond realistic patients: any combination of present/missing values of every fact the pack
    reads, up to 'everything present' (the case most likely to hit durable_rules' stack limit)."""
    from cds_engine.facts import catalog

    refs = pack.referenced_facts()
    always = {k for k, v in catalog.FACTS.items() if v.always}
    numbers = [
        0,
        1,
        2,
        3,
        5,
        7,
        14,
        20,
        24,
        28,
        30,
        36,
        42,
        50,
        53.3,
        60,
        65,
        80,
        90,
        180,
        365,
        366,
        1000,
        1001,
    ]
    strings = [
        "oral",
        "enteral",
        "intrathecal",
        "iv",
        "transdermal",
        "new",
        "modify",
        "continue",
        "discontinue",
        "hold",
        "mg",
        "mcg",
        "mL",
        "aud",
        "spasticity",
        "capsule",
        "patch",
        "injection",
        "solution",
        "serious-adverse-reaction",
    ]
    rng = random.Random(11)
    rete, oracle = ReteEvaluator(pack, slot="flat"), OracleEvaluator(pack)

    def value(name: str):
        spec, family, _ = catalog.lookup(name.split("__")[0])
        kind = (spec or family).type
        return (
            rng.choice([True, False])
            if kind == "bool"
            else rng.choice(numbers if kind == "number" else strings)
        )

    for _ in range(5000):
        density = rng.choice([0.1, 0.5, 0.9, 1.0])
        flat = {k: value(k) for k in refs if k in always or rng.random() < density}
        for bounded in [n for n, spec in catalog.FACTS.items() if spec.bounded]:  # egfr, crcl, renal_fn
            for extra in [k for k in flat if k == bounded or k.startswith(bounded + "__")][1:]:
                del flat[extra]
        projected = project(flat, refs)
        assert rete.outcomes(projected) == oracle.outcomes(projected)
    assert rete.leftover_facts() == []
