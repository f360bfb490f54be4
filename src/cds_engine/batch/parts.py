"""Crash-safe outputs: one part per finished chunk, merged into the final files at the end.

Why: a screening of millions of patients can be killed half way (SIGKILL, a lost node). Each
chunk's results are written to ``DIR/.parts/`` as temporary files renamed into place, and a
chunk counts as done only when its ``.done`` manifest exists (written last, also by rename).
A rerun with the same inputs and options reuses the finished chunks and redoes the rest; a
chunk killed half way is simply redone (its part files are overwritten, never appended). The
final files are produced from the parts by streaming (flat memory) into temporary names and
renamed, so ``DIR`` never holds a half-written ``alerts.parquet`` nor alerts of two runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from cds_engine.batch.outputs import write_formats
from cds_engine.batch.work import BATCH_ALERT_SCHEMA, ERROR_SCHEMA, PATIENT_SCHEMA, ChunkResult
from cds_engine.files import FILE_MODE, private_dir

__all__ = ["OUTPUT_FILES", "PartStore"]

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

    def done(self, chunk_id: str) -> bool:
        return (self.dir / f"{_safe(chunk_id)}.done").exists()

    def manifest(self, chunk_id: str) -> dict[str, Any]:
        return json.loads((self.dir / f"{_safe(chunk_id)}.done").read_text(encoding="utf-8"))

    def write(self, result: ChunkResult) -> None:
        base = self.dir / _safe(result.chunk_id)
        for name, frame in (
            ("alerts", result.alerts),
            ("patients", result.patients),
            ("errors", result.errors),
        ):
            tmp = base.with_name(f"{base.name}.{name}.parquet.tmp")
            frame.write_parquet(tmp)
            _replace(tmp, base.with_name(f"{base.name}.{name}.parquet"))
        manifest = {
            "chunk": result.chunk_id,
            "counts": result.counts,
            "skipped": result.skipped,
            "seconds": round(result.seconds, 3),
        }
        tmp = base.with_name(f"{base.name}.done.tmp")
        tmp.write_text(json.dumps(manifest), encoding="utf-8")
        _replace(tmp, base.with_name(f"{base.name}.done"))

    def _scan(self, chunk_ids: list[str], name: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        files = [self.dir / f"{_safe(c)}.{name}.parquet" for c in chunk_ids]
        files = [f for f in files if f.exists()]
        if not files:
            return pl.LazyFrame(schema=schema)
        return pl.concat([pl.scan_parquet(f) for f in files], how="vertical")

    def merge(self, chunk_ids: list[str], formats: tuple[str, ...] = ("parquet", "csv")) -> None:
        """Write the final alerts, patients and errors files (streamed; temp name, then rename).

        ``formats``: the alert tables besides ``alerts.parquet`` (batch/outputs.py).
        """
        alerts = self._scan(chunk_ids, "alerts", BATCH_ALERT_SCHEMA)
        patients = self._scan(chunk_ids, "patients", PATIENT_SCHEMA)
        errors = self._scan(chunk_ids, "errors", ERROR_SCHEMA)
        self._sink(alerts, "alerts.parquet")
        self._sink(patients, "patients.parquet")
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
