"""Read the vocabulary curation tables (``tools/vocabulary-sources/curation/*.yaml``).

Why: which ingredient puts a code in a drug class, which words place a text in a group, which codes
of a value set a display filter keeps out — that is clinical curation a pharmacist reviews and
edits, so it is kept as YAML tables, not as Python. ``tools/build_vocabulary.py`` reads them
through this module and does the rest (reading the shared value sets, tagging, writing
``rules/vocabulary/``). The tables sit with the other build inputs (``tools/vocabulary-sources/``)
and not in ``rules/vocabulary/``: that folder is generated, is all the engine reads at run time,
and says "do not edit by hand".

Every reader checks the shape of what it reads and raises ``CurationError`` naming the file and
the entry, so a typo stops the build instead of silently dropping codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CURATION = Path(__file__).resolve().parent / "vocabulary-sources" / "curation"
MAX_TABLE_BYTES = 1_000_000  # hand-edited tables are small; anything larger is a mistake
HISTORY_GROUPS_TOKEN = "@condition_history_groups"
NO_PACK_CLASSES_TOKEN = "@drug_classes_of_no_pack"


class CurationError(ValueError):
    """A curation table cannot be read as written."""


@dataclass(frozen=True)
class DrugClass:
    """One engine drug class: its ingredient terms and the value sets dedicated to it."""

    group: str
    terms: tuple[str, ...]
    class_sets: tuple[str, ...]
    codes_csv_concept: str | None
    unverified_source: str  # source of terms no shared file confirms


@dataclass(frozen=True)
class SetRule:
    """Take codes of one value set into one group, optionally filtered by display."""

    kind: str
    group: str
    file: str
    include: str | None = None  # candidate filter: codes not matching are simply not about this group
    exclude: str | None = None  # matching codes are left out and recorded in excluded.csv
    require: str | None = None  # codes NOT matching are left out and recorded in excluded.csv
    code_prefix: str | None = None  # when given, only codes starting with it are candidates
    why: str = ""
    systems: tuple[str, ...] | None = None  # when given, codes of other systems are not candidates


@dataclass(frozen=True)
class SyntheaCode:
    """A code expected in the shared Synthea bundles, and the group it belongs to."""

    kind: str
    group: str
    system: str
    code: str
    fallback_display: str


@dataclass(frozen=True)
class WantedSet:
    """A condition value set wanted in shared/, and how its codes map to one engine group."""

    kind: str
    group: str
    oid: str
    title: str
    include: str | None = None  # candidate filter on the display (codes not matching are not about the group)
    exclude: str | None = None  # matching codes are left out and recorded in excluded.csv
    why: str = ""


def table(name: str, directory: Path = CURATION) -> dict[str, Any]:
    """One curation table as a mapping (bounded in size)."""
    path = directory / name
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise CurationError(f"{path}: larger than {MAX_TABLE_BYTES} bytes")
    with path.open(encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    if not isinstance(doc, dict):
        raise CurationError(f"{path}: expected a mapping at the top")
    return doc


def _texts(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CurationError(f"{where}: expected a list of texts")
    return tuple(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise CurationError(f"{where}: expected a text")
    return value


def _regex(value: Any, where: str) -> str | None:
    if value is None:
        return None
    try:
        re.compile(_text(value, where))
    except re.error as exc:
        raise CurationError(f"{where}: not a regular expression ({exc})") from exc
    return value


def _only(entry: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise CurationError(f"{where}: expected a mapping")
    unknown = sorted(set(entry) - allowed)
    missing = sorted(required - set(entry))
    if unknown or missing:
        raise CurationError(f"{where}: unknown keys {unknown}, missing keys {missing}")
    return entry


class ValueSetRefs:
    """``value_sets.yaml``: file references (``vsac:<OID>``, ``cdc:<file>``) and named lists."""

    def __init__(self, directory: Path = CURATION) -> None:
        doc = table("value_sets.yaml", directory)
        folders = doc.get("folders") or {}
        self.cdc = _text(folders.get("cdc"), "value_sets.yaml folders.cdc")
        self.vsac = _text(folders.get("vsac"), "value_sets.yaml folders.vsac")
        self.lists: dict[str, tuple[str, ...]] = {
            name: tuple(self.path(r, f"value_sets.yaml lists.{name}") for r in _texts(refs, f"lists.{name}"))
            for name, refs in (doc.get("lists") or {}).items()
        }
        self.unused: dict[str, str] = {
            self.path(r, "value_sets.yaml unused"): _text(why, f"value_sets.yaml unused {r}")
            for r, why in (doc.get("unused") or {}).items()
        }

    def path(self, ref: str, where: str) -> str:
        """Relative path of a value-set file in the shared folder."""
        prefix, _, rest = ref.partition(":")
        if prefix == "vsac" and rest:
            return f"{self.vsac}/valueset-{rest}.json"
        if prefix == "cdc" and rest:
            return f"{self.cdc}/{rest}"
        raise CurationError(f"{where}: {ref!r} is not vsac:<OID> or cdc:<file>")

    def named(self, name: str, where: str) -> tuple[str, ...]:
        if name not in self.lists:
            raise CurationError(f"{where}: no value-set list {name!r} in value_sets.yaml")
        return self.lists[name]


def drug_classes(refs: ValueSetRefs, directory: Path = CURATION) -> tuple[str, tuple[DrugClass, ...]]:
    """(default unverified source, the drug classes in table order)."""
    doc = table("drug_classes.yaml", directory)
    default = _text(doc.get("default_unverified_source"), "drug_classes.yaml default_unverified_source")
    allowed = {"group", "terms", "class_sets", "codes_csv_concept", "unverified_source"}
    out = []
    for i, raw in enumerate(doc.get("classes") or []):
        where = f"drug_classes.yaml classes[{i}]"
        entry = _only(raw, allowed, {"group", "terms"}, where)
        sets = entry.get("class_sets")
        out.append(
            DrugClass(
                group=_text(entry["group"], where),
                terms=_texts(entry["terms"], f"{where} terms"),
                class_sets=refs.named(sets, where) if sets else (),
                codes_csv_concept=entry.get("codes_csv_concept"),
                unverified_source=entry.get("unverified_source", default),
            )
        )
    return default, tuple(out)


def _term_table(doc: dict[str, Any], key: str, where: str) -> dict[str, tuple[str, ...]]:
    return {group: _texts(terms, f"{where} {key}.{group}") for group, terms in (doc.get(key) or {}).items()}


def terms(directory: Path = CURATION) -> dict[str, Any]:
    """Term lists per kind, the brand lists and their source texts (``terms.yaml``)."""
    doc = table("terms.yaml", directory)
    kinds = ("condition_group", "indication", "observation", "allergy_group", "brands")
    out: dict[str, Any] = {kind: _term_table(doc, kind, "terms.yaml") for kind in kinds}
    out["unverified_source"] = _text(doc.get("unverified_source"), "terms.yaml unverified_source")
    out["brand_source"] = _text(doc.get("brand_source"), "terms.yaml brand_source")
    out["baclofen_brands"] = _texts(doc.get("baclofen_brands"), "terms.yaml baclofen_brands")
    return out


def product_classes(directory: Path = CURATION) -> dict[str, Any]:
    """Product classes inside a parent class, in matching order (``product_classes.yaml``)."""
    doc = table("product_classes.yaml", directory)
    parents: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {}
    for parent, rows in (doc.get("parents") or {}).items():
        entries = []
        for i, raw in enumerate(rows or []):
            where = f"product_classes.yaml parents.{parent}[{i}]"
            row = _only(raw, {"class", "display", "terms"}, {"class", "display", "terms"}, where)
            pattern = _regex(row["display"], where) or ""
            entries.append((_text(row["class"], where), pattern, _texts(row["terms"], where)))
        parents[parent] = tuple(entries)
    return {
        "source": _text(doc.get("source"), "product_classes.yaml source"),
        "ingredient_concept": _text(doc.get("ingredient_concept"), "product_classes.yaml ingredient_concept"),
        "parents": parents,
        "allergy": _term_table(doc, "allergy", "product_classes.yaml"),
    }


def _target(value: str, where: str) -> tuple[str, str]:
    kind, _, group = _text(value, where).partition("/")
    if not kind or not group:
        raise CurationError(f"{where}: {value!r} is not kind/group")
    return kind, group


def codes_csv(directory: Path = CURATION) -> dict[str, Any]:
    """codes.csv concepts: their targets, the deliberately excluded and the ignored ones."""
    doc = table("codes_csv.yaml", directory)
    targets = {
        concept: tuple(_target(t, f"codes_csv.yaml targets.{concept}") for t in _texts(ts, concept))
        for concept, ts in (doc.get("targets") or {}).items()
    }
    excluded = {}
    for concept, raw in (doc.get("excluded") or {}).items():
        where = f"codes_csv.yaml excluded.{concept}"
        entry = _only(raw, {"target", "why"}, {"target", "why"}, where)
        excluded[concept] = (*_target(entry["target"], where), _text(entry["why"], where))
    ignored = {c: _text(why, f"codes_csv.yaml ignored.{c}") for c, why in (doc.get("ignored") or {}).items()}
    products = _texts(doc.get("baclofen_product_concepts"), "codes_csv.yaml baclofen_product_concepts")
    return {"targets": targets, "excluded": excluded, "ignored": ignored, "baclofen_products": products}


def value_set_rules(refs: ValueSetRefs, directory: Path = CURATION) -> dict[str, Any]:
    """Set rules, wanted condition sets, gaps and the named display filters (``value_set_rules.yaml``)."""
    doc = table("value_set_rules.yaml", directory)
    filters = {
        name: _regex(v, f"value_set_rules.yaml filters.{name}")
        for name, v in (doc.get("filters") or {}).items()
    }
    rules = []
    allowed = {"kind", "group", "file", "include", "exclude", "require", "code_prefix", "why", "systems"}
    for i, raw in enumerate(doc.get("set_rules") or []):
        where = f"value_set_rules.yaml set_rules[{i}]"
        e = _only(raw, allowed, {"kind", "group", "file"}, where)
        rules.append(
            SetRule(
                kind=_text(e["kind"], where),
                group=_text(e["group"], where),
                file=refs.path(e["file"], where),
                include=_regex(e.get("include"), where),
                exclude=_regex(e.get("exclude"), where),
                require=_regex(e.get("require"), where),
                code_prefix=e.get("code_prefix"),
                why=e.get("why", ""),
                systems=_texts(e["systems"], where) if "systems" in e else None,
            )
        )
    wanted = []
    for i, raw in enumerate(doc.get("wanted_condition_sets") or []):
        where = f"value_set_rules.yaml wanted_condition_sets[{i}]"
        e = _only(
            raw,
            {"kind", "group", "oid", "title", "include", "exclude", "why"},
            {"kind", "group", "oid", "title"},
            where,
        )
        wanted.append(
            WantedSet(
                kind=_text(e["kind"], where),
                group=_text(e["group"], where),
                oid=_text(e["oid"], where),
                title=_text(e["title"], where),
                include=_regex(e.get("include"), where),
                exclude=_regex(e.get("exclude"), where),
                why=e.get("why", ""),
            )
        )
    gaps = {}
    for i, raw in enumerate(doc.get("gaps_without_set") or []):
        where = f"value_set_rules.yaml gaps_without_set[{i}]"
        e = _only(raw, {"kind", "group", "why"}, {"kind", "group", "why"}, where)
        gaps[(e["kind"], e["group"])] = _text(e["why"], where)
    return {"filters": filters, "set_rules": tuple(rules), "wanted": tuple(wanted), "gaps": gaps}


def extra_codes(directory: Path = CURATION) -> dict[str, Any]:
    """Single codes outside value sets and codes.csv (``extra_codes.yaml``), systems spelled out."""
    doc = table("extra_codes.yaml", directory)
    systems = {
        name: _text(url, f"extra_codes.yaml systems.{name}")
        for name, url in (doc.get("systems") or {}).items()
    }

    def rows(key: str, fields: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        out = []
        for i, raw in enumerate(doc.get(key) or []):
            where = f"extra_codes.yaml {key}[{i}]"
            entry = _only(raw, set(fields), set(fields), where)
            values = []
            for f in fields:
                value = _text(str(entry[f]), f"{where} {f}")
                if f == "system":
                    if value not in systems:
                        raise CurationError(f"{where}: unknown system {value!r} (systems: {sorted(systems)})")
                    value = systems[value]
                values.append(value)
            out.append(tuple(values))
        return tuple(out)

    synthea = tuple(
        SyntheaCode(*row) for row in rows("synthea", ("kind", "group", "system", "code", "display"))
    )
    return {
        "synthea": synthea,
        "synthea_deny": rows("synthea_deny", ("kind", "group", "system", "code", "why")),
        "crcl": rows("crcl", ("code", "display", "source")),
        "gestation": rows("gestation", ("group", "code", "display", "source")),
        "egfr_strata": rows("egfr_strata", ("group", "phrase")),
        "unverified_code_source": _text(
            doc.get("unverified_code_source"), "extra_codes.yaml unverified_code_source"
        ),
        "history": rows("history", ("group", "system", "code", "display", "source")),
        "unverified": rows("unverified", ("kind", "group", "system", "code", "display")),
    }


def context_cues(
    history_groups: tuple[str, ...], no_pack_classes: tuple[str, ...], directory: Path = CURATION
) -> tuple[str, tuple[tuple[str, str, str, str], ...]]:
    """(source, context rows ``(rule, cue, kinds, groups)``) with the computed group lists filled in."""
    doc = table("context_cues.yaml", directory)
    tokens = {
        HISTORY_GROUPS_TOKEN: ";".join(history_groups),
        NO_PACK_CLASSES_TOKEN: ";".join(no_pack_classes),
    }
    rows = []
    for i, raw in enumerate(doc.get("cues") or []):
        where = f"context_cues.yaml cues[{i}]"
        e = _only(raw, {"rule", "kinds", "groups", "cues"}, {"rule", "kinds", "groups", "cues"}, where)
        groups = _text(e["groups"], where)
        if groups.startswith("@") and groups not in tokens:
            raise CurationError(f"{where}: unknown group list {groups!r} (known: {sorted(tokens)})")
        groups = tokens.get(groups, groups)
        for cue in _texts([str(c) for c in e["cues"]], where):
            rows.append((_text(e["rule"], where), cue, _text(e["kinds"], where), groups))
    return _text(doc.get("source"), "context_cues.yaml source"), tuple(rows)


def products(directory: Path = CURATION) -> dict[str, Any]:
    """Marketing status per product code and display caveats (``products.yaml``)."""
    doc = table("products.yaml", directory)
    marketed = {}
    for code, raw in (doc.get("marketed") or {}).items():
        where = f"products.yaml marketed.{code}"
        entry = _only(raw, {"marketed", "source"}, {"marketed", "source"}, where)
        if entry["marketed"] not in ("yes", "no", "unverified"):
            raise CurationError(f"{where}: marketed must be yes, no or unverified")
        marketed[str(code)] = (entry["marketed"], _text(entry["source"], where))
    caveats = {
        key: _text(text, f"products.yaml caveats.{key}") for key, text in (doc.get("caveats") or {}).items()
    }
    return {
        "marketed": marketed,
        "caveats": caveats,
        "unverified_source": _text(doc.get("unverified_source"), "products.yaml unverified_source"),
        "liquid_not_scored": _text(doc.get("liquid_not_scored"), "products.yaml liquid_not_scored"),
    }


def matching_examples(directory: Path = CURATION) -> tuple[tuple[str, str, str, str, tuple[str, ...]], ...]:
    """README "How matching works" examples: (kind, system url or "", code, text, expected groups)."""
    doc = table("matching_examples.yaml", directory)
    systems = {name: url for name, url in (table("extra_codes.yaml", directory).get("systems") or {}).items()}
    systems[""] = ""
    out = []
    fields = {"kind", "system", "code", "text", "groups"}
    for i, raw in enumerate(doc.get("examples") or []):
        where = f"matching_examples.yaml examples[{i}]"
        e = _only(raw, fields, fields, where)
        if e["system"] not in systems:
            raise CurationError(f"{where}: unknown system {e['system']!r} (systems: {sorted(systems)})")
        groups = tuple(e["groups"]) if e["groups"] else ()
        out.append((_text(e["kind"], where), systems[e["system"]], str(e["code"]), str(e["text"]), groups))
    return tuple(out)


def readme_notes(directory: Path = CURATION) -> tuple[dict[tuple[str, str], str], tuple[str, ...]]:
    """(note per (kind, group), review items) for the generated vocabulary README."""
    doc = table("readme_notes.yaml", directory)
    notes = {
        _target(key, "readme_notes.yaml group_notes"): _text(text, f"readme_notes.yaml group_notes.{key}")
        for key, text in (doc.get("group_notes") or {}).items()
    }
    return notes, _texts(doc.get("review_items"), "readme_notes.yaml review_items")
