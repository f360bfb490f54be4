"""What the words around a matched term say: negated, history, glued prefix, local-only product.

The term fallback of :class:`cds_engine.vocabulary.Vocabulary` matches keywords in displays and
free text ("psychotic", "peptic ulcer", "Xanax"). A keyword alone cannot tell "Major depressive
disorder, severe without psychotic features" from a psychosis, "No history of suicidal ideation"
from suicidality, or "Personal history of peptic ulcer disease" from an active ulcer. The rules
that can are data: ``rules/vocabulary/context.csv`` (built by ``tools/build_vocabulary.py``; its
README describes the contract and a test executes it). No clinical word is written here.

A cue never reaches across a clause boundary and at most ``scope`` words; pseudo-cues ("not
elsewhere classified") are masked first. When in doubt the term matches (a missed negation gives
an extra caution, a wrong negation would hide one).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["ContextRule", "TermContext", "Verdict"]

Verdict = Literal["match", "negated", "history", "prefixed"]
_RULES = ("boundary", "scope", "pseudo", "negation", "negation_after", "prefix", "history", "local_form")
_WORD = re.compile(r"[\w/'-]+")
_REACH = 300  # characters looked at on each side of a term (far more than ``scope`` words)


@dataclass(frozen=True, slots=True)
class ContextRule:
    """One row of context.csv: ``kinds``/``groups`` of ``None`` mean all."""

    rule: str
    cue: str
    kinds: frozenset[str] | None = None
    groups: frozenset[str] | None = None

    def applies(self, kind: str, group: str | None = None) -> bool:
        if self.kinds is not None and kind not in self.kinds:
            return False
        return group is None or self.groups is None or group in self.groups


def _set(text: str) -> frozenset[str] | None:
    items = frozenset(x.strip() for x in (text or "").split(";") if x.strip())
    return None if not items or "*" in items else items


def _cue_regex(cues: list[str]) -> re.Pattern[str] | None:
    if not cues:
        return None
    alternatives = sorted({re.escape(c) for c in cues}, key=len, reverse=True)
    return re.compile(r"(?<![\w/])(?:" + "|".join(alternatives) + r")(?![\w/])", re.IGNORECASE)


def _boundary_regex(cues: list[str]) -> re.Pattern[str] | None:
    parts: list[str] = []
    for cue in sorted(set(cues), key=len, reverse=True):
        if cue == ".":
            parts.append(r"\.(?!\d)")  # not the point of "0.5 mg"
        elif cue.strip() and re.fullmatch(r"[\w ]+", cue):
            parts.append(r"(?<!\w)" + re.escape(cue) + r"(?!\w)")
        else:
            parts.append(re.escape(cue))
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


class TermContext:
    """Compiled context rules; ``verdict`` judges one term occurrence in a text."""

    def __init__(self, rules: list[ContextRule]) -> None:
        unknown = {r.rule for r in rules} - set(_RULES)
        if unknown:
            raise ValueError(f"unknown context rule(s): {sorted(unknown)}")
        self.rules = list(rules)
        scopes = [int(r.cue) for r in rules if r.rule == "scope"]
        self.scope = max(scopes) if scopes else 6
        self._compiled: dict[tuple[str, str, str | None], re.Pattern[str] | None] = {}

    @classmethod
    def from_csv(cls, path: str | Path) -> TermContext:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            return cls(
                [
                    ContextRule(r["rule"].strip(), r["cue"], _set(r["kinds"]), _set(r["groups"]))
                    for r in csv.DictReader(fh)
                ]
            )

    @classmethod
    def empty(cls) -> TermContext:
        return cls([])

    def _regex(self, rule: str, kind: str, group: str | None = None) -> re.Pattern[str] | None:
        key = (rule, kind, group)
        if key not in self._compiled:
            cues = [r.cue for r in self.rules if r.rule == rule and r.applies(kind, group)]
            if rule == "boundary":
                self._compiled[key] = _boundary_regex(cues)
            elif rule == "prefix":
                self._compiled[key] = (
                    re.compile(
                        r"(?<![\w/])(?:"
                        + "|".join(sorted(map(re.escape, cues), key=len, reverse=True))
                        + r")[- ]?$",
                        re.IGNORECASE,
                    )
                    if cues
                    else None
                )
            else:
                self._compiled[key] = _cue_regex(cues)
        return self._compiled[key]

    def local_form(self, text: str, kind: str, group: str) -> bool:
        """True when a drug text names a local-only form (cream, ophthalmic ...): no ``group`` from terms.

        The rows name the groups they apply to: a pack's own drug is always recognised whatever
        its form (the pack's product/route rules judge a topical order of it).
        """
        regex = self._regex("local_form", kind, group)
        return bool(regex and regex.search(text))

    def verdict(self, text: str, start: int, end: int, kind: str, group: str) -> Verdict:
        """How the term at ``text[start:end]`` counts for ``group`` of ``kind``."""
        prefix = self._regex("prefix", kind, group)
        if prefix is not None and prefix.search(text[max(0, start - 12) : start]):
            return "prefixed"
        boundary = self._regex("boundary", kind)
        # a cue reaches at most ``scope`` words: a bounded window keeps long free text linear
        clause_start, clause_end = max(0, start - _REACH), min(len(text), end + _REACH)
        if boundary is not None:
            for m in boundary.finditer(text, clause_start, start):
                clause_start = m.end()
            after = boundary.search(text, end, clause_end)
            if after is not None:
                clause_end = after.start()
        before = self._masked(text[clause_start:start], kind)
        after_text = self._masked(text[end:clause_end], kind)
        negation = self._regex("negation", kind, group)
        if negation is not None and any(
            self._words(before[m.end() :]) <= self.scope for m in negation.finditer(before)
        ):
            return "negated"
        negation_after = self._regex("negation_after", kind, group)
        if negation_after is not None and any(
            self._words(after_text[: m.start()]) <= self.scope for m in negation_after.finditer(after_text)
        ):
            return "negated"
        history = self._regex("history", kind, group)
        if history is not None and any(
            self._words(before[m.end() :]) <= self.scope for m in history.finditer(before)
        ):
            return "history"
        return "match"

    def _masked(self, text: str, kind: str) -> str:
        pseudo = self._regex("pseudo", kind)
        return pseudo.sub(lambda m: " " * len(m.group(0)), text) if pseudo is not None else text

    @staticmethod
    def _words(text: str) -> int:
        return len(_WORD.findall(text))
