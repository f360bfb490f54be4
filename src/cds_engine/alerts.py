"""The one alert model every way out (cards, batch tables, the store, the page) is built from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SEVERITY_ORDER", "Alert", "AlertSource", "AlertSuggestion"]

SEVERITY_ORDER = {"critical": 3, "warning": 2, "info": 1}


class AlertSource(BaseModel):
    id: str
    title: str
    url: str | None = None


class AlertSuggestion(BaseModel):
    label: str
    action: str
    dose_mg_per_day: float | None = None
    note: str | None = None


class Alert(BaseModel):
    """One fired rule (at its highest matching tier), or one 'cannot assess' report."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["finding", "cannot-assess"] = "finding"
    rule_id: str = Field(
        ..., description="Rule id, e.g. from the pack; 'missing-data' for cannot-assess reports"
    )
    tier_id: str = Field(..., description="The tier that matched, e.g. RULE.daily")
    title: str
    category: str
    severity: Literal["info", "warning", "critical"]
    summary: str = Field(..., max_length=139)
    detail: str
    evidence: dict[str, Any] = Field(default_factory=dict, description="Fact values the rule read")
    missing: list[str] = Field(default_factory=list, description="Facts that were missing (cannot-assess)")
    not_assessed: list[str] = Field(
        default_factory=list, description="Tiers (or rules) that could not be decided for lack of data"
    )
    suggestions: list[AlertSuggestion] = Field(default_factory=list)
    sources: list[AlertSource] = Field(default_factory=list)
    pack_id: str
    pack_version: str
    pack_hash: str
    pack_url: str
    pack_status: str
    approval: str = Field(..., description="approved | pending-local-clinical-validation")
    site_hash: str | None = Field(
        None, description="sha256 of the site settings file the pack ran under (None: no site settings)"
    )

    def sort_key(self) -> tuple[int, int, str]:
        return (-SEVERITY_ORDER[self.severity], 0 if self.kind == "finding" else 1, self.rule_id)
