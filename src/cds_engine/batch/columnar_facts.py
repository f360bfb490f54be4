"""Record tables → flat facts with polars expressions: :func:`cds_engine.facts.derive.derive`, column-wise.

Why a second execution of the same derivation: a warehouse extract of a million rows through
``row_to_facts`` + ``derive`` costs ~250 µs per patient in Python; the same arithmetic as
column expressions costs well under a microsecond. "One derivation" holds because every
choice that is not plain arithmetic is taken by the *same Python helpers* the per-patient path
uses, once per distinct value instead of once per patient: a code's drug classes, route, form
and name (``derive._drug_classes``, ``normalize.checked_route``, ``names.medicine_name``), the
order's dose arithmetic (``derive._order_doses`` — per distinct order), "how old" wording
(``renal.age_text`` — per distinct day count). ``tests/test_columnar_facts.py`` compares both
executions on generated record rows; any difference fails.

Fail safe: what this path does not express is never guessed. A row needing it is marked
``__fallback`` and the caller derives it with the Python path (and counts it):

* a per-row ``as_of``; a number that is not finite; an order that is not a new one (which
  active order a modify/continue replaces is the Python path's choice); a previous dose
  (``previous_daily_dose_mg``/``previous_max_single_dose_mg``: rounding of the change); dated
  administrations/admissions (``last_dose_time``, ``admission_time``: hours rounding); an
  order with excipient groups; an order the model refuses.
* A whole pack falls back when it reads a fact this module does not build (:data:`BUILT`
  and the families in :data:`FAMILIES`), or when ``as_of`` is not UTC.

What a record table cannot carry at all (so neither path sees it): race-stratified eGFR pairs
(one ``egfr`` per row), several results over time, condition onset/recording dates
(``cond_days.*``, ``cond_onset_days.*`` stay unknown → cannot-assess, never "no"), medication
doses/routes of the active list (their daily doses are unknown, so a combined dose is a lower
bound), encounter diagnoses, dose counts of the active list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from pydantic import ValidationError

from cds_engine.batch.columnar_lists import (
    MAX_CLASSES,
    ORDER_SCHEMA,
    ROW,
    allergy_facts,
    condition_facts,
    medication_facts,
)
from cds_engine.facts.coded_gestation import coded_weeks
from cds_engine.facts.derive import (
    ACTIVE_ACTIONS,
    DrugContext,
    _dose_mg_per_unit,
    _drug_classes,
    _form_of,
    _order_doses,
    derive,
)
from cds_engine.facts.lab_units import EGFR_UNITS, FUTURE_PROBLEM_TEXT
from cds_engine.facts.model import Order, PatientFacts
from cds_engine.facts.names import medicine_name
from cds_engine.facts.normalize import (
    checked_route,
    normalize_route,
    normalize_unit,
)
from cds_engine.facts.renal import age_text
from cds_engine.sources.table import COLUMNS, MONITORING_PREFIX, _row_order, parse_coding
from cds_engine.vocabulary import Vocabulary

__all__ = ["BUILT", "FAMILIES", "ColumnarFacts", "columnar_facts", "unsupported_facts"]

# facts built here (scalar); families by prefix
BUILT = frozenset(
    {
        "age_years",
        "age_days",
        "sex",
        "weight_kg",
        "aki",
        "pregnant",
        "gestational_age_weeks",
        "lactating",
        "taper_or_neonatal_plan_documented",
        "maternal_exposure_at_delivery",
        "alcohol_use_current",
        "dialysis",
        "dialysis_modality",
        "egfr",
        "egfr_days_old",
        "egfr_age",
        "crcl",
        "crcl_days_old",
        "crcl_age",
        "renal_fn",
        "renal_fn_measure",
        "renal_fn_days_old",
        "renal_fn_age",
        "renal_fn_current",
        "egfr_unreadable",
        "egfr_unreadable_date",
        "egfr_unreadable_problem",
        "medication_lists_complete",
        "drug_active_count",
        "drug_liquid_concentrations",
        "order_present",
        "days_since_last_exposure",
        "days_on_therapy",
        "days_since_dose_change",
        "stable_dose_days",
        "efficacy_assessed_since_stable",
        "hours_since_last_dose",
        "pump_present",
        "pump_alarm_active",
        "days_until_refill",
        "inpatient",
        "npo",
        "hours_since_admission",
        "combined_oral_daily_mg",
        "previous_daily_dose_mg",
        "previous_max_single_dose_mg",
        "daily_dose_change_mg",
        "daily_dose_reduction_pct",
        "single_dose_change_mg",
        "dose_increase",
        "presumed_replaced_order",
        "total_if_additional_mg",
        "order_additive_to",
        "active_oral_orders",
    }
)
FAMILIES = (
    "cond.",
    "cond_history.",
    "cond_named.",
    "cond_days.",
    "cond_onset_days.",
    "cond_encounter.",
    "allergy.",
    "meds.",
    "inpatient_meds.",
    "meds_named.",
    "drug_active_by_route.",
    "days_since.",
    "order_class.",
)
_BOUNDS = ("__gt", "__ge", "__lt", "__le")
_EGFR_OK = frozenset("".join(u.lower().split()) for u in EGFR_UNITS)
_UNREADABLE_UNIT = "is not reported in mL/min/1.73 m²"  # lab_units._PROBLEM_TEXT["unit"]
_LATER = FUTURE_PROBLEM_TEXT  # an eGFR dated after as_of: facts/renal.py
_ROW = ROW


def _base(name: str) -> str:
    for s in _BOUNDS:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def unsupported_facts(columns: Iterable[str]) -> list[str]:
    """The fact columns this module cannot build (empty: the pack can use the columnar path)."""
    out = [
        c
        for c in columns
        if _base(c) not in BUILT
        and not c.startswith(FAMILIES)
        and not c.startswith("order_")
        and _base(c) not in _ORDER_KEYS
    ]
    classes = {
        c.split(".", 1)[1] for c in columns if c.startswith(("meds.", "inpatient_meds.", "meds_named."))
    }
    if len(classes) > MAX_CLASSES:  # one bit per class in the medication counts
        out.append(f"more than {MAX_CLASSES} medicine classes")
    return out


_ORDER_KEYS = frozenset({"daily_dose_mg", "daily_dose_mcg", "max_single_dose_mg", "excipient_allergy"})


@dataclass
class ColumnarFacts:
    """Fact frame of the rows the columnar path derived, and which rows need the Python path."""

    facts: pl.DataFrame  # __r (row index in the input frame) + one column per requested fact
    fallback: pl.Series  # row indexes (of the input frame) derived by the Python path instead
    applicable: pl.Series  # per row of ``facts``: does the pack review this patient
    reasons: dict[str, int] = field(default_factory=dict)  # why rows fell back, counted


# ── per distinct value: the Python path's own helpers ──────────────────────────────────────


@dataclass(frozen=True)
class _OrderInfo:
    present: bool
    ok: bool
    focus: bool  # the order is the pack's drug
    active: bool  # counted among active medicines
    classes: tuple[str, ...]
    route: str | None
    form: str | None
    concentration: float | None
    daily: float | None
    name: str
    facts: dict[str, Any]  # order-only facts (_order_facts with no history, no allergies)
    applies: bool  # the pack's trigger classes include the order's classes
    partner: bool  # the order is a partner class (applies when the drug is active)


def _order_info(
    order: Order | None, vocab: Vocabulary, ctx: DrugContext, as_of: datetime, triggers: Any
) -> _OrderInfo:
    if order is None:
        return _OrderInfo(False, True, False, False, (), None, None, None, None, "", {}, False, False)
    classes = _drug_classes(order, vocab)
    product = vocab.product(order.product)
    form = _form_of(order, product)
    route = checked_route(normalize_route(order.route), product.route if product else None, form)
    factor, concentration = _dose_mg_per_unit(order, normalize_unit(order.dose_unit), vocab)
    daily, _ = _order_doses(order, factor)
    focus = ctx.drug_class in classes
    flat = derive(PatientFacts(as_of=as_of, order=order), vocab, ctx) if focus else {}
    keep = {k: v for k, v in flat.items() if k.startswith(("order_", "order_class.")) or k in _ORDER_KEYS}
    return _OrderInfo(
        present=True,
        ok=order.action == "new" and not order.excipient_groups,
        focus=focus,
        active=order.action in ACTIVE_ACTIONS,
        classes=tuple(sorted(classes)),
        route=route,
        form=form,
        concentration=concentration,
        daily=daily,
        name=medicine_name(order.product, vocab),
        facts=keep,
        applies=bool(classes & set(triggers.drug_classes)),
        partner=bool(classes & set(triggers.partner_classes)) and order.action in ACTIVE_ACTIONS,
    )


# ── frame helpers ──────────────────────────────────────────────────────────────────────────


def _select(frame: pl.DataFrame, exprs: list[pl.Expr]) -> pl.DataFrame:
    """``frame.select(exprs)`` through the lazy engine: an eager select does not share common
    subexpressions, and the renal facts repeat theirs (which value is used) in every column —
    the same values, ~3x less CPU."""
    return frame.lazy().select(exprs).collect()


def _beside(out: pl.DataFrame, extra: pl.DataFrame) -> pl.DataFrame:
    """``out`` left-joined with ``extra`` on the row index. The list facts come back row for row in
    ``out``'s order (each starts from the frame's rows), so their columns are simply put beside —
    a join would copy every column of the wide table; the join stays for any other shape."""
    if extra[_ROW].equals(out[_ROW]):
        return out.hstack(extra.drop(_ROW).get_columns())
    return out.join(extra, on=_ROW, how="left", maintain_order="left")


def _days(col: pl.Expr, as_of: datetime) -> pl.Expr:
    return (pl.lit(as_of.date()) - col).dt.total_days().cast(pl.Float64)


def _day_of(col: str, frame: pl.DataFrame) -> pl.Expr:
    dtype = frame.schema.get(col)
    c = pl.col(col)
    return c.dt.date() if isinstance(dtype, pl.Datetime) else c


# ── the derivation ─────────────────────────────────────────────────────────────────────────


#: the polars type of a record-table column the table lacks (all null), by its ``COLUMNS`` type
_NULL_TYPES: dict[str, pl.DataType] = {
    "number": pl.Float64(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us", "UTC"),
    "codes": pl.List(pl.String),
    "strings": pl.List(pl.String),
    "numbers": pl.List(pl.Float64),
}


def _per_order(values: list[Any], dtype: pl.DataType) -> pl.Expr:
    """Each row's value of its order (``__oid`` indexes ``values``), as ``dtype``.

    No order (a chunk with no row): a ``replace_strict`` of an empty mapping returns ``__oid``
    itself, ignoring ``return_dtype``, and an Int64 "order_present" failed the queries using it.
    """
    if not values:
        return pl.lit(None, dtype)
    return pl.col("__oid").replace_strict(list(range(len(values))), values, return_dtype=dtype)


def columnar_facts(
    typed: pl.DataFrame,
    columns: dict[str, pl.DataType],
    vocab: Vocabulary,
    ctx: DrugContext,
    as_of: datetime,
    triggers: Any,
    order: Order | None = None,
    keep: pl.Series | None = None,
) -> ColumnarFacts:
    """Flat facts of the cleaned record rows in ``typed`` (``clean_table`` output) for one pack.

    ``order`` (the assumed order) replaces every row's own order, as ``row_to_facts`` does.
    ``keep`` (a mask over ``typed``): only those rows' facts are derived (the fallback rows and
    their reasons are still found among all rows) — the screener passes the rows it screens, so
    no fact of a deceased patient is built and the wide fact table is not filtered afterwards.
    """
    n = typed.height
    frame = typed.with_columns(pl.int_range(n, dtype=pl.Int64).alias(_ROW))
    # the columns the table lacks, as nulls, added in one step (one ``with_columns`` per column
    # rebuilt the frame ~55 times a chunk), in the same order
    present = set(frame.columns)
    frame = frame.with_columns(
        pl.lit(None, _NULL_TYPES.get(spec.type, pl.String)).alias(name)
        for name, spec in COLUMNS.items()
        if name not in present
    )
    frame = _with_coded_weeks(frame)
    reasons: dict[str, int] = {}
    unsupported = unsupported_facts(columns)
    if unsupported or as_of.utcoffset() != timedelta(0):
        reasons["pack reads facts the columnar path does not build" if unsupported else "as_of not UTC"] = n
        return ColumnarFacts(
            pl.DataFrame(schema={_ROW: pl.Int64}),
            pl.Series(range(n), dtype=pl.Int64),
            pl.Series([], dtype=pl.Boolean),
            reasons,
        )

    # the order: per distinct order, the Python path's arithmetic
    order_cols = [c for c in COLUMNS if c.startswith("order_")]
    if order is not None:
        info = _order_info(order, vocab, ctx, as_of, triggers)
        frame = frame.with_columns(pl.lit(0, pl.Int64).alias("__oid"))
        infos = [info]
    else:
        keys = (
            frame.select(order_cols)
            .unique(maintain_order=True)
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__oid"))
        )
        infos = []
        for row in keys.iter_rows(named=True):
            try:
                infos.append(_order_info(_row_order(row), vocab, ctx, as_of, triggers))
            except (ValidationError, ValueError):
                infos.append(
                    _OrderInfo(True, False, False, False, (), None, None, None, None, "", {}, False, False)
                )
        frame = frame.join(keys, on=order_cols, how="left", nulls_equal=True, maintain_order="left")
    # rows the columnar path does not express
    floats = [c for c, t in frame.schema.items() if t == pl.Float64 and c in COLUMNS]
    checks = {
        "per-row as_of": pl.col("as_of").is_not_null(),
        "a number that is not finite": pl.any_horizontal([~pl.col(c).is_finite() for c in floats]).fill_null(
            False
        ),
        "order not a new one, with excipient groups, or refused": ~_per_order(
            [i.ok for i in infos], pl.Boolean
        ),
        "previous dose stated": pl.col("previous_daily_dose_mg").is_not_null()
        | pl.col("previous_max_single_dose_mg").is_not_null(),
        "dated administration or admission": pl.col("last_dose_time").is_not_null()
        | pl.col("admission_time").is_not_null(),
    }
    flags = _select(frame, [e.fill_null(False).alias(k) for k, e in checks.items()])
    for k in checks:
        hits = int(flags[k].sum())
        if hits:
            reasons[k] = hits
    fallback_mask = flags.select(pl.any_horizontal(pl.all())).to_series()
    fallback = frame.filter(fallback_mask)[_ROW]
    derived_mask = ~fallback_mask if keep is None else ~fallback_mask & keep.fill_null(False)
    if not derived_mask.all():  # the usual chunk has no row to leave out: no copy of it
        # (the row's line, id and notes are the caller's: not copied)
        frame = frame.drop("__line", "patient_id", "__notes", strict=False).filter(derived_mask)

    # the renal choice (which measure is used, its value and age) as columns first, read by every
    # renal fact: common-subexpression elimination did not share them (~3x the CPU of the rest)
    lazy = frame.lazy()
    for step in _renal_choice(frame, as_of, ctx):
        lazy = lazy.with_columns(step)
    # only the facts the pack reads (and what the steps below read: the ages' day counts,
    # applicability's maternal exposure, the ``__`` helpers): a fact column nothing reads was built
    # for every row and dropped by the final select
    ages = {d: t for d, t in _AGES.items() if t in columns}
    needed = {*columns, *ages, "maternal_exposure_at_delivery"}
    scalars = [e for e in _scalars(frame, as_of, ctx) if _wanted(e.meta.output_name(), needed)]
    out = lazy.select(pl.col(_ROW), *scalars).collect()
    out = _beside(out, condition_facts(frame, vocab))
    out = _beside(out, allergy_facts(frame, vocab))
    orders_table = pl.DataFrame(
        {
            "__oid": list(range(len(infos))),
            "classes": [list(i.classes) for i in infos],
            "route": [i.route for i in infos],
            "form": [i.form for i in infos],
            "conc": [i.concentration for i in infos],
            "name": [i.name or None for i in infos],
            "__active": [i.active for i in infos],
        },
        schema=ORDER_SCHEMA,
    )
    meds = medication_facts(frame, vocab, ctx, orders_table, columns)
    out = _beside(out, meds)
    out = out.with_columns(frame["__oid"])
    out = _after_lists(out, frame, ctx, infos, as_of, columns, ages)

    # applicability (Engine.applicability, column-wise)
    drug_active = pl.col("__drug_any").fill_null(False)
    applicable = out.select(
        (
            pl.col("maternal_exposure_at_delivery").fill_null(False)
            if "maternal_exposure_at_delivery" in triggers.facts
            else pl.lit(False)
        )
        | (_per_order([not i.present for i in infos], pl.Boolean) & drug_active)
        | _per_order([i.applies for i in infos], pl.Boolean)
        | (_per_order([i.partner for i in infos], pl.Boolean) & drug_active)
    ).to_series()
    exprs = []
    for name, dtype in columns.items():
        exprs.append((pl.col(name) if name in out.columns else pl.lit(None)).cast(dtype).alias(name))
    return ColumnarFacts(out.select(pl.col(_ROW), *exprs), fallback, applicable, reasons)


#: the "how old" texts and the day counts they are worded from
_AGES = {"renal_fn_days_old": "renal_fn_age", "egfr_days_old": "egfr_age", "crcl_days_old": "crcl_age"}


def _wanted(name: str, needed: set[str]) -> bool:
    return name.startswith("__") or name in needed


def _scalars(frame: pl.DataFrame, as_of: datetime, ctx: DrugContext) -> list[pl.Expr]:
    today = as_of.date()
    b = pl.col("birth_date")
    before = (b.dt.month() > today.month) | ((b.dt.month() == today.month) & (b.dt.day() > today.day))
    years_b = (pl.lit(today.year) - b.dt.year().cast(pl.Int64) - before.cast(pl.Int64)).cast(pl.Float64)
    a = pl.col("age_years")
    age_years = pl.when(b.is_not_null()).then(years_b).otherwise(a.cast(pl.Int64).cast(pl.Float64))
    age_days = (
        pl.when(b.is_not_null())
        .then(_days(b, as_of))
        .when(a >= 1)
        .then((a * 365.25).cast(pl.Int64).cast(pl.Float64))
    )
    ex: list[pl.Expr] = [
        age_years.alias("age_years"),
        age_days.alias("age_days"),
        *(
            pl.col(c).alias(c)
            for c in (
                "sex",
                "weight_kg",
                "aki",
                "gestational_age_weeks",
                "taper_or_neonatal_plan_documented",
                "maternal_exposure_at_delivery",
                "alcohol_use_current",
                "pump_present",
                "pump_alarm_active",
                "npo",
            )
        ),
        pl.col("inpatient").fill_null(False).alias("inpatient"),
        pl.lit(False).alias("medication_lists_complete"),
        _days(_day_of("last_dose_change", frame), as_of).alias("days_since_dose_change"),
        _days(_day_of("stable_dose_since", frame), as_of).alias("stable_dose_days"),
        (pl.col("pump_next_refill_date") - pl.lit(today))
        .dt.total_days()
        .cast(pl.Float64)
        .alias("days_until_refill"),
        pl.when(pl.col("stable_dose_since").is_not_null())
        .then(
            (pl.col("monitoring.efficacy_assessment") >= pl.col("stable_dose_since")).fill_null(False)
            if "monitoring.efficacy_assessment" in frame.columns
            else pl.lit(False)
        )
        .alias("efficacy_assessed_since_stable"),
        _days(_day_of("last_exposure", frame), as_of).alias("__exposure_days"),
        _days(_day_of("therapy_start", frame), as_of).alias("__therapy_days"),
    ]
    for c in frame.columns:
        if c.startswith(MONITORING_PREFIX) and len(c) > len(MONITORING_PREFIX):
            ex.append(_days(_day_of(c, frame), as_of).alias("days_since." + c[len(MONITORING_PREFIX) :]))
    ex += _renal(frame, as_of, ctx)
    return ex


_RENAL_CHOICE = (
    "__rn_e_present",
    "__rn_e_later",
    "__rn_e_ok",
    "__rn_e_used",
    "__rn_e_days",
    "__rn_c_val",
    "__rn_c_used",
    "__rn_c_days",
    "__rn_use_e",
    "__rn_use_c",
    "__rn_cur",
)


def _renal_choice(frame: pl.DataFrame, as_of: datetime, ctx: DrugContext) -> list[list[pl.Expr]]:
    """facts/renal.renal_facts' choice for one eGFR and one CrCl per row, as ``__rn_*`` columns
    (steps of ``with_columns``, each reading the ones before): what :func:`_renal` reads."""

    def squeeze(c: str) -> pl.Expr:
        return pl.col(c).str.to_lowercase().str.replace_all(r"\s", "")

    e_unit = pl.col("egfr_unit")
    c_unit = squeeze("crcl_unit")
    col = {name: pl.col(name) for name in _RENAL_CHOICE}
    cur = ctx.renal.current_days
    first = [
        (pl.col("egfr").is_not_null() & pl.col("egfr_date").is_not_null()).alias("__rn_e_present"),
        (
            e_unit.is_null() | (e_unit.str.strip_chars() == "") | squeeze("egfr_unit").is_in(list(_EGFR_OK))
        ).alias("__rn_e_ok"),
        _days(_day_of("egfr_date", frame), as_of).alias("__rn_e_days"),
        pl.when(pl.col("crcl_unit").is_null())
        .then(pl.col("crcl"))
        .when(
            c_unit.str.contains("1.73", literal=True)
            | c_unit.str.contains("/m2", literal=True)
            | c_unit.str.contains("{", literal=True)
        )
        .then(None)
        .when(c_unit.is_in(["ml/min", "ml/minute"]))
        .then(pl.col("crcl"))
        .when(c_unit.is_in(["ml/s", "ml/sec"]))
        .then(pl.col("crcl") * 60.0)
        .alias("__rn_c_val"),
        _days(_day_of("crcl_date", frame), as_of).alias("__rn_c_days"),
        _later("egfr_date", frame, as_of).alias("__rn_e_later"),
    ]
    # a result dated after as_of is not a current value (facts/renal.py): never used
    second = [
        (col["__rn_e_present"] & col["__rn_e_ok"] & ~col["__rn_e_later"]).alias("__rn_e_used"),
        (
            pl.col("crcl").is_not_null()
            & pl.col("crcl_date").is_not_null()
            & col["__rn_c_val"].is_not_null()
            & ~_later("crcl_date", frame, as_of)
        ).alias("__rn_c_used"),
    ]
    e_cur = col["__rn_e_used"] & (col["__rn_e_days"] <= cur)
    c_cur = col["__rn_c_used"] & (col["__rn_c_days"] <= cur)
    third = [
        (
            col["__rn_e_used"]
            & (e_cur | (~c_cur & (~col["__rn_c_used"] | (col["__rn_e_days"] <= col["__rn_c_days"]))))
        ).alias("__rn_use_e"),
        (e_cur | c_cur).alias("__rn_cur"),
    ]
    fourth = [(col["__rn_c_used"] & ~col["__rn_use_e"]).alias("__rn_use_c")]
    return [first, second, third, fourth]


def _with_coded_weeks(frame: pl.DataFrame) -> pl.DataFrame:
    """``gestational_age_weeks`` where a row states none but an active condition does (``Z3A.NN``).

    What ``derive`` reads (facts/coded_gestation.py): a table's conditions are undated, so the
    first such code of the row's list counts, as stated. Each distinct condition text is parsed
    once, as elsewhere here; a table with no such code is returned as it is.
    """
    if frame["conditions"].null_count() == frame.height:
        return frame
    texts = frame["conditions"].explode().drop_nulls().unique().to_list()
    weeks: dict[str, float] = {}
    for text in texts:
        coding = parse_coding(text)
        stated = coded_weeks(coding.system, coding.code) if coding is not None else None
        if stated is not None:
            weeks[text] = stated
    if not weeks:
        return frame
    coded = (
        pl.col("conditions")
        .list.eval(pl.element().replace_strict(weeks, default=None, return_dtype=pl.Float64))
        .list.drop_nulls()
        .list.first()
    )
    return frame.with_columns(pl.coalesce(pl.col("gestational_age_weeks").cast(pl.Float64), coded))


def _later(col: str, frame: pl.DataFrame, as_of: datetime) -> pl.Expr:
    """True where the result is dated after ``as_of`` (renal._after: a date reads as its midnight)."""
    if isinstance(frame.schema.get(col), pl.Datetime):
        return (pl.col(col) > pl.lit(as_of)).fill_null(False)
    return (pl.col(col) > pl.lit(as_of.date())).fill_null(False)


def _renal(frame: pl.DataFrame, as_of: datetime, ctx: DrugContext) -> list[pl.Expr]:
    """facts/renal.renal_facts + lab_units for one eGFR and one CrCl per row (a table has no pairs),
    from the choice :func:`_renal_choice` made."""
    col = {name: pl.col(name) for name in _RENAL_CHOICE}
    e_present, e_ok, e_used, e_days = (col[f"__rn_e_{k}"] for k in ("present", "ok", "used", "days"))
    # reported as cannot-assess: a non-renal unit (whatever its date), or an eGFR dated after as_of
    unreadable = e_present & (~e_ok | col["__rn_e_later"])
    c_val, c_used, c_days = col["__rn_c_val"], col["__rn_c_used"], col["__rn_c_days"]
    use_e, use_c = col["__rn_use_e"], col["__rn_use_c"]
    value = pl.when(use_e).then(pl.col("egfr")).when(use_c).then(c_val)
    comp = pl.when(use_e).then(pl.col("egfr_comparator")).when(use_c).then(pl.col("crcl_comparator"))
    days = pl.when(use_e).then(e_days).when(use_c).then(c_days)
    out = [
        pl.when(e_used).then(e_days).alias("egfr_days_old"),
        pl.when(c_used).then(c_days).alias("crcl_days_old"),
        pl.when(use_e).then(pl.lit("eGFR")).when(use_c).then(pl.lit("CrCl")).alias("renal_fn_measure"),
        days.alias("renal_fn_days_old"),
        pl.when(use_e | use_c).then(col["__rn_cur"]).alias("renal_fn_current"),
        pl.when(unreadable).then(True).alias("egfr_unreadable"),
        pl.when(unreadable)
        .then(_day_of("egfr_date", frame).dt.to_string("%Y-%m-%d"))
        .alias("egfr_unreadable_date"),
        pl.when(e_present & ~e_ok)
        .then(pl.lit(_UNREADABLE_UNIT))
        .when(unreadable)
        .then(pl.lit(_LATER))
        .alias("egfr_unreadable_problem"),
    ]
    for base, v, cmp in (
        ("renal_fn", value, comp),
        ("egfr", pl.when(e_used).then(pl.col("egfr")), pl.col("egfr_comparator")),
        ("crcl", pl.when(c_used).then(c_val), pl.col("crcl_comparator")),
    ):
        out.append(pl.when(cmp.is_null()).then(v).alias(base))
        for s, op in (("__gt", ">"), ("__ge", ">="), ("__lt", "<"), ("__le", "<=")):
            out.append(pl.when(cmp == op).then(v).alias(base + s))
    return out


def _chunked_like(series: pl.Series, model: pl.Series) -> pl.Series:
    """``series`` cut into chunks of the lengths of ``model``'s (slices, no copy).

    Why: a gather gives one chunk; put beside columns of two (a parallel select's), the frame's
    chunks no longer line up and the next query over it copies every column into one chunk.
    """
    chunks = model.get_chunks()
    if len(chunks) < 2:
        return series
    parts, start = [], 0
    for chunk in chunks:
        parts.append(series.slice(start, chunk.len()))
        start += chunk.len()
    return pl.concat(parts, rechunk=False)


_AGE_TEXTS: dict[int, str] = {}  # renal.age_text of each day count met so far
_AGE_SPAN = 200_000  # widest range of day counts worded by a table of texts (else per distinct value)


def _age_texts(out: pl.DataFrame, cols: dict[str, str]) -> pl.DataFrame:
    """renal.age_text per day count (the Python wording, looked up).

    Why a gather: the counts are whole days in a narrow range (a few hundred), so the texts of the
    range, in order, are gathered by ``days - lowest`` — one pass, where the distinct values and a
    ``replace_strict`` of them were two hashings of every row. ``int(d)`` as before: a count that is
    not finite has no text, a fraction is truncated (a cast to Int64 does both the same way).
    """
    exprs = []
    for days_col, text_col in cols.items():
        days = out[days_col].cast(pl.Int64, strict=False)
        if days.null_count() == days.len():
            exprs.append(pl.lit(None, pl.String).alias(text_col))
            continue
        lo, hi = int(days.min()), int(days.max())  # type: ignore[arg-type]
        finite = days.null_count() == out[days_col].is_finite().not_().fill_null(True).sum()
        if hi - lo < _AGE_SPAN and finite:
            if len(_AGE_TEXTS) > _AGE_SPAN:  # bounded: at most two spans of texts
                _AGE_TEXTS.clear()
            texts = [_AGE_TEXTS.get(d) or _AGE_TEXTS.setdefault(d, age_text(d)) for d in range(lo, hi + 1)]
            worded = pl.Series(texts, dtype=pl.String).gather(days - lo)
            exprs.append(_chunked_like(worded, out[days_col]).alias(text_col))
            continue
        distinct = [d for d in out[days_col].drop_nulls().unique().to_list() if math.isfinite(d)]
        texts = [age_text(int(d)) for d in distinct]
        exprs.append(
            pl.col(days_col)
            .replace_strict(distinct, texts, default=None, return_dtype=pl.String)
            .alias(text_col)
        )
    return out.with_columns(exprs)


def _after_lists(
    out: pl.DataFrame,
    frame: pl.DataFrame,
    ctx: DrugContext,
    infos: list[_OrderInfo],
    as_of: datetime,
    columns: dict[str, pl.DataType],
    ages: dict[str, str] | None = None,
) -> pl.DataFrame:
    """Facts that combine the lists with the rest: pregnancy/lactation/dialysis, the order's facts;
    ``ages``: the "how old" texts to word (day count column → text column; default all)."""

    def has(c: str) -> pl.Expr:
        return pl.col(c).fill_null(False) if c in out.columns else pl.lit(False)

    proc = _days(pl.col("last_dialysis_procedure"), as_of)
    src = frame.select(
        pl.col("pregnant").alias("__preg"),
        pl.col("lactating").alias("__lact"),
        pl.col("dialysis").alias("__mod"),
        pl.col("dialysis_dependent").fill_null(False).alias("__dep"),
        ((proc >= 0) & (proc <= ctx.dialysis_procedure_lookback_days)).fill_null(False).alias("__recent"),
    )
    out = out.hstack(src)
    modality = pl.col("__mod")
    dep = pl.col("__dep") | has(f"cond.{ctx.dialysis_condition_group}")
    out = out.with_columns(
        pl.when(modality.is_not_null() & (modality != "none"))
        .then(True)
        .when(dep | pl.col("__recent"))
        .then(True)
        .otherwise(False)
        .alias("dialysis")
    )
    focus = _per_order([i.focus for i in infos], pl.Boolean)
    other = pl.col("__drug_other")
    dsle = pl.when(other).then(0.0).otherwise(pl.col("__exposure_days"))
    fresh = focus & dsle.is_null()  # every order reaching here is a new one
    ex = [
        pl.when(pl.col("__preg").is_null() & has(f"cond.{ctx.pregnancy_condition_group}"))
        .then(True)
        .otherwise(pl.col("__preg"))
        .alias("pregnant"),
        pl.when(pl.col("__lact").is_null() & has(f"cond.{ctx.lactation_condition_group}"))
        .then(True)
        .otherwise(pl.col("__lact"))
        .alias("lactating"),
        focus.alias("order_present"),
        dsle.alias("days_since_last_exposure"),
        pl.when(fresh).then(None).otherwise(pl.col("__therapy_days")).alias("days_on_therapy"),
    ]
    computed = {"order_present", "dose_increase", "combined_oral_daily_mg", "combined_oral_daily_mg__ge"}
    keys = sorted({k for i in infos for k in i.facts if k in columns and k not in computed})
    for k in keys:
        values = [i.facts.get(k) if i.focus else None for i in infos]
        dtype = columns.get(k, pl.String)
        ex.append(_per_order(values, dtype).alias(k))
    # combined_facts for a new draft beside active orders whose doses a table does not give
    daily = _per_order([i.facts.get("daily_dose_mg") if i.focus else None for i in infos], pl.Float64)
    k_oral = pl.col("__oral_others") if ctx.sum_active_oral_orders else pl.lit(0)
    ex += [
        pl.when(focus & (k_oral == 0)).then(daily).alias("combined_oral_daily_mg"),
        pl.when(focus & (k_oral > 0)).then(daily).alias("combined_oral_daily_mg__ge"),
        pl.when(focus).then(False).alias("dose_increase"),
    ]
    out = out.lazy().with_columns(ex).collect()
    return _age_texts(out, _AGES if ages is None else ages)
