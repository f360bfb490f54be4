"""Routes of administration: the explicit list of codes and spellings the engine recognises.

Generic pharmacy vocabulary (no drug, no threshold). Each coded route is listed with the display
it has in SNOMED CT (checked against the public SNOMED CT "Route of administration value"
expansion, FHIR ValueSet ``route-codes``, International edition 2025-02) or in HL7 v3
``RouteOfAdministration`` (FHIR ValueSet ``enteral-route``). A route is read, in order, as:
an exact code or word of :data:`ROUTE_WORDS`; the same text without "route" / "(qualifier
value)" / "per" / "via"; an enteral tube pattern of :data:`ENTERAL_PATTERNS`; a combination such as
"PO/NG" whose parts are all oral or enteral. Anything else is *not recognised* — the caller keeps
it as written and rules treat it conservatively (a pack decides how: checked as oral and reported).

Families: ``oral``, ``enteral`` (any feeding tube), ``intrathecal``, ``iv``, ``im``, ``sc``,
``epidural``, ``transdermal``, ``topical``, ``rectal``, ``sublingual``, ``buccal``, ``nasal``,
``inhalation``, ``vaginal``, ``ophthalmic``, ``otic``, ``intradermal``.
"""

from __future__ import annotations

import re

__all__ = ["ENTERAL_PATTERNS", "ROUTE_CODES", "ROUTE_FAMILIES", "ROUTE_WORDS", "route_family"]

# SNOMED CT route codes: code -> (display, family). Displays as in the FHIR route-codes expansion.
ROUTE_CODES: dict[str, tuple[str, str]] = {
    "26643006": ("Oral route", "oral"),
    "127492001": ("Nasogastric route", "enteral"),
    "127490009": ("Gastrostomy route", "enteral"),
    "127491008": ("Jejunostomy route", "enteral"),
    "418730005": ("Nasojejunal route", "enteral"),
    "420218003": ("Nasoduodenal route", "enteral"),
    "418441008": ("Orogastric route", "enteral"),
    "417985001": ("Enteral route", "enteral"),
    "372454008": ("Gastroenteral route", "enteral"),
    "418136008": ("Gastro-intestinal stoma route", "enteral"),
    "447964005": ("Digestive tract route", "enteral"),
    "72607000": ("Intrathecal route", "intrathecal"),
    "47625008": ("Intravenous route", "iv"),
    "418114005": ("Intravenous central route", "iv"),
    "419993007": ("Intravenous peripheral route", "iv"),
    "78421000": ("Intramuscular route", "im"),
    "34206005": ("Subcutaneous route", "sc"),
    "404820008": ("Epidural route", "epidural"),
    "45890007": ("Transdermal route", "transdermal"),
    "6064005": ("Topical route", "topical"),
    "448598008": ("Cutaneous route", "topical"),
    "37161004": ("Rectal route", "rectal"),
    "37839007": ("Sublingual route", "sublingual"),
    "54471007": ("Buccal route", "buccal"),
    "372473007": ("Oromucosal route", "buccal"),
    "46713006": ("Nasal route", "nasal"),
    "447694001": ("Respiratory tract route", "inhalation"),
    "16857009": ("Vaginal route", "vaginal"),
    "54485002": ("Ophthalmic route", "ophthalmic"),
    "10547007": ("Otic route", "otic"),
    "372464004": ("Intradermal route", "intradermal"),
}

# HL7 v3 RouteOfAdministration codes (enteral-route value set) and common written forms.
ROUTE_WORDS: dict[str, str] = {
    # oral
    "oral": "oral", "po": "oral", "p.o.": "oral", "by mouth": "oral", "orally": "oral", "per os": "oral",
    "mouth": "oral", "swallow": "oral", "swallow, oral": "oral",
    # enteral (HL7 v3: PO is oral; the tube instillations are enteral)
    "enteral": "enteral", "ng": "enteral", "ngt": "enteral", "nasogastric": "enteral", "nj": "enteral",
    "nasojejunal": "enteral", "nd": "enteral", "nasoduodenal": "enteral", "og": "enteral", "ogt": "enteral",
    "orogastric": "enteral", "gastrostomy": "enteral", "jejunostomy": "enteral", "peg": "enteral",
    "pej": "enteral", "gt": "enteral", "gjt": "enteral", "jt": "enteral", "eft": "enteral",
    "entinstl": "enteral", "jjtinstl": "enteral", "ojj": "enteral", "tube": "enteral",
    "g-tube": "enteral", "j-tube": "enteral", "gj-tube": "enteral", "ng-tube": "enteral",
    # intrathecal
    "intrathecal": "intrathecal", "it": "intrathecal", "ith": "intrathecal",
    # parenteral
    "iv": "iv", "intravenous": "iv", "ivpb": "iv", "iv push": "iv",
    "im": "im", "intramuscular": "im",
    "sc": "sc", "subcutaneous": "sc", "subcut": "sc", "sq": "sc", "subq": "sc", "s.c.": "sc",
    "epidural": "epidural",
    "intradermal": "intradermal", "id": "intradermal",
    # skin
    "transdermal": "transdermal", "td": "transdermal",
    "topical": "topical", "topically": "topical", "cutaneous": "topical", "skin": "topical",
    "external": "topical", "apply to skin": "topical",
    # other mucosal routes (no oral product is made for them)
    "rectal": "rectal", "pr": "rectal", "rectally": "rectal",
    "sublingual": "sublingual", "sl": "sublingual", "under the tongue": "sublingual",
    "buccal": "buccal", "oromucosal": "buccal",
    "nasal": "nasal", "intranasal": "nasal", "in each nostril": "nasal",
    "inhalation": "inhalation", "inhaled": "inhalation", "inh": "inhalation", "nebulised": "inhalation",
    "nebulized": "inhalation", "respiratory tract": "inhalation",
    "vaginal": "vaginal", "pv": "vaginal", "per vagina": "vaginal", "vaginally": "vaginal",
    "ophthalmic": "ophthalmic", "eye": "ophthalmic", "both eyes": "ophthalmic",
    "otic": "otic", "ear": "otic", "both ears": "otic",
}

ROUTE_FAMILIES = frozenset({family for _, family in ROUTE_CODES.values()} | set(ROUTE_WORDS.values()))

# Feeding-tube spellings ("per G tube", "feeding tube", "via PEG", "J-tube", "naso-jejunal").
ENTERAL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"\b(?:naso|oro)[- ]?(?:gastric|jejunal|duodenal)\b",
        r"\b(?:gastrostomy|jejunostomy|gastrojejunostomy|gastro-jejunostomy|enteral)\b",
        r"\b(?:ng|nj|nd|og|oj|g|j|gj|g-j|peg|pej|peg-j|feeding|enteral|gastric|jejunal|gastrostomy|"
        r"jejunostomy|nasogastric|nasojejunal|stomach)[- ]?tubes?\b",
        r"^(?:per|via|by|through) (?:the )?(?:ng|nj|ngt|og|peg|pej|gt|jt|gj|tube)\b",
    )
)

_DROP = re.compile(r"\s*\((?:qualifier value|route)\)\s*$|\s+route$|^route[: ]+|^(?:per|via|by) (?=\w)")
_SPLIT = re.compile(r"\s*(?:/|,|\bor\b|\band/or\b)\s*")


def _exact(key: str) -> str | None:
    if key in ROUTE_CODES:
        return ROUTE_CODES[key][1]
    return ROUTE_WORDS.get(key)


def route_family(key: str) -> str | None:
    """The route family of a lower-cased, whitespace-collapsed route text or code; None if unknown."""
    found = _exact(key)
    if found is not None:
        return found
    stripped = key
    for _ in range(3):  # "per oral route (qualifier value)" -> "oral"
        shorter = _DROP.sub("", stripped).strip()
        if shorter == stripped:
            break
        stripped = shorter
        found = _exact(stripped)
        if found is not None:
            return found
    if any(p.search(key) for p in ENTERAL_PATTERNS):
        return "enteral"
    parts = [p for p in _SPLIT.split(key) if p]
    if len(parts) > 1:  # "PO/NG", "oral or G-tube": checked as oral either way
        families = {route_family(p) for p in parts}
        if families <= {"oral", "enteral"}:
            return "enteral" if "enteral" in families else "oral"
    return None
