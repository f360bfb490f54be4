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
      through ``cds-engine screen`` end to end (facts derived column-wise: batch/columnar_facts.py).
  (b) the Rete (durable_rules) path on a sample of the same patients, (c) the plain-Python oracle
      on the same sample — both per patient, alerts built with ``build_alerts``.
  (d) FHIR bundles end to end (``run_screen``, serial, selective decoding) vs ``json.loads`` of the
      same files (gunzip included), best of 3 each, warm cache: the 16 shipped ``examples/synthea``
      files, then ``--bundle-copies`` copies of them (each copy its own patient id); (d') a Bulk
      NDJSON export (gzipped, one file per type) of those patients vs ``json.loads`` of every line.
  (e) peak RSS of a streamed vector screening at two sizes (separate processes); (e') the same for
      record tables through ``cds-engine screen``, RSS summed over the process tree every 100 ms.
  (g) ``--record-table`` patients (Parquet records, ``--assume-order``) → ``--format parquet``,
      then ``--format csv`` (timed apart), in a child process: interpreter start reported apart.
      Where its CPU goes, stage by stage: ``bench/screening/stages.py --patients N``.
  (f) a Bulk NDJSON export of ``--dask-copies`` copies of the shipped bundles (160: 2,400 patients,
      ~300 a partition — enough work per task that Dask's per-task cost is not the figure) cut into
      ``--dask-parts`` partitions, processed on a LocalCluster of 1 and of 2 workers (1 thread each,
      ``POLARS_MAX_THREADS=1``; their CPU seconds reported too) and in one process with 2 polars threads.
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
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench_common import REPO, machine_header, subprocess_env, use_repo_paths

use_repo_paths()

from cds_engine import allocator  # noqa: E402

allocator.configure()  # as the cds-engine command does, before polars loads: one arena, freed pages kept 10 s

import polars as pl  # noqa: E402

from cds_engine.engine import Engine, OracleEvaluator, project  # noqa: E402
from cds_engine.evaluators.vector import VectorPack, vector_alerts  # noqa: E402
from cds_engine.facts import catalog  # noqa: E402
from cds_engine.results import build_alerts  # noqa: E402
from cds_engine.rules.conditions import BOUND_SUFFIXES, facts_of  # noqa: E402
from cds_engine.rules.rete import ReteEvaluator  # noqa: E402

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
    rows = alerts.height
    del alerts
    # the same call twice more in this process (what a screening's next chunk or next file meets:
    # the allocator's freed pages are reused, src/cds_engine/allocator.py); the faster one
    again = min(timed(lambda: vector_alerts(vp, pl.read_parquet(path)).height)[1] for _ in range(2))
    return {
        "patients": n,
        "eval_s": t_eval,
        "eval_rate": n / t_eval,
        "alerts_s": t_full,
        "alerts_rate": n / t_full,
        "alerts": rows,
        "alerts_again_s": again,
        "alerts_again_rate": n / again,
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


GZ_MAGIC = b"\x1f\x8b"


def _best(fn, repeats: int = 3) -> float:
    """Best of ``repeats`` wall-clock runs (warm cache: the first run reads the files in)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def synthea_copies(folder: Path, copies: int) -> Path:
    """The shipped Synthea bundles ``copies`` times over (gzip), each copy with its own patient id."""
    from cds_engine.batch.inputs import plan_inputs
    from cds_engine.sources.compressed import read_bundle_bytes
    from cds_engine.sources.selective import read_bundle

    folder.mkdir(parents=True, exist_ok=True)
    for f in plan_inputs([REPO / "examples" / "synthea"]).bundles:
        data = read_bundle_bytes(f)
        pid = next(
            (r.get("id") for r in read_bundle(data).resources if r.get("resourceType") == "Patient"), None
        )
        for k in range(copies):
            copy = data.replace(pid.encode(), f"{pid[:-6]}{k:06d}".encode()) if pid and len(pid) > 6 else data
            name = f.name.removesuffix(".gz").removesuffix(".json")
            (folder / f"{k:04d}-{name}.json.gz").write_bytes(gzip.compress(copy, 6))
    return folder


def bulk_export(bundles: Path, folder: Path) -> Path:
    """A Bulk FHIR export (one gzipped NDJSON file per resource type) of the same patients."""
    from cds_engine.batch.inputs import plan_inputs
    from cds_engine.sources.compressed import read_bundle_bytes
    from cds_engine.sources.fhir import bundle_resources

    folder.mkdir(parents=True, exist_ok=True)
    handles: dict[str, gzip.GzipFile] = {}
    with ExitStack() as stack:
        for f in plan_inputs([bundles]).bundles:
            for r in bundle_resources(json.loads(read_bundle_bytes(f))):
                rtype = r["resourceType"]
                if rtype not in handles:
                    path = folder / f"{rtype}.ndjson.gz"
                    handles[rtype] = stack.enter_context(gzip.open(path, "wb", compresslevel=6))
                handles[rtype].write(json.dumps(r, separators=(",", ":")).encode() + b"\n")
    return folder


def dask_export(tmp: Path, copies: int, have: tuple[int, Callable[[], Path]]) -> Path:
    """The Bulk export for (f): ``copies`` copies of the shipped bundles (``have`` is reused if it matches).

    Why its own size: with the 40 copies of (d) (600 patients, 75 a partition) a task was ~0.3 s
    and Dask's per-task cost (scheduling, moving the result frames) was a visible share of it.
    """
    if copies == have[0]:
        return have[1]()
    return bulk_export(synthea_copies(tmp / f"dask-copies-{copies}", copies), tmp / f"dask-bulk-{copies}")


def _loads_files(files: list[Path]) -> None:
    for f in files:
        raw = f.read_bytes()
        json.loads(gzip.decompress(raw) if raw[:2] == GZ_MAGIC else raw)


def _loads_lines(files: list[Path]) -> None:
    for f in files:
        with gzip.open(f, "rb") if f.name.endswith(".gz") else f.open("rb") as fh:
            for line in fh:
                if line.strip():
                    json.loads(line)


def _screen_serial(inputs: list[Path], out: Path) -> dict:
    import shutil

    from cds_engine.batch.runner import ScreenOptions, run_screen

    shutil.rmtree(out, ignore_errors=True)
    result = run_screen(
        ScreenOptions(
            inputs=inputs,
            out=out,
            rules=REPO / "rules",
            as_of=AS_OF,
            assume_order="baclofen 5 mg PO TID",
            progress=False,
        )
    )
    return result.summary


def bench_bundles(folder: Path, tmp: Path, repeats: int = 3) -> dict:
    """(d) bundles end to end (serial ``run_screen``) vs ``json.loads`` of the same files, best of 3 each."""
    from cds_engine.batch.inputs import plan_inputs

    files = plan_inputs([folder]).bundles
    parse_s = _best(lambda: _loads_files(files), repeats)
    summary: dict = {}
    screen_s = _best(lambda: summary.update(_screen_serial([folder], tmp / "bundles-out")), repeats)
    n = len(files)
    return {
        "files": n,
        "bytes": sum(f.stat().st_size for f in files),
        "parse_s": parse_s,
        "parse_rate": n / parse_s,
        "screen_s": screen_s,
        "screen_rate": n / screen_s,
        "ratio": parse_s / screen_s,
        "patients": summary["counts"]["read"],
        "alerts": summary["counts"]["alerts"],
    }


def bench_ndjson(export: Path, tmp: Path, repeats: int = 3) -> dict:
    """(d') a Bulk NDJSON export end to end vs ``json.loads`` of every line of the same files."""
    files = sorted(p for p in export.iterdir() if ".ndjson" in p.name)
    lines = 0
    for f in files:
        with gzip.open(f, "rb") as fh:
            lines += sum(1 for _ in fh)
    parse_s = _best(lambda: _loads_lines(files), repeats)
    summary: dict = {}
    screen_s = _best(lambda: summary.update(_screen_serial([export], tmp / "ndjson-out")), repeats)
    return {
        "files": len(files),
        "lines": lines,
        "parse_s": parse_s,
        "screen_s": screen_s,
        "ratio": parse_s / screen_s,
        "patients": summary["counts"]["read"],
        "alerts": summary["counts"]["alerts"],
    }


_THREADS_CHILD = """
import pickle, sys, time
sys.path.insert(0, {src!r})
import polars as pl
from cds_engine.batch.work import _context, process_chunk
chunks, cfg = pickle.load(open({chunks!r}, "rb"))
_context(cfg)
best = float("inf")
for _ in range({repeats}):
    t = time.perf_counter()
    for c in chunks:
        process_chunk(c, cfg)
    best = min(best, time.perf_counter() - t)
print(pl.thread_pool_size(), best)
"""


def _warm(cfg) -> None:
    from cds_engine.batch.work import _context

    _context(cfg)


def _cpu_seconds() -> float:
    """CPU time of this (worker) process so far: user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _on_workers(chunks: list, cfg, workers: int, repeats: int) -> tuple[float, float]:
    """Best wall time of the chunks on ``workers`` workers, and the workers' CPU seconds in that run."""
    from distributed import Client, LocalCluster

    from cds_engine.batch.work import process_chunk

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env={"POLARS_MAX_THREADS": "1"},
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_warm, cfg)  # each worker builds its engine once, before the clock starts
        best, cpu = float("inf"), 0.0
        for _ in range(repeats):
            before = sum(client.run(_cpu_seconds).values())
            t = time.perf_counter()
            futures = client.map(process_chunk, chunks, cfg=cfg, pure=False)
            client.gather(futures)
            wall = time.perf_counter() - t
            del futures
            if wall < best:
                best, cpu = wall, sum(client.run(_cpu_seconds).values()) - before
        return best, cpu


def bench_dask(export: Path, tmp: Path, parts: int, repeats: int = 2) -> dict:
    """(f) the partitions of a Bulk NDJSON export on a LocalCluster of 1 and 2 workers (1 thread each,
    ``POLARS_MAX_THREADS=1``), and in one process with 2 polars threads; partitioning (serial, the
    same for all three) is timed on its own. The workers' CPU seconds are reported with the wall
    times: on a shared machine 2 workers only get 2 cores when nothing else runs (CPU / wall says
    how many they had)."""
    import pickle

    from cds_engine.batch.inputs import Chunk
    from cds_engine.batch.work import RunConfig
    from cds_engine.sources.ndjson import partition_export

    files = sorted(p for p in export.iterdir() if ".ndjson" in p.name)
    t = time.perf_counter()
    result = partition_export(files, tmp / "dask-parts", parts)
    partition_s = time.perf_counter() - t
    chunks = [
        Chunk(id=f"p{i}", kind="ndjson", files=(str(p), str(result.shared)), records=0)
        for i, p in enumerate(result.parts)
    ]
    cfg = RunConfig(
        rules=str((REPO / "rules").resolve()),
        engine="vector",
        as_of=AS_OF,
        assume_order="baclofen 5 mg PO TID",
    )
    one, one_cpu = _on_workers(chunks, cfg, 1, repeats)
    two, two_cpu = _on_workers(chunks, cfg, 2, repeats)
    state = tmp / "chunks.pkl"
    state.write_bytes(pickle.dumps((chunks, cfg)))
    code = _THREADS_CHILD.format(src=str(REPO / "src"), chunks=str(state), repeats=repeats)
    env = {**os.environ, "POLARS_MAX_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    threads, single = done.stdout.split()
    return {
        "patients": result.patients,
        "partitions": parts,
        "patients_per_partition": result.patients / parts,
        "partition_s": partition_s,
        "one_worker_s": one,
        "one_worker_cpu_s": one_cpu,
        "two_workers_s": two,
        "two_workers_cpu_s": two_cpu,
        "two_workers_cores_used": two_cpu / two,
        "one_process_2_threads_s": float(single),
        "polars_threads": int(threads),
        "speedup_2_vs_1": one / two,
        "speedup_2_workers_vs_2_threads": float(single) / two,
    }


_MEM_CHILD = """
import sys, resource, polars as pl
sys.path.insert(0, {src!r})
from cds_engine.engine import Engine
from cds_engine.evaluators.vector import VectorPack, vector_alerts
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


ITEMS = ("a", "b", "c", "a'", "g", "d", "d'", "e", "e'", "f")


def _items(text: str) -> frozenset[str]:
    """``--only a,g``: the items to run; an unknown name is an error rather than a silent skip."""
    chosen = frozenset(x.strip() for x in text.split(",") if x.strip())
    unknown = chosen - set(ITEMS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown item(s) {sorted(unknown)}; known: {', '.join(ITEMS)}")
    return chosen


def _wanted(only: frozenset[str] | None):
    """A predicate: is item ``x`` to run (every item when ``--only`` was not given)."""
    return lambda x: only is None or x in only


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
    ap.add_argument(
        "--bundle-copies", type=int, default=40, help="copies of the shipped bundles for (d), (f)"
    )
    ap.add_argument("--dask-parts", type=int, default=8, help="NDJSON partitions for (f)")
    ap.add_argument(
        "--dask-copies", type=int, default=160, help="copies of the shipped bundles for (f): 2,400 patients"
    )
    ap.add_argument(
        "--record-table", type=int, default=1_000_000, help="record-table patients for (g): Parquet → alerts"
    )
    ap.add_argument(
        "--only",
        type=_items,
        default=None,
        help="run only these items, comma-separated (a, b, c, a', d, d', e, e', f, g; e.g. --only a "
        "or --only g); b and c reuse (a)'s population, which is generated for them without timing (a)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    want = _wanted(args.only)
    if args.quick:
        args.patients, args.sample, args.records = 50_000, 1_000, 2_000
        args.bundle_copies = 3
        args.dask_copies = 12
    mem_sizes = (
        [1_000_000, 5_000_000] if args.full else ([50_000, 100_000] if args.quick else [1_000_000, 2_000_000])
    )
    mem_chunk = 100_000  # (e): the streamed vector screening's chunk
    rec_chunk: int | None = None  # (e'): the command's default rows per chunk (runner.DEFAULT_CHUNK_ROWS)
    rec_mem_sizes = mem_sizes
    if args.quick:
        args.record_table = 100_000
    if args.smoke:
        args.record_table = 2_000
        args.patients, args.sample, args.records = 2_000, 100, 300
        mem_sizes, mem_chunk, rec_chunk = [2_000, 4_000], 1_000, 1_000
        rec_mem_sizes = mem_sizes
        args.bundle_copies, args.dask_parts = 1, 2
        args.dask_copies = 1
    repeats = 1 if args.smoke else 3
    print(machine_header("bench/screen.py", args.smoke))
    engine = Engine.from_dir(REPO / "rules")
    pack = next(p for p in engine.packs if p.id == "baclofen")
    vp = VectorPack.compile(pack)
    results: dict = {"machine": machine()}
    print("machine:", results["machine"])
    from screening.record_table import bench_record_table, screen_cli  # (g) and (e'), beside this file

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = tmp / "flat.parquet"
        if want("a") or want("b") or want("c"):
            population, gen_s = timed(flat_population, pack, args.patients)
            population.write_parquet(path)
            print(f"generated {args.patients:,} patients in {gen_s:.1f} s")
        if want("a"):
            a = bench_vector(vp, path, args.patients)
            results["a_vector"] = a
            print(
                f"(a) vector, Parquet → tier outcomes: {a['eval_rate']:,.0f} patients/s "
                f"({a['eval_s']:.2f} s); "
                f"→ full alert table: {a['alerts_rate']:,.0f} patients/s ({a['alerts_s']:.2f} s, "
                f"{a['alerts']:,} alerts, {a['alerts'] / a['alerts_s'] / 1e6:.2f} M rows/s); "
                f"the same call again, best of 2: {a['alerts_again_rate']:,.0f} patients/s "
                f"({a['alerts_again_s']:.2f} s, {a['alerts'] / a['alerts_again_s'] / 1e6:.2f} M rows/s)"
            )
        if want("b") or want("c"):
            sample = [
                {k: v for k, v in row.items() if v is not None}
                for row in population.head(args.sample).drop("patient_id").iter_rows(named=True)
            ]
        if want("b"):
            b = bench_per_patient(pack, sample, "rete")
            results["b_rete"] = b
            print(f"(b) rete, {b['patients']:,} patients: {b['rate']:,.0f} patients/s")
        if want("c"):
            c = bench_per_patient(pack, sample, "oracle")
            results["c_oracle"] = c
            print(f"(c) oracle, {c['patients']:,} patients: {c['rate']:,.0f} patients/s")
        if want("a") and want("b") and want("c"):
            print(
                f"    vector/oracle: outcomes {a['eval_rate'] / c['rate']:.1f}x, "
                f"full alerts {a['alerts_rate'] / c['rate']:.1f}x;"
                f" vector/rete: {a['alerts_rate'] / b['rate']:.1f}x"
            )
        if want("a'"):
            r = bench_records(engine.packs[0].vocabulary, args.records, tmp)
            results["a_records_cli"] = r
            print(
                f"(a') record table through `cds-engine screen` (columnar derivation), {r['patients']:,}: "
                f"{r['rate']:,.0f} patients/s"
            )
        if want("g"):
            # (g) the analyst's path: a record table → alerts through the command (columnar derivation)
            rec_path = tmp / "records-g.parquet"
            record_population(engine.packs[0].vocabulary, args.record_table, seed=5).write_parquet(rec_path)
            g = bench_record_table(rec_path, args.record_table, tmp, REPO / "rules", AS_OF, subprocess_env())
            results["g_record_table"] = g
            gp, gc = g["parquet"], g["parquet"]["columnar"]
            print(
                f"(g) record table (Parquet, {g['patients']:,} patients, seed 5: 2 medicines, 1 in 3 a "
                f"condition, 3 in 4 an eGFR; {g['alerts_per_patient']:.2f} alerts/patient) through "
                f"`cds-engine screen --assume-order`: --format parquet {g['rate_parquet']:,.0f} patients/s "
                f"({gp['screen_s']:.2f} s; interpreter start + imports {gp['imports_s']:.2f} s not "
                f"included, wall {gp['wall_s']:.2f} s); --format csv {g['rate_csv']:,.0f} patients/s; "
                f"derived column-wise {gc.get('derived_columnwise', 0):,}, "
                f"per patient {gc.get('derived_per_patient', 0):,}"
            )
        made: dict[str, Path] = {}

        def copies() -> Path:  # (d)'s bundle copies, made once for (d), (d') and (f)
            if "copies" not in made:
                made["copies"] = synthea_copies(tmp / "synthea-copies", args.bundle_copies)
            return made["copies"]

        def export() -> Path:  # (d')'s Bulk export of those copies, reused by (f) when sizes match
            if "export" not in made:
                made["export"] = bulk_export(copies(), tmp / "bulk")
            return made["export"]

        if want("d"):
            if not args.smoke:  # the smoke run's copies are this same set
                d = bench_bundles(REPO / "examples" / "synthea", tmp, repeats)
                results["d_bundles_shipped"] = d
                print(
                    f"(d) {d['files']} shipped Synthea bundles, serial, best of {repeats}: json.loads "
                    f"{d['parse_s'] * 1000:.0f} ms, screen end to end {d['screen_s'] * 1000:.0f} ms → "
                    f"{d['ratio']:.2f}x of the raw parse rate (tiny set: per-run costs dominate)"
                )
            d = bench_bundles(copies(), tmp, repeats)
            results["d_bundles"] = d
            print(
                f"(d) {d['files']} Synthea bundles (shipped x{args.bundle_copies}, gz, "
                f"{d['patients']:,} records, {d['alerts']:,} alerts), serial, best of {repeats}: json.loads "
                f"{d['parse_rate']:.0f} files/s, screen end to end {d['screen_rate']:.0f} files/s → "
                f"{d['ratio']:.2f}x of the raw parse rate"
            )
        if want("d'"):
            n = bench_ndjson(export(), tmp, repeats)
            results["d_ndjson"] = n
            print(
                f"(d') Bulk NDJSON export of the same patients ({n['files']} gz files, "
                f"{n['lines']:,} lines), "
                f"serial, best of {repeats}: json.loads per line {n['parse_s']:.2f} s, screen end to end "
                f"{n['screen_s']:.2f} s → {n['ratio']:.2f}x of the raw parse rate"
            )
        if want("e"):
            m = bench_memory(pack, mem_sizes, mem_chunk, tmp)
            results["e_memory"] = m
            print(
                "(e) peak RSS, streamed vector screening: "
                + "; ".join(f"{x['patients']:,}: {x['peak_rss_mb']:.0f} MB ({x['seconds']:.0f} s)" for x in m)
                + f" → ratio {m[1]['peak_rss_mb'] / m[0]['peak_rss_mb']:.2f}"
            )
        if want("e'"):
            em = []
            for size in rec_mem_sizes:  # (e') issue 20 item 5: record tables, process-tree RSS every 100 ms
                rp = tmp / f"records-mem-{size}.parquet"
                record_population(engine.packs[0].vocabulary, size, seed=6).write_parquet(rp)
                em.append(
                    screen_cli(
                        rp,
                        tmp / f"mem-{size}",
                        REPO / "rules",
                        AS_OF,
                        "baclofen 5 mg PO TID",
                        ("parquet",),
                        subprocess_env(),
                        chunk_rows=rec_chunk,
                    )
                )
                rp.unlink()
            results["e_record_memory"] = em
            print(
                "(e') peak RSS of the process tree (sampled every 100 ms), record table → alerts.parquet: "
                + "; ".join(
                    f"{x['patients']:,}: {x['peak_tree_rss_mb']:.0f} MB ({x['screen_s']:.0f} s)" for x in em
                )
                + f" → ratio {em[-1]['peak_tree_rss_mb'] / em[0]['peak_tree_rss_mb']:.2f}"
            )
        if want("f"):
            dask_in = dask_export(tmp, args.dask_copies, (args.bundle_copies, export))
            f = bench_dask(dask_in, tmp, args.dask_parts, min(repeats, 2))
            results["f_dask"] = f
            print(
                f"(f) {f['partitions']} NDJSON partitions ({f['patients']:,} patients, "
                f"~{f['patients_per_partition']:.0f} a partition; partitioning "
                f"{f['partition_s']:.2f} s, serial, not included): LocalCluster 1 worker "
                f"{f['one_worker_s']:.2f} s, 2 workers {f['two_workers_s']:.2f} s "
                f"(CPU {f['two_workers_cpu_s']:.2f} s: {f['two_workers_cores_used']:.2f} cores; "
                f"1 thread each, "
                f"POLARS_MAX_THREADS=1) → {f['speedup_2_vs_1']:.2f}x; one process with {f['polars_threads']} "
                f"polars threads {f['one_process_2_threads_s']:.2f} s → 2 workers "
                f"{f['speedup_2_workers_vs_2_threads']:.2f}x of it"
            )
    _ = resource
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
