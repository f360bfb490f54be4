"""Alert summaries as column expressions: :func:`cds_engine.messages.render` + ``short_text``, column-wise.

Why: rendering a summary per distinct combination of a tier's values still costs one Python
call per combination, and on a million patients with spread values (age, eGFR, doses) that is
tens of thousands of calls — most of the full alert table's time. A template is literal text
and placeholders; each placeholder's text depends on *one* fact (and its bound columns), so it
is rendered once per distinct value of that fact by the shared formatter (:func:`fmt_value`,
the pack's labels, :func:`absent_text`) and the pieces are joined by polars. The whitespace
folding and the 139-character cut of ``short_text`` are string expressions.

Each piece also knows every text it can take on the rows at hand, which lets the expression
skip work that provably changes nothing: a piece with one possible text is a literal (most
summaries are constant within a tier), the regex that folds whitespace is left out when no
piece holds a run, a non-space blank or a blank at a seam, and the cut when no combination
reaches the limit. The folded/cut form is still computed by the same expressions wherever it
could matter, so the result is identical either way. When only one placeholder varies, its
texts take the literal text around it, so each row's summary is one of a few whole texts whose
bytes polars shares, rather than a concatenation written per row.

Exact by construction, and :func:`summary_expr` returns None for what it does not mirror (a
template that reads ``medication_lists_complete``, whose absence changes other placeholders):
the caller then renders per combination as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

import polars as pl

from cds_engine.messages import _PLACEHOLDER, absent_text, fmt_value

__all__ = ["summary_expr"]

_SIGNS = (("__gt", ">"), ("__ge", "≥"), ("__lt", "<"), ("__le", "≤"))
_LIMIT = 139  # results.short_text
_WHITESPACE = r"[\s\x1c-\x1f]+"  # what str.split() splits on (Rust's \s lacks the separators \x1c-\x1f)


# sign + fmt_value(v) by (v, sign): a value's text recurs in every tier and chunk that shows it
_FORMATTED: dict[tuple[Any, str], str] = {}
_FORMATTED_MAX = 200_000
_FOLDED: dict[str, bool] = {}  # text -> unchanged by the fold's regex (see _already_folded)


@dataclass(frozen=True)
class _Piece:
    """One stretch of a summary: its expression and every text it can take on the frame's rows."""

    expr: pl.Expr
    texts: frozenset[str]
    fact: tuple[str, str | None] | None = None  # (name, fallback) of a fact placeholder

    @classmethod
    def literal(cls, text: str) -> _Piece:
        return cls(pl.lit(text), frozenset([text]))


def _formatted(
    frame: pl.DataFrame,
    name: str,
    labels: Mapping[str, str] | None,
    sign: str = "",
    wrap: tuple[str, str] = ("", ""),
    uniques: dict[str, Any] | None = None,
) -> tuple[pl.Expr, list[str]]:
    """``sign + fmt_value(value)`` (labels for coded strings) of every non-null value of a column.

    Each text is put between ``wrap``'s two strings; ``uniques`` keeps each column's distinct
    values (and whether it holds both signed zeros) for a second call on the same frame.
    """
    if uniques is None:
        uniques = {}
    if name not in uniques:
        uniques[name] = frame[name].drop_nulls().unique().to_list()
    values = uniques[name]
    texts = []
    for v in values:
        if not sign and labels and isinstance(v, str) and v in labels:
            texts.append(labels[v])
        elif v == 0 or v != v or isinstance(v, bool):  # ±0, NaN, True == 1 == 1.0: not cache keys
            texts.append(sign + fmt_value(v))
        else:
            text = _FORMATTED.get((v, sign))
            if text is None:
                text = sign + fmt_value(v)
                if len(_FORMATTED) < _FORMATTED_MAX:
                    _FORMATTED[(v, sign)] = text
            texts.append(text)
    if wrap != ("", ""):
        texts = [wrap[0] + t + wrap[1] for t in texts]
    if not values:
        return pl.lit(None, pl.String), texts
    expr = pl.col(name).replace_strict(values, texts, default=None, return_dtype=pl.String)
    if frame[name].dtype.is_float() and 0.0 in values:
        # 0.0 and -0.0 are one key to unique/replace_strict but fmt_value prints "0" and "-0"
        zero, negative = (wrap[0] + sign + fmt_value(z) + wrap[1] for z in (0.0, -0.0))
        col = pl.col(name)
        if name + "\0both" not in uniques:
            uniques[name + "\0both"] = frame.select(
                ((col == 0.0) & (pl.lit(1.0) / col < 0)).any()
                & ((col == 0.0) & (pl.lit(1.0) / col > 0)).any()
            ).item()
        if zero != negative and uniques[name + "\0both"]:
            signed = pl.when(pl.lit(1.0) / pl.col(name) < 0).then(pl.lit(negative)).otherwise(pl.lit(zero))
            expr = pl.when(pl.col(name) == 0.0).then(signed).otherwise(expr)
            texts += [zero, negative]
    return expr, texts


def _fact_piece(
    frame: pl.DataFrame,
    name: str,
    fallback: str | None,
    labels: Mapping[str, str] | None,
    wrap: tuple[str, str] = ("", ""),
    uniques: dict[str, Any] | None = None,
) -> _Piece:
    """A fact placeholder: its value, else a bound ("> 60"), else the absent wording.

    Every text is put between ``wrap``'s two strings (the literal text around the one placeholder
    of a summary that varies: see :func:`summary_expr`).
    """
    absent = absent_text(name, {})
    otherwise_text = absent if absent is not None else ("unknown" if fallback is None else fallback)
    otherwise_text = wrap[0] + otherwise_text + wrap[1]
    expr: Any = None
    texts: set[str] = set()
    reaches_otherwise = True
    for column, sign in ((name, ""), *((name + s, g) for s, g in _SIGNS)):
        if column not in frame.columns:
            continue
        text, column_texts = _formatted(frame, column, labels, sign, wrap, uniques)
        cond = pl.col(column).is_not_null()
        expr = pl.when(cond) if expr is None else expr.when(cond)
        expr = expr.then(text)
        texts.update(column_texts)
        if frame[column].null_count() == 0:  # later branches and the fallback are never reached
            reaches_otherwise = False
            break
    if reaches_otherwise:
        texts.add(otherwise_text)
    if len(texts) == 1:
        return _Piece.literal(next(iter(texts)))
    return _Piece(expr.otherwise(pl.lit(otherwise_text)), frozenset(texts), (name, fallback))


def _fold(text: pl.Expr) -> pl.Expr:
    """``" ".join(text.split())`` (whitespace runs to one space, ends stripped)."""
    return text.str.replace_all(_WHITESPACE, " ").str.strip_chars(" ")


def _cut(text: pl.Expr) -> pl.Expr:
    """``short_text``'s cut: at most 139 characters, the last an ellipsis."""
    return (
        pl.when(text.str.len_chars() <= _LIMIT)
        .then(text)
        .otherwise(text.str.slice(0, _LIMIT - 1).str.strip_chars_end() + pl.lit("…"))
    )


@lru_cache(maxsize=4096)
def _shortened(whole: str) -> str:
    """A constant summary folded and cut by the same expressions (cached: it recurs every chunk)."""
    return pl.select(_cut(_fold(pl.lit(whole)))).item()


def _already_folded(pieces: Sequence[_Piece]) -> bool:
    """True when folding cannot change any concatenation of the pieces' texts.

    Each text must be unchanged by the fold's regex (so its only blanks are single spaces), no
    variable text may be empty (its neighbours would meet), no seam may join two spaces, and
    the whole may not start or end with a space. The regex itself decides the first point.
    """
    every = sorted({t for p in pieces for t in p.texts} - _FOLDED.keys())
    if every:  # the texts not seen before, through the regex in one query
        series = pl.Series(every, dtype=pl.String)
        unchanged = (series.str.replace_all(_WHITESPACE, " ") == series).to_list()
        if len(_FOLDED) < _FORMATTED_MAX:
            _FOLDED.update(zip(every, unchanged, strict=True))
        if not all(unchanged):
            return False
    if not all(_FOLDED.get(t, True) for p in pieces for t in p.texts):
        return False
    if any("" in p.texts for p in pieces):
        return False
    if any(t.startswith(" ") for t in pieces[0].texts) or any(t.endswith(" ") for t in pieces[-1].texts):
        return False
    return not any(
        any(t.endswith(" ") for t in a.texts) and any(t.startswith(" ") for t in b.texts)
        for a, b in pairwise(pieces)
    )


def summary_expr(
    frame: pl.DataFrame,
    template: str,
    params: Mapping[str, Any],
    extra: Mapping[str, Any],
    labels: Mapping[str, str] | None,
) -> pl.Expr | None:
    """The rendered, shortened summary of every row of ``frame`` (its columns are the row's facts)."""
    pieces: list[_Piece] = []
    uniques: dict[str, Any] = {}
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        if match.start() > pos:
            pieces.append(_Piece.literal(template[pos : match.start()]))
        pos = match.end()
        name, fallback = match.group(1), match.group(2)
        if name == "medication_lists_complete":
            return None
        if name.startswith("param.") or name in extra:
            value = params.get(name[6:]) if name.startswith("param.") else extra[name]
            pieces.append(_Piece.literal(fmt_value(value)))
            continue
        pieces.append(_fact_piece(frame, name, fallback, labels, uniques=uniques))
    if pos < len(template):
        pieces.append(_Piece.literal(template[pos:]))
    if not pieces:
        return pl.lit("")
    if all(len(p.texts) == 1 for p in pieces):  # one text for every row: shorten it once
        return pl.lit(_shortened("".join(next(iter(p.texts)) for p in pieces)), pl.String)
    varying = [i for i, p in enumerate(pieces) if len(p.texts) > 1]
    fact = pieces[varying[0]].fact if len(varying) == 1 and len(pieces) > 1 else None
    if fact is not None:  # one placeholder varies: its texts hold the literals around it, and
        # each row takes its whole summary from a few distinct ones (no concatenation per row)
        i = varying[0]
        wrap = (
            "".join(next(iter(p.texts)) for p in pieces[:i]),
            "".join(next(iter(p.texts)) for p in pieces[i + 1 :]),
        )
        pieces = [_fact_piece(frame, *fact, labels, wrap, uniques)]
    text = pieces[0].expr if len(pieces) == 1 else pl.concat_str([p.expr for p in pieces])
    if not _already_folded(pieces):
        text = _fold(text)
    longest = sum(max(len(t) for t in p.texts) for p in pieces)
    return text if longest <= _LIMIT else _cut(text)
