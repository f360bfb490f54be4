"""Card values that are not numbers anyone measured render as "unknown", never crash the card."""

from __future__ import annotations

import math

import pytest

from cds_engine.messages import fmt_value, render


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, float("nan")])
def test_a_non_finite_number_reads_unknown(value: float) -> None:
    assert fmt_value(value) == "unknown"


def test_finite_numbers_keep_their_cut_not_rounded_form() -> None:
    assert fmt_value(59.99) == "59.99"
    assert fmt_value(53.333) == "53.33"
    assert fmt_value(30) == "30"
    assert fmt_value(-0.5) == "-0.5"


def test_a_template_with_a_nan_fact_renders() -> None:
    text = render("eGFR {egfr} mL/min", {"egfr": math.nan}, {}, {})
    assert text == "eGFR unknown mL/min"
