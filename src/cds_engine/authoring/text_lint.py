"""Clinician-facing text must read as clinical advice: no authoring notes, no codes, no stale numbers.

Checked in every text a prescriber sees — rule and tier summaries and details, suggestion
labels, missing-data summaries and override reasons:

* **authoring notes** — "the seed…" remarks, identifiers (``max_daily_mg``, ``spasticity_tbi``,
  anything in backticks), and coded values written out where the pack has card words for them
  (``aud`` → "alcohol use disorder");
* **placeholders left unrendered** — a brace that is not a ``{fact}`` / ``{param.x}`` /
  ``{fact|fallback}`` placeholder reaches the card as it is;
* **coded values shown raw** — a ``{fact}`` placeholder of a text fact that rules compare with
  coded values (indication groups …) needs a ``labels`` entry for each of them;
* **numbers that should be parameters** — a literal equal to a parameter's value goes stale when
  a site overrides the parameter (the alert then contradicts itself): write ``{param.name}``
  (fractions, stages and levels such as "CKD stage 5" or "T6", and years, are not thresholds).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from cds_engine.facts import catalog
from cds_engine.messages import fmt_value
from cds_engine.rules.compile import CompiledPack, placeholders
from cds_engine.rules.conditions import facts_of
from cds_engine.rules.errors import Finding
from cds_engine.rules.yaml_lines import LineMap
from cds_engine.vocabulary import Vocabulary

__all__ = ["clinician_texts", "text_findings"]

Path_ = tuple[str | int, ...]
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)(?:\|[^{}]*)?\}")
_SEED = re.compile(r"\bseed(?:'s|s)?\b", re.IGNORECASE)
_IDENTIFIER = re.compile(r"(?<![\w.{/-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w}])")
_BACKTICK = re.compile(r"`[^`]+`")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w]|\.\d)")
_WORD = re.compile(r"[A-Za-z][\w-]*")
# numbers that name something rather than measure it: fractions (1/3), stages and levels (CKD
# stage 5, T6), citation years
_NOT_A_THRESHOLD = re.compile(
    r"\b\d+/\d+\b|\b(?:stage|grade|class|type|table|phase|[TCLS])\s?\d+\b|\b(?:19|20)\d\d\b",
    re.IGNORECASE,
)
_SPECIAL = frozenset({"rule_id", "tier_id", "severity", "rules"})


def clinician_texts(pack: CompiledPack) -> Iterator[tuple[Path_, str | None, str, str]]:
    """(YAML path, rule id, where, text) of every text shown to a clinician."""
    spec = pack.spec
    for ri, rule in enumerate(spec.rules):
        yield ("rules", ri, "summary"), rule.id, "summary", rule.summary
        yield ("rules", ri, "detail"), rule.id, "detail", rule.detail
        for ti, tier in enumerate(rule.tiers):
            for key in ("summary", "detail"):
                text = getattr(tier, key)
                if text:
                    yield ("rules", ri, "tiers", ti, key), rule.id, f"{tier.id} {key}", text
        for si, suggestion in enumerate(rule.suggestions):
            yield ("rules", ri, "suggestions", si, "label"), rule.id, "suggestion label", suggestion.label
    for mi, item in enumerate(spec.missing_data):
        yield ("missing_data", mi, "summary"), None, f"missing-data {item.item} summary", item.summary
        yield ("missing_data", mi, "label"), None, f"missing-data {item.item} label", item.label
    for oi, reason in enumerate(spec.override_reasons):
        yield ("override_reasons", oi, "display"), None, f"override reason {reason.code}", reason.display


def _numeric_params(pack: CompiledPack) -> dict[str, float]:
    return {
        name: float(v)
        for name, v in pack.params.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v not in (0, 1)
    }


def _compared_values(pack: CompiledPack) -> dict[str, set[str]]:
    """Text values each text fact is compared with anywhere in the pack."""
    out: dict[str, set[str]] = {}
    for tier in pack.tiers:
        for leaf in facts_of(tier.node):
            values = leaf.value if isinstance(leaf.value, tuple | list) else (leaf.value,)
            for v in values:
                if isinstance(v, str):
                    out.setdefault(leaf.fact, set()).add(v)
    return out


def _is_code(value: str, vocab_groups: set[str]) -> bool:
    return "_" in value or value in vocab_groups


def text_findings(pack: CompiledPack, vocab: Vocabulary, lines: LineMap, file: str) -> list[Finding]:
    """Errors for authoring notes, raw codes, unrendered placeholders and literal thresholds."""
    out: list[Finding] = []
    labels = pack.spec.labels
    vocab_groups = {g for groups in vocab.groups.values() for g in groups}
    renamed = {code for code, words in labels.items() if words.lower() != code.replace("_", " ").lower()}
    numeric = _numeric_params(pack)
    compared = _compared_values(pack)

    def add(path: Path_, rule_id: str | None, message: str) -> None:
        out.append(Finding(file, lines.line_of(path), rule_id, message))

    for path, rule_id, where, text in clinician_texts(pack):
        literal = _PLACEHOLDER.sub(" ", text)
        if _SEED.search(literal):
            add(path, rule_id, f"{where} carries an authoring note ('seed'): clinicians do not know the seed "
                               "monograph — move the remark to the rule's seed note")
        for code in _BACKTICK.findall(literal):
            add(path, rule_id, f"{where} shows {code}, an authoring identifier — write what it means")
        literal = _BACKTICK.sub(" ", literal)
        for ident in dict.fromkeys(_IDENTIFIER.findall(literal)):
            add(path, rule_id, f"{where} shows the identifier {ident!r} (a parameter, fact or group id) — "
                               "write it in words, or use a placeholder")
        for word in dict.fromkeys(_WORD.findall(literal)):
            if word in renamed:
                add(path, rule_id, f"{where} shows the code {word!r} — write {labels[word]!r}")
        if "{" in literal or "}" in literal:
            add(path, rule_id, f"{where} has a brace that is not a placeholder ({{fact}}, {{param.name}} or "
                               "{fact|fallback}): it would reach the card unrendered")
        for name in dict.fromkeys(placeholders(text)):
            if name.startswith("param.") or name in _SPECIAL:
                continue
            spec, family, _ = catalog.lookup(name)
            if (spec.type if spec else family.type if family else None) != "string":
                continue
            raw = sorted(v for v in compared.get(name, ()) if _is_code(v, vocab_groups) and v not in labels)
            if raw:
                codes = ", ".join(raw[:5])
                add(path, rule_id, f"{where} shows {{{name}}}, whose coded values {codes} have no card "
                                   "words — add them under labels:")
        found = {float(m) for m in _NUMBER.findall(_NOT_A_THRESHOLD.sub(" ", literal))}
        hits = sorted(name for name, value in numeric.items() if value in found)
        other = sorted(found - set(numeric.values()))
        if other:
            shown_other = ", ".join(fmt_value(n) for n in other)
            out.append(Finding(file, lines.line_of(path), rule_id,
                               f"{where} writes {shown_other} literally: if it is a threshold or a dose, "
                               "make it a parameter and write {param.name}", "warning"))
        if hits:
            shown = ", ".join(f"{fmt_value(numeric[h])} ({h})" for h in hits)
            fix = ", ".join("{param." + h + "}" for h in hits)
            add(path, rule_id, f"{where} writes {shown} as a literal number: a site that overrides the "
                               f"parameter gets a card that contradicts the rule — write {fix}")
    return out


