"""Errors a rule author can act on: ``file:line: rule-id: message``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Finding", "PackLoadError"]


@dataclass(frozen=True, slots=True)
class Finding:
    file: str
    line: int | None
    rule_id: str | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        rule = self.rule_id or "-"
        return f"{where}: {rule}: {self.severity}: {self.message}"


class PackLoadError(ValueError):
    """A pack that must not be used; carries every finding, not just the first."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        super().__init__("\n".join(str(f) for f in findings))
