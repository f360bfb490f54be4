"""Flat CSV/Parquet patient tables → :class:`PatientFacts`: one row per patient, columns are fact fields.

Why a table format of its own: pharmacy and quality teams screen extracts from a warehouse,
not FHIR. Each column is a field of the fact model (flattened: ``egfr`` + ``egfr_date`` for
``renal.egfr``), so a row means exactly what the equivalent :class:`PatientFacts` means and
goes through the same :func:`cds_engine.facts.derive.derive` — tests check that a CSV row and
the equivalent facts give the same alerts. :data:`COLUMNS` is the reference (``docs/batch.md``
prints it).

Reading rules, the same for CSV and Parquet:

* Only ``patient_id`` is required; every other column is optional and an empty cell is
  *unknown* (never "no" or zero).
* A value that does not parse as its column's type (``egfr = "abc"``) rejects the row, with
  the column named: the row cannot be read as the extract intended.
* A value that parses but is impossible (weight 0, birth date after the as-of date, an unknown
  sex code) is dropped and the row is still screened; the gap then shows as a cannot-assess
  alert, and the patient's ``notes`` say what was dropped.
* Lists (conditions, medicines, allergies) are ``;``-separated in CSV, or Parquet lists of
  strings. A coded entry is ``system|code`` or ``system|code|display`` (system URI or alias:
  ``rxnorm``, ``snomed``, ``loinc``, ``icd10cm``); an entry without ``|`` is free text, which the
  vocabulary's name fallback classifies.
* Dates are ISO ``YYYY-MM-DD``; date-times ISO 8601, UTC when no offset is given.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl

from cds_engine.facts.model import (
    Allergy,
    Coding,
    Condition,
    Encounter,
    LabResult,
    Medication,
    Order,
    PatientFacts,
    Pump,
    Renal,
    Reproductive,
    TaperPlan,
    TherapyHistory,
)

__all__ = [
    "COLUMNS",
    "MONITORING_PREFIX",
    "TableColumn",
    "TableRowError",
    "clean_table",
    "csv_batches",
    "parse_coding",
    "row_to_facts",
]

ColumnType = Literal["string", "number", "bool", "date", "datetime", "codes", "code", "numbers", "strings"]
MONITORING_PREFIX = "monitoring."
LIST_SEPARATOR = ";"


@dataclass(frozen=True, slots=True)
class TableColumn:
    name: str
    type: ColumnType
    field: str  # the PatientFacts field it fills
    description: str
    lo: float | None = None  # smallest allowed value (inclusive unless lo_open)
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()


def _c(name: str, type_: ColumnType, field: str, description: str, **kw: Any) -> TableColumn:
    return TableColumn(name, type_, field, description, **kw)


_COMPARATORS = ("<", "<=", ">", ">=")
COLUMNS: dict[str, TableColumn] = {
    c.name: c
    for c in [
        _c(
            "patient_id",
            "string",
            "patient_id",
            "Opaque patient identifier (required; a row without one is rejected)",
        ),
        _c("as_of", "datetime", "as_of", "Evaluation moment for this row (default: --as-of)"),
        _c("deceased", "bool", "deceased", "Deceased patients are left out of the screening and counted"),
        _c("birth_date", "date", "birth_date", "Date of birth"),
        _c("age_years", "number", "age_years", "Age when no birth date is known", lo=0, hi=130),
        _c(
            "sex",
            "string",
            "sex",
            "female | male | other | unknown",
            choices=("female", "male", "other", "unknown"),
        ),
        _c("weight_kg", "number", "weight_kg", "Body weight (kg)", lo=0, lo_open=True, hi=700),
        _c("egfr", "number", "renal.egfr.value", "Latest eGFR (mL/min/1.73 m2); needs egfr_date"),
        _c(
            "egfr_comparator",
            "string",
            "renal.egfr.comparator",
            "'>' for a result reported as '>60' (kept as a bound)",
            choices=_COMPARATORS,
        ),
        _c(
            "egfr_unit",
            "string",
            "renal.egfr.unit",
            "Unit as reported; a unit that is not mL/min… makes the eGFR unusable",
        ),
        _c("egfr_date", "datetime", "renal.egfr.date", "Date of the eGFR result"),
        _c("egfr_method", "string", "renal.egfr.method", "Equation or LOINC code"),
        _c("crcl", "number", "renal.crcl.value", "Creatinine clearance (mL/min); needs crcl_date"),
        _c(
            "crcl_comparator",
            "string",
            "renal.crcl.comparator",
            "Comparator of a bounded CrCl",
            choices=_COMPARATORS,
        ),
        _c("crcl_unit", "string", "renal.crcl.unit", "Unit as reported"),
        _c("crcl_date", "datetime", "renal.crcl.date", "Date of the CrCl"),
        _c(
            "dialysis",
            "string",
            "renal.dialysis",
            "Dialysis modality: none | HD | PD | CRRT | unspecified",
            choices=("none", "HD", "PD", "CRRT", "unspecified"),
        ),
        _c("dialysis_dependent", "bool", "renal.dialysis_dependent", "Dialysis dependence documented"),
        _c(
            "last_dialysis_procedure",
            "date",
            "renal.last_dialysis_procedure",
            "Date of the latest dialysis session",
        ),
        _c(
            "aki",
            "bool",
            "renal.aki",
            "Acute kidney injury now (lifts the renal band to at least moderate); a coded AKI in "
            "conditions has no date here and also counts",
        ),
        _c("pregnant", "bool", "reproductive.pregnant", "Pregnancy documented (never inferred from hCG)"),
        _c(
            "gestational_age_weeks",
            "number",
            "reproductive.gestational_age_weeks",
            "Gestational age (weeks)",
            lo=0,
        ),
        _c("lactating", "bool", "reproductive.lactating", "Breastfeeding documented"),
        _c(
            "taper_or_neonatal_plan_documented",
            "bool",
            "reproductive.taper_or_neonatal_plan_documented",
            "Taper-before-delivery or neonatal-team plan documented",
        ),
        _c(
            "maternal_exposure_at_delivery",
            "bool",
            "reproductive.maternal_exposure_at_delivery",
            "Neonate: mother took the pack's drug through delivery",
        ),
        _c("alcohol_use_current", "bool", "alcohol_use_current", "Current alcohol use documented"),
        _c("conditions", "codes", "conditions[active]", "Active conditions (codes or names)"),
        _c("resolved_conditions", "codes", "conditions[resolved]", "Past (resolved) conditions"),
        _c("allergies", "codes", "allergies[active]", "Active allergies (substance codes or names)"),
        _c(
            "medications",
            "codes",
            "medications[active, outpatient]",
            "Active medicines (product codes or names)",
        ),
        _c("home_medications", "codes", "medications[active, home]", "Active home medicines"),
        _c("inpatient_medications", "codes", "medications[active, inpatient]", "Active inpatient orders"),
        _c(
            "order_product",
            "code",
            "order.product",
            "The order under review (product code or name); empty: no order",
        ),
        _c("order_form", "string", "order.form", "tablet, solution, suspension, granules, injection …"),
        _c("order_route", "string", "order.route", "oral/PO, intrathecal/IT, iv, im, sc …"),
        _c("order_dose_amount", "number", "order.dose_amount", "Amount per administration", lo=0),
        _c("order_dose_unit", "string", "order.dose_unit", "mg, mcg, g, mL, tablet … (never guessed)"),
        _c(
            "order_doses_per_day",
            "number",
            "order.doses_per_day",
            "Administrations per 24 h",
            lo=0,
            lo_open=True,
        ),
        _c(
            "order_schedule",
            "numbers",
            "order.schedule",
            "Amounts of unequal scheduled doses in 24 h (';'-separated)",
        ),
        _c("order_prn", "bool", "order.prn", "As needed"),
        _c(
            "order_prn_max_doses_per_day",
            "number",
            "order.prn_max_doses_per_day",
            "PRN maximum doses per day",
            lo=0,
        ),
        _c(
            "order_concentration_mg_per_ml",
            "number",
            "order.concentration_mg_per_ml",
            "Stated strength of a liquid",
            lo=0,
            lo_open=True,
        ),
        _c(
            "order_excipient_groups",
            "strings",
            "order.excipient_groups",
            "Allergy groups of the product's excipients",
        ),
        _c("order_indication", "code", "order.indication", "Indication (code or name)"),
        _c(
            "order_indication_group",
            "string",
            "order.indication_group",
            "Indication group, when already known",
        ),
        _c(
            "order_action",
            "string",
            "order.action",
            "new | modify | continue | discontinue | hold (default new)",
            choices=("new", "modify", "continue", "discontinue", "hold"),
        ),
        _c("order_reason", "string", "order.reason", "Coded reason for stopping/holding"),
        _c(
            "order_taper_days",
            "number",
            "order.taper.duration_days",
            "Duration of the attached taper plan",
            lo=0,
        ),
        _c("order_taper_steps", "numbers", "order.taper.steps", "Daily doses (mg) of the taper steps"),
        _c("order_date", "datetime", "order.date", "When the order was written"),
        _c(
            "therapy_start",
            "date",
            "history.therapy_start",
            "Start of continuous therapy with the pack's drug",
        ),
        _c(
            "previous_daily_dose_mg",
            "number",
            "history.previous_daily_dose_mg",
            "Daily dose before this order",
            lo=0,
        ),
        _c(
            "previous_max_single_dose_mg",
            "number",
            "history.previous_max_single_dose_mg",
            "Largest single dose before this order",
            lo=0,
        ),
        _c("last_dose_change", "date", "history.last_dose_change", "Date of the last dose change"),
        _c("stable_dose_since", "date", "history.stable_dose_since", "Date the current dose became stable"),
        _c("last_exposure", "datetime", "history.last_exposure", "Last time the drug was active or given"),
        _c("last_dose_time", "datetime", "history.last_dose_time", "Last documented administration"),
        _c("pump_present", "bool", "pump.present", "An implanted drug pump is documented"),
        _c("pump_next_refill_date", "date", "pump.next_refill_date", "Next pump refill date"),
        _c("pump_alarm_active", "bool", "pump.alarm_active", "The pump reports an alarm"),
        _c(
            "inpatient",
            "bool",
            "encounter.inpatient",
            "Current encounter is an inpatient stay (default false)",
        ),
        _c("admission_time", "datetime", "encounter.admission_time", "Admission date-time"),
        _c("npo", "bool", "encounter.npo", "Nil by mouth"),
    ]
}
MONITORING_COLUMN = TableColumn(
    f"{MONITORING_PREFIX}<item>",
    "date",
    "monitoring[<item>]",
    "Last date a monitoring item was done (lft, glucose, neurology_review, "
    "efficacy_assessment …): one column per item",
)

_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


class TableRowError(ValueError):
    """A row that cannot be read (the message names the column)."""


def column_spec(name: str) -> TableColumn | None:
    if name in COLUMNS:
        return COLUMNS[name]
    if name.startswith(MONITORING_PREFIX) and len(name) > len(MONITORING_PREFIX):
        return MONITORING_COLUMN
    return None


# ── reading ─────────────────────────────────────────────────────────────────────────────────


def csv_batches(
    path: Path, rows_per_batch: int
) -> Iterator[tuple[list[str], list[tuple[int, list[str]]], list[tuple[int, str]]]]:
    """Stream a CSV file as (header, [(line, cells)], [(line, error)]) batches.

    The standard library reader is used on purpose: it reports the line of a malformed row
    (wrong number of cells, a stray quote) so that one row can be rejected and the rest read.
    """
    with open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            return
        except csv.Error as exc:
            yield [], [], [(1, f"unreadable header: {exc}")]
            return
        rows: list[tuple[int, list[str]]] = []
        errors: list[tuple[int, str]] = []
        while True:
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                errors.append((line, f"row does not parse as CSV: {exc}"))
                continue
            line = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                errors.append((line, f"row has {len(cells)} cells, the header has {len(header)}"))
            else:
                rows.append((line, cells))
            if len(rows) + len(errors) >= rows_per_batch:
                yield header, rows, errors
                rows, errors = [], []
        if rows or errors:
            yield header, rows, errors


def open_text(path: Path) -> io.TextIOWrapper:
    import gzip

    raw = path.open("rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8-sig", newline="")  # type: ignore[arg-type]
    raw.seek(0)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def frame_from_cells(header: list[str], rows: list[tuple[int, list[str]]]) -> pl.DataFrame:
    """String columns (plus the source line) from CSV cells."""
    data: dict[str, list[Any]] = {"__line": [line for line, _ in rows]}
    for j, name in enumerate(header):
        data[name] = [cells[j] for _, cells in rows]
    return pl.DataFrame(data, schema={"__line": pl.Int64, **dict.fromkeys(header, pl.String)})


# ── cleaning: one typed frame, rejected rows, dropped values ────────────────────────────────


def _parse_bool(col: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    text = col.cast(pl.String).str.strip_chars().str.to_lowercase()
    value = pl.when(text.is_in(list(_TRUE))).then(True).when(text.is_in(list(_FALSE))).then(False)
    bad = text.is_not_null() & (text != "") & value.is_null()
    return value.cast(pl.Boolean), bad


# the days and instants Python's date and datetime (the fact model's types) can hold
_FIRST_DAY, _LAST_DAY = date.min, date.max
_FIRST_INSTANT, _LAST_INSTANT = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_PHYSICAL_RANGE = {  # the same range as stored integers: days, or units since 1970 UTC
    "d": (_FIRST_DAY.toordinal() - _EPOCH_DAY, _LAST_DAY.toordinal() - _EPOCH_DAY),
    "ms": (-62_135_596_800_000, 253_402_300_799_999),
    "us": (-62_135_596_800_000_000, 253_402_300_799_999_999),
}


def _bounds(dtype: pl.DataType) -> tuple[int, int] | None:
    """Python's range as the stored integers of ``dtype`` (None: no value can lie outside)."""
    return _PHYSICAL_RANGE.get(dtype.time_unit if isinstance(dtype, pl.Datetime) else "d")


def _outside(frame: pl.DataFrame, names: list[str]) -> set[str]:
    """The Date/Datetime columns of ``names`` holding a value outside Python's range.

    Why a minimum and a maximum (one query for all the columns): the usual file has no such
    value and pays no per-row test; only a column that has one is masked and tested row by row.
    """
    schema = frame.schema  # built anew at each access
    temporal = [n for n in names if isinstance(schema[n], pl.Datetime | pl.Date)]
    ranged = [(n, b) for n in temporal if (b := _bounds(schema[n])) is not None]
    if not ranged:
        return set()
    ends = frame.select(
        *(pl.col(n).to_physical().min().alias(f"__lo.{n}") for n, _ in ranged),
        *(pl.col(n).to_physical().max().alias(f"__hi.{n}") for n, _ in ranged),
    ).row(0, named=True)
    low = {n for n, (lo, _hi) in ranged if ends[f"__lo.{n}"] is not None and ends[f"__lo.{n}"] < lo}
    return low | {n for n, (_lo, hi) in ranged if ends[f"__hi.{n}"] is not None and ends[f"__hi.{n}"] > hi}


def _may_leave(dtype: pl.DataType) -> bool:
    """Whether a value cleaned from ``dtype`` may lie outside Python's range when its input did
    not: text (``0000-01-01`` parses) and a local date-time near the ends (its UTC day differs)."""
    if isinstance(dtype, pl.Datetime):
        return dtype.time_zone not in (None, "UTC")
    return dtype != pl.Date()


def _held(col: pl.Expr, dtype: pl.DataType, all_held: bool) -> tuple[pl.Expr, pl.Expr]:
    """A typed Date/Datetime input column with the values Python cannot hold made null, and
    their flag (the row is rejected as "not a valid date").

    Why: a Parquet column can hold a day beyond chrono's range (an Int32 -2**31 cast to Date);
    converting it (a time zone, ``dt.date``, a cast to text) panics and aborted the whole screen.
    The stored integers are compared with the range, only in a column holding such a value
    (``all_held`` false); a local date-time near the ends may still land outside the range in
    UTC, which :func:`_outside_python` checks on the converted value.
    """
    bounds = _bounds(dtype)
    if all_held or bounds is None:
        return col, pl.lit(False)
    inside = col.to_physical().is_between(*bounds)
    return pl.when(inside).then(col), col.is_not_null() & ~inside


def _outside_python(value: pl.Expr, kind: str) -> pl.Expr:
    """A cleaned date or date-time outside Python's years 1..9999: not a valid date.

    Why: polars parses ``0000-01-01`` (and ``9999-12-31T23:00-05:00`` is year 10000 in UTC),
    but the fact model's date cannot hold it: the row-by-row path raised "year 0 is out of
    range" and aborted the whole screen, while the column-wise path took the patient to be
    2,024 years old. The row is rejected with the reason of an unreadable date (``2000-02-30``).
    Tested on the cleaned column (the parse of a date-time is not run again for it).
    """
    first, last = (_FIRST_DAY, _LAST_DAY) if kind == "date" else (_FIRST_INSTANT, _LAST_INSTANT)
    return ((value < pl.lit(first)) | (value > pl.lit(last))).fill_null(False)


def _parse_date(col: pl.Expr, dtype: pl.DataType, all_held: bool = True) -> tuple[pl.Expr, pl.Expr]:
    if dtype == pl.Date():
        return _held(col, dtype, all_held)
    if isinstance(dtype, pl.Datetime):
        held, bad = _held(col, dtype, all_held)
        return held.cast(pl.Datetime("us", "UTC") if dtype.time_zone is None else dtype).dt.date(), bad
    text = col.cast(pl.String).str.strip_chars()
    value = text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    bad = text.is_not_null() & (text != "") & value.is_null()
    return value, bad


def _parse_datetime(col: pl.Expr, dtype: pl.DataType, all_held: bool = True) -> tuple[pl.Expr, pl.Expr]:
    if isinstance(dtype, pl.Datetime):
        held, bad = _held(col, dtype, all_held)
        value = (
            held.dt.replace_time_zone("UTC") if dtype.time_zone is None else held.dt.convert_time_zone("UTC")
        )
        return value.cast(pl.Datetime("us", "UTC")), bad
    if dtype == pl.Date():
        held, bad = _held(col, dtype, all_held)
        return held.cast(pl.Datetime("us")).dt.replace_time_zone("UTC"), bad
    text = col.cast(pl.String).str.strip_chars().str.replace(r"Z$", "+00:00").str.replace(" ", "T")
    with_tz = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", strict=False, time_unit="us", time_zone="UTC")
    with_tz_s = text.str.to_datetime("%Y-%m-%dT%H:%M%:z", strict=False, time_unit="us", time_zone="UTC")
    naive = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us")
    naive_m = text.str.to_datetime("%Y-%m-%dT%H:%M", strict=False, time_unit="us")
    only_date = text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))
    value = pl.coalesce(
        with_tz, with_tz_s, pl.coalesce(naive, naive_m, only_date).dt.replace_time_zone("UTC")
    )
    bad = text.is_not_null() & (text != "") & value.is_null()
    return value, bad


def _parse_number(col: pl.Expr, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    # "nan"/"inf" parse as floats but are no value: the row is rejected like "abc" (a NaN eGFR
    # would otherwise crash the derivation of the whole chunk)
    if dtype.is_numeric():
        value = col.cast(pl.Float64)
        return value, ~value.is_finite().fill_null(True)
    text = col.cast(pl.String).str.strip_chars()
    value = text.cast(pl.Float64, strict=False)
    bad = text.is_not_null() & (text != "") & (value.is_null() | ~value.is_finite().fill_null(True))
    return value, bad


def _parse_list(col: pl.Expr, dtype: pl.DataType, numbers: bool) -> tuple[pl.Expr, pl.Expr]:
    if isinstance(dtype, pl.List):
        items = col.list.eval(pl.element().cast(pl.String).str.strip_chars()).list.eval(
            pl.element().filter(pl.element() != "")
        )
    else:
        items = (
            col.cast(pl.String)
            .str.split(LIST_SEPARATOR)
            .list.eval(pl.element().str.strip_chars())
            .list.eval(pl.element().filter(pl.element() != ""))
        )
    if not numbers:
        return items, pl.lit(False)
    values = items.list.eval(pl.element().cast(pl.Float64, strict=False))
    bad = (values.list.eval(pl.element().is_null()).list.any()).fill_null(False)
    return values, bad


def clean_table(frame: pl.DataFrame, as_of: datetime) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """(typed rows, rejected rows with reason, ignored columns). ``frame`` must hold ``__line``.

    The typed frame keeps ``__line`` and adds ``__notes`` (values dropped as impossible).

    Two passes: the values with a flag per check first, then the reasons and notes of the columns
    where a flag is set. Why: a reason or a note is a text built for every row (``when`` computes
    both branches) and then thrown away on nearly all of them — a column with a range or a choice
    check cost three times its parsing. The texts, their order and the values are the same.
    """
    ignored = [c for c in frame.columns if c != "__line" and column_spec(c) is None]
    unheld = _outside(frame, [c for c in frame.columns if c not in ignored and c != "__line"])
    values: list[pl.Expr] = []
    flags: list[pl.Expr] = []
    odd_flags: list[pl.Expr] = []
    checks: list[tuple[str, str, str, str | None]] = []  # name, type, its bad flag, its odd flag
    schema = frame.schema
    for name in frame.columns:
        spec = column_spec(name)
        if spec is None:
            continue
        col, dtype = pl.col(name), schema[name]
        if spec.type == "string" or spec.type == "code":
            # the stripped text, null when empty: one strip and one pass (``when(text != "")`` stripped
            # the column twice, an eager select shares no subexpression)
            value = col.cast(pl.String).str.strip_chars().replace("", None)
            bad: pl.Expr = pl.lit(False)
        elif spec.type == "number":
            value, bad = _parse_number(col, dtype)
        elif spec.type == "bool":
            value, bad = _parse_bool(col) if dtype != pl.Boolean() else (col, pl.lit(False))
        elif spec.type == "date":
            value, bad = _parse_date(col, dtype, name not in unheld)
        elif spec.type == "datetime":
            value, bad = _parse_datetime(col, dtype, name not in unheld)
        else:
            value, bad = _parse_list(col, dtype, numbers=spec.type == "numbers")
        i = len(checks)
        flags.append(bad.alias(f"__bad{i}"))
        # tested on the value once it is a column (not parsed a second time for the test)
        odd = _impossible(spec, pl.col(name), name, as_of)
        if odd is not None:
            odd_flags.append(odd.alias(f"__odd{i}"))
        checks.append((name, spec.type, f"__bad{i}", f"__odd{i}" if odd is not None else None))
        values.append(value.alias(name))
    staged = frame.select(pl.col("__line"), *values, *flags)
    # a date Python cannot hold is a bad value: tested on the cleaned column, with the odd values,
    # only in a column whose smallest or largest value lies outside (text, or a local date-time
    # near the ends; a typed day within range stays within it). A per-row test of every date
    # column cost ~10 % of the cleaning of a typed Parquet chunk
    converted = [n for n, kind, _b, _o in checks if kind in ("date", "datetime") and _may_leave(schema[n])]
    beyond = _outside(staged, converted)
    ranges = [
        (pl.col(bad) | _outside_python(pl.col(name), kind)).alias(bad)
        for name, kind, bad, _odd in checks
        if name in beyond
    ]
    if odd_flags or ranges:
        staged = staged.with_columns(*odd_flags, *ranges)
    names = [f.meta.output_name() for f in (*flags, *odd_flags)]
    raised = staged.select(pl.col(n).any() for n in names).row(0, named=True) if names else {}
    reasons: list[pl.Expr] = []
    notes: list[pl.Expr] = []
    typed_values: list[pl.Expr] = []
    raw: list[pl.Series] = []  # the input text of the columns a reason quotes
    for name, kind, bad_flag, odd_flag in checks:
        value = pl.col(name)
        if raised.get(bad_flag):
            raw.append(_quotable(frame[name]).alias(f"__raw.{name}"))
            reasons.append(
                pl.when(pl.col(bad_flag)).then(
                    pl.lit(f"column {name}: ")
                    + pl.col(f"__raw.{name}").cast(pl.String).str.slice(0, 40)
                    + pl.lit(f" is not a valid {kind}")
                )
            )
        if odd_flag is not None and raised.get(odd_flag):
            # a list as its cells are written (a list does not cast to a string: that raised for
            # every table with such a column, before any row was cleaned)
            shown = (
                value.list.eval(pl.element().cast(pl.String)).list.join(LIST_SEPARATOR)
                if isinstance(staged.schema[name], pl.List)
                else value.cast(pl.String)
            )
            note = pl.lit(f"{name} dropped (") + shown + pl.lit(")")
            notes.append(pl.when(pl.col(odd_flag)).then(note))
            value = pl.when(pl.col(odd_flag)).then(pl.lit(None)).otherwise(value)
        typed_values.append(value.alias(name))
    typed = (staged.hstack(raw) if raw else staged).select(
        pl.col("__line"),
        *typed_values,
        _joined_or_null(reasons).alias("__error"),
        _joined_or_null(notes).alias("__notes"),
    )
    if "patient_id" not in typed.columns:
        typed = typed.with_columns(pl.lit(None, pl.String).alias("patient_id"))
    typed = typed.with_columns(
        pl.when(pl.col("patient_id").is_null())
        .then(pl.lit("no patient_id: the row names no patient"))
        .otherwise(pl.col("__error"))
        .alias("__error")
    )
    rejected = typed.filter(pl.col("__error").is_not_null()).select("__line", "patient_id", "__error")
    return typed.filter(pl.col("__error").is_null()).drop("__error"), rejected, ignored


def _quotable(column: pl.Series) -> pl.Series:
    """The column as a reason can quote it: a day polars cannot write as text shows its number.

    Why: casting a Date/Datetime column with a value beyond chrono's range to text panics (for the
    whole column, not the one row), so the reason for that row would abort the screen instead.
    """
    if not isinstance(column.dtype, pl.Datetime | pl.Date):
        return column
    return column.to_frame().select(
        pl.when(pl.first().dt.year().is_not_null())
        .then(pl.first())
        .cast(pl.String)
        .fill_null(pl.first().to_physical().cast(pl.String) + pl.lit(" (out of range)"))
    )[:, 0]


def _joined_or_null(parts: list[pl.Expr]) -> pl.Expr:
    if not parts:
        return pl.lit(None, pl.String)
    joined = pl.concat_str(parts, separator="; ", ignore_nulls=True)
    return pl.when(joined != "").then(joined)


def _impossible(spec: TableColumn, value: pl.Expr, name: str, as_of: datetime) -> pl.Expr | None:
    """Values that parse but cannot be true: dropped (the model would refuse them)."""
    conds: list[pl.Expr] = []
    if spec.lo is not None:
        conds.append(value <= spec.lo if spec.lo_open else value < spec.lo)
    if spec.hi is not None:
        conds.append(value > spec.hi)
    if spec.choices:
        conds.append(~value.is_in(list(spec.choices)))
    if name == "birth_date":
        conds.append(value > pl.lit(as_of.date()))
    if spec.type == "numbers":
        conds.append(value.list.eval(pl.element() < 0).list.any())
    if not conds:
        return None
    return pl.any_horizontal(conds).fill_null(False)


# ── one row → PatientFacts (the exact reference path) ───────────────────────────────────────


def parse_coding(text: str | None) -> Coding | None:
    """``system|code[|display]`` or free text."""
    if text is None or not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).split("|")]
    if len(parts) == 1:
        return Coding(display=parts[0])
    system, code = parts[0] or None, parts[1] or None
    display = "|".join(parts[2:]) or None
    return Coding(system=system, code=code, display=display)


def _codes(row: Mapping[str, Any], name: str) -> list[Coding]:
    return [c for c in (parse_coding(t) for t in (row.get(name) or [])) if c is not None]


def _lab(row: Mapping[str, Any], name: str) -> LabResult | None:
    value, when = row.get(name), row.get(f"{name}_date")
    if value is None or when is None:
        return None
    return LabResult(
        value=value,
        comparator=row.get(f"{name}_comparator"),
        unit=row.get(f"{name}_unit"),
        date=when,
        method=row.get(f"{name}_method"),
    )


def _day(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    return value


def row_to_facts(row: Mapping[str, Any], as_of: datetime, order: Order | None = None) -> PatientFacts:
    """The :class:`PatientFacts` a cleaned row means (``order`` replaces the row's own order)."""
    moment = row.get("as_of") or as_of
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    conditions = [Condition(code=c, clinical_status="active") for c in _codes(row, "conditions")]
    conditions += [Condition(code=c, clinical_status="resolved") for c in _codes(row, "resolved_conditions")]
    allergies = [Allergy(substance=c) for c in _codes(row, "allergies")]
    meds = [Medication(product=c, setting="outpatient") for c in _codes(row, "medications")]
    meds += [Medication(product=c, setting="home") for c in _codes(row, "home_medications")]
    meds += [Medication(product=c, setting="inpatient") for c in _codes(row, "inpatient_medications")]
    if order is None:
        order = _row_order(row)
    monitoring = {
        k[len(MONITORING_PREFIX) :]: _day(v)
        for k, v in row.items()
        if k.startswith(MONITORING_PREFIX) and v is not None
    }
    return PatientFacts(
        as_of=moment,
        patient_id=row.get("patient_id"),
        birth_date=row.get("birth_date"),
        age_years=row.get("age_years") if row.get("birth_date") is None else None,
        sex=row.get("sex"),
        weight_kg=row.get("weight_kg"),
        deceased=bool(row.get("deceased")),
        renal=Renal(
            egfr=_lab(row, "egfr"),
            crcl=_lab(row, "crcl"),
            dialysis=row.get("dialysis"),
            dialysis_dependent=row.get("dialysis_dependent"),
            last_dialysis_procedure=row.get("last_dialysis_procedure"),
            aki=row.get("aki"),
        ),
        reproductive=Reproductive(
            pregnant=row.get("pregnant"),
            gestational_age_weeks=row.get("gestational_age_weeks"),
            lactating=row.get("lactating"),
            taper_or_neonatal_plan_documented=row.get("taper_or_neonatal_plan_documented"),
            maternal_exposure_at_delivery=row.get("maternal_exposure_at_delivery"),
        ),
        allergies=allergies,
        conditions=conditions,
        medications=meds,
        alcohol_use_current=row.get("alcohol_use_current"),
        order=order,
        history=TherapyHistory(
            therapy_start=row.get("therapy_start"),
            previous_daily_dose_mg=row.get("previous_daily_dose_mg"),
            previous_max_single_dose_mg=row.get("previous_max_single_dose_mg"),
            last_dose_change=row.get("last_dose_change"),
            stable_dose_since=row.get("stable_dose_since"),
            last_exposure=row.get("last_exposure"),
            last_dose_time=row.get("last_dose_time"),
        ),
        monitoring=monitoring,
        pump=Pump(
            present=row.get("pump_present"),
            next_refill_date=row.get("pump_next_refill_date"),
            alarm_active=row.get("pump_alarm_active"),
        ),
        encounter=Encounter(
            inpatient=bool(row.get("inpatient")), admission_time=row.get("admission_time"), npo=row.get("npo")
        ),
    )


def _row_order(row: Mapping[str, Any]) -> Order | None:
    product = parse_coding(row.get("order_product"))
    if product is None:
        return None
    taper = None
    if row.get("order_taper_days") is not None or row.get("order_taper_steps"):
        taper = TaperPlan(
            duration_days=row.get("order_taper_days"), steps=list(row.get("order_taper_steps") or [])
        )
    schedule = list(row.get("order_schedule") or []) or None
    return Order(
        product=product,
        form=row.get("order_form"),
        route=row.get("order_route"),
        dose_amount=row.get("order_dose_amount"),
        dose_unit=row.get("order_dose_unit"),
        doses_per_day=row.get("order_doses_per_day"),
        schedule=schedule,
        prn=bool(row.get("order_prn")),
        prn_max_doses_per_day=row.get("order_prn_max_doses_per_day"),
        concentration_mg_per_ml=row.get("order_concentration_mg_per_ml"),
        excipient_groups=list(row.get("order_excipient_groups") or []),
        indication=parse_coding(row.get("order_indication")),
        indication_group=row.get("order_indication_group"),
        action=row.get("order_action") or "new",
        reason=row.get("order_reason"),
        taper=taper,
        date=row.get("order_date"),
    )
