"""Codes → meaning: drug classes, condition groups, allergy groups, indications, products.

The vocabulary is data kept under ``rules/vocabulary/`` (built from public value sets, sources
named in its README). Matching is by (system, code) first; a whole-word, case-insensitive
term match on the display or free text is the fallback for product codes the value sets do
not list (for example a brand-level RxNorm code). No code or term is written in Python.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

from cds_engine.codes import Coding, oid_aliases
from cds_engine.term_context import TermContext

__all__ = ["HISTORY_KIND", "TERM_REGEX", "Product", "Vocabulary", "normalize_system", "term_regex"]

# The whole-word rule of the term fallback (rules/vocabulary/README.md quotes it; a test checks that
# the README and this pattern agree). A hyphen IS a word boundary, so free text such as
# "hydrocodone-acetaminophen" or "carbidopa-levodopa" still names its ingredients; glued negating
# prefixes ("non-psychotic", "pre-diabetes") are handled by the context rules instead.
TERM_REGEX = r"(?<!\w)TERM(?!\w)"
# Occurrences of one term judged in one text; beyond, the term counts (fail safe, bounded time).
_MAX_JUDGED = 50
# Kind whose groups are answered from history codes and "history of ..." texts (cond_history.*).
HISTORY_KIND = "condition_history"


def term_regex(term: str) -> re.Pattern[str]:
    """Compile one term with the runtime whole-word rule (case-insensitive)."""
    before, after = TERM_REGEX.split("TERM")
    return re.compile(before + re.escape(term) + after, re.IGNORECASE)


_SYSTEM_ALIASES = {
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "snomed": "http://snomed.info/sct",
    "sct": "http://snomed.info/sct",
    "http://snomed.info/sct": "http://snomed.info/sct",
    "loinc": "http://loinc.org",
    "http://loinc.org": "http://loinc.org",
    "icd10cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "icd-10-cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "http://hl7.org/fhir/sid/icd-10-cm": "http://hl7.org/fhir/sid/icd-10-cm",
    **oid_aliases(),  # urn:oid:2.16.840.1.113883.6.88 is RxNorm, ... (codes.SYSTEM_OIDS)
}


def normalize_system(system: str | None) -> str | None:
    """Map common spellings of a code system to its canonical FHIR URI."""
    if system is None:
        return None
    s = system.strip()
    return _SYSTEM_ALIASES.get(s.lower(), s)


@dataclass(frozen=True, slots=True)
class Product:
    """What the vocabulary knows of a product code: form, labeled route, strength."""

    code: str
    system: str
    display: str
    ingredient_group: str
    form: str | None
    route: str | None
    strength_mg: float | None
    concentration_mg_per_ml: float | None
    marketed: str = "unverified"  # yes | no | unverified (products.csv, each with a cited source)
    scored: str = "unverified"  # yes | no | unverified: whether half units may be given


def _status(text: str | None) -> str:
    """yes | no | unverified; anything else (or a file without the column) is unverified."""
    value = (text or "").strip().lower()
    return value if value in ("yes", "no") else "unverified"


def _float_or_none(text: str | None) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


# weakref_slot: per-vocabulary memos (sources.fhir_read) hold it weakly, so a hot reload frees the old one
@dataclass(slots=True, weakref_slot=True)
class Vocabulary:
    """In-memory index of the vocabulary files; cheap to query, loaded once per engine."""

    codes: dict[tuple[str, str, str], set[str]] = field(
        default_factory=dict
    )  # (kind, system, code) -> groups
    term_rows: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # kind -> (term, group)
    term_texts: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (kind, group) -> terms
    products: dict[tuple[str, str], Product] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)  # kind -> group names
    excluded: dict[tuple[str, str, str], set[str]] = field(
        default_factory=dict
    )  # reviewed-out codes -> groups
    files: list[Path] = field(default_factory=list)
    context: TermContext = field(default_factory=TermContext.empty)  # negation/history/local-form rules
    _memo: dict[tuple[str, str | None, str | None, str | None], frozenset[str]] = field(default_factory=dict)
    # kind -> compiled term patterns (see term_patterns): a cache, so not part of equality or repr
    _patterns: dict[str, list[tuple[re.Pattern[str], str]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_dir(cls, directory: str | Path) -> Vocabulary:
        """Load ``codes.csv``, ``ingredients.csv`` and ``products.csv`` from a directory."""
        directory = Path(directory)
        vocab = cls()
        codes: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        groups: dict[str, set[str]] = defaultdict(set)
        codes_file = directory / "codes.csv"
        if _readable(codes_file, directory):
            vocab.files.append(codes_file)
            with codes_file.open(newline="", encoding="utf-8") as fh:
                systems = _Systems()
                for row in _columns(fh, ("system", "kind", "code", "group")):
                    system = systems[row[0]]
                    codes[(row[1], system, row[2].strip())].add(row[3])
                    groups[row[1]].add(row[3])
        terms: dict[str, list[tuple[str, str]]] = defaultdict(list)
        term_texts: dict[tuple[str, str], list[str]] = defaultdict(list)
        terms_file = directory / "ingredients.csv"
        if _readable(terms_file, directory):
            vocab.files.append(terms_file)
            with terms_file.open(newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    term = row["term"].strip()
                    if not term:
                        continue
                    terms[row["kind"]].append((term, row["group"]))  # compiled when first needed
                    term_texts[(row["kind"], row["group"])].append(term)
                    groups[row["kind"]].add(row["group"])
        excluded: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        excluded_file = directory / "excluded.csv"
        if _readable(excluded_file, directory):
            vocab.files.append(excluded_file)
            with excluded_file.open(newline="", encoding="utf-8") as fh:
                systems = _Systems()
                for row in _columns(fh, ("system", "considered_for_group", "kind", "code")):
                    system = systems[row[0]]
                    group = row[1]
                    excluded[(row[2], system, row[3].strip())].add("*" if group.startswith("(") else group)
        vocab.excluded = dict(excluded)
        context_file = directory / "context.csv"
        if _readable(context_file, directory):
            vocab.files.append(context_file)
            vocab.context = TermContext.from_csv(context_file)
        products_file = directory / "products.csv"
        if _readable(products_file, directory):
            vocab.files.append(products_file)
            with products_file.open(newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    system = normalize_system(row["system"]) or ""
                    vocab.products[(system, row["code"].strip())] = Product(
                        code=row["code"].strip(),
                        system=system,
                        display=row["display"],
                        ingredient_group=row["ingredient_group"],
                        form=row["form"] or None,
                        route=row["route"] or None,
                        strength_mg=_float_or_none(row.get("strength_mg")),
                        concentration_mg_per_ml=_float_or_none(row.get("concentration_mg_per_ml")),
                        marketed=_status(row.get("marketed")),
                        scored=_status(row.get("scored")),
                    )
        vocab.codes = dict(codes)
        vocab.term_rows = dict(terms)
        vocab.term_texts = dict(term_texts)
        vocab.groups = dict(groups)
        return vocab

    @property
    def terms(self) -> dict[str, list[tuple[re.Pattern[str], str]]]:
        """kind -> (compiled term pattern, group), in file order, for every kind."""
        return {kind: self.term_patterns(kind) for kind in self.term_rows}

    def term_patterns(self, kind: str) -> list[tuple[re.Pattern[str], str]]:
        """The compiled term patterns of one kind, compiled on first use and kept.

        Why lazily: compiling ~460 case-insensitive patterns was a third of loading the vocabulary,
        and a kind whose codes all match the code tables (or a command that classifies nothing, such
        as a lint or a server start) never needs them. Same patterns, same order, whenever compiled.
        """
        patterns = self._patterns.get(kind)
        if patterns is None:  # two threads may both compile a kind: same list, either one is kept
            patterns = self._patterns[kind] = [(term_regex(t), g) for t, g in self.term_rows.get(kind, ())]
        return patterns

    def classify(self, coding: Coding | None, kind: str) -> set[str]:
        """Groups of ``kind`` that a coding belongs to: exact code first, then the name fallback.

        Memoised: the term fallback scans a few hundred patterns, and the same codes recur on
        every request (measured: 3.8 ms -> 0.3 ms per applicability check).
        """
        if coding is None:
            return set()
        key = (kind, coding.system, coding.code, coding.display)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = frozenset(self._classify(coding, kind))
            if len(self._memo) > 200_000:  # bound memory on unbounded free text
                self._memo.clear()
        return set(hit)

    def _classify(self, coding: Coding, kind: str) -> set[str]:
        found: set[str] = set()
        denied: set[str] = set()
        system = normalize_system(coding.system)
        if coding.code and system:
            key = (kind, system, coding.code.strip())
            found |= self.codes.get(key, set())
            denied = self.excluded.get(key, set())
            active_code = ("condition_group", system, coding.code.strip()) in self.codes
            if kind == HISTORY_KIND and not found and active_code:
                return found  # a curated active-condition code is not history, whatever its display says
        if not found and coding.display and "*" not in denied:
            # a code reviewed out of a group (e.g. a topical product) is not let back in by its name
            found |= self._term_groups(coding.display, kind, denied)
        return found

    def _term_groups(self, text: str, kind: str, denied: set[str]) -> set[str]:
        """Groups named by terms in ``text``, each occurrence judged by the context rules.

        ``condition_group`` keeps plain mentions (history too, except for groups whose history is
        its own fact); ``condition_history`` keeps only the history mentions of those groups;
        negated, family-history and prefixed mentions ("non-psychotic") count for neither.
        """
        term_kind = "condition_group" if kind == HISTORY_KIND else kind
        wanted = "history" if kind == HISTORY_KIND else "match"
        found: set[str] = set()
        for pattern, group in self.term_patterns(term_kind):
            if group in denied or group in found or self.context.local_form(text, kind, group):
                continue  # e.g. "diphenhydramine 2% cream": not a systemic exposure
            for n, m in enumerate(pattern.finditer(text)):
                if n >= _MAX_JUDGED:  # hostile text repeating a negated term: over-match, never hide
                    if wanted == "match":
                        found.add(group)
                    break
                if self.context.verdict(text, m.start(), m.end(), kind, group) == wanted:
                    found.add(group)
                    break
        return found

    def product(self, coding: Coding | None) -> Product | None:
        """Form/route/strength of a product code, when the vocabulary lists it."""
        if coding is None or not coding.code:
            return None
        return self.products.get((normalize_system(coding.system) or "", coding.code.strip()))

    def known_groups(self, kind: str) -> set[str]:
        return set(self.groups.get(kind, set()))


class _Systems(dict[str | None, str]):
    """``normalize_system(raw) or ""`` once per distinct spelling (a file repeats a handful of them)."""

    def __missing__(self, raw: str | None) -> str:
        system = self[raw] = normalize_system(raw) or ""
        return system


class _ByName:
    """A ``csv.DictReader`` row read by position: ``row[i]`` is ``row[names[i]]``, looked up when read."""

    __slots__ = ("_names", "_row")

    def __init__(self, row: dict[str | Any, Any], names: tuple[str, ...]) -> None:
        self._row, self._names = row, names

    def __getitem__(self, i: int) -> Any:
        return self._row[self._names[i]]


def _columns(fh: Iterable[str], names: tuple[str, ...]) -> Iterator[Sequence[Any]]:
    """Each csv row as the values of ``names``: ``row[i]`` is ``csv.DictReader``'s ``row[names[i]]``.

    Why: a dict per row was a third of reading codes.csv (6,000 rows, read at every start); picking
    the columns by position gives the same values — blank lines skipped, a short row's missing
    cells None, the last of two equal column names wins. A header lacking a name falls back to
    DictReader rows read lazily by name, so such a file fails with the same error at the same place.
    """
    reader = csv.reader(fh)
    header = next(reader, None)
    if header is None:
        return
    where = {name: i for i, name in enumerate(header)}
    if any(name not in where for name in names):
        for dict_row in csv.DictReader(fh, header):
            yield _ByName(dict_row, names)
        return
    pick = itemgetter(*(where[name] for name in names))
    width = len(header)
    for row in reader:
        if len(row) >= width:
            yield pick(row)
        elif row:
            yield pick(row + [None] * (width - len(row)))


def _readable(file: Path, directory: Path) -> bool:
    """The file exists and really lies inside the rules directory (a symlink leaving it is refused
    before anything is read, so no other file's content can reach a finding or a log line)."""
    if not file.exists():
        return False
    root = directory.parent.resolve()
    if not file.resolve().is_relative_to(root):
        raise ValueError(f"{file}: links to a file outside the rules directory: refused, not read")
    return True
