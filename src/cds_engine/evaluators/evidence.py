"""The evidence JSON of fired tiers, column-wise (:func:`cds_engine.results.evidence_of` for a frame).

Why its own module: on a million patients the alert table holds about six million evidence
texts of ~200 bytes, and writing them was the largest single cost of the vector path. The
expression is built per tier from the rows that fired it, so it can skip work that provably
changes nothing:

* a fact with one value on all those rows (the facts a tier *requires* usually are) is literal
  text, computed by the same expression on the first row;
* the whole text is one flat ``concat_str`` (braces, keys and commas in its literals; a piece
  that may be null brings its key and comma as a literal that is null with it), so a row's
  text is written once, not copied again to join pieces or add braces;
* a boolean is a choice between two literals, not a cast to text;
* string columns with nothing to escape skip the five replacements (the escapes are looked for
  among the distinct strings);
* when the varying facts have few combinations (counts of medicines, a coded route), the text is
  built once per combination and every row takes its text by index — polars string views then
  share the bytes instead of copying them. The index of booleans and of small whole-number
  floats is arithmetic on the value, not a hash lookup. Whether the combinations are few is
  first judged from the first rows' distinct values (a lower bound): spread facts no longer pay
  for hashing every row only to be refused;
* otherwise, a float fact of whole numbers, tenths or hundredths takes its whole ``,"key":value``
  piece from a table of texts by ``round(x × scale)``, not a cast per row (_decimal_pieces);
  whole numbers (counts of medicines, zeros included) by ``x - lo`` in the text query itself.

Every shortcut is taken only when it is exact: 0.0 and -0.0 (one value to min/max and to
hashing, two texts) and NaN keep a float column on the per-row path — except that a column of
whole numbers with 0.0 and no -0.0 (one query checks both) is coded.

What decides the shortcuts is cheap on purpose (it ran once per tier and chunk and cost as much
as the texts): "one value" is min == max (strings: equal to the first row), not a distinct
count; the signs of zero and the escapes are looked at only for the columns that need them;
a hashed column's distinct values are taken once (a string's with its escape check) and serve
as both its count and its codes' domain. Its fixed cost per tier is kept down too (it is paid
per chunk): the statistics are a few multi-column expressions, a constant fact's text is made
from its first value outside polars' planner, and the assembled expression is cached.
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

_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))  # in this order
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
        for raw, esc in _ESCAPES:
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
    texts = _first_texts(group, constant, columns)  # the per-row text of the first row
    # [prefix, value, suffix, never null, column or None, boolean]; value is None for a literal
    # piece, else (column, dtype, raw): raw is the column as it is (a string with nothing to escape)
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
                parts.append([text, None, "", True, None, False])
            continue
        never_null = stats["n:" + n] == 0
        if columns[n] == pl.String() and not more["esc:" + n]:
            parts.append([key + '"', (n, columns[n], True), '"', never_null, n, False])
        else:
            parts.append([key, (n, columns[n], False), "", never_null, n, columns[n] == pl.Boolean()])
    if not varying:  # every fact constant on these rows: the text itself
        return pl.lit("{" + ",".join(p[0] for p in parts) + "}", pl.String)
    key = tuple(tuple(p) for p in parts)
    expr = _assemble(key)
    # a shared table needs exact hash keys: no NaN, not both 0.0 and -0.0 (one key, two texts)
    if limit < 2 ** len(varying) or any(stats.get("nan:" + n) for n in varying):
        return _decimal_pieces(group, key, stats, columns, expr)
    if any((n not in signed and stats.get("zero:" + n)) or more.get("both0:" + n) for n in varying):
        return _decimal_pieces(group, key, stats, columns, expr)
    # Booleans and small whole-number floats (counts) are coded by arithmetic, not hashing
    # (_codes), so their count is their domain's size; any other column's is the number of its
    # distinct values, which its codes are then taken from (a string's came with its escapes).
    # Why those and not an estimate: approx_n_unique hashed the column as often as unique does,
    # and then _codes hashed it again for the values
    spans = {n: _span(stats, more, n) for n in varying if columns[n] == pl.Float64()}
    whole = [n for n, span in spans.items() if span is not None]
    hashed = [n for n in varying if columns[n] != pl.Boolean() and n not in whole]
    uniques: dict[str, pl.Series] = {n: more["u:" + n] for n in hashed if "u:" + n in more}
    if _too_many(group, varying, columns, stats, uniques, limit):
        return _decimal_pieces(group, key, stats, columns, expr)
    checks = [
        *(pl.col(n).unique().implode().alias("u:" + n) for n in hashed if n not in uniques),
        *((pl.col(n) == pl.col(n).floor()).all().alias("w:" + n) for n in whole),
    ]
    found = group.select(checks) if checks else pl.DataFrame()
    uniques |= {n: found["u:" + n][0] for n in hashed if n not in uniques}
    if not all(found["w:" + n][0] for n in whole):  # not counts after all: hashed like the rest
        hashed = [n for n in whole if not found["w:" + n][0]]
        whole = [n for n in whole if found["w:" + n][0]]
        found = group.select(pl.col(n).unique().implode().alias("u:" + n) for n in hashed)
        uniques |= {n: found["u:" + n][0] for n in hashed}
    counts = [
        uniques[n].len() if n in uniques else _domain_size(spans.get(n), stats["n:" + n]) for n in varying
    ]
    if math.prod(counts) <= limit:
        ranges = {n: (stats["lo:" + n], stats["hi:" + n]) for n in whole}
        nullable = {n: stats["n:" + n] > 0 for n in varying}
        shared = _per_combination(group, varying, expr, ranges, nullable, uniques)
        if shared is not None:
            return shared
    return _decimal_pieces(group, key, stats, columns, expr)


_SCALES = (1, 10, 100)  # a float fact of whole numbers, tenths or hundredths: coded by arithmetic
_CODE_MAX = 2.0**31  # |value| × scale below this: the code and the table's values are exact


def _decimal_pieces(
    group: pl.DataFrame,
    parts: tuple[tuple[Any, ...], ...],
    stats: Mapping[str, Any],
    columns: Mapping[str, pl.DataType],
    expr: pl.Expr,
) -> pl.Expr:
    """``expr`` with each float fact of few decimals taken from a table of its texts by a code.

    Why: such a piece (days, doses, lab values, counts: at most a few thousand steps of 1, 0.1
    or 0.01) was two items of the per-row concatenation, its key where the value is present (a
    when/then that writes a column of texts) and the value cast to text row by row — the float
    formatting was most of the largest tiers' evidence. Here ``round(x × scale)`` minus the
    lowest such code indexes a table of every ``,"key":value`` text from lo to hi, made once by
    the same cast; null where the value is, as before. Exact: the table's float at a code is one
    row's value, and a column is coded only when every row's value is its code's float (so the
    text is the one the cast writes for it), no value is NaN, and the table is small; a column
    with a zero only when it is whole and holds no -0.0 (0.0 and -0.0 are one code and equal to
    the check, but print apart). Why from the rows and not ``k / scale``: values computed by
    polars (a division by 10 is a multiplication by 0.1) are not always a decimal's nearest
    float. The scale is guessed on the first rows; whole numbers take the arithmetic path of
    :func:`_whole_tables`, the rest codes computed eagerly. Why whole zeros are coded: counts of
    medicines (0.0 on most rows) were the largest per-row casts left in the medicine tiers.
    """
    height = group.height
    size_max = min(_SHARE_MAX, height // _SHARE_RATIO)
    candidates = []
    for p in parts:
        n = p[4]
        if p[1] is None or columns[n] != pl.Float64() or stats.get("nan:" + n):
            continue
        lo, hi = stats["lo:" + n], stats["hi:" + n]
        if lo is not None and -_CODE_MAX / _SCALES[-1] <= lo <= hi <= _CODE_MAX / _SCALES[-1]:
            candidates.append(n)
    if not candidates:
        return expr
    signed = [n for n in candidates if stats.get("zero:" + n)]
    probe = group.select(_probe_exprs(tuple(candidates), tuple(signed))).row(0, named=True)
    scales: dict[str, int] = {}
    for n in candidates:
        scale = next((s for s in _SCALES if probe[f"{s}:{n}"] is not False), None)
        lo, hi = stats["lo:" + n], stats["hi:" + n]
        if scale is not None and round(hi * scale) - round(lo * scale) + 1 <= size_max:
            scales[n] = scale
    if not scales:
        return expr
    whole = [n for n, s in scales.items() if s == 1 and probe["w:" + n] and not probe.get("m:" + n)]
    spans = tuple((n, stats["lo:" + n], stats["hi:" + n]) for n in whole)
    # a zero among codes computed eagerly: left per row, as the equality check cannot see its sign
    rest = [n for n in scales if n not in whole and n not in signed]
    if not rest:  # the expression depends on the parts and each table's lo and hi only: cached
        return _assemble_whole(parts, spans)
    tables = _whole_tables(spans)
    coded = group.select(_scaled(pl.col(n), scales[n]).alias(n) for n in rest)
    for n in rest:
        code, value = coded[n], group[n]
        base, top = code.min(), code.max()
        if base is None or top - base + 1 > size_max:
            continue
        code = code - base
        # each code's float as the rows hold it (the last row's), then every row checked against
        # it: a code whose rows hold two floats (not a decimal's nearest, say) fails the check
        floats = pl.repeat(None, top - base + 1, dtype=pl.Float64, eager=True)
        floats = floats.scatter(code.drop_nulls(), value.drop_nulls())
        if (floats.gather(code) == value).all():  # every row's float is its code's: the same text
            texts = pl.select(json_value(n, columns[n], pl.lit(floats)).alias("t"))["t"]
            tables[n] = (pl.lit(code), texts)  # the codes of these rows (the caller's)
    return _assemble_with(parts, tables) if tables else expr


@lru_cache(maxsize=1024)
def _probe_exprs(names: tuple[str, ...], signed: tuple[str, ...]) -> tuple[pl.Expr, ...]:
    """:func:`_decimal_pieces`' one query: the scale guesses and the whole-number checks.

    Per column ``s:`` + name for each scale (x × s within a millionth of a whole number on the
    first rows: only a guess, the exact test is each code's float against every row's value),
    ``w:`` + name (every row whole) and, of ``signed`` (columns with a zero), ``m:`` + name (any
    -0.0). Why multi-column expressions, cached: polars plans and runs each expression of a
    select apart (~30 µs each even on a few rows), a fixed cost per tier and chunk that small
    tiers paid more for than their texts saved.
    """
    cols, head = pl.col(names), pl.col(names).head(_SAMPLE)
    exprs = [(((head * s) - (head * s).round()).abs() < 1e-6).all().name.prefix(f"{s}:") for s in _SCALES]
    exprs.append((cols == cols.round()).all().name.prefix("w:"))
    if signed:
        zeros = pl.col(signed)
        exprs.append(((zeros == 0.0) & (pl.lit(1.0) / zeros < 0.0)).any().name.prefix("m:"))
    return tuple(exprs)


@lru_cache(maxsize=1024)
def _assemble_whole(
    parts: tuple[tuple[Any, ...], ...], spans: tuple[tuple[str, float, float], ...]
) -> pl.Expr:
    """:func:`_assemble_with` with only whole-number tables, cached as :func:`_assemble` is: the
    tables depend on each column's lo and hi only, which mostly recur from chunk to chunk."""
    return _assemble_with(parts, _whole_tables(spans)) if spans else _assemble(parts)


def _whole_tables(spans: Sequence[tuple[str, float, float]]) -> dict[str, tuple[pl.Expr, pl.Series]]:
    """Tables of whole-number columns with no -0.0 (the caller checked), from (name, lo, hi).

    Why apart: counts of medicines (0, 1, 2 …) are most of the float facts of the medicine tiers,
    and the general path took each through a dozen eager Series steps (codes, a scatter, a gather,
    comparisons) — more than their texts saved. A whole number's code is arithmetic (``x - lo``,
    computed in the text query itself) and the table's float at it is ``lo + k``, the very value
    of every row with that code: exact because every row is whole (``x == round(x)``, |x| below
    2^31) and none is -0.0 (``lo + k`` never is, and its text differs). Every column's table is
    cast to text in one query.
    """
    if not spans:
        return {}
    sizes = [int(hi - lo) + 1 for _, lo, hi in spans]
    values = [lo + k for (_, lo, _), size in zip(spans, sizes, strict=True) for k in range(size)]
    floats = pl.lit(pl.Series(values, dtype=pl.Float64))
    texts = pl.select(json_value("t", pl.Float64(), floats).alias("t"))["t"]
    tables: dict[str, tuple[pl.Expr, pl.Series]] = {}
    offset = 0
    for (n, lo, _), size in zip(spans, sizes, strict=True):
        tables[n] = ((pl.col(n) - lo).cast(pl.Int64), texts.slice(offset, size))
        offset += size
    return tables


def _scaled(col: pl.Expr, scale: int) -> pl.Expr:
    """``round(x × scale)`` as an integer: a value's code before the table's lowest is taken off."""
    return (col * scale).round().cast(pl.Int64)


_SAMPLE = 4096  # rows whose distinct values bound a table's size from below (_too_many)


def _too_many(
    group: pl.DataFrame,
    varying: Sequence[str],
    columns: Mapping[str, pl.DataType],
    stats: Mapping[str, Any],
    uniques: Mapping[str, pl.Series],
    limit: int,
) -> bool:
    """True when the per-combination table certainly passes ``limit`` rows, from the first rows.

    Why: the table's size is the product of each varying column's count (its distinct values,
    null included, or a coded column's domain, which holds at least those), and finding the
    counts hashes every row of every float column. On spread facts (days, doses: thousands of
    values) the product was far past the limit and that hashing was wasted — the largest part of
    the evidence statistics of the biggest tiers. The distinct values among the first rows are a
    lower bound of every column's count, so past the limit the answer is final (the caller
    returns the per-row expression, as the full count would have made it).
    """
    unknown = [n for n in varying if columns[n] != pl.Boolean() and n not in uniques]
    if not unknown or group.height <= _SAMPLE:
        return False
    seen = group.head(_SAMPLE).select(pl.col(unknown).n_unique()).row(0, named=True)
    bound = 1
    for n in varying:
        if columns[n] == pl.Boolean():
            bound *= _domain_size(None, stats["n:" + n])
        else:
            bound *= uniques[n].len() if n in uniques else seen[n]
    return bound > limit


def _domain_size(span: int | None, nulls: int) -> int:
    """The size of an arithmetic-coded column's domain: a boolean's or lo … lo + span, and null."""
    return (2 if span is None else span + 1) + (nulls > 0)


_WHOLE_SPAN = 64  # a float column coded by arithmetic holds whole numbers lo … lo + this at most
_WHOLE_MAX = 2.0**31  # … of this size at most (every step of the arithmetic is exact)


def _span(stats: Mapping[str, Any], more: Mapping[str, Any], name: str) -> int | None:
    """hi - lo of a float column that may hold only whole numbers close together, else None.

    The caller still checks every value is whole. -0.0 rules it out: the code of -0.0 would be
    the code of 0.0, whose text differs.
    """
    lo, hi = stats["lo:" + name], stats["hi:" + name]
    if lo is None or more.get("neg0:" + name) or not (-_WHOLE_MAX <= lo <= hi <= _WHOLE_MAX):
        return None
    if lo != math.floor(lo) or hi != math.floor(hi) or hi - lo > _WHOLE_SPAN:
        return None
    return int(hi - lo)


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

    Why a few multi-column expressions, and the first row's texts not among them (see
    :func:`_first_texts`): polars plans and runs each expression of a select apart, ~30 µs each
    even on a few rows, and a tier with 29 facts had 67 of them — the first query cost ~1 ms
    per tier and chunk whatever its size, about half of this module's time on a 100,000-row
    chunk. Why cached: building the expressions was a fixed cost per call too.
    """
    names = [n for n, _ in typed]
    floats = [n for n, t in typed if t == pl.Float64()]
    strings = [n for n, t in typed if t == pl.String()]
    others = [n for n, t in typed if t != pl.String()]
    exprs = [pl.col(names).null_count().name.prefix("n:")]
    if others:
        exprs += [pl.col(others).min().name.prefix("lo:"), pl.col(others).max().name.prefix("hi:")]
    if strings:  # equal to the first row: a string min and max cost four times this
        exprs.append((pl.col(strings) == pl.col(strings).first()).all().name.prefix("eq:"))
    if floats:
        exprs += [
            pl.col(floats).is_nan().any().name.prefix("nan:"),
            (pl.col(floats) == 0.0).any().name.prefix("zero:"),
        ]
    return tuple(exprs)


def _first_texts(
    group: pl.DataFrame, names: Sequence[str], columns: Mapping[str, pl.DataType]
) -> dict[str, str | None]:
    """Each fact's ``"key":value`` text on the first row of ``group`` (None where it is null).

    The same steps as :func:`json_value` on that one value: a string's five replacements (the
    same literal ones, in the same order, as ``str.replace``), anything else cast to text by
    polars itself (a one-value slice: the cast kernel of the per-row path, so ``1.0``,
    ``1e+20``, ``-0.0`` and ``true`` come out as they would there). Why not in the stats query:
    those were one expression per fact, most of that query's fixed cost.
    """
    texts: dict[str, str | None] = {}
    head = group.head(1)  # a literal column of the group is then written out for one row, not all
    for n in names:
        first = head.get_column(n)
        if columns[n] == pl.String():
            value = first.item()
            if value is not None:
                for raw, esc in _ESCAPES:
                    value = value.replace(raw, esc)
                value = '"' + value + '"'
        else:
            value = first.cast(pl.String).item()
        texts[n] = None if value is None else json.dumps(n) + ":" + value
    return texts


def _more_stats(group: pl.DataFrame, signed: Sequence[str], escapes: Sequence[str]) -> dict[str, Any]:
    """Both signed zeros, any -0.0 (``signed``), characters JSON escapes (``escapes``).

    0.0 and -0.0 are equal to min/max and to hashing but print apart; 1/x over the zero rows is
    +inf or -inf, so its min and max tell which signs are there (one pass each). The escapes are
    looked for among the distinct strings: category facts have a handful, and the regex cost more
    per row than hashing the column did. Those distinct strings (null included) are kept as
    ``u:`` + name: a string shared per combination takes its count and codes from them.
    """
    if not signed and not escapes:
        return {}
    inv = [(n, pl.when(pl.col(n) == 0.0).then(pl.lit(1.0) / pl.col(n))) for n in signed]
    frame = group.select(
        *(i.min().alias("lo0:" + n) for n, i in inv),
        *(i.max().alias("hi0:" + n) for n, i in inv),
        *(pl.col(n).unique().implode().alias("u:" + n) for n in escapes),
    )
    found: dict[str, Any] = {}
    for n in signed:
        negative, positive = frame["lo0:" + n][0] == -math.inf, frame["hi0:" + n][0] == math.inf
        found["both0:" + n], found["neg0:" + n] = negative and positive, negative
    for n in escapes:
        values = frame["u:" + n][0]
        found["u:" + n], found["esc:" + n] = values, bool(values.str.contains(_NEEDS_ESCAPE).any())
    return found


@lru_cache(maxsize=1024)
def _assemble(parts: tuple[tuple[Any, ...], ...]) -> pl.Expr:
    """:func:`_assemble_with` without tables, cached: building the expression (~0.2 ms a tier)
    was paid again by every chunk of a streamed screening, and a tier's parts (constant texts,
    which pieces may be null) mostly recur from chunk to chunk."""
    return _assemble_with(parts, {})


def _assemble_with(
    parts: tuple[tuple[Any, ...], ...], tables: Mapping[str, tuple[pl.Expr, pl.Series]]
) -> pl.Expr:
    """``{`` + the non-null pieces joined by commas + ``}``: one flat ``concat_str``.

    Why flat: a nested concatenation (pieces joined with a separator, then braces added) wrote
    each ~200-byte row text two or three times; here each byte is written once. A piece that may
    be null carries its own key and comma as a literal that is null exactly where the value is
    (``ignore_nulls`` skips both). Its comma is a plain literal once an earlier piece is never
    null; before that, it is there only when an earlier piece is present on the row. A boolean
    is a choice between two literals (key and value in each), not a cast: polars shares a
    literal's bytes among the rows that take it, where a cast writes each row's text.

    ``tables``: per column, each row's code and the texts it indexes (:func:`_decimal_pieces`);
    such a piece whose comma is fixed is one gather of its whole text (comma, key, value, and
    the literal text before it when the piece is never null), null where the value is.
    """
    items: list[pl.Expr] = []
    pending = "{"  # literal text not yet emitted
    earlier: list[pl.Expr] = []  # presence of the nullable pieces seen while none was never-null
    anchored = False  # an earlier piece is never null: every later piece starts with a comma
    for i, (prefix, value, suffix, never_null, name, boolean) in enumerate(parts):
        present = None if never_null else pl.col(name).is_not_null()
        if i == 0 or anchored:
            lead: pl.Expr | str = ("," if i else "") + prefix
        else:  # a comma only where some earlier (nullable) piece is there
            lead = pl.when(pl.any_horizontal(earlier)).then(pl.lit("," + prefix)).otherwise(pl.lit(prefix))
        if boolean and isinstance(lead, str):  # the piece's whole text by the value: no cast
            flag = pl.col(name)
            if present is None:
                yes, no = pl.lit(pending + lead + "true"), pl.lit(pending + lead + "false")
                items.append(pl.when(flag).then(yes).otherwise(no))
                anchored = True
            else:
                if pending:
                    items.append(pl.lit(pending, pl.String))
                yes, no = pl.lit(lead + "true"), pl.lit(lead + "false")
                items.append(pl.when(flag).then(yes).when(flag.not_()).then(no))
                earlier.append(present)
            pending = ""
            continue
        if name in tables and isinstance(lead, str):  # comma, key and value by one gather
            code, texts = tables[name]
            if pending and present is not None:  # the text before it is there on every row
                items.append(pl.lit(pending, pl.String))
                pending = ""
            items.append(pl.lit((pending + lead) + texts + suffix).gather(code))
            pending = ""
            if present is None:
                anchored = True
            else:
                earlier.append(present)
            continue
        if present is None and isinstance(lead, str):
            pending += lead
        else:
            if pending:
                items.append(pl.lit(pending, pl.String))
            pending = ""
            lead_expr = pl.lit(lead, pl.String) if isinstance(lead, str) else lead
            items.append(lead_expr if present is None else pl.when(present).then(lead_expr))
        if value is not None:
            column, dtype, raw = value
            value = pl.col(column) if raw else json_value(column, dtype)
            if pending:
                items.append(pl.lit(pending, pl.String))
                pending = ""
            items.append(value)
            if suffix and present is not None:
                items.append(pl.when(present).then(pl.lit(suffix, pl.String)))
            else:
                pending = suffix
        if present is None:
            anchored = True
        else:
            earlier.append(present)
    items.append(pl.lit(pending + "}", pl.String))
    return pl.concat_str(items, ignore_nulls=True)


def _per_combination(
    group: pl.DataFrame,
    varying: Sequence[str],
    expr: pl.Expr,
    whole: Mapping[str, tuple[float, float]],
    nullable: Mapping[str, bool],
    uniques: Mapping[str, pl.Series],
) -> pl.Expr | None:
    """``expr`` evaluated once per combination of the varying columns, taken by index per row.

    Each column's values (null included) get codes 0…k-1; a row's index is the mixed-radix
    number of its codes. The table holds every combination of those values, its text computed
    by ``expr`` itself, so a row's text is the one ``expr`` gives on that row. Callers guarantee
    the values are exact hash keys (no NaN, no ±0 mix). None when the table would pass
    _SHARE_MAX rows (the caller's count was an estimate).

    Why codes by arithmetic where possible: hashing each column (its distinct values, then a
    lookup per row) was most of this path's cost. A boolean's code is its value; a column in
    ``whole`` (only whole numbers from lo to hi, no -0.0: the caller checked) is its value
    minus lo. Such a domain may hold values no row has, which only adds rows to the table.
    """
    coded = [(n, *_codes(group, n, whole.get(n), uniques.get(n))) for n in varying]
    if math.prod(values.len() + nullable[n] for n, values, _ in coded) > _SHARE_MAX:
        return None
    index: pl.Expr | None = None
    position = pl.int_range(math.prod(values.len() + nullable[n] for n, values, _ in coded), dtype=pl.Int64)
    domains = []  # each column's value at every table row (built directly: a cross join left it in
    stride = 1  # thousands of chunks, and the text query paid for each)
    for n, values, code in reversed(coded):  # the last column varies fastest
        size = values.len() + nullable[n]
        code = code.fill_null(values.len())  # null: the code after the values
        index = code * stride if index is None else index + code * stride
        domain = pl.concat([values, pl.Series(n, [None], dtype=values.dtype)]).head(size)
        domains.append(pl.lit(domain).gather(position // stride % size).alias(n))
        stride *= size
    assert index is not None
    texts = pl.select(domains).select(expr.alias("t"))["t"]  # row i of the table is index i
    return pl.lit(texts).gather(index)


def _codes(
    group: pl.DataFrame, name: str, bounds: tuple[float, float] | None, uniques: pl.Series | None
) -> tuple[pl.Series, pl.Expr]:
    """A column's non-null domain and each row's code into it (null where the value is).

    ``uniques``: the column's distinct values when the caller has them (they are the domain).
    """
    dtype = group.schema[name]
    if dtype == pl.Boolean():
        return pl.Series(name, [False, True], dtype=dtype), pl.col(name).cast(pl.Int64)
    if bounds is not None:
        lo, hi = bounds
        values = pl.Series(name, [lo + k for k in range(int(hi - lo) + 1)], dtype=dtype)
        return values, (pl.col(name) - lo).cast(pl.Int64)
    values = (group[name].unique() if uniques is None else uniques).drop_nulls().alias(name)
    return values, pl.col(name).replace_strict(values, list(range(values.len())), return_dtype=pl.Int64)
