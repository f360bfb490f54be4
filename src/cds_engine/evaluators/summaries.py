"""Alert summaries as column expressions: :func:`cds_engine.messages.render` + ``short_text``, column-wise.

Why: rendering a summary per distinct combination of a tier's values still costs one Python
call per combination, and on a million patients with spread values (age, eGFR, doses) that is
tens of thousands of calls — most of the full alert table's time. A template is literal text
and placeholders; each placeholder's text depends on *one* fact (and its bound columns), so it
is rendered once per distinct value of that fact by the shared formatter (:func:`fmt_value`,
the pack's labels, :func:`absent_text`) and the pieces are joined by polars. The whitespace
folding and the 139-character cut of ``short_text`` are string expressions.

Exact by construction, and :func:`summary_expr` returns None for what it does not mirror (a
template that reads ``medication_lists_complete``, whose absence changes other placeholders):
the caller then renders per combination as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from cds_engine.messages import _PLACEHOLDER, absent_text, fmt_value

__all__ = ["summary_expr"]

_SIGNS = (("__gt", ">"), ("__ge", "≥"), ("__lt", "<"), ("__le", "≤"))
_LIMIT = 139  # results.short_text
_WHITESPACE = r"[\s\x1c-\x1f]+"  # what str.split() splits on (Rust's \s lacks the separators \x1c-\x1f)


def _formatted(frame: pl.DataFrame, name: str, labels: Mapping[str, str] | None, sign: str = "") -> pl.Expr:
    """``sign + fmt_value(value)`` (labels for coded strings) of every non-null value of a column."""
    values = frame[name].drop_nulls().unique().to_list()
    texts = []
    for v in values:
        if not sign and labels and isinstance(v, str) and v in labels:
            texts.append(labels[v])
        else:
            texts.append(sign + fmt_value(v))
    if not values:
        return pl.lit(None, pl.String)
    return pl.col(name).replace_strict(values, texts, default=None, return_dtype=pl.String)


def summary_expr(
    frame: pl.DataFrame,
    template: str,
    params: Mapping[str, Any],
    extra: Mapping[str, Any],
    labels: Mapping[str, str] | None,
) -> pl.Expr | None:
    """The rendered, shortened summary of every row of ``frame`` (its columns are the row's facts)."""
    pieces: list[pl.Expr] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        if match.start() > pos:
            pieces.append(pl.lit(template[pos : match.start()]))
        pos = match.end()
        name, fallback = match.group(1), match.group(2)
        if name == "medication_lists_complete":
            return None
        if name.startswith("param.") or name in extra:
            pieces.append(
                pl.lit(fmt_value(params.get(name[6:]) if name.startswith("param.") else extra[name]))
            )
            continue
        absent = absent_text(name, {})
        otherwise = pl.lit(absent if absent is not None else ("unknown" if fallback is None else fallback))
        expr: Any = None
        for column, sign in ((name, ""), *((name + s, g) for s, g in _SIGNS)):
            if column not in frame.columns:
                continue
            text = _formatted(frame, column, labels, sign)
            expr = (
                pl.when(pl.col(column).is_not_null())
                if expr is None
                else expr.when(pl.col(column).is_not_null())
            )
            expr = expr.then(text)
        pieces.append(otherwise if expr is None else expr.otherwise(otherwise))
    if pos < len(template):
        pieces.append(pl.lit(template[pos:]))
    if not pieces:
        return pl.lit("")
    text = pl.concat_str(pieces).str.replace_all(_WHITESPACE, " ").str.strip_chars(" ")
    return (
        pl.when(text.str.len_chars() <= _LIMIT)
        .then(text)
        .otherwise(text.str.slice(0, _LIMIT - 1).str.strip_chars_end() + pl.lit("…"))
    )
