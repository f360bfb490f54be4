"""Term context (``rules/vocabulary/context.csv``): every cue excludes what it should, and no more.

Each row of context.csv gets two tests built from it: the cue removes the mention it governs, and
a false-negative guard shows that the same cue does not remove a genuine mention next to it (the
term before the cue, in another clause, or out of reach). "Epilepsy; no history of status
epilepticus" is still epilepsy.
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import pytest

from cds_engine.facts.model import Coding
from cds_engine.term_context import ContextRule, TermContext
from cds_engine.vocabulary import HISTORY_KIND, Vocabulary

VOCAB = Path(__file__).resolve().parents[1] / "rules" / "vocabulary"


@cache
def vocab() -> Vocabulary:
    return Vocabulary.from_dir(VOCAB)


@cache
def context_rows() -> tuple[dict[str, str], ...]:
    with (VOCAB / "context.csv").open(newline="", encoding="utf-8") as fh:
        return tuple(csv.DictReader(fh))


def cues(rule: str, kind: str = "condition_group") -> list[str]:
    return sorted(
        r["cue"]
        for r in context_rows()
        if r["rule"] == rule and (r["kinds"] == "*" or kind in r["kinds"].split(";"))
    )


def groups(text: str, kind: str = "condition_group") -> set[str]:
    return vocab().classify(Coding(display=text), kind)


def test_the_file_is_loaded_and_has_every_rule() -> None:
    assert vocab().context.rules, "context.csv was not loaded"
    assert {r["rule"] for r in context_rows()} == {
        "boundary",
        "scope",
        "pseudo",
        "negation",
        "negation_after",
        "prefix",
        "history",
        "local_form",
    }
    assert all(r["source"] for r in context_rows())


@pytest.mark.parametrize("cue", cues("negation"))
def test_negation_cue_excludes(cue: str) -> None:
    assert "psychosis" not in groups(f"{cue} psychosis")


@pytest.mark.parametrize("cue", cues("negation"))
def test_negation_cue_false_negative_guard(cue: str) -> None:
    # the term before the cue, and a term in the next clause, still count
    assert "epilepsy" in groups(f"Epilepsy; {cue} psychosis")
    assert "epilepsy" in groups(f"{cue} psychosis. Epilepsy")
    if not any(after in cue for after in cues("negation_after")):  # "denied" also negates backwards
        assert "epilepsy" in groups(f"Epilepsy {cue} psychosis")


@pytest.mark.parametrize("cue", cues("negation_after"))
def test_negation_after_cue_excludes(cue: str) -> None:
    assert "psychosis" not in groups(f"psychosis {cue}")


@pytest.mark.parametrize("cue", cues("negation_after"))
def test_negation_after_cue_false_negative_guard(cue: str) -> None:
    assert "epilepsy" in groups(f"psychosis {cue}; epilepsy")
    assert "epilepsy" in groups(f"epilepsy. Psychosis {cue}")


@pytest.mark.parametrize("cue", cues("pseudo"))
def test_pseudo_negation_is_not_a_negation(cue: str) -> None:
    assert "psychosis" in groups(f"Schizophrenia {cue}")
    assert "psychosis" in groups(f"{cue} schizophrenia")


@pytest.mark.parametrize("row", [r for r in context_rows() if r["rule"] == "prefix"], ids=lambda r: r["cue"])
def test_glued_prefix_excludes_and_guard(row: dict[str, str]) -> None:
    term, group = ("stroke", "stroke") if row["groups"] != "*" else ("psychotic", "psychosis")
    assert group not in groups(f"{row['cue']}-{term} features")
    assert group not in groups(f"{row['cue']} {term} features")
    # false-negative guard: the prefix word elsewhere in the text does not matter
    assert group in groups(f"{term} episode; {row['cue']} something")


def test_a_negation_does_not_reach_beyond_its_scope() -> None:
    scope = vocab().context.scope
    filler = " ".join(["word"] * (scope + 1))
    assert "psychosis" not in groups(f"no {' '.join(['word'] * (scope - 1))} psychosis")
    assert "psychosis" in groups(f"no {filler} psychosis")


@pytest.mark.parametrize("boundary", [r["cue"] for r in context_rows() if r["rule"] == "boundary"])
def test_a_negation_stops_at_every_boundary(boundary: str) -> None:
    sep = f" {boundary} " if boundary.strip() and boundary.replace(" ", "").isalpha() else boundary
    assert "psychosis" in groups(f"no fever{sep}psychosis")


@pytest.mark.parametrize("cue", cues("history"))
def test_history_cue_routes_to_the_history_group(cue: str) -> None:
    text = f"{cue} peptic ulcer"
    assert "peptic_ulcer" not in groups(text)
    assert vocab().classify(Coding(display=text), HISTORY_KIND) == {"peptic_ulcer"}


@pytest.mark.parametrize("cue", cues("history"))
def test_history_cue_false_negative_guard(cue: str) -> None:
    # groups without a history fact keep history as active (the caution covers past events)
    assert "stroke" in groups(f"{cue} stroke")
    assert "psychosis" in groups(f"{cue} psychosis")
    assert "epilepsy" in groups(f"{cue} epilepsy")
    # an active ulcer next to a history cue for something else stays active
    assert "peptic_ulcer" in groups(f"peptic ulcer; {cue} stroke")
    # "no history of" is a negation, not history
    assert vocab().classify(Coding(display=f"no {cue} peptic ulcer"), HISTORY_KIND) == set()


@pytest.mark.parametrize("form", cues("local_form", "drug_class"))
def test_local_form_gets_no_drug_class(form: str) -> None:
    assert groups(f"diphenhydramine 2% {form}", "drug_class") == set()


@pytest.mark.parametrize("form", cues("local_form", "drug_class"))
def test_local_form_false_negative_guard(form: str) -> None:
    # the form word only matters for drug texts; systemic products still classify
    assert "sedating_antihistamine" in groups("diphenhydramine 25 mg oral capsule", "drug_class")
    assert "opioid_agonist" in groups("fentanyl 25 mcg/hr transdermal patch", "drug_class")
    assert groups(f"epilepsy ({form} of nothing)") == {"epilepsy"}
    # a pack's own drug stays recognised in any form (its product/route rules flag a topical order)
    assert "baclofen" in groups(f"baclofen 5% {form}", "drug_class")


@pytest.mark.parametrize("cue", cues("negation", "drug_class"))
def test_kit_audience_text_and_guard(cue: str) -> None:
    assert "barbiturate" not in groups(f"lamotrigine kit ({cue} phenobarbital)", "drug_class")
    assert "barbiturate" in groups(f"phenobarbital 30 mg tablet ({cue} nothing)", "drug_class")


def test_drug_texts_are_not_negated_by_condition_cues() -> None:
    # a medication list entry is a positive statement; condition negations do not apply to drugs
    assert "opioid_agonist" in groups("oxycodone 5 mg, no refills", "drug_class")
    assert "opioid_agonist" in groups("no oxycodone taper yet: oxycodone 5 mg", "drug_class")


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("Xanax 0.5 mg", "drug_class", {"benzodiazepine"}),
        ("Ambien 10 mg at night", "drug_class", {"z_drug"}),
        ("Neurontin 300 mg tid", "drug_class", {"gabapentinoid", "gabapentin"}),
        ("Lyrica 75 mg", "drug_class", {"gabapentinoid", "pregabalin"}),
        ("Norco 5/325 q6h prn", "drug_class", {"opioid_agonist"}),
        ("Xyrem 4.5 g at bedtime", "drug_class", {"strong_cns_depressant"}),
        ("meprobamate 400 mg", "drug_class", {"strong_cns_depressant"}),
        ("Heat stroke", "condition_group", set()),
        ("Stroke (heat)", "condition_group", {"stroke"}),
    ],
)
def test_brand_names_and_special_cases(text: str, kind: str, expected: set[str]) -> None:
    assert groups(text, kind) == expected


def test_without_context_file_every_mention_counts() -> None:
    """Fail safe: a vocabulary without context.csv over-matches, it never under-matches."""
    bare = TermContext.empty()
    assert bare.verdict("no psychosis", 3, 12, "condition_group", "psychosis") == "match"
    rule = ContextRule("negation", "no", frozenset({"condition_group"}))
    ctx = TermContext([rule])
    assert ctx.verdict("no psychosis", 3, 12, "condition_group", "psychosis") == "negated"
    assert ctx.verdict("no psychosis", 3, 12, "drug_class", "psychosis") == "match"


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown context rule"):
        TermContext([ContextRule("maybe", "possibly")])


def test_hostile_repetition_over_matches_in_bounded_time() -> None:
    """A text repeating a negated term is judged a bounded number of times, then counts (fail safe)."""
    assert "psychosis" not in groups("no psychosis, " * 10)
    assert "psychosis" in groups("no psychosis, " * 500)
