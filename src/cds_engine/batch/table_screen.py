"""Screen cleaned record-table rows column-wise: facts (columnar_facts) → vector alerts → patient rows.

Why separate from ``work.py``: the per-patient path maps each row to :class:`PatientFacts`
and derives it in Python; this one never builds a per-patient object. Rows it cannot express
are handed back (``fallback``) for the per-patient path, and counted in ``reasons`` — the
outputs of both are merged by source row, so the tables are the same as the per-patient path's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from cds_engine.alerts import SEVERITY_ORDER
from cds_engine.batch.columnar_facts import columnar_facts
from cds_engine.evaluators.vector import VectorPack, vector_alerts
from cds_engine.facts.model import Order

__all__ = ["TableScreen", "merge_by_row", "patient_counts", "screen_table"]


@dataclass
class TableScreen:
    alerts: pl.DataFrame  # ALERT_SCHEMA + __unit (the source row)
    patients: pl.DataFrame  # __unit, patient_id, status, packs, notes + counts
    fallback: pl.DataFrame  # typed rows left to the per-patient path
    reasons: dict[str, int] = field(default_factory=dict)


def screen_table(
    typed: pl.DataFrame,
    packs: Sequence[Any],
    vectors: dict[str, VectorPack],
    as_of: datetime,
    order: Order | None,
) -> TableScreen:
    """Alerts and patient rows of ``typed`` (``clean_table`` output); ``__unit`` is the row's ``__line``."""
    frame = typed.with_columns(pl.int_range(typed.height, dtype=pl.Int64).alias("__r"))
    if "deceased" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.Boolean).alias("deceased"))
    fallbacks: list[pl.Series] = []
    reasons: dict[str, int] = {}
    per_pack: list[tuple[str, pl.DataFrame]] = []
    for pack in packs:
        vp = vectors[pack.id]
        triggers = pack.spec.pack.triggers
        got = columnar_facts(typed, vp.columns, pack.vocabulary, pack.context, as_of, triggers, order)
        fallbacks.append(got.fallback)
        for k, v in got.reasons.items():
            reasons[f"{pack.id}: {k}"] = v
        per_pack.append((pack.id, got.facts.with_columns(got.applicable.alias("__app"))))
    # a row any pack cannot express goes to the per-patient path for every pack
    fallback = pl.concat(fallbacks).unique() if fallbacks else pl.Series("__r", [], dtype=pl.Int64)
    mine = frame.filter(~pl.col("__r").is_in(fallback.implode()))
    screened = mine.filter(~pl.col("deceased").fill_null(False)).select("__r", "__line", "patient_id")
    alert_frames = []
    packs_of = [screened.select("__r")]
    for pack_id, facts in per_pack:
        facts = facts.join(screened, on="__r", how="inner", maintain_order="left").filter(pl.col("__app"))
        packs_of.append(facts.select("__r", pl.lit(pack_id).alias("__p")))
        if facts.height:
            facts = facts.rename({"__line": "__unit"})
            alert_frames.append(vector_alerts(vectors[pack_id], facts, "patient_id", carry=("__unit",)))
    reviewed = (
        pl.concat(packs_of[1:])
        .group_by("__r", maintain_order=True)
        .agg(pl.col("__p").str.join(";").alias("packs"))
        if len(packs_of) > 1
        else pl.DataFrame(schema={"__r": pl.Int64, "packs": pl.String})
    )
    patients = (
        mine.select(
            "__r",
            pl.col("__line").alias("__unit"),
            "patient_id",
            pl.when(pl.col("deceased").fill_null(False))
            .then(pl.lit("deceased-excluded"))
            .otherwise(pl.lit("screened"))
            .alias("status"),
            pl.col("__notes").alias("notes"),
        )
        .join(reviewed, on="__r", how="left", maintain_order="left")
        .with_columns(pl.col("packs").fill_null(""))
        .drop("__r")
    )
    alerts = (
        pl.concat(alert_frames, how="vertical").sort("__unit", maintain_order=True)
        if alert_frames
        else pl.DataFrame()
    )
    left = typed.filter(pl.int_range(pl.len(), dtype=pl.Int64).is_in(fallback.implode()))
    return TableScreen(alerts, patients, left, reasons)


def patient_counts(patients: pl.DataFrame, alerts: pl.DataFrame) -> pl.DataFrame:
    """Per patient row: alert counts by severity and cannot-assess (as work._evaluate counts them)."""
    if alerts.height == 0:
        counts = pl.DataFrame(schema={"__unit": pl.Int64})
    else:
        counts = alerts.group_by("__unit").agg(
            pl.len().alias("alerts"),
            *[(pl.col("severity") == s).sum().cast(pl.Int64).alias(s) for s in SEVERITY_ORDER],
            (pl.col("kind") == "cannot-assess").sum().cast(pl.Int64).alias("cannot_assess"),
        )
    out = patients.join(counts, on="__unit", how="left", maintain_order="left")
    # the dtypes work._evaluate gives (a count of rows is UInt32 there)
    return out.with_columns(
        (pl.col("alerts") if "alerts" in out.columns else pl.lit(None))
        .cast(pl.UInt32)
        .fill_null(0)
        .alias("alerts"),
        *[
            (pl.col(c) if c in out.columns else pl.lit(None)).cast(pl.Int64).fill_null(0).alias(c)
            for c in (*SEVERITY_ORDER, "cannot_assess")
        ],
    )


def merge_by_row(first: pl.DataFrame, second: pl.DataFrame, key: str) -> pl.DataFrame:
    """Two row-keyed tables as one, in source-row order (stable within a row)."""
    if first.height == 0:
        return second
    if second.height == 0:
        return first
    return pl.concat([first, second.select(first.columns)], how="vertical").sort(key, maintain_order=True)
