"""The vector (polars) evaluator must give exactly the alerts of the Rete and oracle paths.

Two generators: whole patients (PatientFacts through derive, as the batch command sees them)
and raw flat fact dicts covering every fact the pack reads — missing values, eGFR bounds and
values outside what derive would produce included — so the compiled expressions are checked
against the condition trees themselves, not only on realistic patients.

Kidney function (issue #12): the generated patients carry CrCl, race-stratified eGFR pairs,
the AKI flag and dated/encounter diagnoses. The record table (CSV/Parquet) carries CrCl
(``crcl``, ``crcl_unit``, ``crcl_date``) and the current-AKI flag (``aki``), but not condition
dates (a coded AKI in ``conditions`` is undated and so counts as recent) nor eGFR pairs (one
``egfr`` column: the pair must be resolved before the extract).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_engine.engine import OracleEvaluator, project
from cds_engine.evaluators.vector import VectorPack, alerts_to_rows, frame_from_flats, vector_alerts
from cds_engine.facts import catalog
from cds_engine.facts.model import PatientFacts
from cds_engine.results import build_alerts
from cds_engine.rules.conditions import BOUND_SUFFIXES, TRUE, UNKNOWN, facts_of
from cds_engine.rules.rete import ReteEvaluator
from cds_engine.synthetic import PatientGenerator


def _key(row: dict[str, Any]) -> tuple:
    row = dict(row)
    row["evidence"] = json.dumps(json.loads(row["evidence"]), sort_keys=True)
    return tuple(sorted(row.items()))


@pytest.fixture(scope="module")
def vp(pack) -> VectorPack:
    return VectorPack.compile(pack)


@pytest.fixture(scope="module")
def rete(pack):
    evaluator = ReteEvaluator(pack, slot="vector-parity")
    yield evaluator
    evaluator.close()


def _compare(pack, vp, rete, flats: list[dict[str, Any]]) -> int:
    """Assert identical alert rows per patient from all three; return how many alerts were seen."""
    ids = [f"p{i}" for i in range(len(flats))]
    got: dict[str, set] = {}
    for row in vector_alerts(vp, frame_from_flats(vp, flats, {"patient_id": ids})).to_dicts():
        got.setdefault(row["patient_id"], set()).add(_key(row))
    oracle = OracleEvaluator(pack)
    referenced = pack.referenced_facts()
    seen = 0
    vector_outcomes = vp.outcome_dicts(frame_from_flats(vp, flats))
    for pid, flat, v_out in zip(ids, flats, vector_outcomes, strict=True):
        projected = project(flat, referenced)
        o_out, r_out = oracle.outcomes(projected), rete.outcomes(projected)
        assert v_out == o_out, {t: (o_out[t], v_out[t]) for t in o_out if o_out[t] != v_out[t]}
        assert r_out == o_out
        expected = {_key(r) for r in alerts_to_rows(pid, build_alerts(pack, flat, o_out))}
        assert got.get(pid, set()) == expected, (flat, expected ^ got.get(pid, set()))
        seen += len(expected)
    return seen


@given(seeds=st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=25))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_vector_equals_rete_and_oracle_on_generated_patients(pack, vp, rete, seeds):
    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    flats = []
    for seed in seeds:
        facts = PatientFacts.model_validate(gen.patient(random.Random(seed)))
        from cds_engine.facts.derive import derive

        flats.append(derive(facts, pack.vocabulary, pack.context))
    _compare(pack, vp, rete, flats)


def _flat_strategy(pack) -> st.SearchStrategy[dict[str, Any]]:
    """Flat fact dicts over every fact the pack reads, each value present or missing."""
    values: dict[str, set[Any]] = {}
    for tier in pack.tiers:
        for leaf in facts_of(tier.node):
            bucket = values.setdefault(leaf.fact, set())
            for v in leaf.value if isinstance(leaf.value, tuple) else (leaf.value,):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    bucket.add(v)
                else:
                    bucket.update({v - 1, v, v + 0.5, v + 1})
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name in pack.referenced_facts():
        if any(name.endswith(s) for s in BOUND_SUFFIXES):
            continue
        spec, family, _ = catalog.lookup(name)
        kind = spec.type if spec else family.type
        known = sorted((v for v in values.get(name, set()) if not isinstance(v, bool)), key=str)
        if kind == "bool":
            strategy: st.SearchStrategy[Any] = st.booleans()
        elif kind == "number":
            numbers = [v for v in known if isinstance(v, int | float)]
            strategy = st.sampled_from(numbers) if numbers else st.integers(0, 5)
            strategy = st.one_of(strategy, st.floats(-5, 500, allow_nan=False).map(lambda x: round(x, 2)))
        else:
            strings = [v for v in known if isinstance(v, str)] or ["x"]
            strategy = st.sampled_from([*strings, "other"])
        # "always" facts are never missing in derive's output: the compilers rely on it
        fields[name] = strategy if spec is not None and spec.always else st.one_of(st.none(), strategy)
    bound = st.one_of(
        st.none(), st.tuples(st.sampled_from(BOUND_SUFFIXES), st.sampled_from([15.0, 30.0, 60.0, 90.0]))
    )

    @st.composite
    def flat(draw: Any) -> dict[str, Any]:
        out = {k: v for k, v in ((k, draw(s)) for k, s in fields.items()) if v is not None}
        for fact in ("egfr", "crcl"):
            b = draw(bound)
            if b is not None and fact in fields:
                out.pop(fact, None)
                out[fact + b[0]] = b[1]
        return out

    return flat()


@given(data=st.data())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_vector_equals_rete_and_oracle_on_arbitrary_flat_facts(pack, vp, rete, data):
    flats = data.draw(st.lists(_flat_strategy(pack), min_size=1, max_size=30))
    _compare(pack, vp, rete, flats)


def test_vector_sweep_reaches_true_unknown_and_cannot_assess(pack, vp, rete):
    """2,000 generated patients in one frame: identical, and every kind of outcome occurs."""
    from cds_engine.facts.derive import derive

    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    rng = random.Random(5)
    flats = [
        derive(PatientFacts.model_validate(gen.patient(rng)), pack.vocabulary, pack.context)
        for _ in range(2000)
    ]
    assert _compare(pack, vp, rete, flats) > 2000
    outcomes = vp.outcomes(frame_from_flats(vp, flats))
    values = {v for col in outcomes.columns for v in outcomes[col].unique().to_list()}
    assert {TRUE, UNKNOWN} <= values
    alerts = vector_alerts(
        vp, frame_from_flats(vp, flats, {"patient_id": [str(i) for i in range(len(flats))]})
    )
    assert set(alerts["kind"].unique()) == {"finding", "cannot-assess"}
    assert alerts.filter(alerts["not_assessed"] != "").height > 0
