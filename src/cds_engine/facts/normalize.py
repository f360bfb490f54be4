"""Spelling normalisation for routes, dose forms and dose units.

These tables are generic pharmacy vocabulary (no drug, no threshold): they let ``PO``,
``by mouth`` and SNOMED's "Oral route" all read as ``oral``. Anything not recognised is
kept as written, lower-cased, so a rule comparing against a known value sees "not equal"
rather than a guess, and a unit the engine does not know never becomes a number.
"""

from __future__ import annotations

__all__ = [
    "FREQUENCY_CODES",
    "KNOWN_ROUTES",
    "LIQUID_FORMS",
    "MASS_UNITS_TO_MG",
    "normalize_form",
    "normalize_route",
    "normalize_unit",
]

_ROUTES = {
    "oral": "oral",
    "po": "oral",
    "by mouth": "oral",
    "oral route": "oral",
    "orally": "oral",
    "26643006": "oral",
    "enteral": "enteral",
    "ng": "enteral",
    "nasogastric": "enteral",
    "gastrostomy": "enteral",
    "peg": "enteral",
    "g-tube": "enteral",
    "enteral route": "enteral",
    "intrathecal": "intrathecal",
    "it": "intrathecal",
    "intrathecal route": "intrathecal",
    "72607000": "intrathecal",
    "iv": "iv",
    "intravenous": "iv",
    "intravenous route": "iv",
    "47625008": "iv",
    "im": "im",
    "intramuscular": "im",
    "intramuscular route": "im",
    "78421000": "im",
    "sc": "sc",
    "subcutaneous": "sc",
    "subcut": "sc",
    "sq": "sc",
    "subcutaneous route": "sc",
    "34206005": "sc",
    "epidural": "epidural",
    "epidural route": "epidural",
    "404820008": "epidural",
    "transdermal": "transdermal",
    "transdermal route": "transdermal",
    "45890007": "transdermal",
    "topical": "topical",
    "topical route": "topical",
    "6064005": "topical",
    "cutaneous": "topical",
    "rectal": "rectal",
    "pr": "rectal",
    "sublingual": "sublingual",
    "sl": "sublingual",
}

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
}

LIQUID_FORMS = frozenset({"solution", "suspension"})
KNOWN_ROUTES = frozenset(_ROUTES.values())

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


def normalize_route(route: str | None) -> str | None:
    if route is None or not route.strip():
        return None
    return _ROUTES.get(_key(route), _key(route))


def normalize_form(form: str | None) -> str | None:
    if form is None or not form.strip():
        return None
    key = _key(form)
    if key in _FORMS:
        return _FORMS[key]
    for word in ("suspension", "solution", "granules", "capsule", "patch", "injection", "tablet"):
        if word in key:
            return _FORMS[word]
    return key


def normalize_unit(unit: str | None) -> str | None:
    if unit is None or not unit.strip():
        return None
    key = unit.strip()
    return _UNITS.get(key.lower(), _UNITS.get(key, key))
