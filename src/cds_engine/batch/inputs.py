"""What the inputs are (decided by content, not by name) and how they are cut into chunks.

Why by content: real folders mix things — the Synthea sample holds patient bundles, hospital
and practitioner bundles, a manifest CSV and Synthea's own CSV export side by side. Each file
is sniffed: gzip is looked through, JSON is recognised by its first object, Parquet by its
magic bytes, NDJSON by one resource per line, CSV by its header. A file that is none of the
screenable kinds is *skipped* and listed in the report, never counted as a rejected patient.

A chunk is the unit of work a process or a Dask worker receives. Chunks are planned
deterministically from the sorted input list, so a rerun after a crash finds the chunks it
already finished (see :mod:`cds_engine.batch.parts`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cds_engine.sources.table import COLUMNS, column_spec, csv_batches

__all__ = ["Chunk", "InputPlan", "Skipped", "plan_inputs", "sniff"]

Kind = Literal["bundle", "ndjson", "csv", "parquet", "skip"]
_SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class Chunk:
    """One unit of work. ``payload`` carries CSV rows (they are read once, by the planner)."""

    id: str
    kind: Literal["bundles", "csv", "parquet", "ndjson"]
    files: tuple[str, ...]
    start: int = 0
    stop: int = 0
    payload: Any = None
    records: int = 0  # known record count (progress), 0 when unknown

    @property
    def label(self) -> str:
        return self.files[0] if len(self.files) == 1 else f"{len(self.files)} files from {self.files[0]}"


@dataclass
class InputPlan:
    bundles: list[Path] = field(default_factory=list)
    ndjson_dirs: dict[Path, list[Path]] = field(default_factory=dict)
    csv: list[Path] = field(default_factory=list)
    parquet: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Changes when any input file changes (name, size or modification time)."""
        digest = hashlib.sha256()
        files = [
            *self.bundles,
            *self.csv,
            *self.parquet,
            *(f for fs in self.ndjson_dirs.values() for f in fs),
        ]
        for f in sorted(files):
            st = f.stat()
            digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _head(path: Path) -> bytes:
    with path.open("rb") as fh:
        start = fh.read(_SNIFF_BYTES)
    if start[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                return gz.read(_SNIFF_BYTES)
        except (OSError, EOFError, zlib.error):
            return b"\x1f\x8b"  # a broken gzip: still reported, as a corrupt file
    return start


def sniff(path: Path) -> tuple[Kind, str]:
    """The kind of a file, and why (for the report when it is skipped)."""
    try:
        head = _head(path)
    except OSError as exc:
        return "skip", f"cannot read: {exc}"
    name = path.name.lower()
    if head == b"\x1f\x8b":
        if ".ndjson" in name:  # cut short as any export file can be: its lines up to the cut are read
            return "ndjson", "ndjson (broken gzip)"
        return "bundle", "broken gzip"  # read (and rejected with its reason) by the worker
    if head.startswith(b"PAR1"):
        return "parquet", "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if ".ndjson" in name:
        return "ndjson", "ndjson"
    if text.startswith(b"{"):
        first, _, rest = text.partition(b"\n")
        try:
            obj = json.loads(first)
        except ValueError:
            return "bundle", "json document"  # pretty-printed, minified and long, or corrupt
        if isinstance(obj, dict) and obj.get("resourceType") == "Bundle" and not rest.strip():
            return "bundle", "json document"
        if isinstance(obj, dict) and "resourceType" in obj:
            return "ndjson", "one resource per line"
        return "bundle", "json document"
    if ".json" in name:
        return "bundle", "json (empty or not JSON)"
    try:
        header_line = text.split(b"\n", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return "skip", "not text, JSON or Parquet"
    header = [h.strip().strip('"') for h in header_line.strip().split(",")]
    if _is_fact_table(header):
        return "csv", "csv"
    if "," in header_line:
        return "skip", "CSV without the patient table columns (needs patient_id and mostly known columns)"
    return "skip", "not a FHIR bundle, NDJSON, CSV or Parquet file"


def _is_fact_table(columns: list[str]) -> bool:
    known = [c for c in columns if column_spec(c) is not None]
    return "patient_id" in columns and len(known) * 2 >= len(columns)


def _walk(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not child.name.startswith("."):
                yield child
    else:
        yield path


def plan_inputs(paths: list[Path]) -> InputPlan:
    """Classify every file under ``paths``; NDJSON files are grouped by folder (one Bulk export)."""
    plan = InputPlan()
    for root in paths:
        if not root.exists():
            plan.skipped.append(Skipped(str(root), "does not exist"))
            continue
        for f in _walk(root):
            kind, why = sniff(f)
            if kind == "bundle":
                plan.bundles.append(f)
            elif kind == "ndjson":
                plan.ndjson_dirs.setdefault(f.parent, []).append(f)
            elif kind == "csv":
                plan.csv.append(f)
            elif kind == "parquet":
                if _parquet_is_table(f):
                    plan.parquet.append(f)
                else:
                    plan.skipped.append(Skipped(str(f), "Parquet without the patient table columns"))
            else:
                plan.skipped.append(Skipped(str(f), why))
    for f in plan.parquet:
        _note_ignored(plan, f, _parquet_columns(f))
    return plan


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _parquet_is_table(path: Path) -> bool:
    try:
        return _is_fact_table(_parquet_columns(path))
    except Exception:  # an unreadable footer: reported by the worker
        return True


def _note_ignored(plan: InputPlan, path: Path, columns: list[str]) -> None:
    ignored = [c for c in columns if column_spec(c) is None]
    if ignored:
        plan.ignored_columns[str(path)] = ignored


def bundle_chunks(files: list[Path], per_chunk: int) -> list[Chunk]:
    out = []
    for i in range(0, len(files), per_chunk):
        group = tuple(str(f) for f in files[i : i + per_chunk])
        out.append(Chunk(id=f"bundles-{i // per_chunk:06d}", kind="bundles", files=group, records=len(group)))
    return out


def parquet_chunks(path: Path, rows_per_chunk: int, index: int) -> list[Chunk]:
    import pyarrow.parquet as pq

    try:
        total = pq.ParquetFile(path).metadata.num_rows
    except Exception:  # reported by the worker as an unreadable file
        return [Chunk(id=f"parquet{index:03d}-000000", kind="parquet", files=(str(path),), start=0, stop=-1)]
    return [
        Chunk(
            id=f"parquet{index:03d}-{start // rows_per_chunk:06d}",
            kind="parquet",
            files=(str(path),),
            start=start,
            stop=min(start + rows_per_chunk, total),
            records=min(rows_per_chunk, total - start),
        )
        for start in range(0, max(total, 1), rows_per_chunk)
    ]


def csv_chunks(path: Path, rows_per_chunk: int, index: int) -> Iterator[Chunk]:
    """CSV chunks carry their rows: the file is read once, in order, by the planner (streaming)."""
    for n, (header, rows, errors) in enumerate(csv_batches(path, rows_per_chunk)):
        yield Chunk(
            id=f"csv{index:03d}-{n:06d}",
            kind="csv",
            files=(str(path),),
            payload=(header, rows, errors),
            records=len(rows) + len(errors),
        )


def known_columns() -> list[str]:
    return list(COLUMNS)
