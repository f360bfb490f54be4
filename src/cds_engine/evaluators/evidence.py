"""The evidence JSON of fired tiers, column-wise (:func:`cds_engine.results.evidence_of` for a frame).

Why its own module: on a million patients the alert table holds about six million evidence
texts of ~200 bytes, and writing them was the largest single cost of the vector path. The
expression is built per tier from the rows that fired it, so it can skip work that provably
changes nothing:

* a fact with one value on all those rows (the facts a tier *requires* usually are) is literal
  text, computed by the same expression on the first row;
* runs of never-null pieces are one flat ``concat_str`` (commas in its literals) and the braces
  ride on the first and last piece, so a row's text is written once, not copied to add them;
* string columns with nothing to escape skip the five replacements;
* when the varying facts have few combinations (counts of medicines, a coded route), the text is
  built once per combination and every row takes its text by index — polars string views then
  share the bytes instead of copying them.

Every shortcut is taken only when it is exact: 0.0 and -0.0 (one value to min/max and to
hashing, two texts) and NaN keep a float column on the per-row path.

What decides the shortcuts is cheap on purpose (it ran once per tier and chunk and cost as much
as the texts): "one value" is min == max (strings: equal to the first row), not a distinct
count; the signs of zero and the escapes are looked at only for the columns that need them;
the number of combinations is an estimate (``approx_n_unique``), since it only picks between two
exact ways of writing the same text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import polars as pl

from cds_engine.facts import catalog
from cds_engine.rules.compile import CompiledTier
from cds_engine.rules.conditions import BOUND_SUFFIXES, facts_of

__all__ = ["evidence_expr", "evidence_names", "json_value"]

_NEEDS_ESCAPE = r'[\\"\n\r\t]'  # what json_value's replacements change
_SHARE_RATIO = 4  # build per combination when rows ≥ this many times the combinations …
_SHARE_MAX = 100_000  # … and the combinations are at most this many


def json_value(name: str, dtype: pl.DataType, col: pl.Expr | None = None) -> pl.Expr:
    """A column's values as JSON text (numbers as polars prints them, which is valid JSON).

    ``col`` replaces ``pl.col(name)`` (the first value only, say), through the same steps.
    """
    col = pl.col(name) if col is None else col
    if dtype == pl.Boolean():
        return col.cast(pl.String)  # "true" / "false", null stays null
    if dtype == pl.String():
        escaped = col
        for raw, esc in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
            escaped = escaped.str.replace_all(raw, esc, literal=True)
        return pl.lit('"') + escaped + pl.lit('"')
    return col.cast(pl.String)


def evidence_names(tier: CompiledTier, columns: Mapping[str, pl.DataType]) -> list[str]:
    """The columns a tier's evidence reads, in :func:`cds_engine.results.evidence_of`'s order."""
    names: list[str] = []
    for leaf in facts_of(tier.node):
        candidates = [leaf.fact, *(leaf.fact + s for s in BOUND_SUFFIXES)] if leaf.bounded else [leaf.fact]
        candidates += catalog.companions(leaf.fact)  # as results.evidence_of: medicine names of a count
        names.extend(n for n in candidates if n in columns and n not in names)
    return names


def evidence_expr(
    tier: CompiledTier, columns: Mapping[str, pl.DataType], group: pl.DataFrame | None = None
) -> pl.Expr:
    """The evidence JSON of one tier (missing facts left out) for the rows of ``group``.

    Without ``group`` the plain per-row expression; with it, the same text with less work (see
    the module docstring).
    """
    names = evidence_names(tier, columns)
    if not names:
        return pl.lit("{}")
    if group is None or group.height == 0:
        pieces = [pl.lit(json.dumps(n) + ":") + json_value(n, columns[n]) for n in names]
        return pl.lit("{") + pl.concat_str(pieces, separator=",", ignore_nulls=True) + pl.lit("}")
    height = group.height
    stats = _stats(group, names, columns)
    same = [n for n in names if _same(stats, n, columns[n], height)]
    varying = [n for n in names if n not in same]
    # a second, smaller query: only where the first leaves it open
    limit = min(_SHARE_MAX, height // _SHARE_RATIO)  # most combinations worth a shared table
    signed = [n for n in names if stats.get("zero:" + n) and (n in same or limit >= 2 ** len(varying))]
    escapes = [n for n in varying if columns[n] == pl.String()]
    more = _more_stats(group, signed, escapes)
    constant = [n for n in same if not more.get("both0:" + n)]
    varying = [n for n in names if n not in constant]
    texts = {n: stats["t:" + n] for n in constant}  # the per-row text of the first row (by _stats)
    # [prefix, value or None, suffix, never null]; a literal piece has value None
    parts: list[list[Any]] = []
    for n in names:
        key = json.dumps(n) + ":"
        if n in texts:
            text = texts[n]
            if text is None:  # absent on every row: left out, as concat_str(ignore_nulls) would
                continue
            if parts and parts[-1][1] is None:
                parts[-1][0] += "," + text
            else:
                parts.append([text, None, "", True])
            continue
        never_null = stats["n:" + n] == 0
        if columns[n] == pl.String() and not more["esc:" + n]:
            parts.append([key + '"', pl.col(n), '"', never_null])
        else:
            parts.append([key, json_value(n, columns[n]), "", never_null])
    if not varying:  # every fact constant on these rows: the text itself
        return pl.lit("{" + ",".join(p[0] for p in parts) + "}", pl.String)
    expr = _assemble(parts)
    # a shared table needs exact hash keys: no NaN, not both 0.0 and -0.0 (one key, two texts)
    if limit < 2 ** len(varying) or any(stats.get("nan:" + n) for n in varying):
        return expr
    if any((n not in signed and stats.get("zero:" + n)) or more.get("both0:" + n) for n in varying):
        return expr
    # the number of combinations only chooses the path (both give the same text): an estimate will do
    counts = group.select(pl.col(varying).approx_n_unique()).row(0)
    if math.prod(counts) <= limit:
        return _per_combination(group, varying, expr)
    return expr


def _same(stats: Mapping[str, Any], name: str, dtype: pl.DataType, height: int) -> bool:
    """True when every row holds the same value (or none), up to the sign of a zero.

    Cheaper than counting distinct values, which only varying facts need: strings compare with
    the first row, numbers min == max with no NaN (min and max skip it). The caller checks
    the signs of a zero (equal to min/max, printed apart).
    """
    nulls = stats["n:" + name]
    if nulls == height:
        return True
    if nulls:
        return False
    if dtype == pl.String():
        return bool(stats["eq:" + name])
    return stats["lo:" + name] == stats["hi:" + name] and not stats.get("nan:" + name)


def _stats(group: pl.DataFrame, names: Sequence[str], columns: Mapping[str, pl.DataType]) -> dict[str, Any]:
    return group.select(_stats_exprs(tuple((n, columns[n]) for n in names))).row(0, named=True)


@lru_cache(maxsize=1024)
def _stats_exprs(typed: tuple[tuple[str, pl.DataType], ...]) -> tuple[pl.Expr, ...]:
    """The first query's expressions for these columns (cached: they depend on the tier only).

    Why cached: building a few hundred expressions per tier was a fixed cost per call, paid
    again by every chunk of a streamed screening.
    """
    names = [n for n, _ in typed]
    floats = [n for n, t in typed if t == pl.Float64()]
    strings = [n for n, t in typed if t == pl.String()]
    others = [n for n, t in typed if t != pl.String()]
    return (
        pl.col(names).null_count().name.prefix("n:"),
        pl.col(others).min().name.prefix("lo:"),
        pl.col(others).max().name.prefix("hi:"),
        *((pl.col(n) == pl.col(n).first()).all().alias("eq:" + n) for n in strings),
        *(pl.col(n).is_nan().any().alias("nan:" + n) for n in floats),
        *((pl.col(n) == 0.0).any().alias("zero:" + n) for n in floats),
        # each fact's text on the first row, by the per-row steps (used where the fact is constant)
        *(
            (pl.lit(json.dumps(n) + ":") + json_value(n, t, pl.col(n).first())).alias("t:" + n)
            for n, t in typed
        ),
    )


def _more_stats(group: pl.DataFrame, signed: Sequence[str], escapes: Sequence[str]) -> dict[str, Any]:
    """Both signed zeros present (``signed``), characters JSON escapes (``escapes``)."""
    if not signed and not escapes:
        return {}
    zero = [(n, pl.col(n) == 0.0, pl.lit(1.0) / pl.col(n)) for n in signed]
    return group.select(
        # 0.0 and -0.0 are equal to min/max and to hashing but print apart: 1/x tells them apart
        *(((z & (inv > 0)).any() & (z & (inv < 0)).any()).alias("both0:" + n) for n, z, inv in zero),
        *(pl.col(n).str.contains(_NEEDS_ESCAPE).any().alias("esc:" + n) for n in escapes),
    ).row(0, named=True)


def _assemble(parts: list[list[Any]]) -> pl.Expr:
    """``{`` + the non-null pieces joined by commas + ``}``, each row's text written once."""
    # runs of never-null pieces become one flat concat_str (commas in its literals); a piece that
    # may be null stays apart for ignore_nulls to skip
    segments: list[list[list[Any]]] = []
    for part in parts:
        if part[3] and segments and segments[-1][-1][3]:
            segments[-1].append(part)
        else:
            segments.append([part])
    opened, closed = segments[0][0][3], segments[-1][-1][3]
    exprs = []
    for k, segment in enumerate(segments):
        flat: list[pl.Expr] = []
        pending = "{" if k == 0 and opened else ""
        for i, (prefix, value, suffix, _) in enumerate(segment):
            pending += ("," if i else "") + prefix
            if value is not None:
                flat += [pl.lit(pending, pl.String), value]
                pending = suffix
        if k == len(segments) - 1 and closed:
            pending += "}"
        if pending:
            flat.append(pl.lit(pending, pl.String))
        exprs.append(flat[0] if len(flat) == 1 else pl.concat_str(flat))
    if len(exprs) == 1 and opened:
        return exprs[0]
    out = pl.concat_str(exprs, separator=",", ignore_nulls=True)
    if not opened:
        out = pl.lit("{") + out
    if not closed:
        out = out + pl.lit("}")
    return out


def _per_combination(group: pl.DataFrame, varying: Sequence[str], expr: pl.Expr) -> pl.Expr:
    """``expr`` evaluated once per combination of the varying columns, taken by index per row.

    Each column's distinct values (null included) get codes 0…k-1; a row's index is the mixed-
    radix number of its codes. The table holds every combination of the distinct values (at
    most _SHARE_MAX), its text computed by ``expr`` itself, so a row's text is the one ``expr``
    gives on that row. Callers guarantee the values are exact hash keys (no NaN, no ±0 mix).
    """
    index: pl.Expr | None = None
    table: pl.DataFrame | None = None
    stride = 1
    for n in reversed(varying):  # the last column varies fastest
        values = group[n].drop_nulls().unique()
        size = values.len() + (group[n].null_count() > 0)
        code = pl.col(n).replace_strict(values, list(range(values.len())), return_dtype=pl.Int64)
        code = code.fill_null(values.len())
        index = code * stride if index is None else index + code * stride
        domain = pl.DataFrame({n: pl.concat([values, pl.Series(n, [None], dtype=values.dtype)])}).head(size)
        table = domain if table is None else domain.join(table, how="cross")
        stride *= size
    assert index is not None and table is not None
    texts = table.select(index.alias("i"), expr.alias("t")).sort("i")["t"]
    return pl.lit(texts).gather(index)
