"""Shared value types at the bottom of the package: a terminology code (:class:`Coding`).

Both the vocabulary (which maps codes to drug names, classes and conditions) and the fact model
(whose orders, medicines and conditions carry codes) need ``Coding``. It lives here, importing
nothing from the package, so the vocabulary need not import the fact model and every layer can
use it (``tests/test_layering.py`` keeps it that way). :mod:`cds_engine.facts.model` re-exports it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Coding"]


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
