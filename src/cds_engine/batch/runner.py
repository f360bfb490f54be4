"""``cds-engine screen``: plan the chunks, run them (here, on a process pool or on Dask), write the outputs.

The runner owns everything that is not per-chunk work: classifying the inputs, partitioning
Bulk NDJSON exports, skipping chunks a killed run already finished, bounding the number of
chunks in flight (memory stays flat however large the input), the progress bar, merging the
parts, the report, the optional store record and the exit code.

Exit codes: 0 every record read was screened (or excluded as deceased); 1 some records were
rejected (see errors.csv; all other outputs are complete); 2 the command could not start
(no rules, an unreadable ``--assume-order``, no screenable input, a Dask scheduler that does
not answer); 3 the run failed part way (finished chunks are kept: rerun to resume).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_engine.batch.inputs import Chunk, InputPlan, bundle_chunks, csv_chunks, parquet_chunks, plan_inputs
from cds_engine.batch.outputs import DEFAULT_FORMATS, check_formats, drop_unrequested
from cds_engine.batch.parts import PARTS_FORMAT, PartStore
from cds_engine.batch.report import render_report
from cds_engine.batch.work import (
    ChunkResult,
    PreparedChunk,
    ReadChunk,
    RunConfig,
    _context,
    finish_chunk,
    forget_decoded,
    pinned,
    prepare_chunk,
    process_chunk,
    read_chunk,
    warm_context,
)
from cds_engine.engine import Engine
from cds_engine.facts.model import Order
from cds_engine.sources.ndjson import partition_export

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_USAGE",
    "ScreenError",
    "ScreenOptions",
    "run_screen",
]

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
_NDJSON_PART_BYTES = 64 * 1024 * 1024


class ScreenError(RuntimeError):
    """The run cannot start (exit code 2) — the message says why."""


#: record-table rows per chunk. Each chunk pays a fixed cost (planning the vector evaluation's
#: ~2,000 polars expressions, small queries: ~0.3 CPU-s) whatever its rows, so bigger chunks cost
#: less CPU, and more memory: 1 M generated patients (3.4 alerts each) screened serially measured
#: 100,000 rows 12.2-14.1 CPU-s, peak 0.84-0.90 GB; 150,000 rows 12.2-12.4 CPU-s, 1.11-1.16 GB;
#: 200,000 rows 11.2-11.9 CPU-s, 1.33-1.38 GB (bench/RESULTS.md, fourteenth session). 150,000
#: keeps a quarter of the serial run's 1.5 GB goal (issue 20 item 5) spare for denser records;
#: --chunk-rows lowers it. With --workers / --dask each worker holds a chunk (~1.2 GB here) and
#: the command the results in flight (docs/batch.md says when to pass a smaller value).
DEFAULT_CHUNK_ROWS = 150_000


@dataclass
class ScreenOptions:
    inputs: list[Path]
    out: Path
    engine: str = "vector"
    assume_order: str | None = None
    as_of: str | None = None
    workers: int = 1
    dask: str | None = None
    store: bool = False
    store_url: str | None = None
    rules: Path = Path("rules")
    bundles_per_chunk: int = 500  # the vector evaluation costs ~0.3 s per chunk whatever its size
    rows_per_chunk: int = DEFAULT_CHUNK_ROWS
    progress: bool | None = None  # None: on a terminal only
    keep_parts: bool = False
    formats: tuple[str, ...] = DEFAULT_FORMATS  # alert tables written (batch/outputs.py)


@dataclass
class ScreenResult:
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)


def parse_as_of(text: str | None) -> str:
    """ISO date/time → aware UTC ISO string (a date means midnight UTC; no value means now)."""
    if text is None:
        return datetime.now(UTC).replace(microsecond=0).isoformat()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ScreenError(f"--as-of {text!r} is not an ISO date or date-time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _fingerprint(plan: InputPlan, cfg: RunConfig, opts: ScreenOptions, pack_hashes: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(plan.fingerprint().encode())
    digest.update(
        json.dumps(
            [
                cfg.engine,
                cfg.as_of,
                cfg.assume_order,
                opts.bundles_per_chunk,
                opts.rows_per_chunk,
                pack_hashes,
                PARTS_FORMAT,
            ]
        ).encode()
    )
    return digest.hexdigest()


def _chunks(plan: InputPlan, opts: ScreenOptions, parts: PartStore) -> Iterator[Chunk]:
    """Every chunk, in a deterministic order (CSV chunks are read as they are reached)."""
    yield from bundle_chunks(plan.bundles, opts.bundles_per_chunk)
    for i, path in enumerate(plan.parquet):
        yield from parquet_chunks(path, opts.rows_per_chunk, i)
    for i, (folder, files) in enumerate(sorted(plan.ndjson_dirs.items())):
        yield from _ndjson_chunks(i, folder, files, parts)
    for i, path in enumerate(plan.csv):
        yield from csv_chunks(path, opts.rows_per_chunk, i)


def _ndjson_chunks(index: int, folder: Path, files: list[Path], parts: PartStore) -> Iterator[Chunk]:
    work = parts.dir / f"ndjson{index:03d}"
    marker = work / "partitioned.json"
    if marker.exists():
        meta = json.loads(marker.read_text(encoding="utf-8"))
    else:
        size = sum(f.stat().st_size * (8 if f.name.endswith(".gz") else 1) for f in files)
        count = max(1, -(-size // _NDJSON_PART_BYTES))
        result = partition_export(files, work, count)
        meta = {
            "parts": [str(p) for p in result.parts],
            "shared": str(result.shared) if result.shared else None,
            "errors": [[e.file, e.line, e.reason] for e in result.errors],
            "patients": result.patients,
        }
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp, marker)
    if meta["errors"]:
        yield Chunk(
            id=f"ndjson{index:03d}-lines",
            kind="ndjson",
            files=(str(folder),),
            payload=meta["errors"],
            records=len(meta["errors"]),
        )
    per_part = max(1, meta["patients"] // max(1, len(meta["parts"])))
    for j, part in enumerate(meta["parts"]):
        files_ = (part, meta["shared"]) if meta["shared"] else (part,)
        yield Chunk(id=f"ndjson{index:03d}-{j:04d}", kind="ndjson", files=files_, records=per_part)


def _total_records(plan: InputPlan, opts: ScreenOptions) -> int | None:
    if plan.csv or plan.ndjson_dirs:
        return None
    import pyarrow.parquet as pq

    total = len(plan.bundles)
    for path in plan.parquet:
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except Exception:  # counted when the worker reports it
            total += 1
    return total


# ── executors: each calls on_result for every finished chunk, at most `limit` chunks in flight ──


def _first_read(plan: InputPlan, opts: ScreenOptions, cfg: RunConfig) -> ReadChunk | None:
    """The first chunk of a serial run read and cleaned ahead (``work.read_chunk``), when it is a
    Parquet record table's; None otherwise, or when the read failed (the chunk is then read again
    where it is reached, and fails there as it always did)."""
    if plan.bundles or not plan.parquet:  # bundles come first (_chunks); CSV is read by the planner
        return None
    try:
        return read_chunk(parquet_chunks(plan.parquet[0], opts.rows_per_chunk, 0)[0], cfg)
    except Exception:
        return None


def _run_serial(
    chunks: Iterator[Chunk],
    cfg: RunConfig,
    write: Callable[[ChunkResult], None],
    finished: Callable[[ChunkResult], None],
    early: list[ReadChunk] | None = None,
) -> None:
    """Chunk after chunk in this process, as a three-stage pipeline on threads: while a chunk is
    evaluated here, the next one is read and derived on a thread (``prepare_chunk``: polars work,
    which releases the GIL) and the previous one's parts are written on another (polars and
    pyarrow encode without the GIL). At most one chunk waits in each stage, so memory stays flat.

    ``finished`` (the accounting) runs here, in order, once the chunk's parts are on disk. The
    chunk iterator is only advanced here (it records the order and the resumed chunks).
    ``CDS_SCREEN_PREFETCH=0`` reads each chunk only when it is reached (one chunk less in memory,
    ~225 MB at the default 150,000 rows; also the A/B switch for the quiet benchmark): the same outputs.
    ``early``: at most one chunk, already read (``_first_read``), taken out of the list when the first
    chunk is reached (no reference to it left here) and used if it is that chunk.
    """
    from concurrent.futures import Future

    def prepare(chunk: Chunk) -> PreparedChunk:
        """``prepare_chunk``, with the chunk read ahead while there is one (taken once, so let go)."""
        read = early.pop() if early else None
        return prepare_chunk(chunk, cfg) if read is None else prepare_chunk(chunk, cfg, read)

    def whole(chunk: Chunk) -> ChunkResult:
        read = early.pop() if early else None
        return process_chunk(chunk, cfg) if read is None else finish_chunk(prepare_chunk(chunk, cfg, read))

    if os.environ.get("CDS_SCREEN_PREFETCH", "1") == "0":
        done = (whole(chunk) for chunk in chunks)
        _write_behind(done, write, finished)
        return

    def evaluated(reader: ThreadPoolExecutor) -> Iterator[ChunkResult]:
        """Each chunk evaluated here while the next one is read and derived on ``reader``."""
        ahead: Future[PreparedChunk] | None = None
        first = next(chunks, None)
        if first is not None:
            ahead = reader.submit(prepare, first)
        while ahead is not None:
            prepared = ahead.result()  # a failed read fails the run here
            following = next(chunks, None)
            ahead = reader.submit(prepare_chunk, following, cfg) if following is not None else None
            result = finish_chunk(prepared)
            del prepared
            yield result
            del result  # the writer holds it until its parts are on disk; not this frame too

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cds-read") as reader:
        _write_behind(evaluated(reader), write, finished)


def _write_behind(
    results: Iterator[ChunkResult],
    write: Callable[[ChunkResult], None],
    finished: Callable[[ChunkResult], None],
) -> None:
    """Write each result's parts on a thread while the next result is made; ``finished`` runs here,
    in order, once a chunk's parts are on disk (at most one chunk waits to be written)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cds-parts") as writer:
        pending: tuple[Future[None], ChunkResult] | None = None
        for result in results:
            if pending is not None:
                pending[0].result()  # a failed write fails the run here
                finished(pending[1])
            pending = (writer.submit(write, result), result)
            del result
        if pending is not None:
            pending[0].result()
            finished(pending[1])


def _run_pool(
    chunks: Iterator[Chunk], cfg: RunConfig, workers: int, on_result: Callable[[ChunkResult], None]
) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    # spawned workers (fork after polars has started threads can deadlock); share the cores
    previous = os.environ.get("POLARS_MAX_THREADS")
    os.environ["POLARS_MAX_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=warm_context, initargs=(cfg,)
        ) as pool:
            pending: set[Future[ChunkResult]] = set()
            for chunk in chunks:
                pending.add(pool.submit(process_chunk, chunk, cfg))
                if len(pending) >= workers * 2:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        on_result(f.result())
            for f in wait(pending).done:
                on_result(f.result())
    finally:
        if previous is None:
            os.environ.pop("POLARS_MAX_THREADS", None)
        else:
            os.environ["POLARS_MAX_THREADS"] = previous


def _run_dask(
    chunks: Iterator[Chunk], cfg: RunConfig, address: str, on_result: Callable[[ChunkResult], None]
) -> None:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if address == "local" or address.startswith("local:"):
        n = int(address.split(":", 1)[1]) if ":" in address else (os.cpu_count() or 1)
        # one thread per worker and one polars thread in it: the workers, not polars, share the cores
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env={"POLARS_MAX_THREADS": "1"},
        )
        address = cluster.scheduler_address
    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise ScreenError(f"--dask {address}: no scheduler answers ({exc})") from exc
    try:
        limit = max(2, 2 * len(client.scheduler_info().get("workers", {})))
        queue = as_completed()
        inflight = 0
        for chunk in chunks:
            queue.add(client.submit(process_chunk, chunk, cfg, pure=False))
            inflight += 1
            while inflight >= limit:
                future = next(queue)
                on_result(future.result())
                future.release()
                inflight -= 1
        for future in queue:
            on_result(future.result())
            future.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _Progress:
    """A rich progress bar (rate and ETA) on a terminal; silent in CI logs and pipes."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("screening"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.0f} records/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.bar.add_task("screen", total=total, rate=0.0)
        self.started = time.perf_counter()
        self.done = 0
        self.bar.start()

    def advance(self, records: int) -> None:
        if self.bar is None:
            return
        self.done += records
        rate = self.done / max(1e-9, time.perf_counter() - self.started)
        self.bar.update(self.task, advance=records, rate=rate)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _progress_enabled(opts: ScreenOptions) -> bool:
    if opts.progress is not None:
        return opts.progress
    return sys.stderr.isatty() and not os.environ.get("CI")


def _evaluated_patients(patients_file: Path) -> int:
    """Screened patients that at least one pack reviewed (the rest had nothing applicable)."""
    import polars as pl

    if not patients_file.exists():
        return 0
    frame = pl.scan_parquet(patients_file).filter(
        (pl.col("status") == "screened") & (pl.col("packs").fill_null("") != "")
    )
    return int(frame.select(pl.len()).collect(engine="streaming").item())


def assumed_order_packs(engine: Engine, order: Order) -> list[str]:
    """Ids of the running packs whose drug (or a partner drug) the assumed order is."""
    out = []
    for pack in engine.running_packs:
        triggers, vocab = pack.spec.pack.triggers, pack.vocabulary
        classes = vocab.classify(order.product, "drug_class")
        product = vocab.product(order.product)
        if product is not None:
            classes.add(product.ingredient_group)
        if classes & (set(triggers.drug_classes) | set(triggers.partner_classes)):
            out.append(pack.id)
    return out


def run_screen(opts: ScreenOptions) -> ScreenResult:
    """Screen ``opts.inputs`` into ``opts.out``; raises :class:`ScreenError` when it cannot start.

    Lazy queries run on polars' in-memory engine unless ``POLARS_ENGINE_AFFINITY`` says otherwise
    (queries that name their engine keep it). Why: polars 2.1's default engine runs them streaming,
    in morsels that are then concatenated — for a chunk held in memory anyway that concatenation
    copies every column, strings included, once more. Same outputs, byte for byte; a record table
    screened in-process measured 5-8 % less CPU and a quarter fewer page faults (1 M and 200,000
    rows, alternated runs). The setting is restored on return; pool workers started meanwhile
    inherit it through the environment.

    A run starts and ends with no Parquet row groups kept from another (``forget_decoded``).
    """
    forget_decoded()
    try:
        if os.environ.get("POLARS_ENGINE_AFFINITY"):
            return _run_screen(opts)
        import polars as pl

        with pl.Config(engine_affinity="in-memory"):
            return _run_screen(opts)
    finally:
        forget_decoded()


def _usage_context(cfg: RunConfig, opts: ScreenOptions) -> Any:
    """The engine of this process, built here so that a bad rule file or order is a usage error."""
    try:
        ctx = _context(cfg)  # loads the packs and parses the order once, here, so errors are usage errors
    except Exception as exc:
        raise ScreenError(str(exc)) from exc
    if ctx.assumed is not None:
        reviewed_by = assumed_order_packs(ctx.engine, ctx.assumed.to_order())
        if not reviewed_by:
            raise ScreenError(
                f"--assume-order {opts.assume_order!r}: no active pack reviews an order for "
                f"{ctx.assumed.product.display or ctx.assumed.product.code} — nothing would be evaluated"
            )
    return ctx


def _run_screen(opts: ScreenOptions) -> ScreenResult:
    started = time.perf_counter()
    as_of = parse_as_of(opts.as_of)
    if opts.engine not in ("vector", "rete"):
        raise ScreenError(f"--engine must be vector or rete, not {opts.engine!r}")
    if not (opts.rules / "vocabulary").is_dir():
        raise ScreenError(f"--rules {opts.rules}: no rule directory (expected {opts.rules}/vocabulary)")
    cfg = RunConfig(
        rules=str(opts.rules.resolve()), engine=opts.engine, as_of=as_of, assume_order=opts.assume_order
    )
    if opts.out.exists() and not opts.out.is_dir():
        raise ScreenError(f"--out {opts.out}: is a file; give a directory (created if absent)")
    try:
        formats = check_formats(opts.formats, hypothetical=opts.assume_order is not None)
    except ValueError as exc:
        raise ScreenError(str(exc)) from exc
    missing = [str(p) for p in opts.inputs if not p.exists()]
    if missing:
        raise ScreenError(f"input not found: {', '.join(missing)}")
    # While the engine is built here (the rules load and compile: Python, holding the GIL), a thread
    # plans the inputs and, for a serial run, reads and cleans the first record-table chunk (polars,
    # without the GIL): that read no longer waits for the engine. Nothing is written meanwhile, and
    # the ``with`` waits for the thread, so a usage error below leaves no thread running and no output.
    serial = not opts.dask and opts.workers <= 1
    abandon = threading.Event()  # set on a usage error: the thread skips the read

    def plan_and_read() -> tuple[InputPlan, ReadChunk | None]:
        planned = plan_inputs(opts.inputs)
        return planned, (_first_read(planned, opts, cfg) if serial and not abandon.is_set() else None)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cds-plan") as ahead:
        planning = ahead.submit(plan_and_read)
        try:
            ctx = _usage_context(cfg, opts)
        except BaseException:
            abandon.set()
            raise
        plan, first_read = planning.result()  # planned after the usage checks, as errors go: same order
        del planning  # the read chunk is held in ``early`` only, and let go once it is taken
    cfg = pinned(cfg, ctx)  # every chunk, in this process or a worker, screens with these packs
    early = [first_read] if first_read is not None else []
    del first_read
    if not (plan.bundles or plan.csv or plan.parquet or plan.ndjson_dirs):
        raise ScreenError(
            "no screenable input (FHIR bundles, Bulk NDJSON, CSV or Parquet patient tables) in "
            + ", ".join(map(str, opts.inputs))
        )
    opts.out.mkdir(parents=True, exist_ok=True)
    packs = [
        {"id": p.id, "version": p.version, "hash": p.content_hash, "status": p.spec.pack.status}
        for p in ctx.engine.running_packs
    ]
    # the site file's hash too (cfg.packs): a resume after only site.yaml changed redoes the run
    fingerprint = _fingerprint(plan, cfg, opts, list(cfg.packs))
    parts = PartStore(
        opts.out,
        fingerprint,
        {
            "engine": cfg.engine,
            "as_of": as_of,
            "assume_order": cfg.assume_order,
            "inputs": [str(p) for p in opts.inputs],
        },
        formats,
    )
    order: list[str] = []
    totals = {"read": 0, "screened": 0, "rejected": 0, "deceased": 0, "skipped": 0, "alerts": 0}
    skipped: list[tuple[str, str]] = [(s.path, s.reason) for s in plan.skipped]
    progress = _Progress(_progress_enabled(opts), _total_records(plan, opts))

    columnar: dict[str, int] = {"derived_columnwise": 0, "derived_per_patient": 0}  # record tables
    rule_tally: dict[tuple[Any, ...], int] = {}  # (rule_id, title, severity) -> alerts, for the report
    tallied = [True]  # every manifest carried its rule counts

    def account(manifest: dict[str, Any]) -> None:
        if "rules" in manifest:
            for *key, n in manifest["rules"]:
                rule_tally[tuple(key)] = rule_tally.get(tuple(key), 0) + int(n)
        else:
            tallied[0] = False
        for k in totals:
            totals[k] += int(manifest["counts"].get(k, 0))
        for k, v in manifest["counts"].items():
            if k.startswith(("derived_", "per patient: ")):
                columnar[k] = columnar.get(k, 0) + int(v)
        skipped.extend(tuple(s) for s in manifest.get("skipped", []))
        progress.advance(int(manifest["counts"].get("read", 0)))

    def finished(result: ChunkResult) -> None:
        account(parts.manifest(result.chunk_id))

    def on_result(result: ChunkResult) -> None:
        parts.write(result)
        finished(result)

    def todo() -> Iterator[Chunk]:
        for chunk in _chunks(plan, opts, parts):
            order.append(chunk.id)
            if parts.done(chunk.id):
                parts.resumed += 1
                account(parts.manifest(chunk.id))
                continue
            yield chunk

    try:
        if opts.dask:
            _run_dask(todo(), cfg, opts.dask, on_result)
        elif opts.workers > 1:
            _run_pool(todo(), cfg, opts.workers, on_result)
        else:
            parts.append_as_you_go()
            _run_serial(todo(), cfg, parts.write, finished, early)
    finally:
        progress.stop()
    parts.merge(order, formats)
    if "fhir-ndjson" in formats:
        from cds_engine.batch.fhir_issues import FILE_NAME, write_detected_issues

        write_detected_issues(
            opts.out / "alerts.parquet", opts.out / FILE_NAME, ctx.engine, datetime.fromisoformat(as_of)
        )
    totals["skipped"] = len(skipped)  # the count is the list: files left out + bundles without a Patient
    evaluated = _evaluated_patients(opts.out / "patients.parquet")
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        "finished": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "engine": cfg.engine,
        "as_of": as_of,
        "assumed_order": ctx.assumed.describe() if ctx.assumed else None,
        "assumed_order_notes": list(ctx.assumed.notes) if ctx.assumed else [],
        "inputs": [str(p) for p in opts.inputs],
        "packs": packs,
        "counts": totals,
        "columnar": columnar,  # record rows derived column-wise vs per patient (and why)
        "evaluated_patients": evaluated,  # screened patients a pack reviewed: what "N alerts" is about
        "reconciled": totals["read"] == totals["screened"] + totals["rejected"] + totals["deceased"],
        "chunks": len(order),
        "chunks_resumed": parts.resumed,
        "seconds": round(seconds, 3),
        "rate": totals["read"] / seconds if seconds > 0 else 0.0,
        "executor": f"dask {opts.dask}"
        if opts.dask
        else (f"{opts.workers} processes" if opts.workers > 1 else "serial"),
        "skipped": skipped,
        "ignored_columns": plan.ignored_columns,
    }
    if opts.store:
        summary["store"] = _record_in_store(opts, summary, ctx)
    tallies = [[*k, n] for k, n in rule_tally.items()] if tallied[0] else None
    parts.write_text("report.html", render_report(opts.out, summary, tallies))
    parts.write_text("summary.json", json.dumps(summary, indent=2, default=str))
    drop_unrequested(opts.out, formats)
    if not opts.keep_parts:
        parts.cleanup()
    code = EXIT_REJECTED if totals["rejected"] else EXIT_OK
    return ScreenResult(code, summary)


def _record_in_store(opts: ScreenOptions, summary: dict[str, Any], ctx: Any) -> str:
    """Record the run in the alert store when the store is part of this installation."""
    try:
        from cds_engine.batch.store import record_run
    except ImportError as exc:  # pragma: no cover - the store module ships with the package
        return f"not available: {exc}"
    return record_run(opts.out, summary, ctx.engine, opts.store_url)
