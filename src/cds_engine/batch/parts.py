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
for speed and size only (~20 % less CPU than the Arrow IPC (LZ4) parts before and about half
their bytes). A serial run writes its alerts and patients parts in the final tables' encoding
instead, and its merge copies their row groups into the final files without decoding them
(:class:`_Appended`): each alert text is encoded once. :data:`PARTS_FORMAT` is part of the run
fingerprint, so parts of another layout are never resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import polars as pl

from cds_engine.batch.outputs import write_formats
from cds_engine.batch.work import BATCH_ALERT_SCHEMA, ERROR_SCHEMA, PATIENT_SCHEMA, ChunkResult
from cds_engine.files import FILE_MODE, private_dir

__all__ = ["OUTPUT_FILES", "PARTS_FORMAT", "PartStore"]

#: the layout of the part files (in the run fingerprint: a rerun never mixes two layouts)
PARTS_FORMAT = "parquet-lz4-dict-v4"  # v4: the final encoding without the wording's statistics
_PART = "parquet"
_APPENDED = ("alerts", "patients")  # a serial run writes these parts in the final encoding
#: columns with (nearly) one value per row: no dictionary and no min/max statistics in the final
#: Parquet files — both cost encoding time and buy nothing there (a dictionary of 60,000 evidence
#: strings only to fall back to plain pages; min/max of JSON text) — the file is also smaller
_ROW_VALUED = frozenset({"patient_id", "summary", "evidence", "notes"})
#: the alert table's wording columns: dictionaries but no min/max statistics. Every chunk holds
#: nearly every value of each (a dozen rules and tiers, three severities), so a reader's filter on
#: them skips no row group; taking them was ~13 % of the alert table's encoding CPU
_UNSKIPPABLE = frozenset({"kind", "rule_id", "tier_id", "category", "severity", "title"})
#: rows handed to the column encoders at a time (pyarrow's default: 1,024). Each batch costs a
#: fixed amount per column (statistics, dictionary and page-size checks): 8,192 rows take ~6 %
#: less of the alert table's encoding CPU; a page still ends at the first batch past its size
_BATCH_ROWS = 8192


def _parquet_writer(path: Path, schema: Any) -> Any:
    """The writer of a final table: zstd; dictionaries on the repetitive columns (rule, severity,
    pack, source …), statistics on those that can skip a row group (pack, source, ``row``, the
    patients' counts …: not the alerts' wording, :data:`_UNSKIPPABLE`). Same schema, read the same
    by pyarrow, polars and pandas.

    Measured and not taken (tests/test_part_encoding.py pins the two that matter): lz4_raw or
    snappy (the whole screening's CPU not 4 % lower; files 77-300 % larger); data pages V2 (~5 %
    of this writer's CPU, ~1 % of a run, but fastparquet cannot read V2 pages of columns with
    nulls, such as ``notes`` or a bundle source's ``row``); DELTA encodings of the texts (18-39 %
    more CPU); DELTA_BINARY_PACKED for ``row`` and the counts, dictionaries on ``summary`` /
    ``evidence`` with a larger ``dictionary_pagesize_limit`` (smaller files, no less CPU)."""
    repetitive = [n for n in schema.names if n not in _ROW_VALUED]
    return _open_writer(
        path,
        schema,
        compression="zstd",
        use_dictionary=[n for n in repetitive if n != "row"],
        write_statistics=[n for n in repetitive if n not in _UNSKIPPABLE],
        write_batch_size=_BATCH_ROWS,
    )


def _write_part(table: Any, path: Path) -> None:
    """One part file (read once, by the merge): LZ4, dictionaries on the repetitive columns, no
    statistics — the cheapest encoding measured that is also small (half the IPC LZ4 bytes)."""
    dictionary = _dictionary_names(table.schema.names)
    with _open_writer(
        path,
        table.schema,
        compression="lz4",
        use_dictionary=dictionary,
        write_statistics=False,
        write_batch_size=_BATCH_ROWS,
    ) as w:
        w.write_table(table)


_STORED = b"ARROW:schema"  # the key under which Parquet files carry the Arrow schema to read back
_VIEWS = {"string_view": "large_string", "binary_view": "large_binary"}


def _as_arrow(frame: pl.DataFrame) -> Any:
    """``frame`` as an Arrow table without copying its strings, written as ``frame.to_arrow()`` would be.

    Why: ``to_arrow()`` converts polars' string views into ``large_string`` arrays — a copy of every
    text (~60 ms per 340,000 alert rows, the summaries and evidence JSON). The Parquet writer encodes
    views to the same pages; only the Arrow schema stored in the file names the type. So the views are
    written and the schema ``to_arrow()`` gives is stored (:func:`_open_writer`): the files are byte for
    byte those written from ``to_arrow()`` (tests/test_parquet_concat.py). Any column whose type is
    not such a view, or not the same as ``to_arrow()``'s, takes the copying conversion instead.
    """
    from polars import CompatLevel

    table = frame.to_arrow(compat_level=CompatLevel.newest())
    stored = frame.head(0).to_arrow().schema
    for have, want in zip(table.schema, stored, strict=True):
        same = have.type == want.type or _VIEWS.get(str(have.type)) == str(want.type)
        if not same or have.name != want.name or have.nullable != want.nullable:
            return frame.to_arrow()
    if table.schema.equals(stored):
        return table
    import base64

    return table.replace_schema_metadata({_STORED: base64.b64encode(stored.serialize().to_pybytes())})


def _dictionary_names(names: list[str]) -> list[str]:
    """The columns both writers dictionary-encode (the parts' and the final tables')."""
    return [n for n in names if n not in _ROW_VALUED and n != "row"]


#: rows of a column compared with its first before all of them are (:func:`_constant`)
_SAMPLE_ROWS = 1024


def _constant(series: pl.Series) -> bool:
    """One value on every row, no null. The ends are compared first (most columns stop there),
    then every ``len / 1024``-th row: a chunk's alert kinds, missing and not-assessed lists agree
    at both ends and mid-way but not everywhere (~1.5 ms each to find out row by row; 1,024 rows
    find it at once). Only a column that passes both is compared row by row."""
    if series.dtype != pl.String or series.len() == 0 or series.null_count():
        return False
    first = series[0]
    if not (series[-1] == first and series[series.len() // 2] == first):
        return False
    sample = series.gather_every(max(1, series.len() // _SAMPLE_ROWS))
    return bool((sample == first).all() and (series == first).all())


def _same_views(column: Any) -> bool:
    """``column`` (Arrow, of :func:`_as_arrow`) is a string-view column without nulls whose rows all
    hold the very same 16-byte view (in each chunk; the chunks' first strings equal): one string.

    Why: a chunk's pack id, version and hash and its source are polars literals, kept as one value
    until asked for; ``frame[name]`` made each a column of 510,000 strings (~3 ms) only to compare
    every row with the first (a ``memcmp`` per row) — 15-20 ms of a chunk's ``PartStore.write``.
    The Arrow table already holds them, as views: a literal repeated is one view (length, prefix,
    buffer, offset) over and over, so the views buffer equals itself shifted by one view (one
    ``memcmp``, ~0.7 ms). Equal views are equal strings; unequal views prove nothing (the same text
    may be stored twice), so False only sends the caller to the row-by-row :func:`_constant`.
    """
    if str(column.type) != "string_view" or len(column) == 0 or column.null_count:
        return False
    firsts = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        size = 16 * len(chunk)
        views = chunk.buffers()[1].slice(16 * chunk.offset, size)
        if not views.slice(16).equals(views.slice(0, size - 16)):
            return False
        firsts.append(chunk[0].as_py())
    return bool(firsts) and all(f == firsts[0] for f in firsts)


def _with_constant_dictionaries(frame: pl.DataFrame, table: Any) -> Any:
    """``table`` (``_as_arrow(frame)``) with its constant dictionary columns handed to the writer
    already dictionary-encoded: one value and an index of zeros.

    Why: the writer hashes every row of a dictionary column and takes min/max statistics over
    every row; given the dictionary it does neither (the statistics come from the one value). A
    record-table chunk's pack id, version and hash and its source are such columns — four of the
    alert table's thirteen dictionary columns, ~10 % of its encoding CPU. The pages are the same
    (the writer's own dictionary holds that value at index 0 too) and the Arrow schema stored is
    ``to_arrow()``'s, so the file is byte for byte the same (tests/test_record_table_parts.py).
    """
    import pyarrow as pa

    names = [
        n
        for n in _dictionary_names(frame.columns)
        if _same_views(table.column(n)) or _constant(frame[n])  # the views first: see _same_views
    ]
    if not names:
        return table
    if _STORED not in (table.schema.metadata or {}):  # the schema to store is to_arrow()'s
        import base64

        stored = base64.b64encode(frame.head(0).to_arrow().schema.serialize().to_pybytes())
        table = table.replace_schema_metadata({_STORED: stored})
    # a zeroed buffer (calloc: no pass writing 510,000 zeros, as pa.repeat made; ~1 ms a chunk)
    zeros = pa.Array.from_buffers(pa.int32(), frame.height, [None, pa.py_buffer(bytes(4 * frame.height))])
    for name in names:
        # the Arrow table's first value, not frame[name]'s: that would spell the literal out again
        value = pa.array([table.column(name)[0].as_py()], pa.large_string())
        column = pa.DictionaryArray.from_arrays(zeros, value)
        index = table.schema.get_field_index(name)
        field = pa.field(name, column.type, table.schema.field(index).nullable)
        table = table.set_column(index, field, column)
    return table


def _open_writer(where: Any, schema: Any, **options: Any) -> Any:
    """A ``ParquetWriter`` that stores the Arrow schema :func:`_as_arrow` put in ``schema``'s
    metadata, if any, instead of ``schema`` itself (the views it writes are read back as before)."""
    import pyarrow.parquet as pq  # only here: the CLI starts without it

    stored = (schema.metadata or {}).get(_STORED)
    if stored is None:
        return pq.ParquetWriter(where, schema, **options)
    writer = pq.ParquetWriter(where, schema, store_schema=False, **options)
    writer.add_key_value_metadata({_STORED.decode(): stored.decode()})
    return writer


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


#: every character of _FORMULA_START sorts before this one (a string starting with one is less)
_ABOVE_FORMULA_START = "A"


def _neutral(name: str) -> pl.Expr:
    """The column ``name`` with a leading ``'`` where it starts as a formula would."""
    return (
        pl.when(pl.col(name).str.contains(_FORMULA_START))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
    )


def _neutralised(frame: pl.LazyFrame) -> pl.LazyFrame:
    """CSV cells that a spreadsheet would run as a formula (``= + - @``, tab, CR first) get a
    leading ``'`` (red-team L7). Parquet stays raw."""
    strings = [name for name, dtype in frame.collect_schema().items() if dtype == pl.String]
    return frame.with_columns(_neutral(name) for name in strings)


def _neutralised_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """:func:`_neutralised` of a frame in memory: the same cells, rewritten only in the columns
    that can hold such a cell.

    Why: the formula test and the rewrite of every string column cost ~0.14 CPU-s per 340,000
    alert rows, almost always to change nothing. A cell that starts as a formula is non-empty and
    less than ``"A"`` (its first byte is below it); one comparison per cell over all the columns
    (a seventh of that cost) finds the columns that may hold one, and only those are rewritten —
    with the very expression the lazy path uses (tests/test_record_table_parts.py).
    """
    strings = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if not strings or frame.height == 0:
        return frame
    maybe = frame.select(
        ((pl.col(n) < _ABOVE_FORMULA_START) & (pl.col(n) != "")).any().alias(n) for n in strings
    ).row(0)
    candidates = [n for n, m in zip(strings, maybe, strict=True) if m]
    return frame.with_columns(_neutral(n) for n in candidates) if candidates else frame


class _Appended:
    """The final alerts and patients tables of a serial run, made from its parts without re-encoding.

    Why: the final tables used to be encoded a second time, chunk by chunk, beside the parts (the
    merge before that re-read and re-encoded every part); the Parquet encoding of the alert texts
    was a fifth of a record-table run's CPU. Now a serial run writes these two parts in the final
    tables' encoding (:func:`_parquet_writer`) and their row groups are copied, as bytes, into
    ``.parts/final.NAME.parquet`` as each chunk's parts are written (on the writer thread, while
    the next chunk is evaluated: :class:`~cds_engine.batch.parquet_concat.ParquetAppender`); the
    merge writes only the footer — the same file, byte for byte, as appending each chunk to one
    ``ParquetWriter`` gave. They are used only when they hold exactly the chunks of the run in
    order (no chunk resumed, nothing failed, one schema); otherwise they are dropped and the merge
    reads the parts as before — the same tables either way (tests/test_batch_parts.py).
    """

    def __init__(self, folder: Path, csv: bool = False) -> None:
        from cds_engine.batch.parquet_concat import ParquetAppender

        self.folder = folder
        self.chunks: list[str] = []
        self.broken = False
        self.csv_path = folder / "final.alerts.csv"
        for path in (*(self.path(name) for name in _APPENDED), self.csv_path):
            path.unlink(missing_ok=True)  # a killed run's partial file is never reused
        self.appenders = {name: ParquetAppender(self.path(name)) for name in _APPENDED}
        self.csv = csv  # alerts.csv is built too, chunk by chunk (False once that fails)

    def path(self, name: str) -> Path:
        return self.folder / f"final.{name}.parquet"

    def add(self, chunk_id: str, files: dict[str, Path], csv_added: bool = False) -> None:
        """One chunk's part files (``name`` -> path, in the final encoding), in chunk order;
        ``csv_added``: :meth:`add_csv` appended its rows to alerts.csv first."""
        from cds_engine.batch.parquet_concat import NotConcatenable

        if self.broken:
            return
        if set(files) != set(_APPENDED):
            self.drop()
            return
        try:
            for name in _APPENDED:
                self.appenders[name].add(files[name])
        except (NotConcatenable, OSError):  # any doubt: the merge builds the tables from the parts
            self.drop()
            return
        if self.csv and not csv_added:  # a chunk without its rows: the merge writes alerts.csv
            self._drop_csv()
        self.chunks.append(chunk_id)

    def add_csv(self, alerts: pl.DataFrame) -> None:
        """The next chunk's rows of alerts.csv, neutralised, appended (the header with the first);
        called before :meth:`add` of that chunk. Never raises: a failure drops alerts.csv here
        (the merge then writes it from alerts.parquet), so it may run on a thread of its own.

        Why here: alerts.csv used to be written after the last chunk, from alerts.parquet read back
        (decoded) — several seconds of a 1 M-row run in which nothing else ran. Written from the
        rows in memory as each chunk's parts are, it overlaps the evaluation (and the encoding of
        the chunk's Parquet parts: PartStore.write). The same bytes as the merge's sink_csv of the
        whole table (tests/test_record_table_parts.py).
        """
        if self.broken or not self.csv:
            return
        header = not self.chunks
        try:
            with self.csv_path.open("wb" if header else "ab") as fh:
                _neutralised_frame(alerts).write_csv(fh, include_header=header)
                fh.flush()
                os.fdatasync(fh.fileno())
        except Exception:  # any doubt: the merge writes alerts.csv the ordinary way
            self._drop_csv()

    def _drop_csv(self) -> None:
        self.csv = False
        self.csv_path.unlink(missing_ok=True)

    def finish(self, chunk_ids: list[str]) -> bool:
        """Close the files; True when they are the complete tables of ``chunk_ids``."""
        from cds_engine.batch.parquet_concat import NotConcatenable

        if self.broken or self.chunks != chunk_ids or not chunk_ids:
            self.drop()
            return False
        try:
            for name in _APPENDED:
                self.appenders[name].finish()
        except (NotConcatenable, OSError):
            self.drop()
            return False
        return True

    def drop(self) -> None:
        self.broken = True
        for name in _APPENDED:
            self.appenders[name].abandon()
            self.path(name).unlink(missing_ok=True)
        self._drop_csv()


class PartStore:
    """The ``.parts`` folder of one output directory."""

    def __init__(
        self, out: Path, fingerprint: str, params: dict[str, Any], formats: tuple[str, ...] = ()
    ) -> None:
        self.out = out
        self.formats = formats  # the alert tables asked for (alerts.csv is built as the chunks come)
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
        self.appended = _Appended(self.dir, csv="csv" in self.formats)

    def done(self, chunk_id: str) -> bool:
        return (self.dir / f"{_safe(chunk_id)}.done").exists()

    def manifest(self, chunk_id: str) -> dict[str, Any]:
        return json.loads((self.dir / f"{_safe(chunk_id)}.done").read_text(encoding="utf-8"))

    def write(self, result: ChunkResult) -> None:
        """The chunk's part files and manifest; a serial run's final tables grow by the chunk.

        alerts.csv's rows (serial runs asked for csv) are written on a thread of their own meanwhile:
        both writers run mostly without the GIL, so the last chunk — written while nothing else
        runs — takes the longer of the two, not their sum.
        """
        base = self.dir / _safe(result.chunk_id)
        appended = self.appended
        csv_rows = None
        if appended is not None and appended.csv and not appended.broken:
            csv_rows = threading.Thread(target=appended.add_csv, args=(result.alerts,), name="cds-csv")
            csv_rows.start()
        try:
            self._write_parts(result, base)
        finally:
            if csv_rows is not None:
                csv_rows.join()
        if appended is not None:
            appended.add(
                result.chunk_id,
                {n: base.with_name(f"{base.name}.{n}.{_PART}") for n in _APPENDED},
                csv_added=csv_rows is not None,
            )

    def _write_parts(self, result: ChunkResult, base: Path) -> None:
        tables = {  # without copying the texts (_as_arrow): the same files as from to_arrow()
            name: _with_constant_dictionaries(frame, _as_arrow(frame))
            for name, frame in (
                ("alerts", result.alerts),
                ("patients", result.patients),
                ("errors", result.errors),
            )
        }
        for name, table in tables.items():
            tmp = base.with_name(f"{base.name}.{name}.{_PART}.tmp")
            if self.appended is not None and name in _APPENDED:  # encoded once: see _Appended
                with _parquet_writer(tmp, table.schema) as writer:
                    writer.write_table(table)
            else:
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
        built: set[str] = set()  # alert tables already written as the chunks came
        if self.appended is not None and self.appended.finish(chunk_ids):
            for name in _APPENDED:
                _replace(self.appended.path(name), self.out / f"{name}.parquet")
            if self.appended.csv and "csv" in formats:
                _replace(self.appended.csv_path, self.out / "alerts.csv")
                built.add("csv")
        else:
            self._sink(self._scan(chunk_ids, "alerts", BATCH_ALERT_SCHEMA), "alerts.parquet")
            self._sink(self._scan(chunk_ids, "patients", PATIENT_SCHEMA), "patients.parquet")
        errors = self._scan(chunk_ids, "errors", ERROR_SCHEMA)
        write_formats(self.out, tuple(f for f in formats if f not in built), self._sink)
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
