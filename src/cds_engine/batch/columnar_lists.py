"""Record-table lists (conditions, allergies, medicines) → family facts, column-wise.

Part of the columnar derivation (``columnar_facts``): each list entry becomes one row; what a
code means — its groups, drug classes, route, form, name — is taken once per distinct code from
the same helpers ``facts.derive`` uses, and joined back; counts are sums over a bit mask of the
classes the pack reads; names follow ``facts.names.join_names``.
"""

from __future__ import annotations

from collections.abc import Callable
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
_ROW = ROW
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


_INFO_CACHE: dict[tuple[str, int], tuple[Any, dict[str, dict[str, Any]]]] = {}
_INFO_CACHE_MAX = 200_000  # distinct codes remembered per table kind (a warehouse has far fewer)


def _code_table(
    codes: pl.Series,
    fn: Callable[[str], dict[str, Any]],
    schema: dict[str, pl.DataType],
    cache: tuple[str, Any] | None = None,
) -> pl.DataFrame:
    """What each distinct code means (``fn``, the Python path's helpers), one row per code.

    ``cache`` = (kind, owner): the answers are kept across chunks for as long as ``owner`` (the
    vocabulary, or a tuple of what ``fn`` depends on) is the same object — a million-row table
    of chunks asks about the same few hundred codes in every chunk, and ``fn`` is pure.
    """
    distinct = codes.drop_nulls().unique().to_list()
    known: dict[str, dict[str, Any]] = {}
    if cache is not None:
        kind, owner = cache
        entry = _INFO_CACHE.get((kind, id(owner)))
        if entry is None or entry[0] is not owner or len(entry[1]) > _INFO_CACHE_MAX:
            entry = (owner, {})
            _INFO_CACHE[(kind, id(owner))] = entry
        known = entry[1]
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
    return pl.DataFrame(data, schema={"__code": pl.String, **schema})


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
    """(row, tag, code) for each list entry of ``col``, in row then list order (no sort needed later)."""
    if col not in frame.columns:
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
    if active.height:
        named = active.group_by(_ROW, "groups", maintain_order=True).agg(pl.col("name"))
        named = named.with_columns(_names_expr("name").alias("__n"))
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


def allergy_facts(frame: pl.DataFrame, vocab: Vocabulary) -> pl.DataFrame:
    """allergy.<group> for every group of an active allergy entry."""
    entries = _entries(frame, "allergies", 0)
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
    class has several entries (most have one: its name is the first).
    """
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
    schema = {
        "classes": pl.List(pl.String),
        "route": pl.String,
        "form": pl.String,
        "conc": pl.Float64,
        "name": pl.String,
    }
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
