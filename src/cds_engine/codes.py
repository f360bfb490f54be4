"""Shared value types at the bottom of the package: a terminology code (:class:`Coding`).

Both the vocabulary (which maps codes to drug names, classes and conditions) and the fact model
(whose orders, medicines and conditions carry codes) need ``Coding``. It lives here, importing
nothing from the package, so the vocabulary need not import the fact model and every layer can
use it (``tests/test_layering.py`` keeps it that way). :mod:`cds_engine.facts.model` re-exports it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SYSTEM_OIDS", "Coding", "oid_aliases"]

# HL7 OIDs of the code systems the vocabulary knows, by canonical FHIR URI. FHIR allows a system
# as ``urn:oid:<oid>`` (CDA-derived feeds send it so); such a coding must read as the canonical
# system, or a coded draft falls through every rule as an unknown product (re-audit finding 10).
SYSTEM_OIDS: dict[str, str] = {
    "http://www.nlm.nih.gov/research/umls/rxnorm": "2.16.840.1.113883.6.88",
    "http://snomed.info/sct": "2.16.840.1.113883.6.96",
    "http://loinc.org": "2.16.840.1.113883.6.1",
    "http://hl7.org/fhir/sid/icd-10-cm": "2.16.840.1.113883.6.90",
}


def oid_aliases() -> dict[str, str]:
    """Lower-cased ``urn:oid:<oid>`` (and the bare OID) -> canonical URI, for the system normaliser."""
    out: dict[str, str] = {}
    for uri, oid in SYSTEM_OIDS.items():
        out[f"urn:oid:{oid}"] = uri
        out[oid] = uri
    return out


class Coding(BaseModel):
    """A code from a terminology (RxNorm, SNOMED CT, ICD-10-CM, LOINC) or free text."""

    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=True)

    system: str | None = Field(
        None, description="Code system URI, e.g. http://www.nlm.nih.gov/research/umls/rxnorm"
    )
    code: str | None = None
    display: str | None = Field(
        None, description="Display or free text; used for the ingredient-name fallback"
    )
