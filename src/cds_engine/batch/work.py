"""One chunk of input → its alerts, patient rows and rejected records (runs in any worker).

This is the only code a worker runs, whether the chunk is processed in the main process, a
local process pool or on a Dask cluster: :func:`process_chunk` takes a picklable
:class:`~cds_engine.batch.inputs.Chunk` and :class:`RunConfig` and returns a
:class:`ChunkResult` of small polars frames, so every executor gives the same outputs.

Each worker process builds its engine once (:func:`_context`), which for ``--engine rete``
means one durable_rules ruleset per worker process, used the safe way (rule-engines.md §A).

Per patient, per pack: FHIR resources are mapped with the pack's drug class by
:mod:`cds_engine.sources.fhir` (the shared mapping), tables by
:func:`cds_engine.sources.table.row_to_facts`; deceased patients are counted and left out;
the pack runs when :meth:`Engine.applicable` says so. The ``vector`` engine derives each
patient's flat facts and evaluates the whole chunk column-wise; ``rete`` evaluates patient by
patient through :meth:`Engine.evaluate_pack`. Both produce rows of
:data:`cds_engine.evaluators.vector.ALERT_SCHEMA`.
"""

from __future__ import annotations

import bisect
import gzip
import os
import threading
import time
import weakref
import zlib
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from cds_engine.alerts import SEVERITY_ORDER
from cds_engine.batch.inputs import Chunk
from cds_engine.batch.order_text import AssumedOrder, parse_order_text
from cds_engine.batch.table_screen import (
    DerivedTable,
    TableScreen,
    derive_table,
    merge_by_row,
    patient_counts,
    table_alerts,
)
from cds_engine.engine import Engine
from cds_engine.evaluators.vector import (
    ALERT_SCHEMA,
    VectorPack,
    alerts_to_rows,
    frame_from_flats,
    vector_alerts,
)
from cds_engine.facts.derive import derive
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.site import SITE_FILE
from cds_engine.sources.compressed import read_bundle_bytes
from cds_engine.sources.fhir import facts_from_resources, medication_classes
from cds_engine.sources.ndjson import ObservationFilter, read_partition
from cds_engine.sources.selective import BundleRead, collector_paused, read_bundle
from cds_engine.sources.table import clean_table, frame_from_cells, row_to_facts

__all__ = [
    "ERROR_SCHEMA",
    "PATIENT_SCHEMA",
    "ChunkResult",
    "PacksChanged",
    "PreparedChunk",
    "ReadChunk",
    "RunConfig",
    "finish_chunk",
    "forget_decoded",
    "pinned",
    "prepare_chunk",
    "process_chunk",
    "read_chunk",
    "warm_context",
]

PATIENT_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "source": pl.String(),
    "row": pl.Int64(),
    "status": pl.String(),  # screened | deceased-excluded
    "packs": pl.String(),  # packs that reviewed the patient (";"), empty when none applied
    "alerts": pl.Int64(),
    "critical": pl.Int64(),
    "warning": pl.Int64(),
    "info": pl.Int64(),
    "cannot_assess": pl.Int64(),
    "notes": pl.String(),
}
ERROR_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "row": pl.Int64(),
    "patient_id": pl.String(),
    "reason": pl.String(),
}
BATCH_ALERT_SCHEMA: dict[str, pl.DataType] = {**ALERT_SCHEMA, "source": pl.String(), "row": pl.Int64()}
_CLINICAL_TYPES = frozenset(
    {
        "Condition",
        "Observation",
        "MedicationRequest",
        "MedicationStatement",
        "Encounter",
        "AllergyIntolerance",
        "Procedure",
        "MedicationAdministration",
        "Immunization",
    }
)


# A FHIR chunk of fewer patients than this is evaluated patient by patient with the oracle (the
# engine of a ``vector`` run), not column-wise: the vector evaluation costs ~0.3 s per chunk however
# small (hundreds of small polars queries), more than the oracle's ~0.5 ms a patient below ~600
# patients, and each FHIR patient was mapped one by one in Python anyway. Same rows either way
# (tests/test_sources_selective.py::test_fhir_chunk_per_patient_equals_vector; vector = oracle = rete:
# tests/test_vector_parity.py, tests/test_batch_synthea.py). Record tables are always column-wise.
PER_PATIENT_BELOW = 500


@dataclass(frozen=True)
class RunConfig:
    """Everything a worker needs to evaluate a chunk the same way as every other worker."""

    rules: str
    engine: str  # vector | rete
    as_of: str  # ISO date-time with offset
    assume_order: str | None = None
    #: the site file's and the running packs' content hashes the run started with (:func:`pinned`);
    #: empty before they are known. A worker that loads other packs refuses (:class:`PacksChanged`)
    packs: tuple[str, ...] = ()

    @property
    def moment(self) -> datetime:
        return datetime.fromisoformat(self.as_of)


@dataclass
class ChunkResult:
    chunk_id: str
    alerts: pl.DataFrame
    patients: pl.DataFrame
    errors: pl.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    rules: list[list[Any]] = field(default_factory=list)  # [rule_id, title, severity, alerts]


@dataclass
class _Context:
    engine: Engine
    vectors: dict[str, VectorPack]
    assumed: AssumedOrder | None
    # the Observation lines of a Bulk partition no running pack's mapping would count stay undecoded
    # (sources/ndjson.py): the packs' vocabularies say which codes count; its memo lives with the engine
    observations: ObservationFilter


_Stamp = tuple[tuple[str, int, int, int, int], ...]
# keyed by the configuration AND the rules' files as they are now: a worker process (Dask, the
# Python API) runs many screens, and keyed by the directory's path alone a screen after the pack
# was edited kept answering with the old pack's thresholds and texts
_CONTEXTS: dict[tuple[RunConfig, _Stamp], _Context] = {}


def _rules_stamp(rules: str) -> _Stamp:
    """(path, inode, size, mtime, ctime) of every file :meth:`Engine.from_dir` reads.

    The reload holder's test (service/reload.py), plus the inode and ctime (a file replaced by a
    rename, a copy that kept its mtime). ~0.2 ms a chunk, where hashing the contents cost ~5 ms."""
    directory = Path(rules)
    files = [*directory.glob("*/pack.yaml"), directory / SITE_FILE]
    vocab = directory / "vocabulary"
    if vocab.is_dir():
        files.extend(vocab.iterdir())
    out = []
    for path in sorted(files):
        try:
            st = path.stat()
        except OSError:
            continue  # absent (the optional site file) or just removed
        out.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


class PacksChanged(ValueError):
    """The rules on disk are not the ones the screen started with: one screen, one set of packs."""


def _context(cfg: RunConfig) -> _Context:
    """The engine of this process for ``cfg`` (built once per worker process).

    A run's chunks use ``cfg`` :func:`pinned` to the packs it started with: the context is looked
    up by those hashes, and one built from files that changed since (a pool or Dask worker that
    starts after an edit) is refused — a screen never mixes two versions of a pack, and its
    summary's pack hashes are those of every alert. Unpinned (the start of a run, the Python API)
    the key includes the rules' file stamps, so an edited pack is loaded again, not served from
    the cache."""
    key = (cfg, () if cfg.packs else _rules_stamp(cfg.rules))
    found = _CONTEXTS.get(key)
    if found is None:
        found = _build_context(cfg)
        if cfg.packs and _hashes(found) != cfg.packs:
            raise PacksChanged(
                f"the rules in {cfg.rules} changed after this screen started (it started with "
                f"{_named(cfg.packs)}; the files now hold {_named(_hashes(found))}): screen again"
            )
        # one configuration per worker process at a time; a dropped context's rulesets are freed when
        # the last chunk using it ends (_close_when_unused)
        _CONTEXTS.clear()
        _CONTEXTS[key] = found
    return found  # this call's own context, even if another thread's has replaced it since


def _hashes(ctx: _Context) -> tuple[str, ...]:
    """What a run is pinned to: the site file's hash, then each running pack's content hash."""
    return (ctx.engine.site_hash or "", *(p.content_hash for p in ctx.engine.running_packs))


def _named(hashes: tuple[str, ...]) -> str:
    """``site …; pack hash …`` for an error message: the site file's hash first, "none" without one."""
    site, *packs = hashes
    return "; ".join([f"site {site[:12] or 'none'}", *(f"pack {h[:12]}" for h in packs)])


def warm_context(cfg: RunConfig) -> None:
    """A pool worker's initializer: the context built before its first chunk. An error is left for
    that chunk to raise with its message (a failing initializer only breaks the pool, unnamed)."""
    with suppress(Exception):
        _context(cfg)


def pinned(cfg: RunConfig, ctx: _Context) -> RunConfig:
    """``cfg`` pinned to ``ctx``'s packs (the context the run's usage checks built), which this
    process then serves for it without looking at the files again."""
    fixed = replace(cfg, packs=_hashes(ctx))
    _CONTEXTS[(fixed, ())] = ctx  # beside the unpinned entry: at most two, the same context
    return fixed


def _build_context(cfg: RunConfig) -> _Context:
    """Load the packs, compile their vector forms and parse the assumed order (seconds: hence cached)."""
    engine = Engine.from_dir(cfg.rules, evaluator="rete" if cfg.engine == "rete" else "oracle")
    vectors = {p.id: VectorPack.compile(p, site_hash=engine.site_hash) for p in engine.running_packs}
    assumed = None
    if cfg.assume_order:
        vocab = engine.packs[0].vocabulary if engine.packs else None
        if vocab is None:
            raise ValueError("no rule pack loaded")
        assumed = parse_order_text(cfg.assume_order, vocab)
    observations = ObservationFilter(p.vocabulary for p in engine.running_packs)
    ctx = _Context(engine, vectors, assumed, observations)
    _close_when_unused(ctx)
    return ctx


def _close_when_unused(ctx: _Context) -> None:
    """Free ``ctx``'s durable rulesets (:meth:`Engine.close`) once nothing holds ``ctx`` any more.

    Why: a ``rete`` engine owns C rulesets (one per thread that evaluated with it) that only
    :meth:`Engine.close` frees, and the C module has a fixed table of 131,071 handles; a context
    dropped from :data:`_CONTEXTS` (another configuration, an edited pack, ``warm_context``) kept
    them — memory, and a handle each — for the life of the process. Why not close it when it is
    evicted: a chunk of another thread may still be evaluating with it (each half of a chunk,
    :func:`prepare_chunk` and :func:`finish_chunk`, holds the context while it runs; between them
    only the configuration is kept, and an evicted context is built again for the second half),
    and a closed engine answers from the oracle and counts a fallback. So the rulesets go when the
    last holder lets the context go, never under a running chunk. Nothing else in a context needs closing (the
    vector packs, the assumed order and the observation filter are plain Python objects; no file,
    thread or pool). Not at exit: the process's memory goes with it."""
    weakref.finalize(ctx, ctx.engine.close).atexit = False


@dataclass
class _Unit:
    """One patient record that could be read: where from, and its facts per pack."""

    source: str
    row: int | None
    patient_id: str | None
    facts: dict[str, PatientFacts]  # pack id -> facts
    notes: str | None = None


class _Collector:
    def __init__(self) -> None:
        self.units: list[_Unit] = []
        self.errors: list[dict[str, Any]] = []
        self.skipped: list[tuple[str, str]] = []
        self.table: TableScreen | None = None  # rows a record table screened column-wise
        self.derived: DerivedTable | None = None  # … their facts, before the alerts are built
        self.source: str = ""

    def reject(self, source: str, row: int | None, patient_id: str | None, reason: str) -> None:
        self.errors.append({"source": source, "row": row, "patient_id": patient_id, "reason": reason[:500]})


@dataclass
class PreparedChunk:
    """A chunk read and mapped (record tables: facts derived column-wise), not yet evaluated."""

    chunk: Chunk
    cfg: RunConfig
    out: _Collector
    started: float


@dataclass
class ReadChunk:
    """A record-table chunk read and cleaned (``clean_table``), its rejected rows noted: the part of
    :func:`prepare_chunk` that needs no engine.

    Why apart: a serial run reads the first chunk on a thread while the engine is built (the rules
    load and ``VectorPack.compile``, ~0.2 s of Python before any chunk could start), since polars
    reads and cleans without the GIL (runner._run_screen).
    """

    chunk: Chunk
    out: _Collector
    typed: pl.DataFrame | None  # None: nothing to derive (unreadable file, no rows)
    started: float


def process_chunk(chunk: Chunk, cfg: RunConfig) -> ChunkResult:
    """Read, map and evaluate one chunk. Never raises for bad input: that becomes error rows."""
    return finish_chunk(prepare_chunk(chunk, cfg))


def read_chunk(chunk: Chunk, cfg: RunConfig) -> ReadChunk:
    """Read and clean a record-table chunk (CSV or Parquet), without the engine; see :class:`ReadChunk`."""
    if chunk.kind not in ("csv", "parquet"):
        raise ValueError(f"not a record-table chunk: {chunk.kind}")
    started = time.perf_counter()
    out = _Collector()
    return ReadChunk(chunk, out, _typed_table(chunk, cfg, out), started)


def prepare_chunk(chunk: Chunk, cfg: RunConfig, read: ReadChunk | None = None) -> PreparedChunk:
    """The first half of :func:`process_chunk`: read and map (derive a record table's facts).

    Why two halves: a serial run prepares the next chunk on a thread while this one is evaluated
    (runner._run_serial) — the derivation is mostly polars work, which releases the GIL.
    ``read``: this chunk already read by :func:`read_chunk` (ignored when it is another chunk's).
    """
    ctx = _context(cfg)
    if not cfg.packs:  # the half that evaluates (finish_chunk) uses this context, even after an edit
        cfg = pinned(cfg, ctx)
    if read is not None and read.chunk == chunk:
        _derive_table_rows(chunk, read.typed, cfg, ctx, read.out)
        return PreparedChunk(chunk, cfg, read.out, read.started)
    started = time.perf_counter()
    out = _Collector()
    if chunk.kind == "bundles":
        _read_bundles(chunk, cfg, ctx, out)
    elif chunk.kind == "ndjson":
        _read_ndjson(chunk, cfg, ctx, out)
    else:
        _derive_table_rows(chunk, _typed_table(chunk, cfg, out), cfg, ctx, out)
    return PreparedChunk(chunk, cfg, out, started)


def finish_chunk(prepared: PreparedChunk) -> ChunkResult:
    """The second half of :func:`process_chunk`: evaluate, merge, count."""
    chunk, cfg, out, started = prepared.chunk, prepared.cfg, prepared.out, prepared.started
    ctx = _context(cfg)
    if out.derived is not None:
        out.table = table_alerts(out.derived, ctx.vectors)
        out.derived = None
    fhir = chunk.kind in ("bundles", "ndjson")
    alerts, patients = _evaluate(out.units, cfg, ctx, per_patient=fhir and len(out.units) < PER_PATIENT_BELOW)
    if out.table is not None:  # record rows screened column-wise, merged with the per-patient ones by row
        alerts, patients = _merge_table(out.table, out.source, alerts, patients)
    errors = pl.DataFrame(out.errors, schema=ERROR_SCHEMA)
    deceased = patients.filter(pl.col("status") == "deceased-excluded").height
    counts = {
        "read": len(out.units) + len(out.errors) + (0 if out.table is None else out.table.patients.height),
        "screened": patients.height - deceased,
        "rejected": len(out.errors),
        "deceased": deceased,
        "skipped": len(out.skipped),
        "alerts": alerts.height,
    }
    if out.table is not None:  # how the record rows were derived (columnar_facts), with the reasons
        counts["derived_columnwise"] = out.table.patients.height
        counts["derived_per_patient"] = out.table.fallback.height
        counts.update({f"per patient: {k}": v for k, v in out.table.reasons.items()})
    rules = (
        alerts.lazy().group_by("rule_id", "title", "severity").len().collect().rows() if alerts.height else []
    )
    return ChunkResult(
        chunk.id,
        alerts,
        patients,
        errors,
        counts,
        out.skipped,
        time.perf_counter() - started,
        [list(r) for r in rules],
    )


# ── FHIR ─────────────────────────────────────────────────────────────────────────────────────


def _load_bundle(path: Path) -> BundleRead:
    """One Bundle, gzip streamed with caps (200 MiB decompressed, 100:1): never a bomb in memory.

    Only the resource types the mapping reads are decoded (:mod:`cds_engine.sources.selective`);
    anything the fast path cannot vouch for is parsed in full, with the same result or error.
    """
    return read_bundle(read_bundle_bytes(path))


def _read_bundles(chunk: Chunk, cfg: RunConfig, ctx: _Context, out: _Collector) -> None:
    """Each bundle read and mapped with the cyclic collector paused, one bundle per pause.

    Why: a bundle's decoded resources are thousands of dicts and lists that live until its facts
    are made. Paused for the decoding alone (``read_bundle``), they were all counted as new when the
    pause ended: a young collection walked every one of them, the next middle one moved the bundle
    alive then into the oldest generation, and so set off full collections over the whole heap (the
    engine's too). Paused until the bundle's frame is gone, its resources are freed by reference
    counting before any collection sees them (each freed one takes its count back); what stays is
    the patient's facts. Bounded: a pause ends with each bundle, exception or not, so cyclic garbage
    can pile up only within one file (at most 200 MiB of JSON, :func:`_load_bundle`), never a chunk.
    """
    for name in chunk.files:
        with collector_paused():  # decoded JSON and facts make no cycles (sources/selective.py)
            _read_one_bundle(name, cfg, ctx, out)


def _read_one_bundle(name: str, cfg: RunConfig, ctx: _Context, out: _Collector) -> None:
    """One bundle file → one patient unit, a rejected record or a skipped file. Its own frame so
    that the decoded resources are released when it returns, inside the caller's pause."""
    try:
        bundle = _load_bundle(Path(name))
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        out.reject(name, None, None, f"corrupt bundle: cannot decompress/read ({exc})")
        return
    except (ValueError, UnicodeDecodeError) as exc:
        out.reject(name, None, None, f"corrupt bundle: not valid JSON ({exc})")
        return
    if bundle.root != "Bundle":
        out.reject(name, None, None, f"not a FHIR Bundle (resourceType {bundle.root!r})")
        return
    resources = bundle.resources
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if not patients:
        if any(t in _CLINICAL_TYPES for t in bundle.types):
            out.reject(
                name,
                None,
                None,
                "record with no patient: the bundle holds clinical resources but no Patient",
            )
        else:
            out.skipped.append(
                (name, "no Patient: not a patient bundle (e.g. hospital/practitioner information)")
            )
        return
    if len(patients) > 1:
        out.reject(
            name,
            None,
            None,
            f"{len(patients)} Patient resources in one bundle (one per patient expected)",
        )
        return
    _add_fhir_unit(name, None, resources, cfg, ctx, out)


def _read_ndjson(chunk: Chunk, cfg: RunConfig, ctx: _Context, out: _Collector) -> None:
    if chunk.payload is not None:  # the lines the partitioning could not attribute to a patient
        for file, line, reason in chunk.payload:
            out.reject(file, line or None, None, reason)
        return
    part = Path(chunk.files[0])
    shared = Path(chunk.files[1]) if len(chunk.files) > 1 else None
    with collector_paused():  # decoded JSON and facts make no cycles (sources/selective.py)
        for key, source, line, resources in read_partition(part, shared, ctx.observations):
            if line < 0:
                out.reject(
                    source, None, key or None, f"record with no patient: no Patient record for Patient/{key}"
                )
                continue
            _add_fhir_unit(source, line, resources, cfg, ctx, out)


def _current_order(resources: list[dict[str, Any]], ctx: _Context, drug_class: str) -> list[dict[str, Any]]:
    """Without --assume-order: the patient's latest active order of the pack's drug, reviewed as continued."""
    vocab = ctx.engine.packs[0].vocabulary
    active = [
        r
        for r in resources
        if r.get("resourceType") == "MedicationRequest"
        and r.get("status") == "active"
        and drug_class in (medication_classes(r, resources, vocab) or set())
    ]
    if not active:
        return []
    latest = max(active, key=lambda r: str(r.get("authoredOn") or ""))
    return [latest]


def _add_fhir_unit(
    source: str,
    row: int | None,
    resources: list[dict[str, Any]],
    cfg: RunConfig,
    ctx: _Context,
    out: _Collector,
) -> None:
    facts: dict[str, PatientFacts] = {}
    patient_id = next((str(r.get("id")) for r in resources if r.get("resourceType") == "Patient"), None)
    try:
        for pack in ctx.engine.running_packs:  # a draft pack does not run in a screening
            drug = pack.context.drug_class
            drafts = (
                [ctx.assumed.to_fhir()] if ctx.assumed is not None else _current_order(resources, ctx, drug)
            )
            facts[pack.id] = facts_from_resources(
                resources, as_of=cfg.moment, vocab=pack.vocabulary, drug_class=drug, draft_orders=drafts
            )
    except (ValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
        out.reject(
            source, row, patient_id, f"patient record cannot be mapped: {exc.__class__.__name__}: {exc}"
        )
        return
    out.units.append(_Unit(source, row, patient_id, facts))


# ── tables ───────────────────────────────────────────────────────────────────────────────────


def _table_frame(chunk: Chunk, out: _Collector) -> pl.DataFrame | None:
    source = chunk.files[0]
    if chunk.kind == "csv":
        header, rows, errors = chunk.payload
        for line, reason in errors:
            out.reject(source, line, None, reason)
        return frame_from_cells(header, rows) if header else None
    try:
        if chunk.stop < 0:
            raise ValueError("the Parquet footer cannot be read")
        frame = _parquet_rows(source, chunk.start, chunk.stop)
    except Exception as exc:  # polars/pyarrow raise many types for a damaged file
        out.reject(source, None, None, f"Parquet file cannot be read: {exc.__class__.__name__}: {exc}"[:300])
        return None
    return frame.with_columns((pl.int_range(pl.len()) + chunk.start + 1).alias("__line"))


_FileKey = tuple[str, int, int, int, int]


@dataclass
class _Decoded:
    """Rows [start, stop) of a Parquet file (``key``: :func:`_file_key`), whole row groups."""

    key: _FileKey
    start: int
    stop: int
    frame: pl.DataFrame


_GROUP_BOUNDS: dict[_FileKey, list[int]] = {}  # file key -> row group starts + total rows
_LAST_DECODED: list[_Decoded] = []  # the row groups the last chunk read beyond its end (at most one)
_DECODED_LOCK = threading.Lock()
#: row groups read whole only up to this many rows per chunk row (bigger groups: the slice as before)
_GROUP_SPAN = 4


def _file_key(source: str) -> _FileKey:
    """Path, size, mtime, inode and ctime: a file replaced by one of the same size and mtime
    (``cp -p``, ``rsync -t``, ``tar``) is a new inode or has a new ctime, which no one can set back."""
    st = os.stat(source)
    return (source, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def forget_decoded() -> None:
    """Drop the kept row groups and footers: a run starts and ends with none (no rows of an earlier
    run served, none held in a long-lived process after it)."""
    with _DECODED_LOCK:
        _LAST_DECODED.clear()
        _GROUP_BOUNDS.clear()


def _group_bounds(source: str, key: _FileKey) -> list[int] | None:
    """The first row of each row group and the row count (from the footer, once per file)."""
    with _DECODED_LOCK:
        bounds = _GROUP_BOUNDS.get(key)
    if bounds is None:
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(source).metadata
        except Exception:
            return None
        bounds = [0]
        for i in range(meta.num_row_groups):
            bounds.append(bounds[-1] + meta.row_group(i).num_rows)
        with _DECODED_LOCK:
            if len(_GROUP_BOUNDS) > 64:
                _GROUP_BOUNDS.clear()
            _GROUP_BOUNDS[key] = bounds
    return bounds


def _parquet_rows(source: str, start: int, stop: int) -> pl.DataFrame:
    """Rows [start, stop) of a Parquet file, each row group decoded once over consecutive chunks.

    Why: a slice that ends inside a row group decodes that whole group, and the next chunk, which
    starts in it, decoded it again (chunks of 100,000 rows over groups of 125,000 decoded ~2x the
    file). Here the groups a chunk needs are read whole, and the part beyond its end is kept for
    the next chunk (one range at a time, the rows of one or two groups). The rows, their values
    and types are those of the slice. Groups much bigger than a chunk are sliced as before.
    """
    key = _file_key(source)
    bounds = _group_bounds(source, key)
    if bounds is None or stop > bounds[-1] or start >= stop:
        return pl.scan_parquet(source).slice(start, stop - start).collect()
    parts: list[pl.DataFrame] = []
    at = start
    with _DECODED_LOCK:
        kept = _LAST_DECODED.pop() if _LAST_DECODED else None
    if kept is not None and kept.key == key and kept.start <= start < kept.stop:
        upto = min(stop, kept.stop)
        parts.append(kept.frame.slice(start - kept.start, upto - start))
        at = upto
    if at < stop:
        first = bounds[bisect.bisect_right(bounds, at) - 1]
        last = bounds[bisect.bisect_left(bounds, stop)]
        if last - first > _GROUP_SPAN * (stop - start):
            return pl.scan_parquet(source).slice(start, stop - start).collect()
        read = pl.scan_parquet(source).slice(first, last - first).collect()
        parts.append(read.slice(at - first, stop - at))
        if last > stop:  # the rest of the last group: the next chunk's first rows
            group = bounds[bisect.bisect_right(bounds, stop) - 1]
            with _DECODED_LOCK:
                _LAST_DECODED[:] = [_Decoded(key, group, last, read.slice(group - first, last - group))]
    elif kept is not None and kept.stop > stop:
        with _DECODED_LOCK:
            _LAST_DECODED[:] = [kept]
    return parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")


def _typed_table(chunk: Chunk, cfg: RunConfig, out: _Collector) -> pl.DataFrame | None:
    """The chunk's rows cleaned and typed (rejected rows noted in ``out``); None when there are none."""
    frame = _table_frame(chunk, out)
    if frame is None or frame.height == 0:
        return None
    typed, rejected, _ignored = clean_table(frame, cfg.moment)
    source = chunk.files[0]
    for r in rejected.iter_rows(named=True):
        out.reject(source, r["__line"], r["patient_id"], r["__error"])
    # every row rejected (a one-row chunk of a bad row): nothing to derive, as for an empty chunk
    # (a derivation of no row failed with a SchemaError and aborted the whole screen)
    return typed if typed.height else None


def _derive_table_rows(
    chunk: Chunk, typed: pl.DataFrame | None, cfg: RunConfig, ctx: _Context, out: _Collector
) -> None:
    """Facts of a chunk's typed rows: column-wise (``vector``), the rest patient by patient."""
    if typed is None:
        return
    source = chunk.files[0]
    order = ctx.assumed.to_order() if ctx.assumed is not None else None
    if cfg.engine == "vector":  # column-wise; rows it cannot express come back for the loop below
        out.derived = derive_table(typed, ctx.engine.running_packs, ctx.vectors, cfg.moment, order)
        out.source = source
        typed = out.derived.fallback
    for row in typed.iter_rows(named=True):
        try:
            patient = row_to_facts(row, cfg.moment, order)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            out.reject(
                source, row["__line"], row.get("patient_id"), f"row cannot be read: {where}: {first['msg']}"
            )
            continue
        out.units.append(
            _Unit(
                source,
                row["__line"],
                row.get("patient_id"),
                dict.fromkeys((p.id for p in ctx.engine.running_packs), patient),
                row.get("__notes"),
            )
        )


def _merge_table(
    table: TableScreen, source: str, alerts: pl.DataFrame, patients: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    extra = (pl.lit(source).alias("source"), pl.col("__unit").alias("row"))
    t_alerts = (
        table.alerts.with_columns(*extra).select(list(BATCH_ALERT_SCHEMA))
        if table.alerts.height
        else pl.DataFrame(schema=BATCH_ALERT_SCHEMA)
    )
    t_patients = patient_counts(table.patients, table.alerts).with_columns(*extra)
    t_patients = t_patients.select(list(PATIENT_SCHEMA))
    return merge_by_row(t_alerts, alerts, "row"), merge_by_row(t_patients, patients, "row")


# ── evaluation ───────────────────────────────────────────────────────────────────────────────


def _evaluate(
    units: list[_Unit], cfg: RunConfig, ctx: _Context, per_patient: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Alert rows and patient rows of a chunk; ``per_patient`` evaluates patient by patient (see
    :data:`PER_PATIENT_BELOW`) with the engine's own evaluator instead of the vector one."""
    engine = ctx.engine
    alert_frames: list[pl.DataFrame] = []
    rete_rows: list[dict[str, Any]] = []
    packs_of: list[list[str]] = [[] for _ in units]
    status = ["deceased-excluded" if any(f.deceased for f in u.facts.values()) else "screened" for u in units]
    applicable: dict[int, set[str]] = {}  # id(facts) -> packs that apply (tables share one facts object)
    # (id(facts), pack id) -> the flat facts the applicability check derived from that facts object:
    # evaluated without deriving them again (Engine.applicable's ``flats``; derive was a fifth of this)
    derived: dict[tuple[int, str], dict[str, Any]] = {}
    for pack in engine.running_packs:
        flats: list[dict[str, Any]] = []
        keys: list[int] = []
        for i, unit in enumerate(units):
            if status[i] != "screened":
                continue
            facts = unit.facts[pack.id]
            if id(facts) not in applicable:
                made: dict[str, dict[str, Any]] = {}
                applicable[id(facts)] = {p.id for p in engine.applicable(facts, made)}
                for pack_id, flat in made.items():
                    derived[(id(facts), pack_id)] = flat
            if pack.id not in applicable[id(facts)]:
                continue
            packs_of[i].append(pack.id)
            flat = derived.pop((id(facts), pack.id), None)  # each used once: by this pack, for this facts
            if cfg.engine == "rete" or per_patient:
                for r in alerts_to_rows(unit.patient_id or "", engine.evaluate_pack(pack, facts, flat)):
                    rete_rows.append({**r, "__unit": i})
            else:
                flats.append(flat if flat is not None else derive(facts, pack.vocabulary, pack.context))
                keys.append(i)
        if flats:
            vp = ctx.vectors[pack.id]
            frame = frame_from_flats(
                vp, flats, {"__unit": keys, "patient_id": [units[i].patient_id or "" for i in keys]}
            )
            alert_frames.append(vector_alerts(vp, frame, "patient_id", carry=("__unit",)))
    if rete_rows:
        alert_frames.append(pl.DataFrame(rete_rows, schema={**ALERT_SCHEMA, "__unit": pl.Int64}))
    alerts = (
        pl.concat(alert_frames, how="vertical")
        if alert_frames
        else pl.DataFrame(schema={**ALERT_SCHEMA, "__unit": pl.Int64})
    )
    alerts = alerts.with_columns(pl.col("__unit").cast(pl.Int64))
    counts = alerts.group_by("__unit").agg(
        pl.len().alias("alerts"),
        *[(pl.col("severity") == s).sum().cast(pl.Int64).alias(s) for s in SEVERITY_ORDER],
        (pl.col("kind") == "cannot-assess").sum().cast(pl.Int64).alias("cannot_assess"),
    )
    patients = pl.DataFrame(
        {
            "__unit": list(range(len(units))),
            "patient_id": [u.patient_id for u in units],
            "source": [u.source for u in units],
            "row": [u.row for u in units],
            "status": status,
            "packs": [";".join(p) for p in packs_of],
            "notes": [u.notes for u in units],
        },
        schema={
            "__unit": pl.Int64,
            "patient_id": pl.String,
            "source": pl.String,
            "row": pl.Int64,
            "status": pl.String,
            "packs": pl.String,
            "notes": pl.String,
        },
    )
    patients = patients.join(counts, on="__unit", how="left", maintain_order="left").with_columns(
        [pl.col(c).fill_null(0) for c in ("alerts", "critical", "warning", "info", "cannot_assess")]
    )
    sources = patients.select("__unit", "source", "row")
    alerts = alerts.join(sources, on="__unit", how="left", maintain_order="left").sort(
        "__unit", maintain_order=True
    )
    return alerts.select(list(BATCH_ALERT_SCHEMA)), patients.select(list(PATIENT_SCHEMA))
