"""Batch screening benchmark (issue 5): vector vs Rete vs oracle, bundles vs JSON parsing, memory, Dask.

    .venv/bin/python bench/screen.py                 # default sizes (1M vector; 2M for the memory pair)
    .venv/bin/python bench/screen.py --full          # the issue's sizes: memory at 1M and 5M
    .venv/bin/python bench/screen.py --quick         # small sizes
    .venv/bin/python bench/screen.py --smoke         # a few seconds (CI: tests/test_bench_smoke.py)

Items (each prints one line; ``--json FILE`` saves them):
  (a) N patients from Parquet through the vector path: read + evaluate (tier outcomes), and
      read + evaluate + the full alert table (summaries, evidence JSON) — patients/s.
      The Parquet holds *flat facts* (one column per fact the pack reads), generated column-wise
      by :func:`flat_population`. Also: a patient *record* table (the CSV/Parquet input format)
      through ``cds-engine screen`` end to end, which derives facts patient by patient.
  (b) the Rete (durable_rules) path on a sample of the same patients, (c) the plain-Python oracle
      on the same sample — both per patient, alerts built with ``build_alerts``.
  (d) the shipped Synthea bundles (``examples/synthea``) end to end (``cds-engine screen``) vs
      ``json.loads`` of the same files.
  (e) peak RSS of a streamed vector screening at two sizes (separate processes).
  (f) ``cds-engine screen --dask`` on a LocalCluster with 1 and 2 workers (record table).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from bench_common import REPO, machine_header, use_repo_paths

use_repo_paths()

from cds_engine.engine import Engine, OracleEvaluator, project  # noqa: E402
from cds_engine.facts import catalog  # noqa: E402
from cds_engine.results import build_alerts  # noqa: E402
from cds_engine.rules.conditions import BOUND_SUFFIXES, facts_of  # noqa: E402
from cds_engine.rules.rete import ReteEvaluator  # noqa: E402
from cds_engine.rules.vector import VectorPack, vector_alerts  # noqa: E402

AS_OF = "2026-01-15T00:00:00+00:00"


def _rand(seed: int, n_mod: int) -> pl.Expr:
    """A pseudo-random integer in [0, n_mod) per row (hash of the row index: reproducible, vectorised)."""
    return (pl.int_range(pl.len(), dtype=pl.UInt64).hash(seed) % n_mod).cast(pl.Int64)


def flat_population(pack, n: int, seed: int = 1) -> pl.DataFrame:
    """N patients' flat facts, as a population screened with a new oral order (5 mg TID) would have them.

    Every fact the pack reads gets a column; prevalences are plausible, not clinical: values are
    spread around the thresholds the rules use, and each scalar is missing in part of the rows.
    """
    thresholds: dict[str, list] = {}
    for tier in pack.tiers:
        for leaf in facts_of(tier.node):
            vals = leaf.value if isinstance(leaf.value, tuple) else (leaf.value,)
            thresholds.setdefault(leaf.fact, []).extend(v for v in vals if v is not None)
    fixed = {
        "order_present": True,
        "order_action": "new",
        "order_route": "oral",
        "order_dose_unit": "mg",
        "order_dose_amount": 5.0,
        "order_doses_per_day": 3.0,
        "daily_dose_mg": 15.0,
        "daily_dose_mcg": 15000.0,
        "max_single_dose_mg": 5.0,
        "dose_increase": False,
        "drug_active_count": 1.0,
        "drug_active_by_route.oral": 1.0,
        "drug_liquid_concentrations": 0.0,
        "order_is_liquid": None,
        "order_form": None,
        "order_has_taper": False,
    }
    base = pl.DataFrame({"patient_id": pl.int_range(n, eager=True).cast(pl.String)})
    exprs = []
    for i, name in enumerate(pack.referenced_facts()):
        if any(name.endswith(s) for s in BOUND_SUFFIXES):
            continue
        s = seed * 1000 + i
        if name in fixed:
            v = fixed[name]
            exprs.append(pl.lit(v).alias(name))
            continue
        spec, family, _ = catalog.lookup(name)
        kind = spec.type if spec else family.type
        missing = _rand(s + 1, 100) < (3 if (spec and spec.always) else 15)
        if kind == "bool":
            value = _rand(s, 100) < 8
        elif kind == "number":
            if family is not None and family.default == 0:
                value = pl.when(_rand(s, 100) < 7).then(_rand(s + 2, 3) + 1).otherwise(0).cast(pl.Float64)
                missing = pl.lit(False)
            elif name == "age_years":
                value = (_rand(s, 80) + 16).cast(pl.Float64)
            elif name == "egfr":
                value = (_rand(s, 11500) / 100 + 5).cast(pl.Float64)
                missing = _rand(s + 1, 100) < 25
            else:
                cut = [float(t) for t in thresholds.get(name, [30]) if isinstance(t, int | float)] or [30.0]
                top = max(cut) * 2 + 10
                value = (_rand(s, int(top * 10)) / 10).cast(pl.Float64)
        else:
            options = [t for t in thresholds.get(name, []) if isinstance(t, str)] + ["other"]
            value = pl.lit(pl.Series(options)).get(_rand(s, len(options)))
        exprs.append(pl.when(missing).then(None).otherwise(value).alias(name))
    frame = base.with_columns(exprs)
    if "egfr" in frame.columns:  # a few results reported as a bound ("> 60")
        bounded = _rand(seed + 7, 100) < 3
        frame = frame.with_columns(
            pl.when(bounded).then(60.0).otherwise(None).cast(pl.Float64).alias("egfr__gt"),
            pl.when(bounded).then(None).otherwise(pl.col("egfr")).alias("egfr"),
        )
    return frame


def record_population(vocab, n: int, seed: int = 2) -> pl.DataFrame:
    """N patients in the CSV/Parquet *record* format (the table input of ``cds-engine screen``)."""
    drug_codes = sorted({f"{s}|{c}" for (k, s, c), _ in vocab.codes.items() if k == "drug_class"})[:400]
    cond_codes = sorted({f"{s}|{c}" for (k, s, c), _ in vocab.codes.items() if k == "condition_group"})[:400]
    meds = pl.Series(drug_codes)
    conds = pl.Series(cond_codes)
    base = pl.DataFrame({"i": pl.int_range(n, eager=True)})
    return base.select(
        pl.format("r{}", pl.col("i")).alias("patient_id"),
        (pl.date(1930, 1, 1) + pl.duration(days=_rand(seed, 365 * 75))).alias("birth_date"),
        pl.when(_rand(seed + 1, 2) == 0).then(pl.lit("female")).otherwise(pl.lit("male")).alias("sex"),
        pl.when(_rand(seed + 2, 4) == 0)
        .then(None)
        .otherwise(_rand(seed + 3, 110) + 5)
        .cast(pl.Float64)
        .alias("egfr"),
        (pl.date(2025, 1, 1) + pl.duration(days=_rand(seed + 4, 370))).alias("egfr_date"),
        pl.concat_str(
            [pl.lit(meds).get(_rand(seed + 5, len(meds))), pl.lit(meds).get(_rand(seed + 6, len(meds)))],
            separator=";",
        ).alias("medications"),
        pl.when(_rand(seed + 7, 3) == 0)
        .then(pl.lit(conds).get(_rand(seed + 8, len(conds))))
        .alias("conditions"),
        (_rand(seed + 9, 100) < 2).alias("deceased"),
    )


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def bench_vector(vp, path: Path, n: int) -> dict:
    # warm-up on a slice (compilation and thread start-up are not per-patient costs)
    vector_alerts(vp, pl.read_parquet(path, n_rows=1000))
    _, t_eval = timed(lambda: vp.outcomes(pl.read_parquet(path)))
    alerts, t_full = timed(lambda: vector_alerts(vp, pl.read_parquet(path)))
    return {
        "patients": n,
        "eval_s": t_eval,
        "eval_rate": n / t_eval,
        "alerts_s": t_full,
        "alerts_rate": n / t_full,
        "alerts": alerts.height,
    }


def bench_per_patient(pack, sample: list[dict], kind: str) -> dict:
    referenced = pack.referenced_facts()
    evaluator = OracleEvaluator(pack) if kind == "oracle" else ReteEvaluator(pack, slot=f"bench-{kind}")
    t = time.perf_counter()
    alerts = 0
    for flat in sample:
        outcomes = evaluator.outcomes(project(flat, referenced))
        alerts += len(build_alerts(pack, flat, outcomes))
    dt = time.perf_counter() - t
    return {"patients": len(sample), "seconds": dt, "rate": len(sample) / dt, "alerts": alerts}


def bench_bundles() -> dict | None:
    synthea = REPO / "examples" / "synthea"
    from cds_engine.batch.inputs import plan_inputs
    from cds_engine.batch.runner import ScreenOptions, run_screen

    files = plan_inputs([synthea]).bundles
    t = time.perf_counter()
    for f in files:
        raw = f.read_bytes()
        json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)  # the hand-made ones are plain
    parse_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        result, screen_s = timed(
            run_screen,
            ScreenOptions(
                inputs=[synthea],
                out=Path(tmp) / "o",
                rules=REPO / "rules",
                as_of=AS_OF,
                assume_order="baclofen 5 mg PO TID",
                progress=False,
            ),
        )
    n = len(files)
    return {
        "files": n,
        "parse_s": parse_s,
        "parse_rate": n / parse_s,
        "screen_s": screen_s,
        "screen_rate": n / screen_s,
        "ratio": parse_s / screen_s,
        "patients": result.summary["counts"]["read"],
    }


_MEM_CHILD = """
import sys, resource, polars as pl
sys.path.insert(0, {src!r})
from cds_engine.engine import Engine
from cds_engine.rules.vector import VectorPack, vector_alerts
pack = next(p for p in Engine.from_dir({rules!r}).packs if p.id == "baclofen")
vp = VectorPack.compile(pack)
n, rows = 0, 0
for batch in pl.scan_parquet({path!r}).collect_batches(chunk_size={chunk}):
    rows += vector_alerts(vp, batch).height
    n += batch.height
print(n, rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_memory(pack, sizes: list[int], chunk: int, tmp: Path) -> list[dict]:
    out = []
    for n in sizes:
        path = tmp / f"mem-{n}.parquet"
        flat_population(pack, n, seed=3).write_parquet(path)
        code = _MEM_CHILD.format(
            src=str(REPO / "src"), rules=str(REPO / "rules"), path=str(path), chunk=chunk
        )
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        patients, alerts, rss_kb = (int(x) for x in done.stdout.split())
        out.append(
            {
                "patients": patients,
                "alerts": alerts,
                "peak_rss_mb": rss_kb / 1024,
                "seconds": time.perf_counter() - t,
            }
        )
        path.unlink()
    return out


def bench_dask(vocab, n: int, tmp: Path) -> list[dict]:
    from distributed import LocalCluster

    from cds_engine.batch.runner import ScreenOptions, run_screen

    path = tmp / "records.parquet"
    record_population(vocab, n).write_parquet(path)
    out = []
    for workers in (1, 2):
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as c:
            _, dt = timed(
                run_screen,
                ScreenOptions(
                    inputs=[path],
                    out=tmp / f"dask{workers}",
                    rules=REPO / "rules",
                    as_of=AS_OF,
                    assume_order="baclofen 5 mg PO TID",
                    dask=c.scheduler_address,
                    rows_per_chunk=max(1000, n // 8),
                    progress=False,
                ),
            )
        out.append({"workers": workers, "patients": n, "seconds": dt, "rate": n / dt})
    return out


def bench_records(vocab, n: int, tmp: Path) -> dict:
    from cds_engine.batch.runner import ScreenOptions, run_screen

    path = tmp / "records-serial.parquet"
    record_population(vocab, n, seed=5).write_parquet(path)
    _, dt = timed(
        run_screen,
        ScreenOptions(
            inputs=[path],
            out=tmp / "rec",
            rules=REPO / "rules",
            as_of=AS_OF,
            assume_order="baclofen 5 mg PO TID",
            progress=False,
        ),
    )
    return {"patients": n, "seconds": dt, "rate": n / dt}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}, "
        f"polars {pl.__version__}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=10_000, help="patients for the Rete and oracle paths")
    ap.add_argument("--full", action="store_true", help="memory at 1M and 5M patients (the issue's sizes)")
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--smoke", action="store_true", help="a few seconds: tiny sizes, every item once")
    ap.add_argument(
        "--records", type=int, default=20_000, help="record-table patients through the CLI and Dask"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.patients, args.sample, args.records = 50_000, 1_000, 2_000
    mem_sizes = (
        [1_000_000, 5_000_000] if args.full else ([50_000, 100_000] if args.quick else [1_000_000, 2_000_000])
    )
    mem_chunk = 100_000
    if args.smoke:
        args.patients, args.sample, args.records = 2_000, 100, 300
        mem_sizes, mem_chunk = [2_000, 4_000], 1_000
    print(machine_header("bench/screen.py", args.smoke))
    engine = Engine.from_dir(REPO / "rules")
    pack = next(p for p in engine.packs if p.id == "baclofen")
    vp = VectorPack.compile(pack)
    results: dict = {"machine": machine()}
    print("machine:", results["machine"])
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = tmp / "flat.parquet"
        population, gen_s = timed(flat_population, pack, args.patients)
        population.write_parquet(path)
        print(f"generated {args.patients:,} patients in {gen_s:.1f} s")
        a = bench_vector(vp, path, args.patients)
        results["a_vector"] = a
        print(
            f"(a) vector, Parquet → tier outcomes: {a['eval_rate']:,.0f} patients/s ({a['eval_s']:.2f} s); "
            f"→ full alert table: {a['alerts_rate']:,.0f} patients/s ({a['alerts_s']:.2f} s, "
            f"{a['alerts']:,} alerts)"
        )
        sample = [
            {k: v for k, v in row.items() if v is not None}
            for row in population.head(args.sample).drop("patient_id").iter_rows(named=True)
        ]
        b = bench_per_patient(pack, sample, "rete")
        c = bench_per_patient(pack, sample, "oracle")
        results["b_rete"], results["c_oracle"] = b, c
        print(f"(b) rete, {b['patients']:,} patients: {b['rate']:,.0f} patients/s")
        print(f"(c) oracle, {c['patients']:,} patients: {c['rate']:,.0f} patients/s")
        print(
            f"    vector/oracle: outcomes {a['eval_rate'] / c['rate']:.1f}x, "
            f"full alerts {a['alerts_rate'] / c['rate']:.1f}x;"
            f" vector/rete: {a['alerts_rate'] / b['rate']:.1f}x"
        )
        r = bench_records(engine.packs[0].vocabulary, args.records, tmp)
        results["a_records_cli"] = r
        print(
            f"(a') record table through `cds-engine screen` (per-patient derive), {r['patients']:,}: "
            f"{r['rate']:,.0f} patients/s"
        )
        d = bench_bundles()
        results["d_bundles"] = d
        if d:  # the same files through both paths; tiny sample (15 files): read the ratio, not the rate
            print(
                f"(d) {d['files']} Synthea bundles: json.loads {d['parse_rate']:.0f} files/s, "
                f"screen end to end "
                f"{d['screen_rate']:.0f} files/s → {d['ratio']:.2f}x of the raw parse rate"
            )
        m = bench_memory(pack, mem_sizes, mem_chunk, tmp)
        results["e_memory"] = m
        print(
            "(e) peak RSS, streamed vector screening: "
            + "; ".join(f"{x['patients']:,}: {x['peak_rss_mb']:.0f} MB ({x['seconds']:.0f} s)" for x in m)
            + f" → ratio {m[1]['peak_rss_mb'] / m[0]['peak_rss_mb']:.2f}"
        )
        f = bench_dask(engine.packs[0].vocabulary, args.records, tmp)
        results["f_dask"] = f
        print(
            "(f) LocalCluster record table: "
            + "; ".join(f"{x['workers']} worker(s) {x['rate']:,.0f} patients/s" for x in f)
            + f" → speed-up {f[1]['rate'] / f[0]['rate']:.2f}x"
        )
    _ = resource
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
