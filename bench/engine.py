"""Engine core benchmark: durable_rules (Rete) vs the plain-Python oracle on the same patients.

Run: ``python bench/engine.py [--patients 10000] [--repeat 3] [--smoke]``. Both evaluators get the same
pre-derived, projected facts and build alerts through the same code, so the ratio isolates the
evaluation strategy. Prints a markdown table; the figures of record live in bench/RESULTS.md.
Not a test: timings on a shared 2-core VM vary ±15 %; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

from bench_common import REPO, machine_header, use_repo_paths

use_repo_paths()

from cds_engine.engine import Engine, OracleEvaluator, project  # noqa: E402
from cds_engine.facts.model import PatientFacts  # noqa: E402
from cds_engine.results import build_alerts  # noqa: E402
from cds_engine.rules.rete import ReteEvaluator, durable_ruleset  # noqa: E402
from cds_engine.synthetic import PatientGenerator  # noqa: E402

RULES = REPO / "rules"


def _run(name: str, evaluator, pack, flats, projected, alerts: bool = True) -> dict[str, float]:
    lat = []
    start = time.perf_counter()
    for flat, facts in zip(flats, projected, strict=True):
        t0 = time.perf_counter()
        outcomes = evaluator.outcomes(facts)
        if alerts:
            build_alerts(pack, flat, outcomes)
        lat.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    lat.sort()
    return {
        "name": name,
        "per_s": len(lat) / total,
        "p50_us": lat[len(lat) // 2] * 1e6,
        "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 200 patients, one repeat")
    args = parser.parse_args()
    if args.smoke:
        args.patients, args.repeat = 200, 1
    print(machine_header("bench/engine.py", args.smoke))
    engine = Engine.from_dir(RULES)
    pack = engine.packs[0]
    gen = PatientGenerator(pack.vocabulary, pack.context.drug_class)
    rng = random.Random(42)
    t0 = time.perf_counter()
    patients = [PatientFacts.model_validate(gen.patient(rng)) for _ in range(args.patients)]
    t_validate = time.perf_counter() - t0
    t0 = time.perf_counter()
    flats = [engine.flat_facts(pack, p) for p in patients]
    t_derive = time.perf_counter() - t0
    refs = pack.referenced_facts()
    projected = [project(f, refs) for f in flats]
    rete, oracle = ReteEvaluator(pack, slot="bench"), OracleEvaluator(pack)
    results: dict[str, list[dict[str, float]]] = {
        "rete": [],
        "oracle": [],
        "rete-eval": [],
        "oracle-eval": [],
    }
    for _ in range(args.repeat):  # interleave so machine noise hits both alike
        results["oracle"].append(_run("oracle", oracle, pack, flats, projected))
        results["rete"].append(_run("rete", rete, pack, flats, projected))
        results["oracle-eval"].append(_run("oracle", oracle, pack, flats, projected, alerts=False))
        results["rete-eval"].append(_run("rete", rete, pack, flats, projected, alerts=False))
    best = {k: max(v, key=lambda r: r["per_s"]) for k, v in results.items()}
    ratios = [r["per_s"] / o["per_s"] for r, o in zip(results["rete"], results["oracle"], strict=True)]
    eval_ratios = [
        r["per_s"] / o["per_s"] for r, o in zip(results["rete-eval"], results["oracle-eval"], strict=True)
    ]
    durable_rules, _ = durable_ruleset(pack)
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}, pack {pack.id} {pack.version}: {len(pack.rules)} rules, "
        f"{len(pack.tiers)} tiers -> {len(durable_rules)} durable rules"
    )
    print(
        f"patients: {args.patients}; pydantic validation {args.patients / t_validate:,.0f}/s; "
        f"derive {args.patients / t_derive:,.0f}/s"
    )
    print(f"| path | patients/s (best of {args.repeat}) | p50 µs | p99 µs |")
    print("| --- | ---: | ---: | ---: |")
    labels = {
        "rete": "rete: outcomes + alerts",
        "oracle": "oracle: outcomes + alerts",
        "rete-eval": "rete: outcomes only",
        "oracle-eval": "oracle: outcomes only",
    }
    for name, label in labels.items():
        r = best[name]
        print(f"| {label} | {r['per_s']:,.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} |")
    for title, values in (("with alerts", ratios), ("outcomes only", eval_ratios)):
        print(
            f"rete/oracle throughput ratio per run ({title}): {', '.join(f'{x:.2f}' for x in values)} "
            f"(median {statistics.median(values):.2f}; goal >= 0.5)"
        )
    assert rete.leftover_facts() == []


if __name__ == "__main__":
    main()
