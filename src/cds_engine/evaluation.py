"""What one evaluation covered: the alerts, the packs evaluated, and the packs that did not apply and why.

:class:`EvaluationResult` is the list of alerts ``Engine.evaluate`` has always returned (most severe
first), carrying two more facts a caller needs to tell "nothing to report" from "nothing evaluated":
``evaluated`` (pack id, version, content hash) and ``not_applicable`` (pack id and the reason, e.g.
"no <drug> order and none active"). An empty list with an empty ``evaluated`` is *not* an all-clear.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cds_engine.alerts import Alert

__all__ = ["EvaluationResult", "NotApplicable", "PackRef"]


@dataclass(frozen=True, slots=True)
class PackRef:
    id: str
    version: str
    content_hash: str

    def __str__(self) -> str:
        return f"{self.id} {self.version} ({self.content_hash[:12]})"


@dataclass(frozen=True, slots=True)
class NotApplicable:
    pack_id: str
    version: str
    reason: str

    def __str__(self) -> str:
        return f"{self.pack_id} {self.version}: {self.reason}"


class EvaluationResult(list[Alert]):
    """The alerts (a list, as before) plus which packs were evaluated and which did not apply."""

    def __init__(
        self,
        alerts: Iterable[Alert] = (),
        evaluated: Iterable[PackRef] = (),
        not_applicable: Iterable[NotApplicable] = (),
    ) -> None:
        super().__init__(alerts)
        self.evaluated: list[PackRef] = list(evaluated)
        self.not_applicable: list[NotApplicable] = list(not_applicable)

    @property
    def nothing_evaluated(self) -> bool:
        """True when no pack applied: the empty alert list then means "not checked", not "all clear"."""
        return not self.evaluated

    def coverage(self) -> str:
        """One line for people: which packs ran, which did not and why."""
        ran = ", ".join(str(p) for p in self.evaluated) or "none"
        line = f"packs evaluated: {ran}"
        if self.not_applicable:
            line += "; not applicable: " + "; ".join(str(n) for n in self.not_applicable)
        return line
