"""The vectorised (polars) evaluator: the pack's condition trees over a whole frame of patients.

Why a third evaluator: batch screening evaluates millions of patients whose facts arrive as
columns (Parquet, a warehouse extract). Evaluating one patient at a time — Rete or plain
Python — costs tens of microseconds each; the same conditions as column expressions cost
well under a microsecond per patient (rule-engines.md §A.4).

It is compiled from the same trees as the Rete path, through :mod:`cds_engine.rules.projection`:
each tier's ``is_true`` and ``maybe_true`` projections become boolean expressions; TRUE =
is_true, UNKNOWN = maybe_true and not is_true. The input frame has one column per flat fact
(``meds.opioid_agonist`` and the bound columns ``egfr__gt`` … included); a missing fact is a
null, family facts are filled with their default (0 opioids is not "missing").

:func:`vector_alerts` then reproduces :func:`cds_engine.results.build_alerts` column-wise: one
alert per rule at its highest TRUE tier, the undecided higher tiers listed on it, and the
grouped "cannot assess" alerts with the same covering-rule suppression. Text that depends on
the patient's values (summaries) is rendered by the shared :func:`cds_engine.messages.render`
once per distinct combination of values and joined back, so it is identical by construction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from cds_engine.alerts import SEVERITY_ORDER
from cds_engine.facts import catalog
from cds_engine.messages import render
from cds_engine.results import MISSING_DATA_RULE
from cds_engine.rules.compile import CompiledPack, CompiledTier, placeholders
from cds_engine.rules.conditions import BOUND_SUFFIXES, FALSE, TRUE, UNKNOWN, Clause, Leaf, facts_of, leaf_clauses
from cds_engine.rules.projection import Projection, project_node

__all__ = [
    "ALERT_SCHEMA",
    "VectorPack",
    "fact_dtype",
    "frame_from_flats",
    "vector_alerts",
]

# The batch alert table; the Rete path of the batch command produces exactly these columns.
ALERT_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "kind": pl.String(),
    "rule_id": pl.String(),
    "tier_id": pl.String(),
    "category": pl.String(),
    "severity": pl.String(),
    "title": pl.String(),
    "summary": pl.String(),
    "missing": pl.List(pl.String()),
    "not_assessed": pl.List(pl.String()),
    "evidence": pl.String(),
    "pack_id": pl.String(),
    "pack_version": pl.String(),
    "pack_hash": pl.String(),
}

_DTYPES: dict[str, pl.DataType] = {"number": pl.Float64(), "bool": pl.Boolean(), "string": pl.String()}


def fact_dtype(name: str) -> pl.DataType:
    """Column type of a flat fact (bound columns are numbers)."""
    for suffix in BOUND_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in catalog.FACTS:
            return pl.Float64()
    spec, family, _ = catalog.lookup(name)
    if spec is not None:
        return _DTYPES[spec.type]
    if family is not None:
        return _DTYPES[family.type]
    raise KeyError(f"unknown fact {name!r}")


def _lit_list(values: Any) -> list[Any]:
    return list(values) if isinstance(values, tuple | list) else [values]


def _clause(c: Clause) -> pl.Expr:
    col = pl.col(c.fact)
    if c.kind == "absent":
        return col.is_null()
    if c.kind == "present":
        return col.is_not_null()
    if c.op == "in":
        return col.is_in(_lit_list(c.value)).fill_null(False)
    if c.op == "not_in":
        return (~col.is_in(_lit_list(c.value))).fill_null(False)
    value = pl.lit(c.value)
    expr = {
        "eq": col == value, "ne": col != value, "lt": col < value,
        "lte": col <= value, "gt": col > value, "gte": col >= value,
    }[c.op]
    return expr.fill_null(False)


_POLARS: Projection[pl.Expr] = Projection(
    clause=_clause,
    conj=lambda items: pl.all_horizontal(list(items)),
    disj=lambda items: pl.any_horizontal(list(items)),
)


def _as_expr(value: pl.Expr | bool) -> pl.Expr:
    return pl.lit(value) if isinstance(value, bool) else value


def _leaf_unknown(leaf: Leaf) -> pl.Expr | bool:
    """Kleene UNKNOWN of one leaf: neither decided true nor decided false."""
    maybe_true = project_node(leaf, "maybe_true", _POLARS)
    maybe_false = project_node(leaf, "maybe_false", _POLARS)
    if maybe_true is False or maybe_false is False:
        return False
    if maybe_true is True:
        return maybe_false
    if maybe_false is True:
        return maybe_true
    return maybe_true & maybe_false


@dataclass
class _Rule:
    id: str
    title: str
    category: str
    ranked: list[CompiledTier]  # highest severity first, then pack order (as build_alerts ranks)


@dataclass
class VectorPack:
    """A pack compiled to polars expressions, plus what is needed to build its alerts."""

    pack: CompiledPack
    columns: dict[str, pl.DataType] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    rules: list[_Rule] = field(default_factory=list)
    _outcome: dict[str, pl.Expr] = field(default_factory=dict)
    _unknown: dict[Leaf, pl.Expr] = field(default_factory=dict)
    _leaves: dict[str, list[Leaf]] = field(default_factory=dict)  # tier id -> leaves that can be UNKNOWN

    @classmethod
    def compile(cls, pack: CompiledPack) -> VectorPack:
        vp = cls(pack)
        for name, default in pack.referenced_facts().items():
            vp.columns[name] = fact_dtype(name)
            if default is not None:
                vp.defaults[name] = default
        for tier in pack.tiers:
            for name in placeholders(tier.summary):
                if not name.startswith("param.") and name not in ("rule_id", "tier_id", "severity"):
                    vp.columns.setdefault(name, fact_dtype(name))
                    spec, family, _ = catalog.lookup(name)
                    if family is not None and family.default is not None:
                        vp.defaults.setdefault(name, family.default)
                    if spec is not None and spec.bounded:
                        for suffix in BOUND_SUFFIXES:
                            vp.columns.setdefault(name + suffix, pl.Float64())
        for rule in pack.rules:
            ranked = sorted(rule.tiers, key=lambda t: (-SEVERITY_ORDER[t.severity], t.order))
            vp.rules.append(_Rule(rule.spec.id, rule.spec.title, rule.spec.category, ranked))
        for tier in pack.tiers:
            is_true = project_node(tier.node, "is_true", _POLARS)
            maybe_true = project_node(tier.node, "maybe_true", _POLARS)
            vp._outcome[tier.id] = (
                pl.when(_as_expr(is_true)).then(pl.lit(TRUE, pl.UInt8))
                .when(_as_expr(maybe_true)).then(pl.lit(UNKNOWN, pl.UInt8))
                .otherwise(pl.lit(FALSE, pl.UInt8))
            )
            leaves: list[Leaf] = []
            for leaf in dict.fromkeys(facts_of(tier.node)):
                if leaf not in vp._unknown:
                    unknown = _leaf_unknown(leaf)
                    if unknown is False:
                        continue
                    vp._unknown[leaf] = _as_expr(unknown)
                leaves.append(leaf)
            vp._leaves[tier.id] = leaves
        return vp

    # ── evaluation ──────────────────────────────────────────────────────────────────────

    def prepare(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Add missing fact columns as nulls, cast to the catalog types, fill family defaults."""
        exprs = []
        for name, dtype in self.columns.items():
            col = pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
            if name in self.defaults:
                col = col.fill_null(pl.lit(self.defaults[name], dtype))
            exprs.append(col.alias(name))
        return frame.with_columns(exprs)

    def outcomes(self, frame: pl.DataFrame) -> pl.DataFrame:
        """One UInt8 column per tier id: 0 FALSE, 1 UNKNOWN, 2 TRUE (same codes as the oracle)."""
        prepared = self.prepare(frame)
        return prepared.lazy().select([e.alias(t) for t, e in self._outcome.items()]).collect()

    def outcome_dicts(self, frame: pl.DataFrame) -> list[dict[str, int]]:
        """Per-row outcome dicts, for comparison with the per-patient evaluators."""
        return self.outcomes(frame).to_dicts()


def frame_from_flats(vp: VectorPack, flats: Sequence[Mapping[str, Any]],
                     extra: Mapping[str, Sequence[Any]] | None = None) -> pl.DataFrame:
    """A fact frame from flat fact dicts (as :func:`cds_engine.facts.derive.derive` returns).

    Only the columns the pack reads are kept; ``extra`` adds columns such as ``patient_id``.
    """
    data: dict[str, pl.Series] = {}
    for name, dtype in vp.columns.items():
        values = [f.get(name) for f in flats]
        data[name] = pl.Series(name, values, dtype=dtype, strict=False)
    for name, values in (extra or {}).items():
        data[name] = pl.Series(name, list(values))
    return pl.DataFrame(data, height=len(flats))


# ── alerts ──────────────────────────────────────────────────────────────────────────────

_O = "__o:"   # outcome column prefix
_OPEN = "__open:"  # tier left UNKNOWN above the rule's fired severity
_U = "__u:"  # leaf UNKNOWN
_CHOSEN = "__chosen:"


def _json_piece(name: str) -> pl.Expr:
    """``"name":value`` as JSON text, or null when the fact is missing."""
    encoded = pl.struct(pl.col(name).alias(name)).struct.json_encode()
    return pl.when(pl.col(name).is_not_null()).then(encoded.str.slice(1, encoded.str.len_chars() - 2))


def _evidence_expr(tier: CompiledTier, columns: Iterable[str]) -> pl.Expr:
    """The evidence JSON of :func:`cds_engine.results.evidence_of` for one tier."""
    available = set(columns)
    names: list[str] = []
    for leaf in facts_of(tier.node):
        candidates = [leaf.fact, *(leaf.fact + s for s in BOUND_SUFFIXES)] if leaf.bounded else [leaf.fact]
        names.extend(n for n in candidates if n in available and n not in names)
    if not names:
        return pl.lit("{}")
    joined = pl.concat_list([_json_piece(n) for n in names]).list.drop_nulls().list.join(",")
    return pl.lit("{") + joined + pl.lit("}")


def _render_unique(frame: pl.DataFrame, key_cols: list[str], render_row: Any, out: str) -> pl.DataFrame:
    """Render text once per distinct key and join it back (exact reuse of the shared renderer)."""
    if frame.height == 0:
        return frame.with_columns(pl.lit(None, pl.String).alias(out))
    keys = frame.select(key_cols).unique(maintain_order=True)
    rendered = [render_row(row) for row in keys.iter_rows(named=True)]
    keys = keys.with_columns(pl.Series(out, rendered, dtype=pl.String))
    return frame.join(keys, on=key_cols, how="left", nulls_equal=True, maintain_order="left")


def _short(text: str, limit: int = 139) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def vector_alerts(vp: VectorPack, frame: pl.DataFrame, patient_col: str = "patient_id",
                  mask: pl.Series | None = None) -> pl.DataFrame:
    """The batch alert table of every row of ``frame`` (rows where ``mask`` is False get none).

    Rows appear grouped by patient in frame order, each patient's alerts most severe first
    (the order of :meth:`cds_engine.alerts.Alert.sort_key`).
    """
    pack = vp.pack
    info = pack.spec.pack
    base = vp.prepare(frame).with_columns(
        pl.col(patient_col).cast(pl.String).alias("__patient"), pl.int_range(pl.len()).alias("__row"))
    if mask is not None:
        base = base.filter(mask)
    lf = base.lazy().with_columns([e.alias(_O + t) for t, e in vp._outcome.items()])
    leaf_names = {leaf: f"{_U}{i}" for i, leaf in enumerate(vp._unknown)}
    lf = lf.with_columns([e.alias(leaf_names[leaf]) for leaf, e in vp._unknown.items()])
    chosen_exprs, open_exprs = [], []
    for rule in vp.rules:
        chosen: Any = pl.lit(None, pl.String)
        for tier in reversed(rule.ranked):
            chosen = pl.when(pl.col(_O + tier.id) == TRUE).then(pl.lit(tier.id)).otherwise(chosen)
        chosen_exprs.append(chosen.alias(_CHOSEN + rule.id))
        for tier in rule.ranked:
            level = SEVERITY_ORDER[tier.severity]
            blockers = [pl.col(_O + u.id) == TRUE for u in rule.ranked if SEVERITY_ORDER[u.severity] >= level]
            open_exprs.append(((pl.col(_O + tier.id) == UNKNOWN) & ~pl.any_horizontal(blockers)).alias(_OPEN + tier.id))
    wide = lf.with_columns(chosen_exprs + open_exprs).collect()

    common = {"pack_id": info.id, "pack_version": info.version, "pack_hash": pack.content_hash}
    parts: list[pl.DataFrame] = []
    for rule in vp.rules:
        parts.append(_finding_rows(vp, wide, rule, leaf_names))
    parts.append(_missing_rows(vp, wide, leaf_names))
    alerts = pl.concat([p for p in parts if p.height], how="vertical") if any(p.height for p in parts) else None
    if alerts is None:
        return pl.DataFrame(schema=ALERT_SCHEMA)
    alerts = alerts.with_columns(
        [pl.lit(v).alias(k) for k, v in common.items()]
        + [pl.col("severity").replace_strict(SEVERITY_ORDER, return_dtype=pl.Int8).alias("__sev")]
    )
    alerts = alerts.sort(["__row", "__sev", "__kind", "rule_id"], descending=[False, True, False, False],
                         maintain_order=True)
    return alerts.rename({"__patient": "patient_id"}).select(list(ALERT_SCHEMA))


def _finding_rows(vp: VectorPack, wide: pl.DataFrame, rule: _Rule, leaf_names: Mapping[Leaf, str]) -> pl.DataFrame:
    pack = vp.pack
    chosen_col = _CHOSEN + rule.id
    sub = wide.filter(pl.col(chosen_col).is_not_null())
    if sub.height == 0:
        return sub
    tiers = {t.id: t for t in rule.ranked}
    evidence: Any = pl.lit(None, pl.String)
    severity: Any = pl.lit(None, pl.String)
    for tier in rule.ranked:
        hit = pl.col(chosen_col) == tier.id
        evidence = pl.when(hit).then(_evidence_expr(tier, sub.columns)).otherwise(evidence)
        severity = pl.when(hit).then(pl.lit(tier.severity)).otherwise(severity)
    open_cols = [pl.when(pl.col(_OPEN + t.id)).then(pl.lit(t.id)) for t in rule.ranked]
    missing = [
        pl.when(pl.col(_OPEN + t.id) & pl.col(leaf_names[leaf])).then(pl.lit(leaf.fact))
        for t in rule.ranked for leaf in vp._leaves[t.id]
    ]
    sub = sub.with_columns(
        pl.lit("finding").alias("kind"),
        pl.lit(rule.id).alias("rule_id"),
        pl.col(chosen_col).alias("tier_id"),
        pl.lit(rule.category).alias("category"),
        severity.alias("severity"),
        pl.lit(rule.title).alias("title"),
        evidence.alias("evidence"),
        pl.concat_list(open_cols).list.drop_nulls().alias("not_assessed"),
        (pl.concat_list(missing).list.drop_nulls().list.unique().list.sort() if missing
         else pl.lit([], pl.List(pl.String))).alias("missing"),
        pl.lit(0, pl.Int8).alias("__kind"),
    )
    # summaries: render once per distinct (tier, values of the placeholders)
    out = []
    for tier_id, group in sub.group_by("tier_id", maintain_order=True):
        tier = tiers[str(tier_id[0])]
        names = [n for n in dict.fromkeys(placeholders(tier.summary)) if not n.startswith("param.")]
        cols = []
        for n in names:
            cols.extend(c for c in [n, *(n + s for s in BOUND_SUFFIXES)] if c in group.columns)
        cols = list(dict.fromkeys(cols))

        def render_row(row: Mapping[str, Any], tier: CompiledTier = tier) -> str:
            flat = {k: v for k, v in row.items() if v is not None}
            extra = {"rule_id": tier.rule_id, "tier_id": tier.id, "severity": tier.severity}
            return _short(render(tier.summary, flat, pack.params, extra))

        if cols:
            group = _render_unique(group, cols, render_row, "summary")
        else:
            group = group.with_columns(pl.lit(render_row({})).alias("summary"))
        out.append(group)
    return pl.concat(out, how="vertical").select(
        ["__patient", "__row", "__kind", "kind", "rule_id", "tier_id", "category", "severity", "title", "summary",
         "missing", "not_assessed", "evidence"])


def _missing_rows(vp: VectorPack, wide: pl.DataFrame, leaf_names: Mapping[Leaf, str]) -> pl.DataFrame:
    """The grouped 'cannot assess' alerts of :func:`cds_engine.results._missing_data_alerts`."""
    pack = vp.pack
    items = {fact: item for item in pack.spec.missing_data for fact in item.facts}
    order = [t for rule in vp.rules for t in rule.ranked]  # the order build_alerts collects undecided tiers
    keys: dict[str, list[tuple[CompiledTier, list[Leaf]]]] = {}
    for tier in order:
        by_key: dict[str, list[Leaf]] = {}
        for leaf in vp._leaves[tier.id]:
            item = items.get(leaf.fact)
            by_key.setdefault(item.item if item else leaf.fact, []).append(leaf)
        for key, leaves in by_key.items():
            keys.setdefault(key, []).append((tier, leaves))
    frames = []
    titles = {r.id: r.title for r in vp.rules}
    for key, entries in keys.items():
        item = next((items[f] for f in items if (items[f].item == key)), None)
        contributes = [
            pl.col(_OPEN + t.id) & pl.any_horizontal([pl.col(leaf_names[leaf]) for leaf in leaves])
            for t, leaves in entries
        ]
        present = pl.any_horizontal(contributes)
        if item is not None and item.covered_by:
            fired = [pl.col(_CHOSEN + r).is_not_null() for r in item.covered_by if _CHOSEN + r in wide.columns]
            if fired:
                present = present & ~pl.any_horizontal(fired)
        sub = wide.filter(present)
        if sub.height == 0:
            continue
        tiers_list = pl.concat_list(
            [pl.when(c).then(pl.lit(t.id)) for c, (t, _) in zip(contributes, entries, strict=True)]
        ).list.drop_nulls()
        facts_list = pl.concat_list([
            pl.when(pl.col(_OPEN + t.id) & pl.col(leaf_names[leaf])).then(pl.lit(leaf.fact))
            for t, leaves in entries for leaf in leaves
        ]).list.drop_nulls().list.unique().list.sort()
        label = item.label if item else key.replace("_", " ")
        sub = sub.select(
            "__patient", "__row",
            pl.lit(1, pl.Int8).alias("__kind"),
            pl.lit("cannot-assess").alias("kind"),
            pl.lit(MISSING_DATA_RULE).alias("rule_id"),
            pl.lit(f"{MISSING_DATA_RULE}.{key}").alias("tier_id"),
            pl.lit("missing-data").alias("category"),
            pl.lit(item.severity if item else "info").alias("severity"),
            pl.lit(f"Cannot assess: {label}").alias("title"),
            facts_list.alias("missing"),
            tiers_list.alias("not_assessed"),
            pl.lit("{}").alias("evidence"),
        )

        def render_row(row: Mapping[str, Any], item: Any = item, label: str = label) -> str:
            tiers: list[str] = row["not_assessed"]
            rules_text = ", ".join(dict.fromkeys(t.split(".")[0] for t in tiers))
            text = (render(item.summary, {}, pack.params, {"rules": rules_text}) if item
                    else f"{label} unknown: {rules_text} not checked — document it to complete the review")
            return _short(text)

        sub = _render_unique(sub.with_columns(pl.col("not_assessed").list.join("\x1f").alias("__tiers")),
                             ["__tiers"], lambda row, f=render_row: f({"not_assessed": row["__tiers"].split("\x1f")}),
                             "summary").drop("__tiers")
        frames.append(sub.select(
            ["__patient", "__row", "__kind", "kind", "rule_id", "tier_id", "category", "severity", "title", "summary",
             "missing", "not_assessed", "evidence"]))
    _ = titles
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="vertical")


def alerts_to_rows(patient_id: str, alerts: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows of the batch alert table from :class:`cds_engine.alerts.Alert` objects (the Rete path)."""
    rows = []
    for a in alerts:
        rows.append({
            "patient_id": patient_id, "kind": a.kind, "rule_id": a.rule_id, "tier_id": a.tier_id,
            "category": a.category, "severity": a.severity, "title": a.title, "summary": a.summary,
            "missing": list(a.missing), "not_assessed": list(a.not_assessed),
            "evidence": canonical_evidence(a.evidence),
            "pack_id": a.pack_id, "pack_version": a.pack_version, "pack_hash": a.pack_hash,
        })
    return rows


def canonical_evidence(evidence: Mapping[str, Any]) -> str:
    """Evidence as compact JSON with numbers as floats, the form the vector path writes."""
    def norm(v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v
    return json.dumps({k: norm(v) for k, v in evidence.items()}, separators=(",", ":"), ensure_ascii=False)
