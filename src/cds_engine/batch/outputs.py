"""Which alert tables ``cds-engine screen`` writes (``--format``, repeatable): a small writer registry.

Why a registry: the alert table is always built once as ``alerts.parquet`` (the report, the
store record and every other writer read it, streamed); each format is then one writer over it.
A format that is named but not built yet is a usage error (exit 2) that says so — never a run
that silently writes less than asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl

__all__ = [
    "ALERT_WRITERS",
    "CHART_FORMATS",
    "DEFAULT_FORMATS",
    "NOT_YET",
    "check_formats",
    "drop_unrequested",
    "write_formats",
]

Writer = Callable[[pl.LazyFrame, Callable[[pl.LazyFrame, str], None]], None]


def _parquet(alerts: pl.LazyFrame, sink: Callable[[pl.LazyFrame, str], None]) -> None:
    """alerts.parquet is the table every other output is read from: already written."""


def _csv(alerts: pl.LazyFrame, sink: Callable[[pl.LazyFrame, str], None]) -> None:
    sink(alerts, "alerts.csv")  # the sink neutralises spreadsheet formulas


def _runner_writes(alerts: pl.LazyFrame, sink: Callable[[pl.LazyFrame, str], None]) -> None:
    """Written by the runner after the merge: it needs the packs and the run's as-of time."""


ALERT_WRITERS: dict[str, Writer] = {"parquet": _parquet, "csv": _csv, "fhir-ndjson": _runner_writes}
FILES = {"parquet": "alerts.parquet", "csv": "alerts.csv", "fhir-ndjson": "detected-issues.ndjson"}
NOT_YET: dict[str, str] = {}
DEFAULT_FORMATS = ("parquet", "csv")
#: formats that put findings into a chart: never from a hypothetical (--assume-order) screening
CHART_FORMATS = frozenset({"fhir-ndjson"})


def check_formats(formats: Iterable[str] | None, *, hypothetical: bool = False) -> tuple[str, ...]:
    """The requested formats, in order and once each; ValueError names an unknown or unbuilt one,
    or a chart format asked of a hypothetical screening."""
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in (formats or DEFAULT_FORMATS)))
    for f in chosen:
        if hypothetical and f in CHART_FORMATS:
            raise ValueError(f"--format {f} cannot be used with --assume-order: issues found for an order "
                             "nobody wrote must never enter a chart")
        if f in NOT_YET:
            raise ValueError(f"--format {f}: {NOT_YET[f]}")
        if f not in ALERT_WRITERS:
            known = ", ".join([*ALERT_WRITERS, *NOT_YET])
            raise ValueError(f"--format {f}: unknown format (one of {known})")
    return chosen


def write_formats(out: Path, formats: Iterable[str], sink: Callable[[pl.LazyFrame, str], None]) -> None:
    """Each requested format from the merged ``alerts.parquet``."""
    for f in formats:
        ALERT_WRITERS[f](pl.scan_parquet(out / "alerts.parquet"), sink)


def drop_unrequested(out: Path, formats: Iterable[str]) -> None:
    """Remove ``alerts.parquet`` at the end when it was only the intermediate table."""
    if "parquet" not in set(formats):
        (out / FILES["parquet"]).unlink(missing_ok=True)
