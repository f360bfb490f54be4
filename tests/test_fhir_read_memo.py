"""The memoised readers of ``sources/fhir_read.py`` answer exactly as the readers they front.

``parse_date`` keeps its answer per string and ``best_coding`` the chosen coding's fields per
concept content (issue 19); each answer must equal the unmemoised reader's — the same value and,
for a :class:`Coding`, the same fields given (``exclude_unset`` dumps) — on first sight and on a
repeat, and concepts whose members are not strings (``1``, ``1.0``, ``True`` compare equal as keys)
must not share an answer. ``coding_and_groups`` is both readers at once, and ``status_code``'s
inlined path for a coded status reads as the general one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_engine.engine import Engine
from cds_engine.sources import fhir_read
from cds_engine.sources.fhir_read import best_coding, parse_date

RULES = Path(__file__).resolve().parent.parent / "rules"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"


@pytest.fixture(scope="module")
def vocab() -> Any:
    return Engine.from_dir(RULES).packs[0].vocabulary


def _dump(coding: Any) -> Any:
    return None if coding is None else (coding.model_dump(exclude_unset=True), coding.model_dump())


_DATES = st.one_of(
    st.sampled_from(["2021", "2021-03", "2021-03-04", " 2021-03-04 ", "2021-02-30", "2021-03-04T05:06:07Z",
                     "2021-03-04T05:06:07+09:00", "2021-03-04T05:06", "", "  ", "x", "0001-01-01"]),
    st.text(alphabet="0123456789-T:Z+ ", max_size=22),
)


@settings(max_examples=400, deadline=None)
@given(value=_DATES)
def test_parse_date_is_the_unmemoised_reading_first_and_again(value: str) -> None:
    expected = fhir_read._parse_date(value)
    assert parse_date(value) == expected
    assert parse_date(value) == expected  # from the memo


_CODES = st.sampled_from(["197391", "105029", "73211009", "N18.6", " 197391 ", "", "zzz"])
_SYSTEMS = st.sampled_from([RXNORM, SNOMED, "http://hl7.org/fhir/sid/icd-10-cm", "urn:oid:1.2", None])
_TEXTS = st.sampled_from([None, "", " ", "baclofen 10 mg", "Chronic kidney disease", " Gabapentin "])
_MEMBERS = st.one_of(_CODES, st.integers(0, 3), st.booleans(), st.just(1.0), st.none())
_CODING = st.fixed_dictionaries(
    {}, optional={"system": st.one_of(_SYSTEMS, st.integers(0, 1)), "code": _MEMBERS, "display": _TEXTS}
)
_CONCEPTS = st.one_of(
    st.fixed_dictionaries({}, optional={"coding": st.lists(_CODING, max_size=3), "text": _TEXTS}),
    _CODING,  # a bare Coding
    st.none(),
    st.just({"coding": {"system": RXNORM, "code": "197391"}}),  # one coding where a list belongs
)


_KINDS = st.sampled_from(["drug_class", "condition_group", "allergy_group", "indication"])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(concept=_CONCEPTS, kind=_KINDS)
def test_best_coding_is_the_unmemoised_choice_first_and_again(vocab: Any, concept: Any, kind: str) -> None:
    expected = _dump(fhir_read._best_coding(concept, vocab, kind))
    first = best_coding(concept, vocab, kind)
    again = best_coding(concept, vocab, kind)
    assert _dump(first) == expected
    assert _dump(again) == expected
    assert first is None or first is not again  # a new Coding each time: callers keep their own


@pytest.mark.parametrize("codes", [(1, True, 1.0, "1"), (0, False, 0.0, "0")])
def test_equal_keys_of_other_types_do_not_share_an_answer(vocab: Any, codes: tuple[Any, ...]) -> None:
    for code in codes:
        concept = {"coding": [{"system": RXNORM, "code": code}]}
        assert _dump(best_coding(concept, vocab, "drug_class")) == _dump(
            fhir_read._best_coding(concept, vocab, "drug_class"))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(concept=_CONCEPTS, kind=_KINDS)
def test_coding_and_groups_is_both_readers(vocab: Any, concept: Any, kind: str) -> None:
    for _ in range(2):  # first sight, then from the memo
        coding, groups = fhir_read.coding_and_groups(concept, vocab, kind)
        assert _dump(coding) == _dump(fhir_read._best_coding(concept, vocab, kind))
        expected = fhir_read._concept_groups(concept, vocab, kind) if isinstance(concept, dict) else set()
        assert groups == expected
        groups.add("changed by the caller")  # the caller's own set: the memo must not see it


def _status_code_as_before(value: Any) -> str | None:
    """``status_code`` before its inlined path (the reference)."""
    if isinstance(value, str):
        return value.strip().lower() or None
    for c in fhir_read.codings(value):
        if isinstance(c.get("code"), str):
            return str(c["code"]).strip().lower()
    return None


_STATUS_CODINGS = st.lists(st.one_of(
    st.fixed_dictionaries({}, optional={"code": st.one_of(st.sampled_from([" Active", "resolved", ""]),
                                                          st.integers(0, 2), st.none())}),
    st.integers(0, 1), st.none(), st.text(max_size=3)), max_size=3)
_STATUSES = st.one_of(
    st.sampled_from(["active", " Completed ", "", "  "]), st.none(), st.integers(0, 2),
    st.fixed_dictionaries({"coding": _STATUS_CODINGS}, optional={"text": st.just("x")}),
    st.fixed_dictionaries({"coding": st.one_of(st.none(), st.just({"code": "Final"}), st.just("active"))}),
    st.fixed_dictionaries({}, optional={"code": st.sampled_from(["On-Hold", 3])}),  # a bare Coding
)


@settings(max_examples=600, deadline=None)
@given(value=_STATUSES)
def test_status_code_reads_as_before(value: Any) -> None:
    assert fhir_read.status_code(value) == _status_code_as_before(value)
