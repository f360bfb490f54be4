"""End to end on the shipped Synthea examples: the README's command, and vector = rete on every patient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cds_engine.batch.runner import ScreenOptions, run_screen
from conftest import REPO, RULES

SYNTHEA = REPO / "examples" / "synthea"
AS_OF = "2026-01-15T00:00:00+00:00"


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory) -> Path:
    """The README's command, run from the repository root as a user would."""
    out = tmp_path_factory.mktemp("synthea") / "out"
    cmd = [
        sys.executable,
        "-m",
        "cds_engine.cli",
        "screen",
        "examples/synthea",
        "--assume-order",
        "baclofen 5 mg PO TID",
        "--out",
        str(out),
        "--as-of",
        AS_OF,
    ]
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "CI": "1"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "balanced" in done.stdout
    return out


def test_synthea_end_to_end_outputs(vector_run):
    out = vector_run
    summary = json.loads((out / "summary.json").read_text())
    c = summary["counts"]
    assert c["read"] == 15 and c["rejected"] == 0 and c["deceased"] == 1 and c["screened"] == 14
    assert c["read"] == c["screened"] + c["rejected"] + c["deceased"]
    # the count is the list (was "4 files skipped" above a list of 28): hospital bundle, manifest, README
    assert c["skipped"] == len(summary["skipped"]) == 3
    patients = pl.read_parquet(out / "patients.parquet")
    assert patients.height == 15
    alerts = pl.read_parquet(out / "alerts.parquet")
    assert alerts.height == c["alerts"] > 14
    # every screened patient gets the hypothetical order: each has at least one alert or a pack ran
    assert patients.filter(pl.col("status") == "screened")["packs"].str.contains("baclofen").all()
    html = (out / "report.html").read_text()
    assert "Records read <b>15</b>" in html and "balanced" in html


def test_synthea_vector_and_rete_identical(vector_run, tmp_path):
    run_screen(
        ScreenOptions(
            inputs=[SYNTHEA],
            out=tmp_path / "rete",
            rules=RULES,
            as_of=AS_OF,
            engine="rete",
            assume_order="baclofen 5 mg PO TID",
            workers=2,
            progress=False,
        )
    )

    def read(path: Path) -> pl.DataFrame:  # the two runs name the folder differently (relative, absolute)
        return pl.read_parquet(path).with_columns(pl.col("source").str.replace(r"^.*/synthea/", ""))

    vector, rete = read(vector_run / "alerts.parquet"), read(tmp_path / "rete" / "alerts.parquet")
    assert vector.height == rete.height
    differing = [c for c in vector.columns if not vector[c].equals(rete[c])]
    assert not differing, {c: (vector[c].head(3).to_list(), rete[c].head(3).to_list()) for c in differing}
    assert read(vector_run / "patients.parquet").equals(read(tmp_path / "rete" / "patients.parquet"))
