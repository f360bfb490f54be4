#!/usr/bin/env python3
"""Build the committed runtime code vocabulary under ``rules/vocabulary/``.

Why this script exists
----------------------
The engine must classify medication, condition, allergy, observation and indication codes at
run time without network access and without the large shared reference folder. So the
classification is *compiled* once, here, from public machine-readable sources (FHIR ValueSet
expansions and the hand-verified ``codes.csv``) into small CSV files that are committed with
the rule pack. Everything the runtime knows about codes is therefore reviewable in a diff.

Design choices (each one prevents a specific error seen in the source data)
---------------------------------------------------------------------------
* **Never take a broad set wholesale.** Several value sets mix classes (the CDC "CNS
  depressant medications" set holds stimulants such as phentermine; the VSAC "Central Nervous
  System Depressants" set holds anticonvulsants and SSRIs). Every RxNorm code from every drug
  value set is therefore assigned to an engine class only when its *display names an
  ingredient of that class* (whole word). A class-specific set (e.g. the CDC opioid sets) gets
  the same treatment, which is how naloxone-only products are kept out of ``opioid_agonist``.
* **Local-only dose forms are dropped** from drug classes (topical diphenhydramine cream is
  not a sedating antihistamine exposure).
* **Sequestered naltrexone** (morphine/naltrexone abuse-deterrent capsules) is not tagged
  ``naltrexone``: the antagonist is not released when taken as directed, and tagging it would
  make an opioid patient look like an opioid+naltrexone patient.
* **Condition sets are filtered by display** where they mix current state with history or
  outcome (pregnancy), or hold non-disorders (narcolepsy in the sleep-disordered-breathing
  set, poisonings in the substance-misuse set). Every code dropped is written to
  ``excluded.csv`` with the reason, so a reviewer can see what was left out and why.
* **CPT descriptors are not copied** (AMA copyright); the CPT code is kept, the display
  says so.
* Term (ingredient/keyword) lists that do not come from a shared file are marked
  ``verified=no`` and say so in ``source``.
* A few codes the shared **Synthea** test data emits (LFT/glucose LOINC, stroke, TBI, ...) are
  added only after the build has found code + display in the bundles; otherwise they would be
  marked unverified. The bundles are read at build time only.
* The build **fails** on anything it was not told how to handle (a new codes.csv concept, a
  new RxNorm value set, an unknown group), so upstream changes cannot slip in silently.

The curation itself (drug-class ingredients, value-set lists and display filters, term and brand
lists, codes.csv targets, extra codes, context cues, product status, README notes) is data a
pharmacist edits: YAML tables in ``tools/vocabulary-sources/curation/`` (read by
``tools/vocabulary_curation.py``); this script holds the method, not the lists.

Run: ``python tools/build_vocabulary.py --shared /work/shared/data`` (writes ``rules/vocabulary``).
The build is deterministic: rows are sorted and the README is regenerated with the counts.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vocabulary_curation import (  # the curation tables (tools/vocabulary-sources/curation/)
    SetRule,
    SyntheaCode,
    ValueSetRefs,
    WantedSet,
    codes_csv,
    context_cues,
    drug_classes,
    extra_codes,
    matching_examples,
    product_classes,
    products,
    readme_notes,
    value_set_rules,
)
from vocabulary_curation import (
    terms as read_terms,
)

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"

KINDS = ("drug_class", "condition_group", "allergy_group", "observation", "indication", "condition_history")

DRUG_CLASS_GROUPS = (
    "baclofen",
    "opioid_agonist",
    "benzodiazepine",
    "z_drug",
    "barbiturate",
    "gabapentinoid",
    # product classes of the gabapentinoid parent (issue #23): every gabapentinoid code gets exactly one
    "gabapentin",
    "gabapentin_er",
    "gabapentin_enacarbil",
    "pregabalin",
    "pregabalin_cr",
    "sedating_antihistamine",
    "antipsychotic",
    "tca",
    "maoi",
    "other_central_muscle_relaxant",
    "antihypertensive",
    "levodopa",
    "lithium",
    "naltrexone",
    "strong_cns_depressant",
)
CONDITION_GROUPS = (
    "epilepsy",
    "pregnancy",
    "lactation",
    "dialysis",
    "dialysis_procedure",
    "esrd",
    "ckd_stage5",
    "aki",
    "substance_use_disorder",
    "alcohol_use_disorder",
    "respiratory_impairment",
    "multiple_sclerosis",
    "spinal_cord_injury",
    "cerebral_palsy",
    "spasticity",
    "psychosis",
    "delirium",
    "depression_suicidality",
    "stroke",
    "autonomic_dysreflexia",
    "sci_t6_or_above",
    "peptic_ulcer",
    "urinary_retention",
    "parkinson",
    "liver_disease",
    "diabetes",
    "tbi",
    "rheumatic_disorder",
)
ALLERGY_GROUPS = ("baclofen", "wheat", "gabapentinoid", "gabapentin", "pregabalin")
OBSERVATION_GROUPS = (
    "egfr",
    "egfr_among_blacks",
    "egfr_among_non_blacks",
    "crcl",
    "creatinine",
    "pregnancy_test",
    "lft",
    "glucose",
    "gestational_age",
    "delivery_date_estimated",
)
INDICATION_GROUPS = (
    "spasticity",
    "spasticity_stroke",
    "spasticity_cerebral_palsy",
    "spasticity_parkinson",
    "spasticity_tbi",
    "aud",
    "rheumatic_spasm",
    "neuropathic_pain",
    "hiccups",
    "vertigo",
    "musculoskeletal_pain",
)
# Groups whose *history* is a different clinical fact (the pack reads ``cond_history.<group>``):
# history codes and "history of ..." texts go to kind ``condition_history``, never to the active
# group. Every other group keeps history in the active group (the caution covers past events).
CONDITION_HISTORY_GROUPS = ("peptic_ulcer",)
ALLOWED_GROUPS: dict[str, tuple[str, ...]] = {
    "condition_history": CONDITION_HISTORY_GROUPS,
    "drug_class": DRUG_CLASS_GROUPS,
    "condition_group": CONDITION_GROUPS,
    "allergy_group": ALLERGY_GROUPS,
    "observation": OBSERVATION_GROUPS,
    "indication": INDICATION_GROUPS,
}


# --------------------------------------------------------------------------------------------
# Build-time display tagging: case-insensitive, and the term may not touch a letter, digit,
# underscore or hyphen on either side (RxNorm/VSAC displays never glue ingredients with hyphens).
# The runtime fallback is deliberately looser on hyphens for free text ("hydrocodone-acetaminophen")
# and uses context.csv instead (cds_engine.vocabulary.TERM_REGEX; README "How matching works").
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def term_pattern(term: str) -> re.Pattern[str]:
    """Compile a term for build-time tagging of value-set displays (hyphen-strict)."""
    return re.compile(r"(?<![\w-])" + re.escape(term) + r"(?![\w-])", re.IGNORECASE)


def matches(term: str, text: str) -> bool:
    """Whole-word, case-insensitive match of ``term`` in ``text`` (build-time tagging)."""
    return term_pattern(term).search(text) is not None


# Dose forms that act locally; such products are not a systemic exposure to the class.
LOCAL_FORM = re.compile(
    r"(?<![\w-])(topical|ophthalmic|otic|shampoo|medicated pad|soap|mouthwash|vaginal)(?![\w-])",
    re.IGNORECASE,
)
# "(For Patients Taking ...)" / "(for Patients Not Taking ...)" in a kit name: audience, not content.
PACK_AUDIENCE_TEXT = re.compile(r"\(\s*for patients\b[^)\]]*[)\]]?", re.IGNORECASE)

# --------------------------------------------------------------------------------------------
# The curation — drug classes, value-set lists and filters, term and brand lists, codes.csv
# targets, extra codes, context cues — is data a pharmacist edits: YAML tables under
# tools/vocabulary-sources/curation/ (read by tools/vocabulary_curation.py). Below they are bound to
# the names the build uses.
# --------------------------------------------------------------------------------------------

REFS = ValueSetRefs()
BROAD_DRUG_SETS = REFS.named("broad_drug", "build")  # sets that mix classes: taken by ingredient only
OTHER_DRUG_SETS = REFS.named("other_drug", "build")  # read only for agonist-containing products
UNUSED_SETS: dict[str, str] = REFS.unused  # read on purpose, used for no group (README)
UNVERIFIED_DRUG_SOURCE, DRUG_CLASSES = drug_classes(REFS)


# Term context (rules/vocabulary/context.csv): what the runtime term fallback does with the words
# around a matched term (issue #16); the cue lists are curation/context_cues.yaml.
# The drug class of every pack (rules/*/pack.yaml ``drug: class:``): a local-only form of a pack's own
# drug is still that drug (the pack's product/route rules flag a topical baclofen order), so the
# local_form rows apply to every other class only.
PACK_DRUG_CLASSES = tuple(
    sorted(
        {
            m.group(1)
            for pack in (Path(__file__).resolve().parents[1] / "rules").glob("*/pack.yaml")
            for m in re.finditer(
                r"^  drug:\n    class: (\w+)", pack.read_text(encoding="utf-8"), re.MULTILINE
            )
        }
    )
)
CONTEXT_SOURCE, TERM_CONTEXT = context_cues(
    CONDITION_HISTORY_GROUPS, tuple(g for g in DRUG_CLASS_GROUPS if g not in PACK_DRUG_CLASSES)
)

# Examples rendered into the README's "How matching works" and executed by a test against the runtime:
# (kind, system, code, display or free text, expected groups) — curation/matching_examples.yaml.
MATCHING_EXAMPLES = matching_examples()

_TERMS = read_terms()
UNVERIFIED_TERM_SOURCE: str = _TERMS["unverified_source"]
BRAND_TERMS_SOURCE: str = _TERMS["brand_source"]
CNS_BRAND_TERMS: dict[str, tuple[str, ...]] = _TERMS["brands"]
BACLOFEN_BRANDS: tuple[str, ...] = _TERMS["baclofen_brands"]
CONDITION_TERMS: dict[str, tuple[str, ...]] = _TERMS["condition_group"]
INDICATION_TERMS: dict[str, tuple[str, ...]] = _TERMS["indication"]
OBSERVATION_TERMS: dict[str, tuple[str, ...]] = _TERMS["observation"]
ALLERGY_TERMS: dict[str, tuple[str, ...]] = _TERMS["allergy_group"]

_CODES_CSV = codes_csv()  # codes.csv concepts -> (kind, group) targets; unknown concepts stop the build
BACLOFEN_PRODUCT_CONCEPTS: tuple[str, ...] = _CODES_CSV["baclofen_products"]
CODES_CSV_TARGETS: dict[str, tuple[tuple[str, str], ...]] = _CODES_CSV["targets"]
CODES_CSV_EXCLUDED: dict[str, tuple[str, str, str]] = _CODES_CSV["excluded"]
CODES_CSV_IGNORED: dict[str, str] = _CODES_CSV["ignored"]

_SET_RULES = value_set_rules(REFS)
PREGNANCY_EXCLUDE: str = _SET_RULES["filters"]["pregnancy_exclude"]
SET_RULES: tuple[SetRule, ...] = _SET_RULES["set_rules"]
CONDITION_VALUESETS: tuple[WantedSet, ...] = _SET_RULES["wanted"]  # read by OID when in shared/
CONDITION_GAPS_WITHOUT_SET: dict[tuple[str, str], str] = _SET_RULES["gaps"]

_EXTRA = extra_codes()
SYNTHEA_CODES: tuple[SyntheaCode, ...] = _EXTRA["synthea"]
SYNTHEA_DENY: tuple[tuple[str, ...], ...] = _EXTRA["synthea_deny"]
CRCL_CODES: tuple[tuple[str, ...], ...] = _EXTRA["crcl"]
GESTATION_CODES: tuple[tuple[str, ...], ...] = _EXTRA["gestation"]
EGFR_STRATA: tuple[tuple[str, ...], ...] = _EXTRA["egfr_strata"]
UNVERIFIED_CODE_SOURCE: str = _EXTRA["unverified_code_source"]
HISTORY_CODES: tuple[tuple[str, ...], ...] = _EXTRA["history"]
UNVERIFIED_CODES: tuple[tuple[str, ...], ...] = _EXTRA["unverified"]

_PRODUCTS = product_classes()
SUBCLASS_SOURCE: str = _PRODUCTS["source"]
SUBCLASSES: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = _PRODUCTS["parents"]
SUBCLASS_ALLERGY: dict[str, tuple[str, ...]] = _PRODUCTS["allergy"]
SUBCLASS_INGREDIENT_CONCEPT: str = _PRODUCTS["ingredient_concept"]

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Concept:
    """One code from a value set or from codes.csv."""

    system: str
    code: str
    display: str


@dataclass
class ValueSet:
    """A shared ValueSet file reduced to what the build needs."""

    file: str
    title: str
    concepts: list[Concept]
    url: str = ""

    @property
    def label(self) -> str:
        """Source label written to the CSVs: folder/filename + ValueSet title."""
        return f"{self.file} ({self.title})"


def load_valuesets(root: Path) -> dict[str, ValueSet]:
    """Read every ValueSet JSON below ``root``; expansion first, compose concepts as a fallback.

    The CDC files have an empty ``compose`` and only an expansion; VSAC files have both. A
    nested expansion (``contains`` inside ``contains``) is flattened.
    """
    out: dict[str, ValueSet] = {}
    for path in sorted(root.glob("**/*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("resourceType") != "ValueSet":
            continue
        concepts: list[Concept] = []

        def walk(items: Iterable[dict[str, object]], sink: list[Concept]) -> None:
            for item in items:
                if item.get("code") and item.get("system"):
                    sink.append(
                        Concept(str(item["system"]), str(item["code"]), str(item.get("display") or ""))
                    )
                nested = item.get("contains")
                if isinstance(nested, list):
                    walk(nested, sink)

        walk(data.get("expansion", {}).get("contains", []) or [], concepts)
        if not concepts:
            for include in data.get("compose", {}).get("include", []) or []:
                for item in include.get("concept", []) or []:
                    concepts.append(Concept(include["system"], item["code"], item.get("display", "")))
        rel = path.relative_to(root).as_posix()
        out[rel] = ValueSet(
            rel, str(data.get("title") or data.get("name") or rel), concepts, str(data.get("url") or "")
        )
    return out


@dataclass(frozen=True)
class CodesCsvRow:
    """One row of shared/data/codes.csv."""

    concept: str
    system: str
    code: str
    display: str
    source: str

    @property
    def label(self) -> str:
        """Source label: the codes.csv concept and the upstream file it was read from."""
        return f"codes.csv:{self.concept} <- {self.source}"


def load_codes_csv(path: Path) -> list[CodesCsvRow]:
    """Read the hand-verified code list (columns concept,system,code,display,source)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            CodesCsvRow(r["concept"], r["system"], r["code"], r["display"], r["source"])
            for r in csv.DictReader(fh)
        ]


SYNTHEA_SYSTEMS = {"http://snomed.info/sct": SNOMED, "http://loinc.org": LOINC}


def load_synthea_codes(root: Path) -> dict[tuple[str, str], tuple[Counter[str], set[str]]]:
    """Collect (system, code) -> (display counts, dataset names) for Condition/Observation/Allergy codes.

    Only used to confirm that the handful of SYNTHEA_CODES exist with a real display in the shared
    test data; the engine never needs these bundles.
    """
    found: dict[tuple[str, str], tuple[Counter[str], set[str]]] = {}
    if not root.exists():
        return found
    for path in sorted(root.glob("**/*.json.gz")):
        dataset = path.relative_to(root).parts[0]
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            bundle = json.load(fh)
        for entry in bundle.get("entry", []) or []:
            res = entry.get("resource", {})
            if res.get("resourceType") not in ("Condition", "Observation", "AllergyIntolerance"):
                continue
            for coding in (res.get("code") or {}).get("coding", []) or []:
                system = SYNTHEA_SYSTEMS.get(coding.get("system", ""), coding.get("system", ""))
                key = (system, str(coding.get("code")))
                displays, datasets = found.setdefault(key, (Counter(), set()))
                displays[str(coding.get("display") or "").replace("\u200b", "")] += 1
                datasets.add(dataset)
    return found


# --------------------------------------------------------------------------------------------
# Accumulation
# --------------------------------------------------------------------------------------------


@dataclass
class CodeRow:
    """One output row of codes.csv, with every source that contributed it."""

    display: str
    sources: list[str] = field(default_factory=list)

    def add_source(self, source: str) -> None:
        """Record another source (kept in first-seen order, no duplicates)."""
        if source not in self.sources:
            self.sources.append(source)


@dataclass
class Excluded:
    """A code that was considered for a group and left out, with the reason."""

    display: str
    reasons: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


@dataclass
class TermRow:
    """One output row of ingredients.csv."""

    group: str
    kind: str
    term: str
    rxnorm_ingredient: str
    verified: str
    source: str


class Builder:
    """Collects rows for all output files; the ``write_*`` methods serialise them."""

    def __init__(
        self,
        valuesets: dict[str, ValueSet],
        codes_csv: list[CodesCsvRow],
        synthea: dict[tuple[str, str], tuple[Counter[str], set[str]]],
    ) -> None:
        self.valuesets = valuesets
        self.codes_csv = codes_csv
        self.synthea = synthea
        self.rows: dict[tuple[str, str, str, str], CodeRow] = {}
        self.excluded: dict[tuple[str, str, str, str], Excluded] = {}
        self.terms: list[TermRow] = []
        self.products: list[dict[str, str]] = []
        self.used_sets: set[str] = set()
        self.broad_excluded: dict[str, Counter[str]] = defaultdict(Counter)
        self.broad_taken: dict[str, Counter[str]] = defaultdict(Counter)
        self.missing_sets: list[WantedSet] = []  # CONDITION_VALUESETS not (yet) in shared/

    # -- primitives ----------------------------------------------------------------------
    def add(self, kind: str, group: str, system: str, code: str, display: str, source: str) -> None:
        """Add (or extend) a codes.csv row; the group must be one the engine allows."""
        if group not in ALLOWED_GROUPS[kind]:
            raise ValueError(f"group {group!r} is not allowed for kind {kind!r}")
        if system == CPT:
            display = "CPT code (descriptor omitted: AMA copyright)"
        row = self.rows.setdefault((kind, group, system, code), CodeRow(display))
        row.add_source(source)

    def exclude(
        self, kind: str, group: str, system: str, code: str, display: str, source: str, reason: str
    ) -> None:
        """Record that a code was considered for a group and deliberately left out."""
        if system == CPT:
            display = "CPT code (descriptor omitted: AMA copyright)"
        item = self.excluded.setdefault((kind, group, system, code), Excluded(display))
        if reason not in item.reasons:
            item.reasons.append(reason)
        if source not in item.sources:
            item.sources.append(source)

    def valueset(self, file: str) -> ValueSet:
        """A loaded value set by its relative path; a missing file is a build error."""
        if file not in self.valuesets:
            raise FileNotFoundError(f"value set {file} not found in the shared folder")
        self.used_sets.add(file)
        return self.valuesets[file]

    # -- drug classes ----------------------------------------------------------------------
    @staticmethod
    def classify_display(display: str) -> set[str]:
        """Engine drug classes named by a product display (whole-word ingredient match).

        Pack audience text such as "(For Patients Taking Carbamazepine, Phenytoin, Phenobarbital ...)"
        on lamotrigine starter kits names drugs the pack does NOT contain; it is removed first.
        """
        display = PACK_AUDIENCE_TEXT.sub(" ", display)
        found = {c.group for c in DRUG_CLASSES if any(matches(t, display) for t in c.terms)}
        if "naltrexone" in found and "opioid_agonist" in found:
            # abuse-deterrent morphine/naltrexone: the naltrexone is sequestered.
            found.discard("naltrexone")
        return found

    def build_drug_classes(self) -> None:
        """Tag every code of every RxNorm value set by the ingredients its display names."""
        nominal: dict[str, str | None] = {}
        for cls in DRUG_CLASSES:
            for f in cls.class_sets:
                nominal[f] = cls.group
        for f in (*BROAD_DRUG_SETS, *OTHER_DRUG_SETS):
            nominal.setdefault(f, None)
        rx_sets = {f for f, vs in self.valuesets.items() if any(c.system == RXNORM for c in vs.concepts)}
        unknown = rx_sets - set(nominal)
        if unknown:
            raise ValueError(f"RxNorm value sets with no drug-class configuration: {sorted(unknown)}")
        for f in sorted(nominal):
            vs = self.valueset(f)
            expected = nominal[f]
            broad = f in BROAD_DRUG_SETS
            for c in vs.concepts:
                if c.system != RXNORM:
                    continue
                considered = expected or "(any drug class)"
                if LOCAL_FORM.search(c.display):
                    self.exclude(
                        "drug_class",
                        considered,
                        c.system,
                        c.code,
                        c.display,
                        vs.label,
                        "local-only dose form (not a systemic exposure)",
                    )
                    if broad:
                        self.broad_excluded[f][_first_ingredient(c.display)] += 1
                    continue
                classes = self.classify_display(c.display)
                if PACK_AUDIENCE_TEXT.search(c.display):
                    audience_text = " ".join(m.group(0) for m in PACK_AUDIENCE_TEXT.finditer(c.display))
                    audience = {d.group for d in DRUG_CLASSES
                                if any(matches(t, audience_text) for t in d.terms)}
                    for group in sorted(audience - classes):
                        self.exclude(
                            "drug_class",
                            group,
                            c.system,
                            c.code,
                            c.display,
                            vs.label,
                            "named only in the kit's audience text ('for patients taking ...'), "
                            "not its content",
                        )
                for group in sorted(classes):
                    self.add("drug_class", group, c.system, c.code, c.display, vs.label)
                    if broad:
                        self.broad_taken[f][group] += 1
                if expected and expected not in classes:
                    self.exclude(
                        "drug_class",
                        expected,
                        c.system,
                        c.code,
                        c.display,
                        vs.label,
                        f"display names no {expected} ingredient",
                    )
                if not classes:
                    if expected is None:
                        self.exclude(
                            "drug_class",
                            considered,
                            c.system,
                            c.code,
                            c.display,
                            vs.label,
                            "display names no ingredient of an engine drug class",
                        )
                    if broad:
                        self.broad_excluded[f][_first_ingredient(c.display)] += 1
                if "naltrexone" not in classes and matches("naltrexone", c.display):
                    self.exclude(
                        "drug_class",
                        "naltrexone",
                        c.system,
                        c.code,
                        c.display,
                        vs.label,
                        "naltrexone sequestered in an abuse-deterrent opioid (not released as directed)",
                    )

    def build_subclasses(self) -> None:
        """Give every code of a parent class (SUBCLASSES) exactly one product class, and its terms."""
        for parent, subclasses in SUBCLASSES.items():
            parent_rows = [(k, r) for k, r in self.rows.items() if k[0] == "drug_class" and k[1] == parent]
            for (_kind, _group, system, code), row in parent_rows:
                display = row.display
                group = next((g for g, rx, _ in subclasses if re.search(rx, display, re.IGNORECASE)), None)
                if group is None:
                    raise ValueError(f"{parent} code {code} ({row.display!r}) names no product class")
                source = f"{SUBCLASS_SOURCE}; {row.sources[0]}"
                self.add("drug_class", group, system, code, display, source)
                if any(s.startswith(SUBCLASS_INGREDIENT_CONCEPT) for s in row.sources):
                    for allergy in SUBCLASS_ALLERGY.get(group, ()):
                        self.add("allergy_group", allergy, system, code, row.display, row.sources[0])
            for group, _rx, terms in subclasses:
                for term in terms:
                    self.terms.append(TermRow(group, "drug_class", term, "", "no", SUBCLASS_SOURCE))

    # -- codes.csv -------------------------------------------------------------------------
    def build_from_codes_csv(self) -> None:
        """Map every codes.csv concept to its engine groups; unknown concepts stop the build."""
        for r in self.codes_csv:
            if r.concept in CODES_CSV_TARGETS:
                for kind, group in CODES_CSV_TARGETS[r.concept]:
                    if (
                        kind == "condition_group"
                        and group == "pregnancy"
                        and re.search(PREGNANCY_EXCLUDE, r.display, re.IGNORECASE)
                    ):
                        self.exclude(
                            kind, group, r.system, r.code, r.display, r.label, "not a current pregnancy"
                        )
                        continue
                    self.add(kind, group, r.system, r.code, r.display, r.label)
                if r.concept == "esrd" and re.search(r"on dialysis", r.display, re.IGNORECASE):
                    self.add("condition_group", "dialysis", r.system, r.code, r.display, r.label)
            elif r.concept in CODES_CSV_EXCLUDED:
                kind, group, reason = CODES_CSV_EXCLUDED[r.concept]
                self.exclude(kind, group, r.system, r.code, r.display, r.label, reason)
            elif r.concept not in CODES_CSV_IGNORED:
                raise ValueError(f"codes.csv concept {r.concept!r} has no mapping; decide where it belongs")

    # -- condition / observation / indication sets -----------------------------------------
    def build_from_set_rules(self) -> None:
        """Apply SET_RULES: take a set's codes into a group, filtered by display where needed."""
        for rule in SET_RULES:
            self.apply_set_rule(rule)

    def apply_set_rule(self, rule: SetRule) -> None:
        """Take the codes of ``rule.file`` into ``rule.group``, filtered by system, code and display."""
        vs = self.valueset(rule.file)
        for c in vs.concepts:
            if rule.systems is not None and c.system not in rule.systems:
                continue
            if rule.code_prefix is not None and not c.code.startswith(rule.code_prefix):
                continue
            if rule.include and not re.search(rule.include, c.display, re.IGNORECASE):
                continue  # not a candidate for this group at all (e.g. non-alcohol SUD codes)
            if rule.exclude and re.search(rule.exclude, c.display, re.IGNORECASE):
                self.exclude(
                    rule.kind,
                    rule.group,
                    c.system,
                    c.code,
                    c.display,
                    vs.label,
                    rule.why or "display matches the exclusion filter for this group",
                )
                continue
            if rule.require and not re.search(rule.require, c.display, re.IGNORECASE):
                self.exclude(
                    rule.kind,
                    rule.group,
                    c.system,
                    c.code,
                    c.display,
                    vs.label,
                    rule.why or "display does not name abuse/dependence/use/misuse",
                )
                continue
            self.add(rule.kind, rule.group, c.system, c.code, c.display, vs.label)

    # -- Synthea-verified and unverified extra codes ----------------------------------------
    def build_extras(self) -> None:
        """Add the few Synthea-emitted codes, the deny list, and the unverified dialysis code."""
        for s in SYNTHEA_CODES:
            hit = self.synthea.get((s.system, s.code))
            if hit:
                displays, datasets = hit
                display = _best_display(displays) or s.fallback_display
                source = (
                    "Synthea-emitted code in shared/data/synthea/"
                    + "+".join(sorted(datasets))
                    + f" (display as emitted: {display!r})"
                )
            else:
                display, source = s.fallback_display, UNVERIFIED_CODE_SOURCE
            self.add(s.kind, s.group, s.system, s.code, display, source)
        for kind, group, system, code, reason in SYNTHEA_DENY:
            hit = self.synthea.get((system, code))
            display = _best_display(hit[0]) if hit else ""
            self.exclude(
                kind, group, system, code, display, "Synthea-emitted code (shared/data/synthea)", reason
            )
        for kind, group, system, code, display in UNVERIFIED_CODES:
            self.add(kind, group, system, code, display, UNVERIFIED_CODE_SOURCE)
        for code, display, source in CRCL_CODES:
            self.add("observation", "crcl", LOINC, code, display, source)
        for group, code, display, source in GESTATION_CODES:
            self.add("observation", group, LOINC, code, display, source)
        egfr_rows = [(k, r) for k, r in self.rows.items() if k[0] == "observation" and k[1] == "egfr"]
        for (_kind, _group, system, code), row in egfr_rows:
            for group, phrase in EGFR_STRATA:
                if phrase in row.display.lower():
                    source = f"egfr row display names the race stratum ({phrase!r}); " + row.sources[0]
                    self.add("observation", group, system, code, row.display, source)
                    break

    def find_valueset(self, oid: str) -> str | None:
        """Relative path of the shared value set with this OID (file name or canonical url), if any."""
        for rel, vs in sorted(self.valuesets.items()):
            if Path(rel).name in (f"valueset-{oid}.json", f"{oid}.json") or vs.url.endswith(f"/{oid}"):
                return rel
        return None

    def build_condition_valuesets(self) -> None:
        """CONDITION_VALUESETS found in shared/ (by OID) feed their groups; the rest stay known gaps."""
        for w in CONDITION_VALUESETS:
            rel = self.find_valueset(w.oid)
            if rel is None:
                self.missing_sets.append(w)
                continue
            rule = SetRule(
                w.kind,
                w.group,
                rel,
                include=w.include,
                exclude=w.exclude,
                why=w.why,
                systems=(ICD10CM, SNOMED),
            )
            self.apply_set_rule(rule)
        for group, system, code, display, source in HISTORY_CODES:
            self.add("condition_history", group, system, code, display, source)
            self.exclude(
                "condition_group",
                group,
                system,
                code,
                display,
                source,
                "history code: read as condition_history (cond_history.*), never as the active group",
            )

    # -- products ---------------------------------------------------------------------------
    def build_products(self) -> None:
        """Form/route/strength of the baclofen product codes, parsed from their RxNorm names."""
        for r in self.codes_csv:
            if r.concept not in BACLOFEN_PRODUCT_CONCEPTS:
                continue
            self.products.append(parse_baclofen_product(r))

    # -- term rows -------------------------------------------------------------------------
    def build_terms(self) -> None:
        """Ingredient/keyword fallback rows, with verification status and source."""
        ingredient_codes: dict[tuple[str, str], CodesCsvRow] = {}
        for r in self.codes_csv:
            if r.concept.startswith("cns_depressant_ingredient_") or r.concept == "baclofen_ingredient":
                ingredient_codes[(r.concept, r.display.lower())] = r
        # baclofen (drug class and allergy group)
        bac = next(r for r in self.codes_csv if r.concept == "baclofen_ingredient")
        product_displays = " ".join(
            r.display for r in self.codes_csv if r.concept in BACLOFEN_PRODUCT_CONCEPTS
        )
        for kind in ("drug_class", "allergy_group"):
            self.terms.append(TermRow("baclofen", kind, "baclofen", bac.code, "yes", bac.label))
            for brand in BACLOFEN_BRANDS:
                if matches(brand, product_displays):
                    self.terms.append(
                        TermRow(
                            "baclofen",
                            kind,
                            brand,
                            bac.code,
                            "yes",
                            "brand named in codes.csv:baclofen_oral_SBD product displays",
                        )
                    )
                else:
                    self.terms.append(
                        TermRow(
                            "baclofen",
                            kind,
                            brand,
                            bac.code,
                            "no",
                            "brand name from shared/clinical/baclofen-knowledge.md section 2.1 (no code "
                            "verified)",
                        )
                    )
        for cls in DRUG_CLASSES:
            set_displays = [
                (self.valuesets[f].label, c.display)
                for f in cls.class_sets
                for c in self.valuesets[f].concepts
            ]
            for term in cls.terms:
                row = ingredient_codes.get((cls.codes_csv_concept or "", term.lower()))
                seen_in = sorted({label for label, d in set_displays if matches(term, d)})
                if row is not None:
                    source = row.label
                    if seen_in:
                        source += "; named in displays of " + "; ".join(seen_in[:2])
                    self.terms.append(TermRow(cls.group, "drug_class", term, row.code, "yes", source))
                elif seen_in:
                    more = f" (+{len(seen_in) - 2} more)" if len(seen_in) > 2 else ""
                    self.terms.append(
                        TermRow(
                            cls.group,
                            "drug_class",
                            term,
                            "",
                            "yes",
                            "named in displays of " + "; ".join(seen_in[:2]) + more,
                        )
                    )
                else:
                    self.terms.append(
                        TermRow(cls.group, "drug_class", term, "", "no", cls.unverified_source)
                    )
        for kind, table in (
            ("condition_group", CONDITION_TERMS),
            ("indication", INDICATION_TERMS),
            ("observation", OBSERVATION_TERMS),
            ("allergy_group", ALLERGY_TERMS),
        ):
            for group, terms in table.items():
                for term in terms:
                    self.terms.append(TermRow(group, kind, term, "", "no", UNVERIFIED_TERM_SOURCE))
        for group, brands in CNS_BRAND_TERMS.items():
            for brand in brands:
                self.terms.append(TermRow(group, "drug_class", brand, "", "no", BRAND_TERMS_SOURCE))
        for t in self.terms:
            if t.group not in ALLOWED_GROUPS[t.kind]:
                raise ValueError(f"term group {t.group!r} not allowed for {t.kind!r}")

    # -- consistency checks ------------------------------------------------------------------
    def finalize(self) -> list[str]:
        """Drop exclusions overridden by another source; return warnings for a human to read."""
        warnings: list[str] = []
        included = set(self.rows)
        for key in list(self.excluded):
            if key in included:
                del self.excluded[key]
        opioid = {(s, c) for (k, g, s, c) in self.rows if k == "drug_class" and g == "opioid_agonist"}
        naltrexone = {(s, c) for (k, g, s, c) in self.rows if k == "drug_class" and g == "naltrexone"}
        if opioid & naltrexone:
            raise ValueError(f"codes in both opioid_agonist and naltrexone: {sorted(opioid & naltrexone)}")
        for (kind, group, system, code), row in self.rows.items():
            if kind == "drug_class" and matches("phentermine", row.display):
                raise ValueError(f"phentermine product {system}|{code} landed in drug class {group}")
        # A deny-listed code must not come back through the term fallback.
        by_group: dict[tuple[str, str], list[str]] = defaultdict(list)
        for t in self.terms:
            by_group[(t.kind, t.group)].append(t.term)
        for (kind, group, system, code), ex in self.excluded.items():
            if kind == "drug_class" or not ex.display:
                continue
            for term in by_group.get((kind, group), []):
                if matches(term, ex.display):
                    warnings.append(
                        f"term {term!r} ({kind}/{group}) matches excluded {system}|{code} {ex.display!r}"
                    )
        return warnings


_NOT_INGREDIENT = {"abuse-deterrent", "once-daily", "hr", "ml", "mg", "actuat", "pack", "day", "unt", "meq"}


def _first_ingredient(display: str) -> str:
    """First ingredient word of an RxNorm name, for summarising what a broad set held."""
    for word in re.findall(r"[A-Za-z][A-Za-z-]+", display):
        if word.lower() not in _NOT_INGREDIENT:
            return word.lower()
    return display.lower()


_SEMANTIC_TAG = re.compile(r"\((disorder|finding|substance|situation|procedure|person)\)$")


def _best_display(displays: Counter[str]) -> str:
    """Pick the display to record for a Synthea code.

    Synthea emits several spellings per code ("Stroke" vs "Cerebrovascular accident (disorder)",
    "ALT (Elevated)" vs the LOINC long name). A SNOMED fully specified name (semantic tag) wins,
    then a LOINC long name (it has a bracketed property), then the commonest spelling.
    """
    if not displays:
        return ""
    ranked = sorted(
        displays.items(),
        key=lambda kv: (not _SEMANTIC_TAG.search(kv[0]), "[" not in kv[0], -kv[1], -len(kv[0]), kv[0]),
    )
    return ranked[0][0]


# --------------------------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------------------------

_PRODUCTS_STATUS = products()  # curation/products.yaml
PRODUCT_CAVEATS: dict[str, str] = _PRODUCTS_STATUS["caveats"]


# Marketing and scoring status of each product code: (value, cited source), from curation/products.yaml.
# Only "yes" products are ever proposed by a one-click dose suggestion; "no" raises BAC-F04.
PRODUCT_MARKETED: dict[str, tuple[str, str]] = _PRODUCTS_STATUS["marketed"]
PRODUCT_UNVERIFIED: str = _PRODUCTS_STATUS["unverified_source"]
LIQUID_NOT_SCORED: str = _PRODUCTS_STATUS["liquid_not_scored"]


def product_status(code: str, form: str) -> dict[str, str]:
    """marketed / scored columns with their sources (granules stay unverified: distribution ended?)."""
    marketed, marketed_source = PRODUCT_MARKETED.get(code, ("unverified", PRODUCT_UNVERIFIED))
    if form in ("solution", "suspension", "injection"):
        scored, scored_source = "no", LIQUID_NOT_SCORED
    else:
        scored, scored_source = "unverified", PRODUCT_UNVERIFIED
    return {
        "marketed": marketed,
        "marketed_source": marketed_source,
        "scored": scored,
        "scored_source": scored_source,
    }


def parse_baclofen_product(r: CodesCsvRow) -> dict[str, str]:
    """Derive form, route, strength and concentration from an RxNorm SCD/SBD name.

    Strength is per solid unit (tablet/ODT); for liquids ``strength_mg`` is left empty on purpose
    so that "1 vial" or "1 syringe" can never be turned into milligrams: the dose must be stated
    in mg/mcg or mL with the concentration.
    """
    d = r.display
    conc = re.search(r"(\d+(?:\.\d+)?) MG/ML", d, re.IGNORECASE)
    strength = re.search(r"(\d+(?:\.\d+)?) MG(?!/)", d, re.IGNORECASE)
    if re.search(r"Disintegrating Oral Tablet", d, re.IGNORECASE):
        form = "odt"
    elif re.search(r"Oral Tablet", d, re.IGNORECASE):
        form = "tablet"
    elif re.search(r"Oral Suspension", d, re.IGNORECASE):
        form = "suspension"
    elif re.search(r"Oral Solution", d, re.IGNORECASE):
        form = "solution"
    elif re.search(r"Granules", d, re.IGNORECASE):
        form = "granules"
    elif re.search(r"Injection|Injectable", d, re.IGNORECASE):
        form = "injection"
    else:
        raise ValueError(f"cannot tell the dose form of {r.code} {d!r}")
    route = "intrathecal" if r.concept == "baclofen_intrathecal_SCD" else "oral"
    if form == "injection" and route != "intrathecal":
        raise ValueError(f"baclofen injection {r.code} not marked intrathecal")
    liquid = form in ("solution", "suspension", "injection")
    if liquid and conc is None:
        raise ValueError(f"liquid baclofen product {r.code} has no concentration in its name")
    caveats = [r.label]
    caveats += [text for key, text in PRODUCT_CAVEATS.items() if key in d]
    if route == "intrathecal":
        caveats.append(
            "route intrathecal inferred: US baclofen injections are intrathecal-only (RxNorm form says "
            "'Injection')"
        )
    return {
        "code": r.code,
        "system": r.system,
        "display": d,
        "ingredient_group": "baclofen",
        "form": form,
        "route": route,
        "strength_mg": "" if liquid or strength is None else _num(strength.group(1)),
        "concentration_mg_per_ml": _num(conc.group(1)) if liquid and conc else "",
        "source": "; ".join(caveats),
        **product_status(r.code, form),
    }


def _num(text: str) -> str:
    """Render a number without a trailing '.0'."""
    value = float(text)
    return str(int(value)) if value.is_integer() else str(value)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

KIND_ORDER = {k: i for i, k in enumerate(KINDS)}


def write_csv(path: Path, header: list[str], rows: Iterable[list[str]]) -> int:
    """Write a CSV with Unix line endings; returns the number of data rows."""
    n = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow(row)
            n += 1
    return n


def write_outputs(b: Builder, out: Path) -> dict[str, int]:
    """Write codes.csv, ingredients.csv, products.csv, excluded.csv; return row counts."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    code_rows = sorted(b.rows.items(), key=lambda kv: (KIND_ORDER[kv[0][0]], kv[0][1], kv[0][2], kv[0][3]))
    counts["codes.csv"] = write_csv(
        out / "codes.csv",
        ["group", "kind", "system", "code", "display", "source"],
        ([g, k, s, c, row.display, " | ".join(row.sources)] for (k, g, s, c), row in code_rows),
    )
    term_rows = sorted(b.terms, key=lambda t: (KIND_ORDER[t.kind], t.group, t.term.lower()))
    counts["ingredients.csv"] = write_csv(
        out / "ingredients.csv",
        ["group", "kind", "term", "rxnorm_ingredient", "verified", "source"],
        ([t.group, t.kind, t.term, t.rxnorm_ingredient, t.verified, t.source] for t in term_rows),
    )
    header = [
        "code",
        "system",
        "display",
        "ingredient_group",
        "form",
        "route",
        "strength_mg",
        "concentration_mg_per_ml",
        "source",
        "marketed",
        "marketed_source",
        "scored",
        "scored_source",
    ]
    counts["products.csv"] = write_csv(
        out / "products.csv",
        header,
        (
            [p[h] for h in header]
            for p in sorted(b.products, key=lambda p: (p["route"], p["form"], p["code"]))
        ),
    )
    ex_rows = sorted(b.excluded.items(), key=lambda kv: (KIND_ORDER[kv[0][0]], kv[0][1], kv[0][2], kv[0][3]))
    counts["excluded.csv"] = write_csv(
        out / "excluded.csv",
        ["considered_for_group", "kind", "system", "code", "display", "reason", "source"],
        ([g, k, s, c, e.display, "; ".join(e.reasons), " | ".join(e.sources)] for (k, g, s, c), e in ex_rows),
    )
    counts["context.csv"] = write_csv(
        out / "context.csv",
        ["rule", "cue", "kinds", "groups", "source"],
        ([rule, cue, kinds, groups, CONTEXT_SOURCE] for rule, cue, kinds, groups in TERM_CONTEXT),
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--shared",
        type=Path,
        default=repo.parent / "shared" / "data",
        help="shared data folder (holds valuesets/, codes.csv, synthea/)",
    )
    parser.add_argument("--out", type=Path, default=repo / "rules" / "vocabulary", help="output folder")
    args = parser.parse_args(argv)
    shared: Path = args.shared
    valuesets = load_valuesets(shared / "valuesets")
    codes_csv = load_codes_csv(shared / "codes.csv")
    synthea = load_synthea_codes(shared / "synthea")
    b = Builder(valuesets, codes_csv, synthea)
    b.build_from_codes_csv()
    b.build_drug_classes()
    b.build_from_set_rules()
    b.build_extras()
    b.build_subclasses()
    b.build_condition_valuesets()
    b.build_products()
    b.build_terms()
    for f in UNUSED_SETS:
        b.valueset(f)
    unused = sorted(set(valuesets) - b.used_sets)
    if unused:
        raise ValueError(f"value sets neither used nor listed in UNUSED_SETS: {unused}")
    warnings = b.finalize()
    counts = write_outputs(b, args.out)
    (args.out / "README.md").write_text(render_readme(b, counts, valuesets), encoding="utf-8")
    for w in warnings:
        print("WARNING:", w, file=sys.stderr)
    for name, n in counts.items():
        print(f"{name}: {n} rows")
    return 0


GROUP_NOTES, REVIEW_ITEMS = readme_notes()  # curation/readme_notes.yaml



def render_readme(b: Builder, counts: dict[str, int], valuesets: dict[str, ValueSet]) -> str:
    """Regenerate README.md so that counts, exclusions and sources never drift from the data."""
    code_counts: Counter[tuple[str, str]] = Counter((k, g) for (k, g, _s, _c) in b.rows)
    term_counts: Counter[tuple[str, str]] = Counter((t.kind, t.group) for t in b.terms)
    verified_terms: Counter[tuple[str, str]] = Counter(
        (t.kind, t.group) for t in b.terms if t.verified == "yes"
    )
    lines: list[str] = []
    add = lines.append
    add("# rules/vocabulary — the code vocabulary the engine uses at run time")
    add("")
    add(
        "Generated by `tools/build_vocabulary.py` from the shared public reference data; **do not edit by "
        "hand**. "
        "Rebuild with `python tools/build_vocabulary.py --shared <path to shared/data>` and check with "
        "`pytest tests/test_vocabulary_files.py`. The engine reads only this folder (never `shared/`)."
    )
    add("")
    add("## Files")
    add("")
    add("| file | rows | what |")
    add("|---|---|---|")
    add(
        f"| `codes.csv` | {counts['codes.csv']} | `group,kind,system,code,display,source`: one row per "
        f"(kind, group, "
        "system, code). `source` names every value set file (folder/file + ValueSet title) or codes.csv "
        "concept "
        "the row came from, separated by ` \\| `. A code may belong to several groups (e.g. a "
        "codeine/promethazine "
        "syrup is both `opioid_agonist` and `sedating_antihistamine`). |"
    )
    add(
        f"| `ingredients.csv` | {counts['ingredients.csv']} | "
        f"`group,kind,term,rxnorm_ingredient,verified,source`: "
        "name/keyword fallback for codes that are not in codes.csv (brand- or ingredient-level RxNorm "
        "codes, local "
        "codes, free text). `verified=yes` only when the name (and ingredient code, if given) comes from a "
        "shared "
        "file: codes.csv `cns_depressant_ingredient_*` / US Core allergy substances, or the displays of a "
        "value set "
        "dedicated to that class. |"
    )
    add(
        f"| `products.csv` | {counts['products.csv']} | "
        f"`code,system,display,ingredient_group,form,route,strength_mg,"
        "concentration_mg_per_ml,source`: the baclofen product codes of codes.csv. `strength_mg` is per "
        "solid unit "
        "only; liquids carry `concentration_mg_per_ml` and no strength, so a dose in vials/syringes can "
        "never be "
        "converted to mg. |"
    )
    add(
        f"| `excluded.csv` | {counts['excluded.csv']} | "
        f"`considered_for_group,kind,system,code,display,reason,source`: "
        "every code that was considered for a group and deliberately left out, with the reason. Use it as a "
        "**deny list**: a code listed here for group G must not be put into G by the term fallback. |"
    )
    add(
        f"| `context.csv` | {counts['context.csv']} | `rule,cue,kinds,groups,source`: what the words "
        "around a matched term mean (clause boundaries, negation, pseudo-negation, glued prefixes, "
        "history routing, local-only drug forms); see *How matching works* 3. |"
    )
    add("| `README.md` | | this file |")
    add("")
    add("## How matching works (runtime contract)")
    add("")
    add(
        "1. **Code first.** Look up (system, code) in `codes.csv` for the kind asked (`drug_class`, "
        "`condition_group`, `condition_history`, `allergy_group`, `observation`, `indication`). If the code "
        "is there, its groups are the answer and the term fallback is **not** used (the code was curated; "
        "terms would only add errors). A code listed in `excluded.csv` for a group is a **deny list** entry: "
        "the term fallback never puts it back into that group (`(any drug class)`: no drug class at all)."
    )
    add(
        "2. **Term fallback** only for codings not in `codes.csv` for that kind: a term of "
        "`ingredients.csv` matches the coding display or free text **case-insensitively as a whole word**, "
        "regex `(?<!\\w)TERM(?!\\w)` (`cds_engine.vocabulary.TERM_REGEX`). A hyphen is a word boundary, "
        "so free text such as `hydrocodone-acetaminophen` and `carbidopa-levodopa` still names its "
        "ingredients; `apomorphine` does not match `morphine`, `Parkinson's` matches `parkinson`."
    )
    add(
        "3. **Context** (`context.csv`, `cds_engine.term_context`): each occurrence of a term is judged by "
        "the words around it, within its clause (a clause ends at `. ; : ( ) [ ]`, a line break, *but*, "
        "*however* ...; for conditions also at a comma) and at most `scope` words away. **Negated** "
        "mentions never match (*no*, *not*, *without*, *denies*, *no history of*, *negative for*, "
        "*family history of* (someone else's condition) before the term; *ruled out*, *absent* after it); "
        "pseudo-cues such as *not elsewhere classified* are not negations. A **glued prefix** (*non-*, "
        "*pre-*, *anti-*; *heat*/*sun* before `stroke`) means another concept. A **history** cue (*history "
        "of*, *h/o*, *previous*, *healed* ...) moves the mention to kind `condition_history` for the groups "
        "whose history is its own fact (`peptic_ulcer`: the pack reads `cond_history.peptic_ulcer`); for "
        "every other group history stays in the active group (stroke, psychosis, epilepsy: the caution "
        "covers past events). When in doubt a term matches: a comma ends a negation's reach, so `denies "
        "psychosis, suicidal ideation` still counts suicidality (an extra caution, never a hidden one)."
    )
    add(
        "4. **Local-only dose forms**: a drug text naming a local-only form (topical, ophthalmic, otic, "
        "cream, ointment, lotion, eye/ear drops, shampoo, soap, mouthwash, vaginal, medicated pad) gets no "
        "drug class from terms (e.g. `diphenhydramine 2% topical cream`); such product codes were already "
        "dropped from every drug class at build time. A pack's own drug (`drug: class:` of any pack) is "
        "exempt: a topical baclofen text is still baclofen, so the pack's product/route rules can flag it. "
        "Kit names saying *for patients taking ...* do not name the kit's content."
    )
    add(
        "5. **Indications**: when several indication groups match free text, prefer the specific one "
        "(`spasticity_stroke/_cerebral_palsy/_parkinson/_tbi` over `spasticity`; `rheumatic_spasm` over "
        "`musculoskeletal_pain`)."
    )
    add(
        "6. Observations are matched **by LOINC code only** (Synthea displays vary); the few observation "
        "terms "
        "are for free-text monitoring entries."
    )
    add("")
    add("### Matching examples (executed by `tests/test_vocabulary_readme.py`)")
    add("")
    add("| kind | system | code | display or free text | groups |")
    add("|---|---|---|---|---|")
    for kind, system, code, display, groups in MATCHING_EXAMPLES:
        add(f"| {kind} | {system or ''} | {code or ''} | {display or ''} | {', '.join(groups) or '(none)'} |")
    add("")
    add("## Groups")
    add("")
    add("| kind | group | code rows | term rows (verified) | content |")
    add("|---|---|---|---|---|")
    for kind in KINDS:
        for group in ALLOWED_GROUPS[kind]:
            note = GROUP_NOTES.get((kind, group), "")
            if not note and term_counts[(kind, group)] and not code_counts[(kind, group)]:
                note = "no code source in shared/: term rows only (unverified)"
            missing = sorted({w.oid for w in b.missing_sets if (w.kind, w.group) == (kind, group)})
            if missing:
                note += f" — **gap**: {len(missing)} VSAC set(s) not in shared/ (see below)"
            add(
                f"| {kind} | `{group}` | {code_counts[(kind, group)]} | {term_counts[(kind, group)]} "
                f"({verified_terms[(kind, group)]}) | {note} |"
            )
    add("")
    add("## Never take a broad set wholesale")
    add("")
    add(
        "Some value sets mix classes. The CDC *CNS depressant medications* set (DailyMed EPC) holds "
        "stimulants and "
        "anorectics (phentermine, benzphetamine, methamphetamine, diethylpropion, phendimetrazine), "
        "anaesthetics and "
        "oxybates; the archived CDC *Ambulatory setting non-opioid CNS depressant medications* set holds "
        "topical "
        "anaesthetics, ethanol-containing OTC products, anticonvulsants and antidepressants; the VSAC "
        "*Central Nervous "
        "System Depressants* set holds anticonvulsants and SSRIs. **The rule: a code enters a drug class "
        "only if its "
        "display names an ingredient of that class** (whole word) and it is not a local-only dose form. The "
        "same "
        "rule is applied to the class-specific sets, which is what keeps naloxone-only products out of "
        "`opioid_agonist`. Condition sets that mix concepts are filtered by display in the same spirit."
    )
    add("")
    add(
        "What the build took from, and left out of, the broad drug sets (left-out counts by first "
        "ingredient word; "
        "every code is in `excluded.csv`):"
    )
    add("")
    for f in BROAD_DRUG_SETS:
        vs = valuesets[f]
        taken = ", ".join(f"{g} {n}" for g, n in sorted(b.broad_taken[f].items()))
        left = ", ".join(f"{i} {n}" for i, n in b.broad_excluded[f].most_common())
        add(f"* **{vs.label}** — {len(vs.concepts)} codes. Taken: {taken or 'nothing'}. Left out: {left}.")
    add("")
    add("Left out of condition / observation groups (details and reasons in `excluded.csv`):")
    add("")
    reasons: Counter[tuple[str, str, str]] = Counter()
    for (kind, group, _s, _c), ex in b.excluded.items():
        if kind != "drug_class":
            reasons[(kind, group, "; ".join(ex.reasons))] += 1
    add("| kind | group | codes | reason |")
    add("|---|---|---|---|")
    for (kind, group, reason), n in sorted(reasons.items()):
        add(f"| {kind} | `{group}` | {n} | {reason} |")
    drug_reasons: Counter[tuple[str, str]] = Counter()
    for (kind, group, _s, _c), ex in b.excluded.items():
        if kind == "drug_class":
            drug_reasons[(group, "; ".join(ex.reasons))] += 1
    add("")
    add("| drug class considered | codes | reason |")
    add("|---|---|---|")
    for (group, reason), n in sorted(drug_reasons.items()):
        add(f"| `{group}` | {n} | {reason} |")
    add("")
    add(
        "codes.csv concepts not used: "
        + "; ".join(f"`{k}` ({v})" for k, v in sorted(CODES_CSV_IGNORED.items()))
        + "."
    )
    add("")
    add("Shared value sets read but not used for any group:")
    add("")
    for f, why in sorted(UNUSED_SETS.items()):
        add(f"* `{f}` ({valuesets[f].title}): {why}.")
    add("")
    add("## Condition value sets wanted in shared/")
    add("")
    add(
        "Condition groups a rule reads take their codes from these VSAC value sets, read by OID from "
        "`shared/data/valuesets/**` when the file is there (`CONDITION_VALUESETS` in "
        "`tools/build_vocabulary.py`, with the display filters applied). Only data in the read-only "
        "`shared/` folder may feed the vocabulary. A set marked *missing* is a known gap "
        "(`tests/test_vocabulary_coverage.py`): the group falls back to term matching of the display "
        "text until the project lead adds the set to shared/ and the vocabulary is rebuilt (then also add "
        "its gzip copy under `tools/vocabulary-sources/valuesets/`, which the provenance test reads, and "
        "drop the gap from `KNOWN_GAPS`)."
    )
    add("")
    add("| group | value set OID | title | in shared/ |")
    add("|---|---|---|---|")
    missing_oids = {w.oid for w in b.missing_sets}
    for w in CONDITION_VALUESETS:
        add(
            f"| `{w.group}` | `{w.oid}` | {w.title} | "
            f"{'**missing**' if w.oid in missing_oids else 'yes'} |"
        )
    for (kind, group), why in sorted(CONDITION_GAPS_WITHOUT_SET.items()):
        add(f"| `{group}` ({kind}) | — | {why} | **missing** |")
    add("")
    add("## Upstream sources")
    add("")
    add("| source | repository / origin | commit | licence | used for |")
    add("|---|---|---|---|---|")
    add(
        "| `shared/data/valuesets/cdc-opioid-cds-r4/*` | `cqframework/opioid-cds-r4` (CDC Opioid "
        "Prescribing Guideline "
        "CDS IG source; `non-opioid-cns-depressant-medications.json` from its `archive/` folder) | "
        "`b29bdcbf6db6f3de26486dbc3820572ee9a78b89` (2025-09-26) | CC0-1.0 | opioid, benzodiazepine, "
        "barbiturate, "
        "CNS-depressant medication sets; substance misuse, opioid misuse, sleep-disordered breathing "
        "conditions |"
    )
    add(
        "| `shared/data/valuesets/vsac-ecqm-content-qicore-2024/*` | `cqframework/ecqm-content-qicore-2024` "
        "(NLM VSAC "
        "expansions, mostly 2025-01-10) | `9ebd48ffebf2ed2489f3904cc8393ebf8979bfc9` (2025-01-15) | CC0-1.0 "
        "(VSAC content normally under a UMLS licence; redistributed publicly by cqframework) | all VSAC sets "
        "(opioids, benzodiazepines, Beers sets, CNS depressants, pregnancy, lactation, seizure, SUD, renal, "
        "dialysis, eGFR, creatinine, hCG, neuromuscular/movement disorders) |"
    )
    add(
        "| `shared/data/codes.csv` (148 hand-picked codes) | US Core `us-core-allergy-substance` ValueSet in "
        "`cqframework/ecqm-content-qicore-2024` (same commit as above, CC0-1.0): baclofen 1292 and the "
        "`cns_depressant_ingredient_*` RxNorm ingredients; VSAC files above; Synthea data below | see rows | "
        "see rows | baclofen ingredient, egfr, creatinine, pregnancy test, indication and renal codes |"
    )
    add(
        "| codes.csv `baclofen_oral_SCD/SBD` | `cds-hooks/sandbox:src/assets/medication-list.js` (RxNorm "
        "name "
        "snapshot, last changed 2018-04) | not recorded | Apache-2.0 | baclofen tablet/ODT product codes "
        "(may be obsolete/remapped) |"
    )
    add(
        "| codes.csv `baclofen_intrathecal_SCD` | **secondary**: ndclist.com/ndc/72888-145 NDC→RxNorm "
        "crosswalk web "
        "page (no repository data file) | — | — | intrathecal 1 and 2 mg/mL codes |"
    )
    add(
        "| codes.csv `indication_cerebral_palsy` 128188000, `indication_spasticity` 221360009 | "
        "`synthetichealth/synthea:src/main/resources/modules/cerebral_palsy.json` | not recorded | "
        "Apache-2.0 | "
        "CP and spasticity SNOMED codes |"
    )
    add(
        "| Synthea-emitted codes (source `Synthea-emitted code in shared/data/synthea/...`) | "
        "`smart-on-fhir/generated-sample-data` R4/SYNTHEA; `Exafluence-Inc/exf-qicore-synthea-dataset` | "
        "`25ac8089f0464b8673c7669509dc0bb8f4883773`; `dcaf099a3c0ffedd21932d225f3e579a65cdf382` | "
        "Apache-2.0; "
        "MIT | LFT/glucose LOINC, stroke, TBI, diabetes, COPD/emphysema/sleep apnoea, wheat allergy, low "
        "back / "
        "neck pain, rheumatoid arthritis, pre-eclampsia codes (code + display confirmed in the bundles at "
        "build "
        "time) |"
    )
    add(
        f"| `{UNVERIFIED_DRUG_SOURCE}` / `{UNVERIFIED_TERM_SOURCE}` / `{UNVERIFIED_CODE_SOURCE}` | "
        f"researcher "
        "background knowledge | — | — | ingredient and term lists for classes/groups with no shared code "
        "source; "
        "ICD-10-CM Z99.2 |"
    )
    add(
        "| baclofen brand names Gablofen, Ozobax, Fleqsuvy, Lyvispah | "
        "`shared/clinical/baclofen-knowledge.md` §2.1 "
        "| — | — | allergy/drug term rows (no code) |"
    )
    add("")
    add(
        "Code systems keep their own terms: LOINC (Regenstrief licence, free with attribution), SNOMED CT "
        "(free in "
        "the US under the UMLS/SNOMED affiliate licence), RxNorm (NLM), ICD-10-CM / ICD-10-PCS and HCPCS "
        "Level II "
        "(public domain). **CPT** is AMA-copyrighted: the CPT codes of the dialysis sets are kept, their "
        "descriptors are replaced by `CPT code (descriptor omitted: AMA copyright)`; production use of CPT "
        "needs "
        "an AMA licence."
    )
    add("")
    add("## Needs pharmacist / clinical review")
    add("")
    for item in REVIEW_ITEMS:
        add(f"* {item}")
    add("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
