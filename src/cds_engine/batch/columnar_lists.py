"""Record-table lists (conditions, allergies, medicines) → family facts, column-wise.

Part of the columnar derivation (``columnar_facts``): each list entry becomes one row; what a
code means — its groups, drug classes, route, form, name — is taken once per distinct code from
the same helpers ``facts.derive`` uses, and joined back; counts are sums over a bit mask of the
classes the pack reads; names follow ``facts.names.join_names``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from cds_engine.facts.combined import ORAL_FAMILY
from cds_engine.facts.derive import DrugContext, _drug_classes, _form_of
from cds_engine.facts.model import Medication
from cds_engine.facts.names import MAX_NAMES, medicine_name
from cds_engine.facts.normalize import LIQUID_FORMS, checked_route
from cds_engine.sources.table import parse_coding
from cds_engine.vocabulary import HISTORY_KIND, Vocabulary

__all__ = ["ORDER_SCHEMA", "allergy_facts", "condition_facts", "medication_facts"]

ROW = "__r"
_MED_INFO_SCHEMA = {  # what a medication code means to the facts, one row per distinct code
    "classes": pl.List(pl.String),
    "route": pl.String,
    "form": pl.String,
    "conc": pl.Float64,
    "name": pl.String,
}
_ROW = ROW
BITS = True  # medication_facts takes the bit-field path where it can (tests switch it off)
MAX_CLASSES = 62  # one bit per medicine class the pack reads, in an Int64
ORDER_SCHEMA: dict[str, pl.DataType] = {
    "__oid": pl.Int64(),
    "classes": pl.List(pl.String),
    "route": pl.String(),
    "form": pl.String(),
    "conc": pl.Float64(),
    "name": pl.String(),
    "__active": pl.Boolean(),
}


@dataclass
class _CodeMemo:
    """What ``fn`` answered for each code so far, and the last table built from those answers."""

    owner: Any
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    last: tuple[frozenset[str], pl.DataFrame] | None = None  # the codes of the last table, the table


_INFO_CACHE: dict[tuple[str, int], _CodeMemo] = {}
_INFO_CACHE_MAX = 200_000  # distinct codes remembered per table kind (a warehouse has far fewer)
#: (kind, vocabulary) memos held at once: each holds its vocabulary, so without a bound every pack
#: loaded in a long-lived process (screens after edits, a Dask worker) stayed in memory
_INFO_OWNERS_MAX = 16


def _code_memo(kind: str, owner: Any) -> _CodeMemo:
    """The memo of ``kind`` for ``owner``: a new one when ``owner`` is another object or it grew too big."""
    memo = _INFO_CACHE.get((kind, id(owner)))
    if memo is None or memo.owner is not owner or len(memo.known) > _INFO_CACHE_MAX:
        memo = _CodeMemo(owner)
        if len(_INFO_CACHE) >= _INFO_OWNERS_MAX:  # owners of reloaded packs: no memo outlives them all
            _INFO_CACHE.clear()
        _INFO_CACHE[(kind, id(owner))] = memo
    return memo


def _code_table(
    codes: pl.Series,
    fn: Callable[[str], dict[str, Any]],
    schema: dict[str, pl.DataType],
    cache: tuple[str, Any] | None = None,
) -> pl.DataFrame:
    """What each distinct code means (``fn``, the Python path's helpers), one row per code.

    ``cache`` = (kind, owner): the answers are kept across chunks for as long as ``owner`` (the
    vocabulary, or a tuple of what ``fn`` depends on) is the same object — a million-row table
    of chunks asks about the same few hundred codes in every chunk, and ``fn`` is pure. The table
    itself is kept too and returned again when the next chunk has the same set of codes: building
    a frame of list columns from Python lists was ~10 ms per call, twice a chunk. The rows of a
    code table are in no particular order (``unique()`` promises none): callers only look codes
    up in it (joins, or lists made from the table itself), so reusing one is the same.
    """
    distinct = codes.drop_nulls().unique().to_list()
    memo = _code_memo(*cache) if cache is not None else None
    if memo is not None and memo.last is not None and memo.last[0] == frozenset(distinct):
        return memo.last[1]
    known: dict[str, dict[str, Any]] = memo.known if memo is not None else {}
    rows = []
    for c in distinct:
        info = known.get(c)
        if info is None:
            info = fn(c)
            known[c] = info
        rows.append(info)
    data: dict[str, list[Any]] = {"__code": distinct}
    for name in schema:
        data[name] = [r[name] for r in rows]
    table = pl.DataFrame(data, schema={"__code": pl.String, **schema})
    if memo is not None:
        memo.last = (frozenset(distinct), table)
    return table


def _med_info(vocab: Vocabulary) -> Callable[[str], dict[str, Any]]:
    def info(text: str) -> dict[str, Any]:
        coding = parse_coding(text)
        med = Medication(product=coding)
        product = vocab.product(coding)
        form = _form_of(med, product)
        return {
            "classes": sorted(_drug_classes(med, vocab)),
            "route": checked_route(None, product.route if product else None, form),
            "form": form,
            "conc": product.concentration_mg_per_ml if product else None,
            "name": medicine_name(coding, vocab),
        }

    return info


def _entries(frame: pl.DataFrame, col: str, tag: int) -> pl.DataFrame:
    """(row, tag, code) for each list entry of ``col``, in row then list order (no sort needed later).

    A column the table lacks, or with no list in any row (``columnar_facts`` adds the lists a
    table lacks as nulls: resolved conditions, allergies …), has no entry: its explode, filter and
    select (~1 ms per 100,000 rows each time) are not run for nothing.
    """
    if col not in frame.columns or frame[col].null_count() == frame.height:
        return pl.DataFrame(schema={_ROW: pl.Int64, "__tag": pl.Int8, "__code": pl.String})
    return (
        frame.select(pl.col(_ROW), pl.col(col).alias("__code"))
        .explode("__code")
        .filter(pl.col("__code").is_not_null())
        .with_columns(
            pl.lit(tag, pl.Int8).alias("__tag"),
        )
        .select(_ROW, "__tag", "__code")
    )


def _names_expr(name_col: str) -> pl.Expr:
    """names.join_names over an ordered list column: distinct, first MAX_NAMES, then '+N more'."""
    unique = pl.col(name_col).list.unique(maintain_order=True)
    n = unique.list.len()
    shown = unique.list.head(MAX_NAMES).list.join("; ")
    more = pl.lit("; +") + (n - MAX_NAMES).cast(pl.String) + pl.lit(" more")
    return pl.when(n > MAX_NAMES).then(shown + more).otherwise(shown)


def _joined_names(names: pl.Series) -> pl.Series:
    """:func:`_names_expr` of each list of ``names``, run only on the lists of more than one name.

    Why: nearly every list is one name, whose joined text is that name (distinct: itself; shown:
    itself, joined with nothing), and de-duplicating every list cost more than the rest of the
    naming. A list of one null, or of several names, takes the expression.
    """
    out = names.list.first()
    rest = ~((names.list.len() == 1) & out.is_not_null())
    if rest.any():
        fixed = names.filter(rest).to_frame("__names").select(_names_expr("__names")).to_series()
        out = out.scatter(rest.arg_true(), fixed)
    return out


def condition_facts(frame: pl.DataFrame, vocab: Vocabulary) -> pl.DataFrame:
    """cond.*, cond_history.*, cond_named.* (a table has no condition dates: cond_days.* stay unknown)."""
    entries = pl.concat([_entries(frame, "conditions", 0), _entries(frame, "resolved_conditions", 1)])

    def info(text: str) -> dict[str, Any]:
        coding = parse_coding(text)
        groups = vocab.classify(coding, "condition_group")
        return {
            "groups": sorted(groups),
            "history": sorted(vocab.classify(coding, HISTORY_KIND) - groups),
            "name": medicine_name(coding, vocab, "unnamed condition"),
        }

    table = _code_table(
        entries["__code"],
        info,
        {"groups": pl.List(pl.String), "history": pl.List(pl.String), "name": pl.String},
        cache=("condition", vocab),
    )
    joined = entries.join(table, on="__code", how="left", maintain_order="left")
    active = joined.filter(pl.col("__tag") == 0).explode("groups").filter(pl.col("groups").is_not_null())
    hist = (
        pl.concat(
            [
                joined.select(_ROW, pl.col("history").alias("g")).explode("g"),
                joined.filter(pl.col("__tag") == 1).select(_ROW, pl.col("groups").alias("g")).explode("g"),
            ]
        )
        .filter(pl.col("g").is_not_null())
        .unique()
    )
    wide = frame.select(_ROW)
    single = _single_condition_columns(frame, active) if active.height else None
    if single is not None:
        wide = wide.hstack(single)
    elif active.height:
        named = active.group_by(_ROW, "groups", maintain_order=True).agg(pl.col("name"))
        named = named.with_columns(_joined_names(named["name"]).alias("__n"))
        cond = named.pivot(on="groups", index=_ROW, values="__n")
        cond = cond.select(
            _ROW,
            *[pl.col(c).alias("cond_named." + c) for c in cond.columns if c != _ROW],
            *[pl.col(c).is_not_null().alias("cond." + c) for c in cond.columns if c != _ROW],
        )
        wide = wide.join(cond, on=_ROW, how="left", maintain_order="left")
    if hist.height:
        h = hist.with_columns(pl.lit(True).alias("v")).pivot(on="g", index=_ROW, values="v")
        h = h.select(_ROW, *[pl.col(c).alias("cond_history." + c) for c in h.columns if c != _ROW])
        wide = wide.join(h, on=_ROW, how="left", maintain_order="left")
    return wide


def _single_condition_columns(frame: pl.DataFrame, active: pl.DataFrame) -> list[pl.Series] | None:
    """cond_named.* and cond.* of :func:`condition_facts` when no row has two active conditions.

    Then each (row, group) has one entry and its joined names are that entry's name, so the
    group-by of names per (row, group), the pivot and the join back (~10 ms per 100,000 rows)
    are each group's rows put in place: the name where the row has the group, and for cond.*
    true there, false in the other rows with an active condition, null in rows with none — what
    the pivot and the left join gave. None: some row has several active entries (or a name is
    missing, or the rows are not in order): the caller takes the general path.
    """
    if (frame["conditions"].list.len().max() or 0) > 1 or active["name"].null_count():
        return None
    rows = frame[_ROW]
    if not rows.is_sorted():
        return None
    n = frame.height
    pos = rows.search_sorted(active[_ROW])  # each entry's row (the frame's rows are in order)
    some = pl.repeat(None, n, dtype=pl.Boolean, eager=True).scatter(pos, False)
    named, flags = [], []
    located = active.select(pos.alias("__pos"), "groups", "name")
    for (group,), part in located.partition_by("groups", as_dict=True, maintain_order=True).items():
        at = part["__pos"]
        named.append(
            pl.repeat(None, n, dtype=pl.String, eager=True)
            .scatter(at, part["name"])
            .alias("cond_named." + group)
        )
        flags.append(some.clone().scatter(at, True).alias("cond." + group))
    return named + flags


def allergy_facts(frame: pl.DataFrame, vocab: Vocabulary) -> pl.DataFrame:
    """allergy.<group> for every group of an active allergy entry."""
    entries = _entries(frame, "allergies", 0)
    if entries.height == 0:  # no allergy listed in the chunk (the usual extract): no group to look up
        return frame.select(_ROW)
    table = _code_table(
        entries["__code"],
        lambda t: {"groups": sorted(vocab.classify(parse_coding(t), "allergy_group"))},
        {"groups": pl.List(pl.String)},
        cache=("allergy", vocab),
    )
    groups = (
        entries.join(table, on="__code", how="left", maintain_order="left")
        .explode("groups")
        .filter(pl.col("groups").is_not_null())
    )
    wide = frame.select(_ROW)
    if groups.height:
        g = (
            groups.select(_ROW, "groups")
            .unique()
            .with_columns(pl.lit(True).alias("v"))
            .pivot(on="groups", index=_ROW, values="v")
        )
        wide = wide.join(
            g.select(_ROW, *[pl.col(c).alias("allergy." + c) for c in g.columns if c != _ROW]),
            on=_ROW,
            how="left",
            maintain_order="left",
        )
    return wide


def medication_facts(
    frame: pl.DataFrame,
    vocab: Vocabulary,
    ctx: DrugContext,
    orders_table: pl.DataFrame,
    columns: dict[str, pl.DataType],
) -> pl.DataFrame:
    """Active medicines (the lists, then the order) → counts and names by class, the drug's routes.

    Each entry is one row carrying a bit mask of the classes the pack reads (computed per distinct
    code), so counting is one group-by of sums; names are joined per (patient, class) only where a
    class has several entries (most have one: its name is the first). Chunks whose rows are
    narrow enough take :func:`medication_facts_bits` instead (the same facts, less CPU).
    """
    if BITS:
        fast = medication_facts_bits(frame, vocab, ctx, orders_table, columns)
        if fast is not None:
            return fast
    drug = ctx.drug_class
    wanted = sorted(
        {c.split(".", 1)[1] for c in columns if c.startswith(("meds.", "inpatient_meds.", "meds_named."))}
    )
    bits = {c: i for i, c in enumerate(wanted)}

    def masked(table: pl.DataFrame) -> pl.DataFrame:
        mask = pl.lit(0, pl.Int64)
        for c, i in bits.items():
            mask = mask | pl.when(pl.col("classes").list.contains(c)).then(
                pl.lit(1 << i, pl.Int64)
            ).otherwise(0)
        return table.with_columns(
            pl.col("classes").list.contains(drug).fill_null(False).alias("__drug"), mask.alias("__mask")
        ).drop("classes")

    entries = pl.concat(
        [
            _entries(frame, "medications", 0),
            _entries(frame, "home_medications", 1),
            _entries(frame, "inpatient_medications", 2),
        ]
    )
    schema = _MED_INFO_SCHEMA
    table = masked(_code_table(entries["__code"], _med_info(vocab), schema, cache=("medication", vocab)))
    meds = entries.join(table, on="__code", how="left", maintain_order="left").drop("__code")
    meds = meds.join(
        frame.select(_ROW, "inpatient"), on=_ROW, how="left", maintain_order="left"
    ).with_columns((pl.col("__tag") == 2).alias("__inp"))
    # the order, last among the active medicines (per distinct order)
    otable = masked(orders_table)
    orders = (
        frame.select(_ROW, "__oid", "inpatient")
        .join(otable, on="__oid", how="left", maintain_order="left")
        .filter(pl.col("__active"))
        .drop("__active", "__oid")
        .with_columns(pl.lit(3, pl.Int8).alias("__tag"), pl.col("inpatient").fill_null(False).alias("__inp"))
    )
    allm = pl.concat([meds, orders.select(meds.columns)], how="vertical_relaxed")
    # reconciliation: in hospital with the drug ordered there, the home-list entry of the drug is that order
    if frame["inpatient"].fill_null(False).any():
        recon = allm.group_by(_ROW).agg((pl.col("__drug") & pl.col("__inp")).any().alias("__rec"))
        allm = allm.join(recon, on=_ROW, how="left", maintain_order="left").filter(
            ~(
                pl.col("inpatient").fill_null(False)
                & pl.col("__rec")
                & (pl.col("__tag") == 1)
                & pl.col("__drug")
            )
        )
    # entries are in (row, list, position) order already: medications, home, inpatient, then the order
    allm = allm.with_columns(
        pl.col("name").fill_null("unnamed medicine"), pl.int_range(pl.len(), dtype=pl.Int64).alias("__e")
    )
    drug_only = pl.col("__drug")
    oral_other = (
        drug_only
        & (pl.col("__tag") != 3)
        & (pl.col("route").is_in([*ORAL_FAMILY]) | pl.col("route").is_null())
    )
    liquid = drug_only & pl.col("form").is_in(list(LIQUID_FORMS)) & pl.col("conc").is_not_null()
    routes = ["enteral", "intrathecal", "oral", "unknown"]
    routes = sorted(
        {*routes, *(c.split(".", 1)[1] for c in columns if c.startswith("drug_active_by_route."))}
    )
    route = pl.col("route").fill_null("unknown")
    # Every per-entry test is computed once over the flat entry table, so the group-by only sums,
    # takes firsts and counts plain columns (the fast aggregations): the same values as the tests
    # written inside the aggregation, ~3x less CPU (a filter inside an aggregation runs per group).
    flat: dict[str, pl.Expr] = {}
    sums: list[pl.Expr] = []
    any_inpatient = bool(allm["__inp"].any())  # no inpatient entry in the chunk: every such count is 0
    for c, i in bits.items():
        member = (pl.col("__mask") & pl.lit(1 << i, pl.Int64)) != 0
        flat[f"__m.{c}"] = member
        # the first entry of the class (its position; names are looked up after: an integer
        # minimum is a cheaper aggregation than the first non-null string)
        flat[f"__n.{c}"] = pl.when(member).then(pl.col("__e"))
        sums += [
            pl.col(f"__m.{c}").sum().cast(pl.Float64).alias("meds." + c),
            pl.col(f"__n.{c}").min().alias("__first." + c),
        ]
        if any_inpatient:
            flat[f"__i.{c}"] = member & pl.col("__inp")
            sums.append(pl.col(f"__i.{c}").sum().cast(pl.Float64).alias("inpatient_meds." + c))
        else:
            sums.append(pl.lit(0.0, pl.Float64).alias("inpatient_meds." + c))
    for r in routes:
        flat[f"__route.{r}"] = drug_only & (route == r)
        sums.append(pl.col(f"__route.{r}").sum().cast(pl.Float64).alias("drug_active_by_route." + r))
    flat["__liquid_conc"] = pl.when(liquid).then(pl.col("conc"))  # never null where liquid
    flat["__other_drug"] = drug_only & (pl.col("__tag") != 3)
    flat["__oral_other"] = oral_other
    names = allm["name"]
    # lazily: the lazy engine's group-by over these plain columns costs about half the eager one's
    grouped = (
        allm.lazy()
        .select(_ROW, "__drug", *[e.alias(k) for k, e in flat.items()])
        .group_by(_ROW)
        .agg(
            *sums,
            pl.col("__drug").sum().cast(pl.Float64).alias("drug_active_count"),
            pl.col("__liquid_conc")
            .drop_nulls()
            .n_unique()
            .cast(pl.Float64)
            .alias("drug_liquid_concentrations"),
            pl.col("__other_drug").any().alias("__drug_other"),
            pl.col("__oral_other").sum().alias("__oral_others"),
        )
        .with_columns(pl.lit(names).gather(pl.col("__first." + c)).alias("meds_named." + c) for c in bits)
        .drop(["__first." + c for c in bits])
        .collect()
    )
    # several entries of one class: names.join_names over them, in entry order — the rows concerned
    # only, every such class in one lazy plan, joined back once (joining the wide table once per
    # class copied it each time)
    several = [c for c in bits if (grouped["meds." + c].max() or 0) > 1]
    if several:
        entries_l = allm.lazy()
        fixes = pl.concat(
            [
                entries_l.filter((pl.col("__mask") & pl.lit(1 << bits[c], pl.Int64)) != 0)
                .join(
                    grouped.lazy().filter(pl.col("meds." + c) > 1).select(_ROW),
                    on=_ROW,
                    how="semi",
                    maintain_order="left",
                )
                .group_by(_ROW, maintain_order=True)
                .agg(pl.col("name"))
                .select(_ROW, pl.lit(c).alias("__c"), _names_expr("name").alias("__fix"))
                for c in several
            ]
        ).collect()
        # each class's joined names put in place by row, looked up (the few rows concerned): a
        # pivot to a wide table, its join to ``grouped`` and a coalesce cost ~60 % more
        fixes = fixes.filter(pl.col("__fix").is_not_null())
        replaced = []
        for c, fix in fixes.partition_by("__c", as_dict=True, maintain_order=True).items():
            replaced.append(
                pl.col(_ROW)
                .replace_strict(
                    fix[_ROW], fix["__fix"], default=pl.col("meds_named." + c[0]), return_dtype=pl.String
                )
                .alias("meds_named." + c[0])
            )
        grouped = grouped.with_columns(replaced)
    zero_is_absent = [
        pl.when(pl.col(name) > 0).then(pl.col(name)).alias(name)
        for c in bits
        for name in ("meds." + c, "inpatient_meds." + c)
    ] + [
        pl.when(pl.col("drug_active_by_route." + r) > 0)
        .then(pl.col("drug_active_by_route." + r))
        .alias("drug_active_by_route." + r)
        for r in routes
    ]
    grouped = grouped.with_columns(zero_is_absent)
    anyd = meds.filter(pl.col("__drug")).select(_ROW).unique().with_columns(pl.lit(True).alias("__drug_any"))
    wide = frame.select(_ROW).join(grouped, on=_ROW, how="left", maintain_order="left")
    wide = wide.join(anyd, on=_ROW, how="left", maintain_order="left")
    return wide.with_columns(
        pl.col("drug_active_count").fill_null(0.0),
        pl.col("drug_liquid_concentrations").fill_null(0.0),
        pl.col("__drug_other").fill_null(False),
        pl.col("__drug_any").fill_null(False),
        pl.col("__oral_others").fill_null(0),
    )


# ── the medicines as bit fields: one sum per 64 bits instead of a group-by aggregation per fact ──

#: widest row (list entries + the order) the bit-field path takes; wider chunks take the group-by
MAX_SLOTS = 32
_U64 = pl.UInt64
_EMPTY = pl.Series([[]], dtype=pl.List(pl.String))


#: per vocabulary (by id): (the vocabulary, the layout of the words, the last prepared code table)
_PREPARED: dict[int, tuple[Any, tuple[Any, ...], pl.DataFrame]] = {}


def _field_words(fields: dict[str, int], present: Any, width: int, words: int) -> list[int]:
    """The words (Python ints) with bit 0 of each field in ``present`` set (its slot 0)."""
    out = [0] * words
    per_word = 64 // width
    for name in present:
        slot = fields[name]
        out[slot // per_word] |= 1 << (width * (slot % per_word))
    return out


def _row_sums(entries: pl.DataFrame, n: int, words: int) -> list[pl.Series]:
    """Per row (``__pos`` of ``n``), the sum of each word column ``__w0..`` over its entries.

    Why not a group-by: a row has at most one entry per slot ``__k`` (slots are numbered through
    its lists), so the entries of one slot scatter into a column of ``n`` rows without colliding,
    and a row's sum is the sum of its slot columns. A hash group-by on the row of ~200,000 entries
    cost ~25 ms per 100,000 rows; a handful of slots (rows have few entries) cost a few. The
    words are sums of distinct bits, so their sums never carry, in any order.
    """
    totals = [pl.zeros(n, dtype=_U64, eager=True) for _ in range(words)]
    for slot in entries.partition_by("__k", include_key=False):
        pos = slot["__pos"]
        for j in range(words):
            totals[j] = totals[j] + pl.zeros(n, dtype=_U64, eager=True).scatter(pos, slot[f"__w{j}"])
    return totals


def _used(table: pl.DataFrame, any_inp: bool) -> pl.DataFrame:
    """The prepared code table's columns the entries need: without anyone in hospital (nor an
    inpatient list) no entry reads its inpatient words ``__i*`` or its reconciled words ``__a*``,
    and the join no longer copies them to every entry (two columns per word, ~15 % of the join)."""
    if any_inp:
        return table
    return table.select(pl.exclude("^__[ia][0-9]+$"))


def _dense_row_sums(entries: pl.DataFrame, n: int, words: int, per_row: int) -> list[pl.Series]:
    """:func:`_row_sums` when every row has ``per_row`` entries, in row order then slot order.

    Why: that is what one list exploded gives when every row lists as many medicines (the
    extract of a fixed number of columns per patient), and then a row's entries are the
    consecutive ``per_row`` values: a reshape to a fixed-width array and its row sum, with no
    partition of the entries by slot and no scatter into zeroed columns (~11 → ~1 ms per
    150,000 rows of two entries). The caller checks the shape (one list, ``n * per_row``
    entries: no row can have more than ``per_row``, so each has exactly that many).
    """
    return [entries[f"__w{j}"].reshape((n, per_row)).arr.sum().cast(_U64) for j in range(words)]


def medication_facts_bits(
    frame: pl.DataFrame,
    vocab: Vocabulary,
    ctx: DrugContext,
    orders_table: pl.DataFrame,
    columns: dict[str, pl.DataType],
) -> pl.DataFrame | None:
    """:func:`medication_facts` with every count taken from bit fields (None: a row is too wide).

    Why: the group-by of ~45 aggregations (a sum or a minimum per class, route and flag) and the
    joins around it were ~0.3 CPU-s per 100,000 rows. Here each row's entries (its three lists in
    order, then the order) get slots 0..K-1; every fact the entry counts towards is a field of K
    bits, and the entry sets bit ``slot`` of each. Fields are packed 64 // K to a UInt64 word, so a
    row's words are the *sums* of its entries' words (distinct bits: a sum is an OR and never
    carries). A count is then the number of set bits, "any" a non-zero field, the first entry of
    a class its lowest set bit — the same answers as counting, in entry order, what the group-by
    counted (``tests/test_columnar_medication_bits.py`` runs both and compares them with ``facts.derive``).
    """
    n = frame.height
    if n == 0:
        return None
    drug = ctx.drug_class
    wanted = sorted(
        {c.split(".", 1)[1] for c in columns if c.startswith(("meds.", "inpatient_meds.", "meds_named."))}
    )
    routes = sorted(
        {"enteral", "intrathecal", "oral", "unknown"}
        | {c.split(".", 1)[1] for c in columns if c.startswith("drug_active_by_route.")}
    )
    lists = ("medications", "home_medications", "inpatient_medications")
    lens = frame.select(
        *[pl.col(c).list.len().fill_null(0).cast(pl.Int64).alias(f"__len{i}") for i, c in enumerate(lists)]
    )
    total = lens.select(pl.sum_horizontal(pl.all())).to_series()
    width = int(total.max() or 0) + 1  # the order takes the last slot, K - 1
    if width > MAX_SLOTS:
        return None
    inpatient_rows = frame["inpatient"].fill_null(False)
    any_inp = bool(inpatient_rows.any()) or bool(lens["__len2"].max() or 0)
    fields: dict[str, int] = {}
    for name in (
        *(f"c.{c}" for c in wanted),
        *(f"r.{r}" for r in routes),
        "drug",
        "other",
        "oral",
        "any",
        *((f"i.{c}" for c in wanted) if any_inp else ()),
    ):
        fields[name] = len(fields)
    per_word = 64 // width
    words = -(-len(fields) // per_word)

    def entry_words(classes: list[str] | None, route: str | None, listed: bool) -> tuple[list[int], ...]:
        """(words when kept, words of the inpatient fields, words when dropped by reconciliation)."""
        cls = set(classes or ())
        is_drug = drug in cls
        base = [f"c.{c}" for c in wanted if c in cls]
        if is_drug:
            base += [f"r.{route or 'unknown'}", "drug"]
            if listed:
                base += ["other", "any"] + (["oral"] if route is None or route in ORAL_FAMILY else [])
        inp = [f"i.{c}" for c in wanted if c in cls] if any_inp else []
        kept = _field_words(fields, [f for f in base if f in fields], width, words)
        dropped = _field_words(fields, ["any"] if is_drug and listed else [], width, words)
        return kept, _field_words(fields, inp, width, words), dropped

    # per distinct code (cached meanings) and per distinct order: their words, in Python
    schema = _MED_INFO_SCHEMA
    # each list's entries, list after list (a concatenated list per row copied every code twice):
    # a row's entry in slot k of list t is row t_base + k of this frame (see name_index)
    offsets = [lens["__len0"] * 0, lens["__len0"], lens["__len0"] + lens["__len1"]]  # each list's first slot
    # the row's hospital flag and each entry's list are read only for the inpatient words and the
    # reconciliation: without anyone in hospital nor an inpatient list they are not exploded
    segments = [
        frame.select(
            pl.int_range(n, dtype=pl.Int64).alias("__pos"),
            *([inpatient_rows.alias("__inpatient"), pl.lit(t, pl.Int8).alias("__tag")] if any_inp else []),
            pl.col(c).fill_null(pl.lit(_EMPTY)).alias("__code"),
            (pl.int_ranges(0, lens[f"__len{t}"]) + offsets[t]).alias("__k"),
        )
        .explode(["__code", "__k"])
        .filter(pl.col("__k").is_not_null())
        for t, c in enumerate(lists)
        if lens[f"__len{t}"].sum() or t == 0
    ]
    entries = pl.concat(segments) if len(segments) > 1 else segments[0]
    # where slot k of a row's list t is in ``entries``: t_base + k (t_base = the list's first entry
    # in the frame - its first slot)
    # (one list: only its base is read, by name_index and the joined names)
    seg_start = 0
    bases = []
    for t in range(3 if len(segments) > 1 else 1):
        length = lens[f"__len{t}"]
        bases.append((length.cum_sum() - length + seg_start - offsets[t]).alias(f"__at{t}"))
        seg_start += int(length.sum())

    def prepared(table: pl.DataFrame) -> pl.DataFrame:
        """Per code: its name, "is the drug", liquid strength and words (what the entries join)."""
        rows = table.select("classes", "route").rows()
        made = [entry_words(c, r, True) for c, r in rows]
        liquid_forms = list(LIQUID_FORMS)
        return table.select(
            "__code",
            pl.col("name").fill_null("unnamed medicine"),
            pl.col("classes").list.contains(drug).fill_null(False).alias("__drug"),
            pl.when(
                pl.col("classes").list.contains(drug).fill_null(False)
                & pl.col("form").is_in(liquid_forms)
                & pl.col("conc").is_not_null()
            )
            .then(pl.col("conc"))
            .alias("__liquid"),
            *[pl.Series(f"__b{j}", [m[0][j] for m in made], dtype=_U64) for j in range(words)],
            *[pl.Series(f"__i{j}", [m[1][j] for m in made], dtype=_U64) for j in range(words)],
            *[pl.Series(f"__a{j}", [m[2][j] for m in made], dtype=_U64) for j in range(words)],
        )

    # the last chunk's table of the same layout first: when it holds every code of this chunk (the
    # usual case: a table asks about the same codes in every chunk), the distinct codes are not
    # taken again, nor their words; a code it lacks (its "is the drug" null after the join, never
    # null in a table) takes the table of this chunk's codes, as before. Joins only look codes
    # up, so a table of more codes gives the same rows.
    layout = (drug, tuple(fields), width, words)
    last = _PREPARED.get(id(vocab))
    joined = None
    if last is not None and last[0] is vocab and last[1] == layout:
        joined = entries.join(_used(last[2], any_inp), on="__code", how="left", maintain_order="left")
        if joined["__drug"].null_count():
            joined = None
    if joined is None:
        codes = _code_table(entries["__code"], _med_info(vocab), schema, cache=("medication", vocab))
        table = prepared(codes)
        if len(_PREPARED) > 8:
            _PREPARED.clear()
        _PREPARED[id(vocab)] = (vocab, layout, table)
        joined = entries.join(_used(table, any_inp), on="__code", how="left", maintain_order="left")
    entries = joined
    k = pl.col("__k")
    tag = pl.col("__tag")
    is_drug = pl.col("__drug").fill_null(False)
    # reconciliation: in hospital with the drug ordered there, the home-list entry of the drug is
    # that order — it counts for nothing but "a listed entry is the drug" (__drug_any)
    o_drug = [drug in (c or ()) for c in orders_table["classes"].to_list()]
    o_active = orders_table["__active"].to_list()
    oid_values = orders_table["__oid"].to_list()
    keep: pl.Expr = pl.lit(True)
    if bool(inpatient_rows.any()):
        o_rec = [bool(a and d) for a, d in zip(o_active, o_drug, strict=True)]
        order_rec = frame.select(
            pl.col("__oid").replace_strict(oid_values, o_rec, return_dtype=pl.Boolean) & inpatient_rows
        ).to_series()
        listed_rec = entries.filter(is_drug & (tag == 2))["__pos"].unique()
        rec_rows = order_rec | pl.int_range(n, dtype=pl.Int64, eager=True).is_in(listed_rec.implode())
        keep = ~(pl.col("__inpatient") & pl.lit(rec_rows).gather(pl.col("__pos")) & (tag == 1) & is_drug)
    pow2 = pl.lit(pl.Series([1 << i for i in range(64)], dtype=_U64)).gather(k)
    word_exprs = []
    for j in range(words):
        # nobody in hospital and no inpatient list: every entry is kept and none is an inpatient
        # order, so its words are its code's (the inpatient and dropped words were not joined)
        w = (
            pl.when(keep)
            .then(pl.col(f"__b{j}") + pl.when(tag == 2).then(pl.col(f"__i{j}")).otherwise(pl.lit(0, _U64)))
            .otherwise(pl.col(f"__a{j}"))
            if any_inp
            else pl.col(f"__b{j}")
        )
        word_exprs.append((w.fill_null(pl.lit(0, _U64)) * pow2).alias(f"__w{j}"))
    liquid_entries = entries.filter(pl.col("__liquid").is_not_null() & keep).select(
        "__pos", pl.col("__liquid")
    )
    word_table = entries.select("__pos", "__k", *word_exprs)
    listed = width - 1  # list slots per row
    if len(segments) == 1 and listed and word_table.height == n * listed:
        listed_words = _dense_row_sums(word_table, n, words, listed)
    else:
        listed_words = _row_sums(word_table, n, words)
    # the order, in the last slot: its words per distinct order (inpatient fields by the row)
    o_made = [
        entry_words(c, r, False) if a else ([0] * words, [0] * words, [0] * words)
        for c, r, a in zip(
            orders_table["classes"].to_list(), orders_table["route"].to_list(), o_active, strict=True
        )
    ]
    top = 1 << (width - 1)
    oid = pl.col("__oid")
    row_words = []
    for j in range(words):
        listed = listed_words[j]
        order_b = oid.replace_strict(oid_values, [m[0][j] * top for m in o_made], return_dtype=_U64)
        order_i = oid.replace_strict(oid_values, [m[1][j] * top for m in o_made], return_dtype=_U64)
        row_words.append(
            (
                pl.lit(listed) + order_b + pl.when(inpatient_rows).then(order_i).otherwise(pl.lit(0, _U64))
            ).alias(f"__w{j}")
        )
    # a name by slot: the list entries' names (row-major: a row's entry k is at base + k), then
    # one per distinct order
    names = entries["name"].fill_null("unnamed medicine")
    o_names = orders_table["name"].fill_null("unnamed medicine")
    # one chunk: a gather from a Series of several chunks cost ~2.5x as much (the names are
    # gathered per class below, and again for the joined texts)
    all_names = pl.concat([names, o_names.cast(pl.String)], rechunk=True)
    o_index = oid.replace_strict(oid_values, list(range(len(oid_values))), return_dtype=pl.Int64)
    w = frame.select(
        pl.col(_ROW),
        *row_words,
        *bases,
        lens["__len0"],
        (lens["__len0"] + lens["__len1"]).alias("__len01"),
        (pl.lit(names.len(), pl.Int64) + o_index).alias("__oname"),
    )

    def offset(name: str) -> int:
        """Where the field's slot 0 lies in its word."""
        return width * (fields[name] % per_word)

    def bits(name: str) -> pl.Expr:
        """The field's bits where they lie in its word (the others cleared, not shifted down).

        Why not shifted: a count, "any" and the lowest slot (less the offset) read the bits in
        place, so each field is one AND of its word — shared by the lazy query below wherever it
        recurs — where a division and a modulo made a column of every field (~20 % of this
        function at 150,000 rows of the bench population).
        """
        slot = fields[name]
        mask = ((1 << width) - 1) << offset(name)
        return pl.col(f"__w{slot // per_word}") & pl.lit(mask, _U64)

    def field(name: str) -> pl.Expr:
        """The field shifted down to bit 0 (bit ``s``: slot ``s``)."""
        return bits(name) // pl.lit(1 << offset(name), _U64)

    def count(name: str) -> pl.Expr:
        return bits(name).bitwise_count_ones()

    only_first = len(segments) == 1  # the later lists are empty in this chunk

    def name_index(slot: pl.Expr) -> pl.Expr:
        """Where the name of the row's entry in ``slot`` is in ``all_names`` (null slot: null)."""
        chain = pl.when(slot == width - 1).then(pl.col("__oname"))
        if only_first:
            return chain.otherwise(pl.col("__at0") + slot)
        return (
            chain.when(slot < pl.col("__len0"))
            .then(pl.col("__at0") + slot)
            .when(slot < pl.col("__len01"))
            .then(pl.col("__at1") + slot)
            .otherwise(pl.col("__at2") + slot)
        )

    def lowest(f: pl.Expr, shift: int = 0) -> pl.Expr:
        """The lowest set bit's position, less ``shift`` (null when none is set)."""
        return pl.when(f != 0).then(f.bitwise_trailing_zeros().cast(pl.Int64) - shift)

    # only the facts the pack reads: a class is counted for meds.* or for its names, named for
    # meds_named.*, counted in hospital for inpatient_meds.* (each class is a field all the same)
    named_classes = [c for c in wanted if "meds_named." + c in columns]
    counted = [c for c in wanted if "meds." + c in columns or c in named_classes]
    # per class: its count and where its first entry's name is (names are gathered once, last)
    own: list[pl.Expr] = [
        *[count(f"c.{c}").alias(f"__n.{c}") for c in counted],
        *[name_index(lowest(bits(f"c.{c}"), offset(f"c.{c}"))).alias(f"__f.{c}") for c in named_classes],
    ]
    ex: list[pl.Expr] = []
    for c in wanted:
        got = count(f"c.{c}")
        if "meds." + c in columns:
            ex.append(pl.when(got > 0).then(got.cast(pl.Float64)).alias("meds." + c))
        if "inpatient_meds." + c in columns and any_inp:
            gi = count(f"i.{c}")
            ex.append(pl.when(gi > 0).then(gi.cast(pl.Float64)).alias("inpatient_meds." + c))
        elif "inpatient_meds." + c in columns:
            ex.append(pl.lit(None, pl.Float64).alias("inpatient_meds." + c))
    for r in routes:
        got = count(f"r.{r}")
        ex.append(pl.when(got > 0).then(got.cast(pl.Float64)).alias("drug_active_by_route." + r))
    ex += [
        count("drug").cast(pl.Float64).alias("drug_active_count"),
        (bits("other") != 0).alias("__drug_other"),
        count("oral").alias("__oral_others"),
        (bits("any") != 0).alias("__drug_any"),
    ]
    # one lazy query: its common subexpressions (each field's AND, each class's count) are
    # computed once, where eager steps made a column of each to share them. In memory: the
    # streaming engine's morsels left these columns in two chunks beside the others' one, and
    # the frame's later queries in columnar_facts copied them back into line
    w = w.lazy().with_columns(*own, *ex).collect(engine="in-memory")
    wide = w.select(_ROW, *[e.meta.output_name() for e in ex])
    # several entries of one class: names.join_names over them in slot (entry) order, for the
    # rows concerned only; the joined texts are appended to the names and pointed at
    names_of = pl.lit(all_names)
    pow2 = pl.lit(pl.Series([1 << i for i in range(64)], dtype=_U64))
    texts = [all_names]
    index_of = {c: w[f"__f.{c}"] for c in named_classes}
    several_classes = [c for c in named_classes if (w[f"__n.{c}"].max() or 0) > 1]  # rows of several entries
    if several_classes:
        # every such class's rows in one table (class, row, its field, count and first name), then
        # where the row's names are; the joined texts are made for all classes at once. Why: per
        # class, a filter of the row table and half a dozen small queries cost ~1.5 ms even for a
        # class of one such row, and most classes have a handful (~30 % of this function at
        # 100,000 rows of the bench population, ~10 % now)
        # one query of a filter per class (run side by side), each taking the row's name bases
        # with it: a Python loop of arg_true, four gathers and a frame per class, then a gather of
        # the bases for all, cost ~6 vs ~3.5 ms per 100,000 rows of the bench population
        rows = w.lazy().with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__p"))
        long = pl.concat(
            [
                rows.filter(pl.col(f"__n.{c}") > 1).select(  # the class's rows of several entries
                    "__p",
                    pl.lit(ci, pl.Int32).alias("__c"),
                    field(f"c.{c}").alias("__f"),
                    pl.col(f"__n.{c}").alias("__cnt"),
                    pl.col(f"__f.{c}").alias("__first"),
                    pl.col("^__at[0-9]$"),
                    "__len0",
                    "__len01",
                    "__oname",
                )
                for ci, c in enumerate(several_classes)
            ]
        ).collect()
        f = pl.col("__f")
        # two entries (nearly every such row): the first name, and the second unless the same;
        # each name gathered once, as a column (an eager select evaluates a repeated subexpression
        # again each time)
        after = f // pow2.gather(lowest(f) + 1)  # the bits above the first
        pair = long.filter(pl.col("__cnt") == 2).select(
            "__c",
            "__p",
            names_of.gather(pl.col("__first")).alias("__a"),
            names_of.gather(name_index(lowest(after) + lowest(f) + 1)).alias("__b"),
        )
        a, b = pl.col("__a"), pl.col("__b")
        fixes = [
            pair.select("__c", "__p", pl.when(a == b).then(a).otherwise(a + pl.lit("; ") + b).alias("__fix"))
        ]
        more = long.filter(pl.col("__cnt") > 2)
        if more.height:
            slots = [
                # the slot only where its bit is set: a gather runs on every row, taken or not
                names_of.gather(
                    name_index(pl.when((f // pl.lit(1 << s, _U64)) % 2 == 1).then(pl.lit(s, pl.Int64)))
                )
                for s in range(width)
            ]
            fixes.append(
                more.select("__c", "__p", pl.concat_list(slots).list.drop_nulls().alias("name")).select(
                    "__c", "__p", _names_expr("name").alias("__fix")
                )
            )
        fix = pl.concat(fixes) if len(fixes) > 1 else fixes[0]
        texts.append(fix["__fix"])
        # the joined texts are appended to the names, and each row concerned is pointed at its own
        fix = fix.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__t") + all_names.len())
        for (ci,), part in fix.partition_by("__c", as_dict=True, maintain_order=True).items():
            c = several_classes[ci]
            index = index_of[c].clone()
            index.scatter(part["__p"], part["__t"])
            index_of[c] = index
    named = [index_of[c].alias("meds_named." + c) for c in named_classes]
    every = pl.lit(pl.concat(texts, rechunk=True) if len(texts) > 1 else all_names)
    wide = wide.with_columns(
        (every.gather(i) if i.null_count() < n else pl.lit(None, pl.String)).alias(i.name) for i in named
    )
    liquid = (
        liquid_entries.vstack(
            frame.select(
                pl.int_range(n, dtype=pl.Int64).alias("__pos"),
                oid.replace_strict(
                    oid_values,
                    [
                        conc if a and d and form in LIQUID_FORMS else None
                        for conc, a, d, form in zip(
                            orders_table["conc"].to_list(),
                            o_active,
                            o_drug,
                            orders_table["form"].to_list(),
                            strict=True,
                        )
                    ],
                    return_dtype=pl.Float64,
                ).alias("__liquid"),
            ).filter(pl.col("__liquid").is_not_null())
        )
        if oid_values
        else liquid_entries
    )
    concentrations = pl.zeros(n, dtype=pl.Float64, eager=True)
    if liquid.height:
        per_row = liquid.group_by("__pos").agg(pl.col("__liquid").n_unique().cast(pl.Float64))
        concentrations.scatter(per_row["__pos"], per_row["__liquid"])
    return wide.with_columns(concentrations.alias("drug_liquid_concentrations"))
