"""The shipped examples hold what their READMEs promise, so nothing the tests or README use lives outside.

* ``examples/synthea``: each of the ten most common rules of the full-sample screen fires at least once,
  plus pregnancy, eGFR < 30, dialysis and intrathecal patients (the last two hand-made and labelled);
  every file is in the manifest and the README names source and licence.
* ``examples/cds-hooks``: the README names the source and licence of every file and stands alone.
* ``docs/clinical/baclofen.md``: the pack cites it, and it names every source id the pack uses.
* Nothing in ``tests/``, ``bench/``, the README or ``docs/`` reaches for the team's folder beside the
  clone (:data:`OUTSIDE`), which a user's clone does not have.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import polars as pl
import pytest
import yaml

from cds_engine.batch.runner import ScreenOptions, run_screen
from conftest import EXAMPLES, REPO, RULES

SYNTHEA = EXAMPLES / "synthea"
# the team's material beside the clone: read while building examples/, never by tests or the product
OUTSIDE = "/".join(("..", "shared"))
AS_OF = "2026-01-15T00:00:00+00:00"
TOP_TEN = {"BAC-R00", "BAC-C05", "BAC-R01", "BAC-C04", "BAC-C01", "BAC-S01", "BAC-S02", "BAC-S03", "BAC-R04",
           "BAC-R02"}


@pytest.fixture(scope="module")
def screened(tmp_path_factory) -> tuple[pl.DataFrame, dict]:
    out = tmp_path_factory.mktemp("examples") / "out"
    result = run_screen(ScreenOptions(inputs=[SYNTHEA], out=out, rules=RULES, as_of=AS_OF,
                                      assume_order="baclofen 5 mg PO TID", progress=False))
    assert result.exit_code == 0, result.summary
    return pl.read_parquet(out / "alerts.parquet"), result.summary


def _fired(alerts: pl.DataFrame, name_part: str) -> set[str]:
    return set(alerts.filter(pl.col("source").str.contains(name_part, literal=True))["rule_id"].to_list())


def test_each_of_the_ten_most_common_rules_fires(screened):
    alerts, summary = screened
    fired = set(alerts["rule_id"].to_list())
    assert fired >= TOP_TEN
    assert fired >= {"BAC-P01", "BAC-S04", "BAC-C02", "BAC-I02"}
    c = summary["counts"]
    assert c["read"] == c["screened"] + c["rejected"] + c["deceased"] and c["deceased"] == 1


def test_special_patients(screened):
    alerts, _ = screened
    assert "BAC-R02" in _fired(alerts, "hand-made-egfr-24")  # a current eGFR < 30, not on dialysis
    assert "BAC-P01" in _fired(alerts, "7f10d43d")  # pregnancy
    dialysis = _fired(alerts, "hand-made-dialysis")
    assert "BAC-R03" in dialysis and not dialysis & {"BAC-R00", "BAC-R02"}
    assert "BAC-C07" in _fired(alerts, "hand-made-intrathecal")


def test_hand_made_patients_are_labelled():
    for path in sorted((SYNTHEA / "hand-made").glob("*.json")):
        assert path.name.startswith("hand-made-"), path
        text = path.read_text(encoding="utf-8")
        assert '"family": "Handmade"' in text, path
    readme = (SYNTHEA / "README.md").read_text(encoding="utf-8")
    assert "hand-made" in readme.lower() and "not Synthea" in readme


def test_manifest_lists_every_synthea_file():
    with (SYNTHEA / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    listed = {r["file"] for r in rows}
    on_disk = {p.relative_to(SYNTHEA).as_posix() for p in SYNTHEA.rglob("*.json.gz")}
    assert listed == on_disk
    assert all(r["why_chosen"] for r in rows)
    readme = (SYNTHEA / "README.md").read_text(encoding="utf-8")
    for needed in ("Apache-2.0", "MIT", "smart-on-fhir/generated-sample-data",
                   "Exafluence-Inc/exf-qicore-synthea-dataset"):
        assert needed in readme


def test_cds_hooks_readme_names_source_and_licence_of_every_file():
    folder = EXAMPLES / "cds-hooks"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "SPEC-NOTES" not in readme and OUTSIDE not in readme
    for path in sorted(folder.glob("*.json")):
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{path.name}`")), None)
        assert row is not None, f"{path.name} is not described in examples/cds-hooks/README.md"
        assert re.search(r"Apache-2\.0|MIT|CC0", row), path.name
    sandbox = (folder / "sandbox" / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in sandbox
    for path in sorted((folder / "sandbox").glob("*.json")):
        assert path.name in sandbox


def test_pack_cites_its_clinical_basis():
    doc = (REPO / "docs" / "clinical" / "baclofen.md").read_text(encoding="utf-8")
    pack = yaml.safe_load((RULES / "baclofen" / "pack.yaml").read_text(encoding="utf-8"))
    assert pack["pack"]["knowledge_source"].startswith("docs/clinical/baclofen.md")
    for source_id in pack["sources"]:
        assert f"| {source_id} |" in doc, source_id
    for tag in ("[V]", "[A]", "[S]"):
        assert tag in doc
    assert "Statements deliberately not encoded" in doc


@pytest.mark.parametrize("folder", ["tests", "bench", "docs", "src", "scripts"])
def test_nothing_reaches_outside_the_repository(folder):
    # a path built outside the clone (citing an audit report in a docstring is not a dependency)
    name = OUTSIDE.rsplit("/", 1)[1]
    pattern = re.compile(rf"REPO\.parent|parents\[\d\]\.parent|[\"']\.\./{name}|/ \"{name}\"")
    offenders = []
    for path in sorted((REPO / folder).rglob("*")):
        if path.suffix not in {".py", ".md", ".sh", ".yaml"} or path.name == Path(__file__).name:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders
