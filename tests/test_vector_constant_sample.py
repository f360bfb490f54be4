"""``_constant_facts`` on a large ``wide``: the first rows rule out columns, all rows decide (issue 20).

The search for fact columns with one value on every row now looks at the first rows first and
passes over all rows only the columns that are one value there. A column that varies only after
those rows must still be found to vary; one that is one value throughout must still be a literal.
"""

from __future__ import annotations

import polars as pl

from cds_engine.evaluators import vector


def test_first_rows_only_rule_out() -> None:
    n = vector._SAMPLE_ROWS * 3
    k = vector._SAMPLE_ROWS + 10  # past the sampled rows
    columns = {
        "same_f": pl.Float64(),
        "late_f": pl.Float64(),
        "same_s": pl.String(),
        "late_s": pl.String(),
        "same_b": pl.Boolean(),
        "late_b": pl.Boolean(),
        "early_f": pl.Float64(),
        "late_zero": pl.Float64(),
    }
    wide = pl.DataFrame(
        {
            "same_f": [7.5] * n,
            "late_f": [7.5] * k + [8.5] * (n - k),
            "same_s": ["oral"] * n,
            "late_s": ["oral"] * (n - 1) + ["enteral"],
            "same_b": [False] * n,
            "late_b": [False] * k + [True] * (n - k),
            "early_f": [1.0, 2.0] + [1.0] * (n - 2),
            "late_zero": [0.0] * k + [-0.0] * (n - k),  # equal to min/max: never a literal
        },
        schema=columns,
    )
    found = vector._constant_facts(wide, columns)
    assert sorted(found) == ["same_b", "same_f", "same_s"]
    assert pl.select(found[c].alias(c) for c in sorted(found)).row(0) == (False, 7.5, "oral")
    # the same answer as on the first rows alone would give for columns constant there: not used
    head = vector._constant_facts(wide.head(vector._SAMPLE_ROWS), columns)
    assert sorted(head) == ["late_b", "late_f", "late_s", "same_b", "same_f", "same_s"]
