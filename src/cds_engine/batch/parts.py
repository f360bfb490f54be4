"""Crash-safe outputs: one part per finished chunk, merged into the final files at the end.

Why: a screening of millions of patients can be killed half way (SIGKILL, a lost node). Each
chunk's results are written to ``DIR/.parts/`` as temporary files renamed into place, and a
chunk counts as done only when its ``.done`` manifest exists (written last, also by rename).
A rerun with the same inputs and options reuses the finished chunks and redoes the rest; a
chunk killed half way is simply redone (its part files are overwritten, never appended). The
final files are produced from the parts by streaming (flat memory) into temporary names and
renamed, so ``DIR`` never holds a half-written ``alerts.parquet`` nor alerts of two runs.

Parts are Parquet files with LZ4, dictionaries on the repetitive columns and no statistics:
a part is read at most once (by the merge, after a resume or from a pool), so it is encoded
for speed and size only — from the Arrow table the appended final file is written from anyway,
~20 % less CPU than the Arrow IPC (LZ4) parts before and about half their bytes.
:data:`PARTS_FORMAT` is part of the run fingerprint, so parts of another layout are never
resumed. A serial run also appends each chunk's rows to the final tables as it goes
(:class:`_Appended`), so its merge only renames them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from cds_engine.batch.outputs import write_formats
from cds_engine.batch.work import BATCH_ALERT_SCHEMA, ERROR_SCHEMA, PATIENT_SCHEMA, ChunkResult
from cds_engine.files import FILE_MODE, private_dir

__all__ = ["OUTPUT_FILES", "PARTS_FORMAT", "PartStore"]

#: the layout of the part files (in the run fingerprint: a rerun never mixes two layouts)
PARTS_FORMAT = "parquet-lz4-dict-v2"
_PART = "parquet"
_APPENDED = ("alerts", "patients")  # the final tables a serial run writes as it goes
#: columns with (nearly) one value per row: no dictionary and no min/max statistics in the final
#: Parquet files — both cost encoding time and buy nothing there (a dictionary of 60,000 evidence
#: strings only to fall back to plain pages; min/max of JSON text) — the file is also smaller
_ROW_VALUED = frozenset({"patient_id", "summary", "evidence", "notes"})


def _parquet_writer(path: Path, schema: Any) -> Any:
    """The writer of a final table: zstd; dictionaries and statistics on the repetitive columns
    (rule, severity, pack, source …) and ``row`` only. Same schema, read the same by pyarrow,
    polars and pandas."""
    import pyarrow.parquet as pq  # only here: the CLI starts without it

    repetitive = [n for n in schema.names if n not in _ROW_VALUED]
    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        use_dictionary=[n for n in repetitive if n != "row"],
        write_statistics=repetitive,
    )


def _write_part(table: Any, path: Path) -> None:
    """One part file (read once, by the merge): LZ4, dictionaries on the repetitive columns, no
    statistics — the cheapest encoding measured that is also small (half the IPC LZ4 bytes)."""
    import pyarrow.parquet as pq

    dictionary = [n for n in table.schema.names if n not in _ROW_VALUED and n != "row"]
    pq.write_table(table, path, compression="lz4", use_dictionary=dictionary, write_statistics=False)


OUTPUT_FILES = (
    "alerts.parquet",
    "alerts.csv",
    "patients.parquet",
    "errors.csv",
    "report.html",
    "summary.json",
)


def _safe(chunk_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in chunk_id)


def _replace(tmp: Path, final: Path) -> None:
    tmp.chmod(FILE_MODE)  # outputs hold PHI: 0600, whatever wrote them (polars follows the umask)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


_FORMULA_START = r"^[=+\-@\t\r]"


def _neutralised(frame: pl.LazyFrame) -> pl.LazyFrame:
    """CSV cells that a spreadsheet would run as a formula (``= + - @``, tab, CR first) get a
    leading ``'`` (red-team L7). Parquet stays raw."""
    strings = [name for name, dtype in frame.collect_schema().items() if dtype == pl.String]
    return frame.with_columns(
        pl.when(pl.col(name).str.contains(_FORMULA_START))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
        for name in strings
    )


class _Appended:
    """The final alerts and patients tables, written chunk by chunk in chunk order (serial runs).

    Why: the merge at the end re-read and re-encoded every part (a fifth of a record-table run's
    CPU, after the evaluation). Here each finished chunk's rows are appended as row groups to
    ``.parts/final.NAME.parquet`` on the part writer's thread, overlapping the next chunk's
    evaluation, and the merge only renames the files. They are used only when they hold exactly
    the chunks of the run in order (no chunk resumed, nothing failed, one schema); otherwise they
    are dropped and the merge reads the parts as before — the same tables either way
    (tests/test_batch_parts.py).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writers: dict[str, Any] = {}  # name -> pyarrow.parquet.ParquetWriter
        self.chunks: list[str] = []
        self.broken = False
        for name in _APPENDED:  # a killed run's partial file is never reused
            self.path(name).unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        return self.folder / f"final.{name}.parquet"

    def add(self, chunk_id: str, tables: dict[str, Any]) -> None:
        """Append one chunk's Arrow tables (``name`` -> ``pyarrow.Table``) to the final files."""
        if self.broken:
            return
        try:
            for name, table in tables.items():
                writer = self.writers.get(name)
                if writer is None:
                    writer = _parquet_writer(self.path(name), table.schema)
                    self.writers[name] = writer
                elif not table.schema.equals(writer.schema):
                    raise ValueError(f"{name}: schema differs between chunks")
                writer.write_table(table)
        except Exception:  # any doubt: the merge builds the tables from the parts instead
            self.drop()
            return
        self.chunks.append(chunk_id)

    def finish(self, chunk_ids: list[str]) -> bool:
        """Close the files; True when they are the complete tables of ``chunk_ids``."""
        if self.broken:
            return False
        try:
            for writer in self.writers.values():
                writer.close()
        except Exception:
            self.drop()
            return False
        self.writers = {}
        complete = self.chunks == chunk_ids and all(self.path(n).exists() for n in _APPENDED)
        if not complete:
            self.drop()
        return complete

    def drop(self) -> None:
        self.broken = True
        for writer in self.writers.values():
            with contextlib.suppress(Exception):  # the file is deleted next anyway
                writer.close()
        self.writers = {}
        for name in _APPENDED:
            self.path(name).unlink(missing_ok=True)


class PartStore:
    """The ``.parts`` folder of one output directory."""

    def __init__(self, out: Path, fingerprint: str, params: dict[str, Any]) -> None:
        self.out = out
        self.dir = out / ".parts"
        self.fingerprint = fingerprint
        self.resumed = 0
        state = self.dir / "run.json"
        if state.exists():
            try:
                previous = json.loads(state.read_text(encoding="utf-8"))
            except ValueError:
                previous = {}
            if previous.get("fingerprint") != fingerprint:
                shutil.rmtree(self.dir)
        private_dir(out)
        private_dir(self.dir)
        if not state.exists():
            tmp = state.with_suffix(".tmp")
            tmp.write_text(
                json.dumps({"fingerprint": fingerprint, "params": params}, indent=2), encoding="utf-8"
            )
            _replace(tmp, state)
        for name in OUTPUT_FILES:  # never leave outputs of another run next to this one's parts
            (out / name).unlink(missing_ok=True)
        self.appended: _Appended | None = None

    def append_as_you_go(self) -> None:
        """Serial runs: also write the final tables chunk by chunk (see :class:`_Appended`)."""
        self.appended = _Appended(self.dir)

    def done(self, chunk_id: str) -> bool:
        return (self.dir / f"{_safe(chunk_id)}.done").exists()

    def manifest(self, chunk_id: str) -> dict[str, Any]:
        return json.loads((self.dir / f"{_safe(chunk_id)}.done").read_text(encoding="utf-8"))

    def write(self, result: ChunkResult) -> None:
        base = self.dir / _safe(result.chunk_id)
        tables = {  # converted once: the part and the appended final file are written from them
            "alerts": result.alerts.to_arrow(),
            "patients": result.patients.to_arrow(),
            "errors": result.errors.to_arrow(),
        }
        for name, table in tables.items():
            tmp = base.with_name(f"{base.name}.{name}.{_PART}.tmp")
            _write_part(table, tmp)
            _replace(tmp, base.with_name(f"{base.name}.{name}.{_PART}"))
        manifest = {
            "chunk": result.chunk_id,
            "counts": result.counts,
            "skipped": result.skipped,
            "seconds": round(result.seconds, 3),
            "rules": result.rules,  # alerts per (rule, title, severity): the report adds them up
        }
        tmp = base.with_name(f"{base.name}.done.tmp")
        tmp.write_text(json.dumps(manifest), encoding="utf-8")
        _replace(tmp, base.with_name(f"{base.name}.done"))
        if self.appended is not None:
            self.appended.add(result.chunk_id, {n: tables[n] for n in _APPENDED})

    def _scan(self, chunk_ids: list[str], name: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        files = [self.dir / f"{_safe(c)}.{name}.{_PART}" for c in chunk_ids]
        files = [f for f in files if f.exists()]
        if not files:
            return pl.LazyFrame(schema=schema)
        return pl.concat([pl.scan_parquet(f) for f in files], how="vertical")

    def merge(self, chunk_ids: list[str], formats: tuple[str, ...] = ("parquet", "csv")) -> None:
        """Write the final alerts, patients and errors files (streamed; temp name, then rename).

        ``formats``: the alert tables besides ``alerts.parquet`` (batch/outputs.py).
        """
        if self.appended is not None and self.appended.finish(chunk_ids):
            for name in _APPENDED:
                _replace(self.appended.path(name), self.out / f"{name}.parquet")
        else:
            self._sink(self._scan(chunk_ids, "alerts", BATCH_ALERT_SCHEMA), "alerts.parquet")
            self._sink(self._scan(chunk_ids, "patients", PATIENT_SCHEMA), "patients.parquet")
        errors = self._scan(chunk_ids, "errors", ERROR_SCHEMA)
        write_formats(self.out, formats, self._sink)
        self._sink(errors, "errors.csv")

    def _sink(self, frame: pl.LazyFrame, name: str) -> None:
        final = self.out / name
        tmp = self.out / f".{name}.tmp"
        if name.endswith(".csv"):
            _neutralised(frame).sink_csv(tmp)
        else:
            frame.sink_parquet(tmp)
        _replace(tmp, final)

    def write_text(self, name: str, text: str) -> None:
        tmp = self.out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        _replace(tmp, self.out / name)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
