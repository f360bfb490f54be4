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

:func:`vector_alerts` reproduces :func:`cds_engine.results.build_alerts` column-wise: one alert
per rule at its highest TRUE tier with the undecided higher tiers listed on it, and the grouped
"cannot assess" alerts (missing facts traced to their root inputs, only inside undecided
branches, severity capped by the checks they stand for, suppressed by a covering rule). Text
that depends on the patient's values is rendered by the shared renderer once per distinct
combination of values and joined back, so it is identical by construction.

Performance notes (polars 2.1, measured): every distinct clause is computed once as a column;
list operations (``concat_list``, ``list.unique``) are an order of magnitude slower than string
building, so list-valued outputs (missing facts, tiers not assessed) are ";"-joined strings.
Evidence JSON (:mod:`cds_engine.evaluators.evidence`) and summaries (:mod:`.summaries`) are
built per fired tier with the work that provably changes no character left out; the parts carry
one integer per row for their six wording columns and a unique integer sort key, so the sort
gathers few columns; the patient id and carried columns are not in the parts at all, but gathered
from ``wide`` (made one chunk first) by the sorted row positions; a fired tier's part takes only
that tier's fact columns, and a rule whose rows lack no root fact, or a tier with no tier of
higher severity above it (nothing can be open), writes ``missing``/``not_assessed`` as literals;
the compiler memoises each sub-tree's projection (``project_node``); a fact column with one
value on every row (the order's facts, all-null bounds) reaches the fired tiers' rows as a literal,
not a copy (``_constant_facts``); the missing-root and open-tier bit masks are the narrowest
unsigned integers that hold their bits, OR-ed (``_mask``). The compile itself (~50 ms of Python
per run for both shipped packs, most of it hashing whole sub-trees as column keys) keeps each
sub-tree's "undecided" column per node object, each column's ``pl.col``, each fact's roots and
the typed literals once — ~30 ms (``_plan``, built on the first call, 25 → 17 ms by the shared
literals), the expressions serialised identical; pausing the cycle
collector during it only moved the run's one full collection (a gen-2 walk of the freshly
loaded engine, ~20 ms) into the first ``vector_alerts``, so it is not done. The final order is one
sort on an integer key, kept after trying a linear placement (each part is in row order: a
per-patient counter gives every row its place, then one gather): polars' multi-threaded sort
gathers from the ~50 unjoined parts in one step, a gather needs them joined first, and the
placement's scatters cost what the argsort did — 1.2–1.3 against 0.9–1.1 CPU-s at 1 M patients
(6.5 M alerts). Also measured and dropped (same table, CPU within noise): rechunking the parts
before the sort or an argsort then one gather (the sort rechunks the string views and gathers
them: that is its floor), parts pre-ordered by wording so a stable sort on ``__row`` alone
suffices, ``missing``/``not_assessed`` carried as Categorical through the sort (the cast back
cost what the sort saved), the per-tier statistics on two Python threads (no CPU change; wall
not measurable on a shared machine), sorting the key alone with each row's position among the
parts in its low bits and gathering each column from one chunk, the parts' literal columns
kept apart (a third fewer page faults in the sort, as many more in the select after it; CPU
higher in 3 of 3 pairs). Where the rest goes: the table itself is ~2 GB of fresh
memory per 1 M patients (0.7–0.8 M first-touched 4 KiB pages, a third of them in the sort); on
a VM where a page fault costs 1.3–6 µs of kernel time that is 20–45 % of the CPU seconds
(``bench/screening/stages.py`` charges each step its system seconds and page faults).
A streamed screening's 100,000-row chunk pays about half its CPU in fixed costs per call
(planning ~2,000 expressions, small queries, Python): the second pass plans without
expression simplification, the missing-root masks of all rules take two queries, and
``_missing_rows``' grouping is kept on the pack (``_distinct_masks``, ``_report_keys``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import polars as pl

from cds_engine.alerts import SEVERITY_ORDER
from cds_engine.evaluators.evidence import evidence_expr, evidence_names
from cds_engine.evaluators.summaries import summary_expr
from cds_engine.facts import catalog
from cds_engine.messages import render
from cds_engine.results import MISSING_DATA_RULE, missing_data_alerts, short_text  # shared: one wording
from cds_engine.rules.compile import CompiledPack, CompiledTier, placeholders
from cds_engine.rules.conditions import (
    BOUND_SUFFIXES,
    FALSE,
    TRUE,
    UNKNOWN,
    And,
    AtLeastNode,
    Clause,
    Leaf,
    Node,
    NotNode,
    Or,
)
from cds_engine.rules.projection import Projection, project_node

__all__ = [
    "ALERT_SCHEMA",
    "VectorPack",
    "alerts_to_rows",
    "canonical_evidence",
    "fact_dtype",
    "frame_from_flats",
    "vector_alerts",
]

# The batch alert table; the Rete path of the batch command produces exactly these columns.
ALERT_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "kind": pl.String(),  # finding | cannot-assess
    "rule_id": pl.String(),
    "tier_id": pl.String(),
    "category": pl.String(),
    "severity": pl.String(),
    "title": pl.String(),
    "summary": pl.String(),
    "missing": pl.String(),  # ";"-separated fact names, sorted
    "not_assessed": pl.String(),  # ";"-separated tier ids
    "evidence": pl.String(),  # JSON object of the fact values the tier read
    "pack_id": pl.String(),
    "pack_version": pl.String(),
    "pack_hash": pl.String(),
    "site_hash": pl.String(),
}

_DTYPES: dict[str, pl.DataType] = {"number": pl.Float64(), "bool": pl.Boolean(), "string": pl.String()}
_SEVERITY_NAME = {rank: name for name, rank in SEVERITY_ORDER.items()}


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


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, tuple | list) else [value]


def _clause(c: Clause) -> pl.Expr:
    col = pl.col(c.fact)
    if c.kind == "absent":
        return col.is_null()
    if c.kind == "present":
        return col.is_not_null()
    if c.op in ("in", "not_in"):
        member = _member(c.fact, _values(c.value))
        return (member if c.op == "in" else ~member).fill_null(False)
    value = pl.lit(c.value)
    expr = {
        "eq": col == value,
        "ne": col != value,
        "lt": col < value,
        "lte": col <= value,
        "gt": col > value,
        "gte": col >= value,
    }[c.op]
    return expr.fill_null(False)


_EQUALITIES_MAX = 4  # an "in" over at most this many strings is tested as equalities (_member)


def _member(fact: str, values: list[Any]) -> pl.Expr:
    """The fact's value is one of ``values``: null where the fact is, as ``is_in`` gives it.

    Why equalities for a short list of strings: ``is_in`` hashes every row's string and probes a
    table (the largest single cost of the first pass, ~9 ms per clause on 1 M rows); comparing
    a string column with a literal mostly compares the views' length and prefix, and two to four
    of them cost less than the probe. Byte equality is what ``is_in`` tests on strings, and a null
    row gives null both ways (Kleene OR of nulls), so the flags are the same.
    """
    col = pl.col(fact)
    if (
        0 < len(values) <= _EQUALITIES_MAX
        and all(isinstance(v, str) for v in values)
        and fact_dtype(fact) == pl.String()
    ):
        return pl.any_horizontal([col == pl.lit(v, pl.String) for v in values])
    return col.is_in(values)


def _as_expr(value: pl.Expr | bool) -> pl.Expr:
    return pl.lit(value) if isinstance(value, bool) else value


class _Columns:
    """Named intermediate boolean columns, each computed once.

    Rules share most of their tests (the order is active, the route is oral …): computing a
    clause or a sub-tree's "undecided" flag once, instead of once per tier and projection, is
    most of the vector path's speed.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.exprs: dict[Any, tuple[str, pl.Expr]] = {}
        self._refs: dict[Any, pl.Expr] = {}  # key -> pl.col of its column (an expression is immutable)

    def ref(self, key: Any, build: Any) -> pl.Expr:
        out = self._refs.get(key)
        if out is None:
            name = f"{self.prefix}{len(self.exprs)}"
            self.exprs[key] = (name, build())
            out = self._refs[key] = pl.col(name)
        return out

    def columns(self) -> list[pl.Expr]:
        return [expr.alias(name) for name, expr in self.exprs.values()]


_PREPARED_SCHEMAS = 16  # input schemas whose prepare expressions a pack keeps (VectorPack.prepare)


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
    site_hash: str | None = None
    _clauses: _Columns = field(default_factory=lambda: _Columns("__c:"))
    _nodes: _Columns = field(default_factory=lambda: _Columns("__n:"))
    _outcome: dict[str, pl.Expr] = field(default_factory=dict)
    # tier id -> [(root fact, condition that the root is reported missing for this tier)]
    _reports: dict[str, list[tuple[str, pl.Expr]]] = field(default_factory=dict)
    _summaries: dict[Any, str] = field(default_factory=dict)  # rendered summaries (see _render_unique)
    # compile-time projections of each sub-tree (project_node memo; emptied once compiled)
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    _plan: Any = field(default=None, repr=False)  # vector_alerts' expressions (_Plan), built on first use
    _report_keys: Any = field(default=None, repr=False)  # _missing_rows' grouping (_report_keys), likewise
    # prepare's expressions per input schema (a screening's chunks share one): _prepare_exprs
    _prepared: dict[tuple[Any, ...], list[pl.Expr]] = field(default_factory=dict, repr=False)

    @classmethod
    def compile(cls, pack: CompiledPack, site_hash: str | None = None) -> VectorPack:
        vp = cls(pack, site_hash=site_hash)
        proj: Projection[pl.Expr] = Projection(
            clause=lambda c: vp._clauses.ref(c, lambda: _clause(c)),
            conj=lambda items: pl.all_horizontal(list(items)),
            disj=lambda items: pl.any_horizontal(list(items)),
        )
        for name, default in pack.referenced_facts().items():
            vp._add_column(name)
            if default is not None:
                vp.defaults[name] = default
            for companion in catalog.companions(name):  # evidence only; a table without it leaves it out
                vp._add_column(companion)
        for tier in pack.tiers:
            for name in placeholders(tier.summary):
                if not name.startswith("param.") and name not in ("rule_id", "tier_id", "severity"):
                    vp._add_column(name)
        for rule in pack.rules:
            ranked = list(
                getattr(rule, "ranked_tiers", ())
                or sorted(rule.tiers, key=lambda t: (-SEVERITY_ORDER[t.severity], t.order))
            )
            vp.rules.append(_Rule(rule.spec.id, rule.spec.title, rule.spec.category, ranked))
        # expressions are immutable: one of each literal, and each fact's roots (_roots), serve every tier
        codes = [pl.lit(TRUE, pl.UInt8), pl.lit(UNKNOWN, pl.UInt8), pl.lit(FALSE, pl.UInt8)]
        roots_of: dict[str, list[tuple[str, pl.Expr | None]]] = {}
        inputs_added: set[str] = set()  # facts whose input columns are added (_add_column is idempotent)
        for tier in pack.tiers:
            is_true = project_node(tier.node, "is_true", proj, vp._memo)
            maybe_true = project_node(tier.node, "maybe_true", proj, vp._memo)
            vp._outcome[tier.id] = (
                pl.when(_as_expr(is_true))
                .then(codes[0])
                .when(_as_expr(maybe_true))
                .then(codes[1])
                .otherwise(codes[2])
            )
            reports: list[tuple[str, pl.Expr]] = []
            for leaf, path in _occurrences(tier.node, ()):
                conds = [vp._undecided(n, proj) for n in (*path, leaf)]
                if any(c is False for c in conds):
                    continue
                reached = pl.all_horizontal([c for c in conds if c is not True] or [pl.lit(True)])
                roots = roots_of.get(leaf.fact)
                if roots is None:
                    roots = roots_of[leaf.fact] = _roots(leaf.fact)
                if leaf.fact not in inputs_added:
                    inputs_added.add(leaf.fact)
                    for name in _input_names(leaf.fact):
                        vp._add_column(name)
                for root, cond in roots:
                    reports.append((root, reached if cond is None else reached & cond))
            vp._reports[tier.id] = reports
        vp._memo.clear()
        return vp

    def _add_column(self, name: str) -> None:
        self.columns.setdefault(name, fact_dtype(name))
        spec, family, _ = catalog.lookup(name)
        if family is not None and family.default is not None:
            self.defaults.setdefault(name, family.default)
        if spec is not None and spec.bounded:
            for suffix in BOUND_SUFFIXES:
                self.columns.setdefault(name + suffix, pl.Float64())

    def _undecided(self, node: Node, proj: Projection[pl.Expr]) -> pl.Expr | bool:
        """Kleene UNKNOWN of a sub-tree (a leaf included) as a cached column, or a constant.

        Kept per node object in ``_memo`` too: a sub-tree is asked for once per leaf beneath it,
        and the column's key (the node itself) hashes the whole sub-tree again on every ask.
        """
        key = (id(node), "undecided")
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = (node, self._undecided_of(node, proj))  # the node keeps its id unique
        return hit[1]

    def _undecided_of(self, node: Node, proj: Projection[pl.Expr]) -> pl.Expr | bool:
        is_true = project_node(node, "is_true", proj, self._memo)
        maybe_true = project_node(node, "maybe_true", proj, self._memo)
        if maybe_true is False or is_true is True:
            return False

        def build() -> pl.Expr:
            return _as_expr(maybe_true) & ~_as_expr(is_true)

        return self._nodes.ref(node, build)

    # ── evaluation ──────────────────────────────────────────────────────────────────────

    def prepare(self, frame: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
        """Add missing fact columns as nulls, cast to the catalog types, fill family defaults."""
        lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
        schema = tuple(lf.collect_schema().items())
        exprs = self._prepared.get(schema)
        if exprs is None:
            if len(self._prepared) >= _PREPARED_SCHEMAS:  # a bound: a caller may vary its frames
                self._prepared.clear()
            exprs = self._prepared[schema] = self._prepare_exprs(dict(schema))
        return lf.with_columns(exprs)

    def _prepare_exprs(self, schema: Mapping[str, pl.DataType]) -> list[pl.Expr]:
        """:meth:`prepare`'s expressions for a frame of ``schema`` (kept per schema on the pack).

        Why kept, and no cast of a column already of its type: a streamed screening prepares one
        chunk after another of the same schema, and each call built and planned ~150 column
        expressions again. Casting a column to its own type returns it unchanged (``is_``: the
        exact type, time unit and zone included), so leaving that cast out changes no value.
        """
        exprs = []
        for name, dtype in self.columns.items():
            have = schema.get(name)
            if have is None:
                col = pl.lit(None, dtype)
            elif have.is_(dtype):
                col = pl.col(name)
            else:
                col = pl.col(name).cast(dtype)
            if name in self.defaults:
                col = col.fill_null(pl.lit(self.defaults[name], dtype))
            exprs.append(col.alias(name))
        return exprs

    def outcomes(self, frame: pl.DataFrame) -> pl.DataFrame:
        """One UInt8 column per tier id: 0 FALSE, 1 UNKNOWN, 2 TRUE (same codes as the oracle)."""
        lf = self.prepare(frame).with_columns(self._clauses.columns())
        return lf.select([e.alias(t) for t, e in self._outcome.items()]).collect()

    def outcome_dicts(self, frame: pl.DataFrame) -> list[dict[str, int]]:
        """Per-row outcome dicts, for comparison with the per-patient evaluators."""
        return self.outcomes(frame).to_dicts()


def _occurrences(node: Node, path: tuple[Node, ...]) -> Iterable[tuple[Leaf, tuple[Node, ...]]]:
    """Each leaf occurrence with the sub-trees between the tier root (excluded) and the leaf.

    :func:`cds_engine.rules.conditions.unknown_leaves` reports a leaf only when every node on
    that path is itself undecided.
    """
    if isinstance(node, Leaf):
        yield node, path
    elif isinstance(node, And | Or | AtLeastNode):
        for child in node.children:
            yield from _occurrences(child, (*path, child) if not isinstance(child, Leaf) else path)
    elif isinstance(node, NotNode):
        child = node.child
        yield from _occurrences(child, (*path, child) if not isinstance(child, Leaf) else path)


def _roots(name: str) -> list[tuple[str, pl.Expr | None]]:
    """:func:`cds_engine.facts.catalog.root_missing` as (root, condition on present facts) pairs."""
    spec = catalog.FACTS.get(name)
    inputs = getattr(spec, "inputs", ()) if spec is not None else ()
    if not inputs:
        return [(name, None)]
    out: list[tuple[str, pl.Expr | None]] = []
    for i in inputs:
        for root, cond in _roots(i):
            missing = pl.col(i).is_null()
            out.append((root, missing if cond is None else missing & cond))
    out.append((name, pl.all_horizontal([pl.col(i).is_not_null() for i in inputs])))
    return out


def _input_names(name: str) -> list[str]:
    spec = catalog.FACTS.get(name)
    inputs = getattr(spec, "inputs", ()) if spec is not None else ()
    return [n for i in inputs for n in (i, *_input_names(i))]


def frame_from_flats(
    vp: VectorPack, flats: Sequence[Mapping[str, Any]], extra: Mapping[str, Sequence[Any]] | None = None
) -> pl.DataFrame:
    """A fact frame from flat fact dicts (as :func:`cds_engine.facts.derive.derive` returns).

    Only the columns the pack reads are kept; ``extra`` adds columns such as ``patient_id``.
    """
    data: dict[str, pl.Series] = {}
    for name, dtype in vp.columns.items():
        data[name] = pl.Series(name, [f.get(name) for f in flats], dtype=dtype, strict=False)
    for name, values in (extra or {}).items():
        data[name] = pl.Series(name, list(values))
    return pl.DataFrame(data, height=len(flats))


# ── alerts ──────────────────────────────────────────────────────────────────────────────

_O = "__o:"  # tier outcome
_OPEN = "__open:"  # tier left UNKNOWN above the rule's fired severity
_CHOSEN = "__chosen:"  # the rule's fired tier: 0 none, i the i-th of its ranked tiers
_MISS = "__miss:"  # the rule's missing root facts: a bit mask (see _Plan.miss_roots), else ";"-joined
_MASK_BITS = 62  # roots per rule a mask holds (an Int64, bit 63 unused); more: the text itself
_MASK_TABLE = 4096  # masks below this index a text table directly (_missing_text); above, a hash map
# what every part of the alert table carries; the six wording columns (kind … title) are one
# integer into a small per-call table (_Wordings), filled in after the sort, and the patient id
# and carried columns are taken from ``wide`` by ``__row`` (the row's position there) after it too
_PER_ROW = ["__row", "__code", "summary", "missing", "not_assessed", "evidence"]
_WORDING = ["kind", "rule_id", "tier_id", "category", "severity", "title"]


class _Wordings:
    """The distinct (kind, rule, tier, category, severity, title) rows of one alert table.

    Why: the parts are concatenated and sorted into patient order; six repeated text columns
    cost most of that sort's gather, one UInt32 code costs little, and the texts are then taken
    from this table by the sorted codes (a gather from a few hundred strings).
    """

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []

    def add(self, kind: str, rule_id: str, tier_id: str, category: str, severity: str, title: str) -> int:
        self.rows.append((kind, rule_id, tier_id, category, severity, title))
        return len(self.rows) - 1

    def order(self) -> pl.Series:
        """Per code: most severe first, findings before reports (with the row: Alert.sort_key)."""
        return pl.Series(
            [(3 - SEVERITY_ORDER[r[4]]) * 2 + (r[0] != "finding") for r in self.rows], dtype=pl.Int64
        )

    def column(self, i: int) -> pl.Series:
        return pl.Series(_WORDING[i], [r[i] for r in self.rows], dtype=pl.String)


def _joined(parts: Sequence[pl.Expr]) -> pl.Expr:
    """Non-null parts joined with ";" (string building: polars list operations are far slower)."""
    if not parts:
        return pl.lit("")
    return pl.concat_str(list(parts), separator=";", ignore_nulls=True).fill_null("")


_RENDER_CACHE_MAX = 200_000  # rendered texts kept per pack (a chunk's values recur in the next chunks)


def _render_unique(
    frame: pl.DataFrame,
    key_cols: list[str],
    render_row: Any,
    out: str,
    cache: dict[Any, str] | None = None,
    tag: Any = None,
) -> pl.DataFrame:
    """Render text once per distinct key and join it back (exact reuse of the shared renderer).

    ``cache`` (keyed by ``tag`` and the key values) keeps texts across calls: a streamed
    screening renders each distinct combination once per run, not once per chunk.
    """
    if frame.height == 0:
        return frame.with_columns(pl.lit(None, pl.String).alias(out))
    if not key_cols:
        return frame.with_columns(pl.lit(render_row({})).alias(out))
    keys = frame.select(key_cols).unique(maintain_order=True)
    if cache is None:
        cache = {}
    rendered = []
    for values in keys.iter_rows():
        text = cache.get((tag, values))
        if text is None:
            text = render_row(dict(zip(key_cols, values, strict=True)))
            if len(cache) < _RENDER_CACHE_MAX:
                cache[(tag, values)] = text
        rendered.append(text)
    keys = keys.with_columns(pl.Series(out, rendered, dtype=pl.String))
    return frame.join(keys, on=key_cols, how="left", nulls_equal=True, maintain_order="left")


@dataclass
class _Plan:
    """The data-independent expressions of :func:`vector_alerts` for one pack (built once per run).

    Why: a streamed screening calls :func:`vector_alerts` per chunk; building these few thousand
    expressions again per chunk was a fixed cost that did not shrink with the chunk.
    """

    clause_exprs: list[pl.Expr]
    outcome_exprs: list[pl.Expr]
    node_exprs: list[pl.Expr]
    flag_exprs: list[pl.Expr]  # per rule its fired tier (_CHOSEN), per tier "left open" (_OPEN)
    flags: list[str]
    chosen: list[str]
    any_open: pl.Expr
    clause_names: list[str]
    report_cols: dict[str, list[tuple[str, str]]]  # tier id -> [(root fact, flag column)]
    report_exprs: list[pl.Expr]
    miss_exprs: list[pl.Expr]
    miss_roots: dict[str, list[str]]  # rule id -> its roots, bit j of its mask column (_MISS) = roots[j]
    deep_keep: list[str]
    bounds: list[str]  # what the reports read from the wide frame besides ids and fired tiers
    # what the first pass keeps after the ids, as expressions: a name is made a pl.col per query
    wide_exprs: list[pl.Expr]


@lru_cache(maxsize=1024, typed=True)
def _typed_lit(value: int, dtype: type[pl.DataType]) -> pl.Expr:
    """``pl.lit(value, dtype)``, made once: with a dtype, ``lit`` builds and casts a one-row Series
    each call (most of _mask's cost), and an expression is immutable, so one serves every use."""
    return pl.lit(value, dtype)


def _plan(vp: VectorPack) -> _Plan:
    chosen_exprs, open_exprs = [], []
    for rule in vp.rules:
        fired = {t.id: pl.col(_O + t.id) == TRUE for t in rule.ranked}  # each made once per rule
        chosen: Any = _typed_lit(0, pl.UInt8)  # 0: nothing fired, i: rule.ranked[i - 1]
        for i, tier in reversed(list(enumerate(rule.ranked, start=1))):
            chosen = pl.when(fired[tier.id]).then(_typed_lit(i, pl.UInt8)).otherwise(chosen)
        chosen_exprs.append(chosen.alias(_CHOSEN + rule.id))
        for tier in rule.ranked:
            level = SEVERITY_ORDER[tier.severity]
            blockers = [fired[u.id] for u in rule.ranked if SEVERITY_ORDER[u.severity] >= level]
            open_exprs.append(
                ((pl.col(_O + tier.id) == UNKNOWN) & ~pl.any_horizontal(blockers)).alias(_OPEN + tier.id)
            )
    report_cols: dict[str, list[tuple[str, str]]] = {}
    report_exprs = []
    for tier_id, reports in vp._reports.items():
        by_root: dict[str, list[pl.Expr]] = {}
        for root, cond in reports:
            by_root.setdefault(root, []).append(cond)
        report_cols[tier_id] = []
        for j, (root, conds) in enumerate(by_root.items()):
            name = f"__r:{tier_id}:{j}"
            report_exprs.append((pl.col(_OPEN + tier_id) & pl.any_horizontal(conds)).alias(name))
            report_cols[tier_id].append((root, name))
    miss_exprs = []
    miss_roots: dict[str, list[str]] = {}
    for rule in vp.rules:
        by_root_cols: dict[str, list[str]] = {}
        for t in rule.ranked:
            for root, col in report_cols[t.id]:
                by_root_cols.setdefault(root, []).append(col)
        if by_root_cols:
            roots = sorted(by_root_cols)
            flags = [pl.any_horizontal([pl.col(c) for c in by_root_cols[root]]) for root in roots]
            if len(roots) <= _MASK_BITS:  # one bit per root; the text per distinct mask (_missing_text)
                miss_roots[rule.id] = roots
                miss_exprs.append(_mask(flags).alias(_MISS + rule.id))
            else:
                roots_text = [pl.when(f).then(pl.lit(root)) for root, f in zip(roots, flags, strict=True)]
                miss_exprs.append(_joined(roots_text).alias(_MISS + rule.id))
    flags = [e.meta.output_name() for e in chosen_exprs + open_exprs]
    clause_names = [name for name, _ in vp._clauses.exprs.values()]  # kept for the second pass
    any_open = pl.any_horizontal([pl.col(_OPEN + t) for t in vp._outcome]).alias("__any_open")
    return _Plan(
        clause_exprs=vp._clauses.columns(),
        outcome_exprs=[e.alias(_O + t) for t, e in vp._outcome.items()],
        node_exprs=vp._nodes.columns(),
        flag_exprs=chosen_exprs + open_exprs,
        flags=flags,
        chosen=[e.meta.output_name() for e in chosen_exprs],
        any_open=any_open,
        clause_names=clause_names,
        report_cols=report_cols,
        report_exprs=report_exprs,
        miss_exprs=miss_exprs,
        miss_roots=miss_roots,
        deep_keep=[
            "__row",
            *(c for cols in report_cols.values() for _, c in cols),
            *(e.meta.output_name() for e in miss_exprs),
        ],
        bounds=[c for c in vp.columns if any(c.endswith(s) for s in BOUND_SUFFIXES)],
        wide_exprs=[*(pl.col(c) for c in [*vp.columns, *flags, *clause_names]), any_open],
    )


def _mask(flags: Sequence[pl.Expr]) -> pl.Expr:
    """Bit j set where ``flags[j]`` holds, in the narrowest unsigned type that holds the bits.

    Why narrow and OR-ed: a rule's mask was a sum of one Int64 column per root (~290 roots in
    all, on every row with an open tier) — a third of the second pass's CPU and over a GB of
    fresh memory per 1 M patients; one byte per row per root for a rule of at most 8 roots is an
    eighth of it. The values are the same integers (the flags are never null), and the mask is
    only used as a number (_missing_text).
    """
    width = next(w for w in (8, 16, 32, 64) if len(flags) <= w - (w == 64))
    dtype = {8: pl.UInt8, 16: pl.UInt16, 32: pl.UInt32, 64: pl.Int64}[width]
    zero = _typed_lit(0, dtype)
    bits = [pl.when(f).then(_typed_lit(1 << j, dtype)).otherwise(zero) for j, f in enumerate(flags)]
    out = bits[0]
    for bit in bits[1:]:
        out = out | bit
    return out


def vector_alerts(
    vp: VectorPack,
    frame: pl.DataFrame,
    patient_col: str = "patient_id",
    mask: pl.Series | pl.Expr | None = None,
    carry: Sequence[str] = (),
) -> pl.DataFrame:
    """The batch alert table of every row of ``frame`` (rows where ``mask`` is False get none).

    Rows appear grouped by patient in frame order, each patient's alerts most severe first
    (the order of :meth:`cds_engine.alerts.Alert.sort_key`).

    Two passes: every row gets its tier outcomes, fired tier per rule and "left undecided"
    flags; only rows with an undecided tier then pay for tracing which facts were missing.
    """
    pack = vp.pack
    info = pack.spec.pack
    plan = vp._plan if vp._plan is not None else _plan(vp)
    vp._plan = plan  # the expressions depend on the pack only: built once per run, not per chunk
    wide = _first_pass(vp, plan, frame, patient_col, mask, ["__patient", "__row", *carry])
    ids = ["__row"]  # the parts carry the row's position in ``wide``; its texts are taken last
    deep = _second_pass(plan, wide, ids)
    words = _Wordings()
    parts = _finding_parts(vp, wide, deep, ids, words)
    parts.extend(_missing_rows(vp, deep, plan.report_cols, ids, words))
    parts = [p for p in parts if p.height]
    if not parts:
        return pl.DataFrame(schema=_empty_schema(frame, carry))
    alerts = _in_alert_order(parts, words, wide.height)
    code, row = pl.col("__code"), pl.col("__row")
    # one chunk first: a gather from wide's ~16 chunks cost six times the gather itself (polars 2.1)
    by_row = {c: pl.lit(wide[c].rechunk()).gather(row) for c in ["__patient", *carry]}
    return alerts.select(
        by_row["__patient"].alias("patient_id"),
        *(pl.lit(words.column(i)).gather(code).alias(name) for i, name in enumerate(_WORDING)),
        "summary",
        "missing",
        "not_assessed",
        "evidence",
        *(by_row[c].alias(c) for c in carry),
        pl.lit(info.id).alias("pack_id"),
        pl.lit(info.version).alias("pack_version"),
        pl.lit(pack.content_hash).alias("pack_hash"),
        pl.lit(vp.site_hash, pl.String).alias("site_hash"),
    )


def _empty_schema(frame: pl.DataFrame | pl.LazyFrame, carry: Sequence[str]) -> dict[str, pl.DataType]:
    """The columns of an alert table with no row, in the order of a table with rows: the carried
    columns after ``evidence``, before the pack's (a chunk without alerts is concatenated with
    chunks with alerts: ``pl.concat`` needs the same order)."""
    schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
    names = list(ALERT_SCHEMA)
    at = names.index("evidence") + 1
    order = [*names[:at], *carry, *names[at:]]
    return {c: schema[c] if c in carry else ALERT_SCHEMA[c] for c in order}


# The steps of vector_alerts are functions of their own so that bench/screening/stages.py can
# charge each its CPU seconds (it wraps module attributes by name).


def _first_pass(
    vp: VectorPack,
    plan: _Plan,
    frame: pl.DataFrame,
    patient_col: str,
    mask: pl.Series | pl.Expr | None,
    ids: list[str],
) -> pl.DataFrame:
    """Every row's tier outcomes, fired tier per rule and "left undecided" flags (``wide``).

    ``__row`` is the row's position in ``wide`` (numbered after the mask): the alert rows take
    their patient id and carried columns from ``wide`` by it, in one gather after the sort,
    rather than each part taking those texts and the sort moving them.
    """
    lf = vp.prepare(frame).with_columns(pl.col(patient_col).cast(pl.String).alias("__patient"))
    if mask is not None:
        lf = lf.filter(mask)
    # polars' row index type (UInt32; a frame holds no more rows): every part carries ``__row`` and
    # the sort moves it, half an Int64's bytes (first call: ~10 k fewer page faults per 1 M patients)
    lf = lf.with_columns(pl.int_range(pl.len(), dtype=pl.get_index_type()).alias("__row"))
    lf = lf.with_columns(plan.clause_exprs).with_columns(plan.outcome_exprs).with_columns(plan.flag_exprs)
    wide = lf.select([*ids, *plan.wide_exprs]).collect()
    # each row's index among the rows with an open tier (the rows of ``deep`` below)
    return wide.with_columns((pl.col("__any_open").cum_sum().cast(pl.Int64) - 1).alias("__deep"))


def _second_pass(plan: _Plan, wide: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
    """Which root facts each open tier lacked, one flag column per (tier, root), open rows only."""
    return (
        wide.lazy()
        .filter(pl.col("__any_open"))  # an expression: a Series mask is a slow path on a chunked frame
        .with_columns(plan.node_exprs)
        .with_columns(plan.report_exprs)
        .with_columns(plan.miss_exprs)
        .select([*ids, *plan.chosen, *plan.bounds, *plan.deep_keep[1:]])
        # in-memory: one chunk (the streaming engine's morsels left it in ~16, and every report
        # query below — filter, unique, join — paid for the chunks: less CPU in total, same frame)
        .collect(engine="in-memory", optimizations=_SECOND_PASS_OPTIMIZATIONS)
    )


def _second_pass_optimizations() -> pl.QueryOptFlags:
    """polars' default optimisations without expression simplification, for :func:`_second_pass`.

    Why: the second pass is ~900 expressions (undecided sub-trees, report flags, missing-root
    masks) over few rows (the open ones: a quarter of a 100,000-row chunk), and planning them
    cost more than running them — ~85 ms per call whatever the rows, a third of it simplifying
    expressions that are already as simple as the compiler makes them (polars 2.1; the pass on
    2,000 rows cost what it cost on 25,000). Simplification only rewrites an expression into an
    equivalent one, so the frame is the same; a streamed screening pays the plan once per chunk.
    """
    # a keyword, not an attribute set: a polars without it raises here instead of ignoring it
    return pl.QueryOptFlags(simplify_expression=False)


_SECOND_PASS_OPTIMIZATIONS = _second_pass_optimizations()


def _in_alert_order(parts: list[pl.DataFrame], words: _Wordings, rows: int) -> pl.DataFrame:
    """The parts as one frame in Alert.sort_key's order (a sort: see the module notes on why).

    ``rows``: the number of rows of ``wide`` (every ``__row`` is below it).
    """
    alerts = pl.concat(parts, how="vertical", rechunk=False)
    return alerts.sort(_sort_key(words, rows))


def _sort_key(words: _Wordings, rows: int) -> pl.Expr:
    """One unique integer per alert row, in Alert.sort_key's order, as narrow as it can be.

    The order: patient row, then most severe first, findings before reports, then the part
    (rule-id order). Codes are handed out part by part and a part has one row per patient, so
    ``__row`` and the code identify a row; each code is replaced by its place among all codes in
    that (rank, code) order, so ``__row * codes + place`` is unique and sorts as the tuple does.
    Why narrow: a 32-bit key (rows × codes below 2^32: a 1 M-patient call has a few hundred
    codes) argsorts in ~60 % of the CPU of a 64-bit one (6.5 M alert rows: 0.16 against 0.27 s).
    """
    n = len(words.rows)
    rank = words.order().to_list()
    place = [0] * n
    for position, c in enumerate(sorted(range(n), key=lambda c: (rank[c], c))):
        place[c] = position
    dtype = pl.UInt32 if rows * n <= 2**32 else pl.UInt64
    places = pl.lit(pl.Series(place, dtype=dtype))
    return pl.col("__row").cast(dtype) * pl.lit(n, dtype) + places.gather(pl.col("__code"))


_BATCH_CELLS = 30_000_000  # fired rows × columns taken from ``wide`` per parallel batch (memory bound)


@dataclass
class _Job:
    """One fired tier's part of the alert table: its rows are taken from ``wide`` by ``rows``."""

    rule: _Rule
    tier: CompiledTier
    code: int
    rows: pl.LazyFrame
    computed: dict[str, pl.Expr]  # missing and not_assessed of the rule


def _finding_parts(
    vp: VectorPack, wide: pl.DataFrame, deep: pl.DataFrame, ids: list[str], words: _Wordings
) -> list[pl.DataFrame]:
    """Every rule's finding rows, a part per fired tier.

    Why batches of queries: each tier's rows and then its texts are one polars query; run one by
    one they leave a core idle (most are single-threaded), so they go to ``collect_all`` by the
    batch — bounded by ``_BATCH_CELLS`` so the taken rows of a large chunk do not all live at once.
    The missing facts are taken from ``deep`` by position (``__deep``, the row's index there)
    rather than by a join on ``__row``; the wording code is one literal per tier.
    """
    rules = sorted(vp.rules, key=lambda r: r.id)
    tiers = [(pl.col(_CHOSEN + r.id) == i).sum() for r in rules for i in range(1, len(r.ranked) + 1)]
    counts = wide.select(c.alias(str(k)) for k, c in enumerate(tiers)).row(0) if tiers else ()
    fired = iter(counts)
    present = set(wide.columns)  # a frame's .columns is a new list per call: test membership in a set
    constant = _constant_facts(wide, vp.columns)
    batch: list[_Job] = []
    cells = 0
    out: list[pl.DataFrame] = []
    deep_columns = set(deep.columns)
    masks = _distinct_masks(deep, vp._plan.miss_roots)
    for rule in rules:
        chosen_col = _CHOSEN + rule.id
        missing = _NO_MISSING
        if _MISS + rule.id in deep_columns:
            position = pl.when(pl.col("__any_open")).then(pl.col("__deep"))
            roots = vp._plan.miss_roots.get(rule.id)
            missing = _missing_text(deep[_MISS + rule.id], position, roots, masks.get(rule.id))
        for i, tier in enumerate(rule.ranked, start=1):
            code = words.add("finding", rule.id, tier.id, rule.category, tier.severity, rule.title)
            rows = next(fired)
            if rows == 0:
                continue
            common, computed = _open_texts(rule, tier, ids, missing)
            # only this tier's facts: the filter gathers every column it is given, and the rule's
            # other tiers read others (~20 % of the gathered cells were never read)
            needed = [*common, *evidence_names(tier, vp.columns)]
            for name in placeholders(tier.summary):
                needed.extend([name, *(name + s for s in BOUND_SUFFIXES)])
            needed = [c for c in dict.fromkeys(needed) if c in present]
            picked = [constant[c].alias(c) if c in constant else pl.col(c) for c in needed]
            taken = wide.lazy().filter(pl.col(chosen_col) == i).select(picked)
            batch.append(_Job(rule, tier, code, taken, computed))
            cells += rows * sum(c not in constant for c in needed)
            if cells >= _BATCH_CELLS:
                out += _run_jobs(vp, batch)
                batch, cells = [], 0
    if batch:
        out += _run_jobs(vp, batch)
    return out


def _constant_facts(wide: pl.DataFrame, columns: Mapping[str, pl.DataType]) -> dict[str, pl.Expr]:
    """The fact columns of ``wide`` that hold one value on every row, each as a literal of its type.

    One value: all null, or no null and every value equal — for a float, min == max, no NaN and
    not zero (0.0 and -0.0 are equal to min/max but print apart). A fired tier's rows then take
    the literal instead of a copy of the column (the order's facts, say, are one value for a
    whole screened population).
    """
    present = set(wide.columns)
    names = [n for n in columns if n in present]
    if not names or wide.height == 0:
        return {}
    nulls = wide.select(pl.col(names).null_count()).row(0, named=True)  # metadata: no pass over rows
    out: dict[str, pl.Expr] = {n: pl.lit(None, columns[n]) for n in names if nulls[n] == wide.height}
    full = [n for n in names if nulls[n] == 0]  # only these can hold one value (the rest are mixed)
    if wide.height > _SAMPLE_ROWS:  # what varies among the first rows varies: only the rest, in full
        full = list(_one_value(wide.head(_SAMPLE_ROWS), full, columns))
    stats = _one_value(wide, full, columns)
    same = list(stats)
    # a float: not zero (0.0 and -0.0 are one value to min/max but print apart), and no NaN
    floats = [n for n in same if columns[n] == pl.Float64()]
    floats = [n for n in floats if stats[n] != 0.0]
    nan = wide.select(pl.col(floats).is_nan().any()).row(0, named=True) if floats else {}
    for n in same:
        if columns[n] != pl.Float64() or (n in nan and not nan[n]):
            out[n] = pl.lit(wide.get_column(n)[0], columns[n])
    return out


_SAMPLE_ROWS = 4096  # first rows of ``wide`` that rule out most fact columns (_constant_facts)


def _one_value(
    frame: pl.DataFrame, names: Sequence[str], columns: Mapping[str, pl.DataType]
) -> dict[str, Any]:
    """Of ``names`` (columns with no null), those equal on every row of ``frame``, with the value.

    Strings compare with the first row (a string min and max cost four times that), the rest
    min == max. Why apart from :func:`_constant_facts`: it runs on the first rows before all rows,
    and most fact columns vary already there, so the full pass (a min and a max of a million
    values per column) is left to the few that may be constant.
    """
    strings = [n for n in names if columns[n] == pl.String()]
    others = [n for n in names if n not in strings]
    exprs = []
    if others:
        exprs += [pl.col(others).min().name.prefix("lo:"), pl.col(others).max().name.prefix("hi:")]
    if strings:
        exprs += [
            (pl.col(strings) == pl.col(strings).first()).all().name.prefix("eq:"),
            pl.col(strings).first().name.prefix("lo:"),
        ]
    stats = frame.select(exprs).row(0, named=True) if exprs else {}
    same = [n for n in strings if stats["eq:" + n]] + [
        n for n in others if stats["lo:" + n] == stats["hi:" + n]
    ]
    return {n: stats["lo:" + n] for n in same}


_NO_MISSING = pl.lit("")  # _missing_text's answer when no row lacks a root (tested by identity)


def _open_texts(
    rule: _Rule, tier: CompiledTier, ids: list[str], missing: pl.Expr
) -> tuple[list[str], dict[str, pl.Expr]]:
    """The columns a fired tier's part reads from ``wide`` and its ``missing``/``not_assessed``.

    Why per tier: only a tier of strictly higher severity than the fired one can be left open
    (the fired tier blocks its own severity and below, see _plan's ``blockers``), so the other
    tiers' flags are False on these rows. Most fired tiers have none above them: both texts are
    then "" on every row (no open tier, so no missing root), written as literals instead of a
    concatenation and a gather per row, and the part takes no flag columns.
    """
    level = SEVERITY_ORDER[tier.severity]
    higher = [t for t in rule.ranked if SEVERITY_ORDER[t.severity] > level]
    if not higher:
        return list(ids), {
            "missing": _NO_MISSING.alias("missing"),
            "not_assessed": pl.lit("").alias("not_assessed"),
        }
    common = [*ids, *(_OPEN + t.id for t in higher)]
    if missing is not _NO_MISSING:
        common += ["__any_open", "__deep"]
    not_assessed = _joined([pl.when(pl.col(_OPEN + t.id)).then(pl.lit(t.id)) for t in higher])
    return common, {"missing": missing.alias("missing"), "not_assessed": not_assessed.alias("not_assessed")}


def _distinct_masks(deep: pl.DataFrame, miss_roots: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
    """Per rule with a mask column in ``deep``, its distinct non-null masks (any order).

    Why two queries for all rules and not a ``unique`` per rule: a Series operation is a whole
    polars query (~1 ms planned and run even on a few rows), and a chunk asked 37 rules for two
    each; most rules' masks are 0 on every row, which a maximum (no hashing) shows, so only the
    few others are hashed. A rule whose maximum is 0 or null has ``[0]`` or ``[]``, what its
    ``unique`` gave. Exact because a mask is never negative (``_mask`` builds unsigned integers,
    or Int64 of at most 62 bits): a maximum of 0 means every value is 0 or null.
    """
    present = set(deep.columns)
    names = [r for r in miss_roots if _MISS + r in present]
    if not names:
        return {}
    tops = deep.select(pl.col(_MISS + r).max() for r in names).row(0)
    out: dict[str, list[int]] = {r: ([] if top is None else [0]) for r, top in zip(names, tops, strict=True)}
    spread = [r for r, top in zip(names, tops, strict=True) if top]
    if spread:
        found = deep.select(pl.col(_MISS + r).unique().drop_nulls().implode() for r in spread).row(0)
        out |= {r: list(values) for r, values in zip(spread, found, strict=True)}
    return out


def _missing_text(
    column: pl.Series, position: pl.Expr, roots: Sequence[str] | None, masks: list[int] | None = None
) -> pl.Expr:
    """A rule's missing root facts ";"-joined, for the rows of ``wide`` (``position`` into ``deep``).

    ``_NO_MISSING`` itself when the text is "" on every row (no row lacks a root: most rules),
    so the caller neither gathers nor takes the position columns. Why a bit mask: a text per
    row built from one when/then per root was most of the second pass; the distinct masks are
    few, so each is spelt once and the rows take theirs. ``masks``: the column's distinct
    non-null values when the caller has them (:func:`_distinct_masks`).
    """
    if roots is None:  # too many roots for a mask: the column holds the text
        return pl.lit(column).gather(position).fill_null("")
    if masks is None:
        masks = column.unique().drop_nulls().to_list()
    if not masks or masks == [0]:
        return _NO_MISSING
    taken = pl.lit(column).gather(position)
    texts = [";".join(r for j, r in enumerate(roots) if m >> j & 1) for m in masks]
    top = max(masks)
    if top < _MASK_TABLE:  # a mask indexes its text directly: a gather, not a hash lookup per row
        table: list[str | None] = [None] * (top + 1)
        for m, text in zip(masks, texts, strict=True):
            table[m] = text
        return pl.lit(pl.Series(table, dtype=pl.String)).gather(taken).fill_null("")
    return taken.replace_strict(masks, texts, default=None, return_dtype=pl.String).fill_null("")


def _take_rows(jobs: Sequence[_Job]) -> list[pl.DataFrame]:
    """Each fired tier's rows and columns taken from ``wide``, the jobs' queries run in parallel."""
    return pl.collect_all([job.rows for job in jobs])


def _run_jobs(vp: VectorPack, jobs: Sequence[_Job]) -> list[pl.DataFrame]:
    """The parts of ``jobs``: their rows in one parallel query, the shortcuts, their texts in another."""
    pack = vp.pack
    groups = _take_rows(jobs)
    texts: list[pl.LazyFrame] = []
    out: list[pl.DataFrame] = []
    for job, group in zip(jobs, groups, strict=True):
        tier = job.tier
        code = pl.lit(job.code, pl.UInt32).alias("__code")
        # evidence per fired tier (a when/then chain over the tiers would build every tier's JSON per row)
        evidence = evidence_expr(tier, vp.columns, group).alias("evidence")
        extra = {"rule_id": tier.rule_id, "tier_id": tier.id, "severity": tier.severity}
        # the group holds a column of a placeholder exactly when cols does: it can stand in for it
        text = summary_expr(group, tier.summary, pack.params, extra, pack.spec.labels)
        if text is not None:  # column-wise, the shared formatter per distinct value (summaries.py)
            exprs = {**job.computed, "__code": code, "summary": text.alias("summary"), "evidence": evidence}
            texts.append(group.lazy().select([exprs.get(c, c) for c in _PER_ROW]))
            continue
        group_columns = set(group.columns)
        names = [n for n in dict.fromkeys(placeholders(tier.summary)) if not n.startswith("param.")]
        cols = list(
            dict.fromkeys(
                c for n in names for c in [n, *(n + s for s in BOUND_SUFFIXES)] if c in group_columns
            )
        )

        def render_row(row: Mapping[str, Any], tier: CompiledTier = tier) -> str:
            flat = {k: v for k, v in row.items() if v is not None}
            extra = {"rule_id": tier.rule_id, "tier_id": tier.id, "severity": tier.severity}
            return short_text(render(tier.summary, flat, pack.params, extra, pack.spec.labels))

        group = group.with_columns(evidence, code, *job.computed.values())
        rendered = _render_unique(group, cols, render_row, "summary", vp._summaries, tier.id)
        out.append(rendered.select(_PER_ROW))
    # the in-memory engine, not the default one: the streaming engine evaluates these selects in
    # morsels and then concatenates them, copying every text it built once more (polars 2.1; texts
    # are most of the table's bytes). The same frames either way; vector_alerts on 200,000 patients
    # measured 29 % less CPU (alternated runs), on 1 M no difference.
    return pl.collect_all(texts, engine="in-memory") + out


def _missing_rows(
    vp: VectorPack,
    deep: pl.DataFrame,
    report_cols: Mapping[str, list[tuple[str, str]]],
    ids: list[str],
    words: _Wordings,
) -> list[pl.DataFrame]:
    """The grouped 'cannot assess' alerts of :func:`cds_engine.results.build_alerts`."""
    pack = vp.pack
    cached = vp._report_keys
    if cached is None or cached[0] is not report_cols:
        cached = vp._report_keys = (report_cols, *_report_keys(vp, report_cols))
    _, keys, presents, any_present = cached
    rule_ids = {r.id for r in vp.rules}
    deep_columns = set(deep.columns)
    # which reports occur at all, in one query (most do not in a chunk; each would be a query)
    occurs = deep.select(any_present).row(0) if presents else ()
    frames = []
    for (key, (item, entries)), present, occurring in zip(keys.items(), presents, occurs, strict=True):
        if not occurring:
            continue
        contributes = [pl.any_horizontal([pl.col(c) for _, c in cols]) for _, cols in entries]
        roots: dict[str, list[str]] = {}
        for _, cols in entries:
            for root, col in cols:
                roots.setdefault(root, []).append(col)
        bound_cols = [r + s for r in roots for s in BOUND_SUFFIXES if r + s in deep_columns]
        needed = [*ids, *(c for _, cols in entries for _, c in cols), *bound_cols]
        if item is not None:
            needed += [_CHOSEN + r for r in item.covered_by if r in rule_ids]
        sub = deep.select(list(dict.fromkeys(needed))).filter(present)
        if sub.height == 0:
            continue
        item_rank = SEVERITY_ORDER[item.severity] if item else 1
        rank = _highest_rank(
            [(SEVERITY_ORDER[t.severity], c) for c, (t, _) in zip(contributes, entries, strict=True)]
        )
        label = item.label if item else key.replace("_", " ")
        tiers_by_id = {t.id: t for t, _ in entries}
        # one wording per severity the report can take, in rank order (1 info … 3 critical)
        codes = [
            words.add(
                "cannot-assess",
                MISSING_DATA_RULE,
                f"{MISSING_DATA_RULE}.{key}",
                "missing-data",
                _SEVERITY_NAME[r],
                f"Cannot assess: {label}",
            )
            for r in sorted(_SEVERITY_NAME)
        ]
        first_rank = min(_SEVERITY_NAME)
        code = pl.min_horizontal(rank, pl.lit(item_rank, pl.Int8)).cast(pl.Int64) + (codes[0] - first_rank)
        root_flags = [
            (root, pl.any_horizontal([pl.col(c) for c in cols])) for root, cols in sorted(roots.items())
        ]
        tier_flags = [(t.id, c) for c, (t, _) in zip(contributes, entries, strict=True)]

        def render_row(row: Mapping[str, Any], tiers_by_id: Mapping[str, CompiledTier] = tiers_by_id) -> str:
            # the wording is the shared one: build this one report with results' own code
            facts = row["missing"].split(";")
            undecided = [(tiers_by_id[t], facts) for t in row["not_assessed"].split(";")]
            flat = {k: v for k, v in row.items() if v is not None and k not in ("missing", "not_assessed")}
            (alert,) = missing_data_alerts(pack, flat, undecided, set(), "")
            return alert.summary

        sub = sub.with_columns(code.cast(pl.UInt32).alias("__code"), pl.lit("{}").alias("evidence"))
        if max(len(root_flags), len(tier_flags)) <= _MASK_BITS:
            sub = _render_masks(
                sub, tier_flags, root_flags, bound_cols, render_row, vp._summaries, ("missing", key)
            )
        else:  # too many for a bit mask: the texts per row, rendered per distinct text
            sub = sub.with_columns(
                _joined([pl.when(f).then(pl.lit(root)) for root, f in root_flags]).alias("missing"),
                _joined([pl.when(f).then(pl.lit(t)) for t, f in tier_flags]).alias("not_assessed"),
            )
            sub = _render_unique(
                sub,
                ["not_assessed", "missing", *bound_cols],
                render_row,
                "summary",
                vp._summaries,
                ("missing", key),
            )
        frames.append(sub.select(_PER_ROW))
    return frames


# a report's key -> (its missing-data item or None, [(tier, [(root fact, flag column)])])
_Reports = dict[str, tuple[Any, list[tuple[CompiledTier, list[tuple[str, str]]]]]]


def _report_keys(
    vp: VectorPack, report_cols: Mapping[str, list[tuple[str, str]]]
) -> tuple[_Reports, list[pl.Expr], list[pl.Expr]]:
    """The reports of :func:`_missing_rows` (key -> item and its tiers' flag columns), each one's
    "some row has it" condition, and those conditions' ``any`` for its one "which occur" query.

    Why apart and kept on the pack: they depend on the pack only, and building them — a
    ``pl.col`` per flag column, ~800 a call — was most of the fixed cost of ``_missing_rows``,
    paid again by every chunk of a streamed screening.
    """
    items = {fact: item for item in vp.pack.spec.missing_data for fact in item.facts}
    order = [t for rule in vp.rules for t in rule.ranked]  # the order build_alerts collects undecided tiers
    keys: _Reports = {}
    for tier in order:
        grouped: dict[str, tuple[Any, list[tuple[str, str]]]] = {}
        for root, col in report_cols[tier.id]:
            item = items.get(root)
            grouped.setdefault(item.item if item else root, (item, []))[1].append((root, col))
        for key, (item, cols) in grouped.items():
            keys.setdefault(key, (item, []))[1].append((tier, cols))
    rule_ids = {r.id for r in vp.rules}
    presents: list[pl.Expr] = []
    for item, entries in keys.values():
        present = pl.any_horizontal([pl.any_horizontal([pl.col(c) for _, c in cols]) for _, cols in entries])
        if item is not None:
            covering = [pl.col(_CHOSEN + r) > 0 for r in item.covered_by if r in rule_ids]
            if covering:
                present = present & ~pl.any_horizontal(covering)
        presents.append(present)
    return keys, presents, [p.any().alias(str(i)) for i, p in enumerate(presents)]


def _highest_rank(flags: Sequence[tuple[int, pl.Expr]]) -> pl.Expr:
    """The highest rank whose flag holds on the row (an Int8), null where none does.

    What a max over one "rank where the flag holds" column per flag gives, from one test per
    distinct rank instead: a report stands for dozens of tiers and three severities, and the
    max of dozens of Int8 columns cost more than three ORs of the flags.
    """
    by_rank: dict[int, list[pl.Expr]] = {}
    for rank, flag in flags:
        by_rank.setdefault(rank, []).append(flag)
    out: Any = None
    for rank in sorted(by_rank, reverse=True):
        test = pl.any_horizontal(by_rank[rank])
        out = pl.when(test) if out is None else out.when(test)
        out = out.then(pl.lit(rank, pl.Int8))
    return out.otherwise(pl.lit(None, pl.Int8)) if out is not None else pl.lit(None, pl.Int8)


def _bits(flags: Sequence[tuple[str, pl.Expr]]) -> pl.Expr:
    """Bit j set where the j-th flag holds (at most _MASK_BITS flags; the type: see _mask)."""
    if not flags:
        return pl.lit(0, pl.UInt8)
    return _mask([f for _, f in flags])


def _spelt(names: Sequence[str], mask: int) -> str:
    """The names whose bit is set in ``mask``, ";"-joined (what _joined writes for those flags)."""
    return ";".join(name for j, name in enumerate(names) if mask >> j & 1)


def _render_masks(
    sub: pl.DataFrame,
    tier_flags: Sequence[tuple[str, pl.Expr]],
    root_flags: Sequence[tuple[str, pl.Expr]],
    bound_cols: list[str],
    render_row: Any,
    cache: dict[Any, str],
    tag: Any,
) -> pl.DataFrame:
    """A report's ``not_assessed``, ``missing`` and ``summary`` texts, spelt once per distinct row.

    What :func:`_render_unique` does on the two texts, keyed instead by their bit masks: the texts
    were built per row (a concat of one when/then per tier or root) only to be grouped on; the
    distinct masks are few, so each text is spelt once (same words, same cache keys) and joined
    back with the summary. A mask stands for exactly one text (names are distinct), so the rows
    group as they did on the texts.
    """
    tiers = [t for t, _ in tier_flags]
    roots = [r for r, _ in root_flags]
    sub = sub.with_columns(_bits(tier_flags).alias("__na"), _bits(root_flags).alias("__mm"))
    key_cols = ["__na", "__mm", *bound_cols]
    keys = sub.select(key_cols).unique(maintain_order=True)
    names = ["not_assessed", "missing", *bound_cols]
    texts: dict[str, list[str]] = {"not_assessed": [], "missing": [], "summary": []}
    for na, mm, *bounds in keys.iter_rows():
        values = (_spelt(tiers, na), _spelt(roots, mm), *bounds)
        text = cache.get((tag, values))
        if text is None:
            text = render_row(dict(zip(names, values, strict=True)))
            if len(cache) < _RENDER_CACHE_MAX:
                cache[(tag, values)] = text
        texts["not_assessed"].append(values[0])
        texts["missing"].append(values[1])
        texts["summary"].append(text)
    keys = keys.with_columns(pl.Series(k, v, dtype=pl.String) for k, v in texts.items())
    return sub.join(keys, on=key_cols, how="left", nulls_equal=True, maintain_order="left")


def alerts_to_rows(patient_id: str, alerts: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows of the batch alert table from :class:`cds_engine.alerts.Alert` objects (the Rete path)."""
    return [
        {
            "patient_id": patient_id,
            "kind": a.kind,
            "rule_id": a.rule_id,
            "tier_id": a.tier_id,
            "category": a.category,
            "severity": a.severity,
            "title": a.title,
            "summary": a.summary,
            "missing": ";".join(a.missing),
            "not_assessed": ";".join(a.not_assessed),
            "evidence": canonical_evidence(a.evidence),
            "pack_id": a.pack_id,
            "pack_version": a.pack_version,
            "pack_hash": a.pack_hash,
            "site_hash": getattr(a, "site_hash", None),
        }
        for a in alerts
    ]


def canonical_evidence(evidence: Mapping[str, Any]) -> str:
    """Evidence as compact JSON with numbers as floats, the form the vector path writes."""

    def norm(v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    return json.dumps({k: norm(v) for k, v in evidence.items()}, separators=(",", ":"), ensure_ascii=False)
