"""Who the patient is, as the EHR sent it: name, birth date and MRN-type identifiers.

Kept only so a reviewer can tell which patient an alert is about (issue #18 item 2): one row per
patient reference in the store, never copied into evaluations, logs, metrics, batch CSV or
report.html. Values are taken as sent (no normalisation a reviewer could mistake for the EHR's),
bounded in length and count, and stripped of Unicode bidirectional controls and other format
characters, so a name cannot reorder the text around it on the page ("Trojan Source" style).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["MAX_IDENTIFIERS", "PatientDemographics", "clean_text", "from_fhir_patient", "from_row"]

MAX_TEXT = 200  # characters kept of a name or an identifier value
MAX_IDENTIFIERS = 5
# identifier types that say "this is a record number" (HL7 v2 table 0203) — others are not shown
_MRN_TYPES = frozenset({"MR", "MRT", "PI", "PT", "MB", "AN"})


def clean_text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """Printable text or None: bidi and other format (Cf) and control (Cc) characters removed."""
    if not isinstance(value, str):
        return None
    if value.isascii() and value.isprintable():  # nothing to remove: skip the per-character scan
        return " ".join(value.split())[:limit] or None
    kept = "".join(" " if ch in "\t\r\n" else ch for ch in value
                   if unicodedata.category(ch) not in ("Cf", "Cc", "Cs", "Co", "Cn") or ch in "\t\r\n")
    kept = " ".join(kept.split())
    return kept[:limit] or None


class PatientDemographics(BaseModel):
    """What the review page shows about a patient; every field optional (absent means not sent)."""

    name: str | None = Field(None, max_length=MAX_TEXT)
    birth_date: str | None = Field(None, max_length=32, description="As sent (YYYY, YYYY-MM or full)")
    identifiers: list[tuple[str, str]] = Field(
        default_factory=list, max_length=MAX_IDENTIFIERS,
        description="(label, value) pairs: the identifier type's text or code, and the value as sent")

    def is_empty(self) -> bool:
        return self.name is None and self.birth_date is None and not self.identifiers


def _name(names: Any) -> str | None:
    if not isinstance(names, list):
        return None
    usable = [n for n in names if isinstance(n, dict)]
    # the official name when there is one, else "usual", else the first (never an old one)
    usable = [n for n in usable if not (n.get("period") or {}).get("end")] or usable
    for use in ("official", "usual", None):
        for n in usable:
            if use is None or n.get("use") == use:
                text = clean_text(n.get("text"))
                if text:
                    return text
                given = [g for g in n.get("given") or [] if isinstance(g, str)]
                family = n.get("family") if isinstance(n.get("family"), str) else ""
                built = clean_text(" ".join([*given, family]))
                if built:
                    return built
    return None


def _identifier_label(ident: dict[str, Any]) -> str | None:
    """The type's label when the type is MRN-like; None for identifiers of other kinds."""
    kind = ident.get("type")
    if not isinstance(kind, dict):
        return None
    codes = [c.get("code") for c in kind.get("coding") or [] if isinstance(c, dict)]
    if not any(code in _MRN_TYPES for code in codes):
        return None
    return clean_text(kind.get("text"), 40) or next((c for c in codes if c in _MRN_TYPES), None)


def from_fhir_patient(resource: dict[str, Any] | None) -> PatientDemographics | None:
    """Demographics of a FHIR Patient resource; None when it carries none of them."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        return None
    identifiers: list[tuple[str, str]] = []
    for ident in resource.get("identifier") or []:
        if not isinstance(ident, dict) or len(identifiers) >= MAX_IDENTIFIERS:
            continue
        label, value = _identifier_label(ident), clean_text(ident.get("value"))
        if label and value:
            identifiers.append((label, value))
    birth = resource.get("birthDate")
    out = PatientDemographics(name=_name(resource.get("name")),
                              birth_date=clean_text(birth, 32) if isinstance(birth, str) else None,
                              identifiers=identifiers)
    return None if out.is_empty() else out


def from_row(name: Any = None, birth_date: Any = None, mrn: Any = None) -> PatientDemographics | None:
    """Demographics from a batch input row's optional columns (``name``, ``birth_date``, ``mrn``)."""
    ident = clean_text(mrn if isinstance(mrn, str) else (str(mrn) if isinstance(mrn, int) else None))
    birth = birth_date.isoformat() if hasattr(birth_date, "isoformat") else birth_date
    out = PatientDemographics(name=clean_text(name), birth_date=clean_text(birth, 32),
                              identifiers=[("MRN", ident)] if ident else [])
    return None if out.is_empty() else out
