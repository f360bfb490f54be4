"""Spelling normalisation for routes, dose forms and dose units.

These tables are generic pharmacy vocabulary (no drug, no threshold): they let ``PO``,
``by mouth`` and SNOMED's "Oral route" all read as ``oral``. Anything not recognised is
kept as written, lower-cased, so a rule comparing against a known value sees "not equal"
rather than a guess, and a unit the engine does not know never becomes a number.
"""

from __future__ import annotations

import re

from cds_engine.facts.routes import ROUTE_FAMILIES, route_family
from cds_engine.facts.text_cache import CLIENT_TEXT_CHARS, bounded_text_cache

__all__ = [
    "FORM_ROUTES",
    "FREQUENCY_CODES",
    "KNOWN_ROUTES",
    "LIQUID_FORMS",
    "MASS_UNITS_TO_MG",
    "checked_route",
    "display_text",
    "form_from_text",
    "normalize_form",
    "normalize_route",
    "normalize_unit",
    "route_shown",
]

_FORMS = {
    "tablet": "tablet",
    "tab": "tablet",
    "oral tablet": "tablet",
    "tablets": "tablet",
    "odt": "odt",
    "orally disintegrating tablet": "odt",
    "disintegrating oral tablet": "odt",
    "capsule": "capsule",
    "cap": "capsule",
    "oral capsule": "capsule",
    "solution": "solution",
    "oral solution": "solution",
    "liquid": "solution",
    "oral liquid": "solution",
    "syrup": "solution",
    "elixir": "solution",
    "suspension": "suspension",
    "oral suspension": "suspension",
    "granules": "granules",
    "oral granules": "granules",
    "injection": "injection",
    "injectable solution": "injection",
    "intrathecal injection": "injection",
    "patch": "patch",
    "transdermal patch": "patch",
    "transdermal system": "patch",
    "cream": "cream",
    "gel": "gel",
    "ointment": "ointment",
    "topical cream": "cream",
    "topical gel": "gel",
    "lotion": "lotion",
    "topical lotion": "lotion",
    "foam": "foam",
    "topical foam": "foam",
    "spray": "spray",
    "topical spray": "spray",
    "topical solution": "topical-solution",
    "cutaneous solution": "topical-solution",
    "solution for skin": "topical-solution",
}

LIQUID_FORMS = frozenset({"solution", "suspension"})

# The route a dose form implies when none is written (generic: tablets are swallowed, creams go on
# skin). Injections imply none: intrathecal and intravenous products share the form.
FORM_ROUTES: dict[str, str] = {
    "tablet": "oral",
    "odt": "oral",
    "capsule": "oral",
    "solution": "oral",
    "suspension": "oral",
    "granules": "oral",
    "patch": "transdermal",
    "cream": "topical",
    "gel": "topical",
    "ointment": "topical",
    "lotion": "topical",
    "foam": "topical",
    "spray": "topical",
    "topical-solution": "topical",
}

# Words that name a form inside free text ("drug 10 mg/5 mL oral solution"), most specific first:
# a skin form is recognised before the generic "solution".
_FORM_WORDS = (
    ("topical solution", "topical-solution"),
    ("cutaneous solution", "topical-solution"),
    ("transdermal", "patch"),
    ("patch", "patch"),
    ("cream", "cream"),
    ("ointment", "ointment"),
    ("lotion", "lotion"),
    ("foam", "foam"),
    ("spray", "spray"),
    ("gel", "gel"),
    ("injection", "injection"),
    ("injectable", "injection"),
    ("intrathecal", "injection"),
    ("disintegrating", "odt"),
    ("suspension", "suspension"),
    ("granules", "granules"),
    ("solution", "solution"),
    ("syrup", "solution"),
    ("elixir", "solution"),
    ("liquid", "solution"),
    ("capsule", "capsule"),
    ("tablet", "tablet"),
)
KNOWN_ROUTES = ROUTE_FAMILIES

# Administrations per day: HL7 v3 GTSAbbreviation timing codes and common prescriber shorthand.
FREQUENCY_CODES: dict[str, float] = {
    "QD": 1.0,
    "OD": 1.0,
    "DAILY": 1.0,
    "QDAY": 1.0,
    "ONCE-DAILY": 1.0,
    "AM": 1.0,
    "PM": 1.0,
    "QAM": 1.0,
    "QPM": 1.0,
    "QHS": 1.0,
    "HS": 1.0,
    "BED": 1.0,
    "NOCTE": 1.0,
    "BID": 2.0,
    "BD": 2.0,
    "TID": 3.0,
    "TDS": 3.0,
    "QID": 4.0,
    "QDS": 4.0,
    "QOD": 0.5,
    "Q1H": 24.0,
    "Q2H": 12.0,
    "Q3H": 8.0,
    "Q4H": 6.0,
    "Q6H": 4.0,
    "Q8H": 3.0,
    "Q12H": 2.0,
    "WK": 1 / 7,
    "MO": 1 / 30,
}

_UNITS = {
    "mg": "mg",
    "milligram": "mg",
    "milligrams": "mg",
    "mcg": "mcg",
    "ug": "mcg",
    "µg": "mcg",
    "μg": "mcg",
    "microgram": "mcg",
    "micrograms": "mcg",
    "g": "g",
    "gram": "g",
    "grams": "g",
    "ml": "mL",
    "milliliter": "mL",
    "millilitre": "mL",
    "milliliters": "mL",
    "millilitres": "mL",
    "tablet": "tablet",
    "tab": "tablet",
    "tablets": "tablet",
    "{tbl}": "tablet",
    "capsule": "capsule",
    "{capsule}": "capsule",
    "packet": "packet",
    "{packet}": "packet",
}

MASS_UNITS_TO_MG = {"mg": 1.0, "mcg": 0.001, "g": 1000.0}


def _key(text: str) -> str:
    return " ".join(text.strip().lower().replace("_", " ").split())


# The caches below remember client texts only up to CLIENT_TEXT_CHARS (facts/text_cache.py): their
# count bound alone let a client pin 4,096 texts of any length (a request body may be 10 MB) each.


@bounded_text_cache(maxsize=4096, max_chars=CLIENT_TEXT_CHARS)  # pure; drafts repeat co-medicines
def normalize_route(route: str | None) -> str | None:
    """The route family (:mod:`cds_engine.facts.routes`), or the text as written (lower-cased) if unknown."""
    if route is None or not route.strip():
        return None
    key = _key(route)
    return route_family(key) or key


def normalize_form(form: str | None) -> str | None:
    if form is None or not form.strip():
        return None
    key = _key(form)
    if key in _FORMS:
        return _FORMS[key]
    return form_from_text(key) or key


@bounded_text_cache(maxsize=4096, max_chars=CLIENT_TEXT_CHARS)  # pure; ~20 regex searches a call, texts recur
def form_from_text(text: str | None) -> str | None:
    """The dose form named in free text (a product name or order line); None when none is named."""
    if text is None or not text.strip():
        return None
    key = _key(text)
    for word, form in _FORM_WORDS:
        if re.search(r"(?<![a-z])" + re.escape(word) + r"(?![a-z])", key):
            return form
    return None


def checked_route(route: str | None, product_route: str | None, form: str | None) -> str | None:
    """The route checks are run for: a recognised route as written; an unrecognised one as oral;
    with no route, the product's labeled route or the route its form implies (None if neither)."""
    if route is not None:
        return route if route in KNOWN_ROUTES else "oral"
    return product_route or (FORM_ROUTES.get(form) if form else None)


def route_shown(written: str | None, checked: str | None, text: str | None) -> str | None:
    """How a card names the route, saying when the checks assumed it."""
    if written is not None and checked == written:
        return written
    if written is not None:
        return f"{text} (not recognised) — checked as {checked}"
    if checked is not None:
        return f"not stated — checked as {checked}"
    return None


@bounded_text_cache(maxsize=4096, max_chars=CLIENT_TEXT_CHARS)  # pure; drafts repeat co-medicines
def display_text(text: str | None, limit: int = 40) -> str | None:
    """Free text fit for a card: markdown/HTML characters escaped, one line, at most ``limit`` chars."""
    if text is None or not text.strip():
        return None
    one_line = " ".join(text.split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1] + "…"
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~&\"'])", r"\\\1", one_line)


def normalize_unit(unit: str | None) -> str | None:
    if unit is None or not unit.strip():
        return None
    key = unit.strip()
    return _UNITS.get(key.lower(), _UNITS.get(key, key))
