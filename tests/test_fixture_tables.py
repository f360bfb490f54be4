"""The fixtures are data (``fixtures/source/``): an edit to a table flows into the JSON fixture.

The committed JSON under ``fixtures/<pack>/`` must be exactly what the tables produce (so a table
edit without a rebuild, or a hand edit of the JSON, fails here), and the reader's shorthands,
merge rules and errors are pinned on a tiny table written in ``tmp_path`` — the real generator
script runs as a subprocess, as a pharmacist would run it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "make_fixtures.py"

CODINGS = """\
codings:
  tab10: {system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '197391',
          display: Baclofen 10 MG Oral Tablet}
  ms: {system: 'http://snomed.info/sct', code: '24700007', display: Multiple sclerosis (disorder)}
"""
SHAPES = """\
as_of: '2026-01-15T12:00:00+00:00'
shapes:
  start:
    as_of: now
    birth_date: today-45y-30d
    renal:
      egfr: {value: 95, date: today-10d}
      dialysis: none
    conditions:
    - {code: '@ms'}
    order: {product: '@tab10', dose_amount: 5, doses_per_day: 3, date: today}
"""
TABLE = """\
fixtures:
- id: X-low-egfr
  scenario: X
  description: eGFR 25
  source: test table
  shape: start
  facts:
    renal: {egfr: {value: 25}}
    order: {dose_amount: DOSE}
    encounter: {admitted: now-27h30m, discharge: today+3d}
  remove: [order.doses_per_day]
  expect:
    fire: {BAC-R02: warning}
    silent: [BAC-D02]
- id: X-crcl
  scenario: X
  description: CrCl only
  source: test table
  note: replace keeps the written key order
  shape: start
  facts:
    renal: {dialysis: none, crcl: {value: 40}}
  replace: [renal]
  expect: {fire: {}, cannot_assess: [renal]}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def tables(tmp_path: Path, dose: str = "10", table: str = TABLE) -> Path:
    source = tmp_path / "source"
    (source / "demo").mkdir(parents=True, exist_ok=True)
    (source / "codings.yaml").write_text(CODINGS, encoding="utf-8")
    (source / "demo" / "shapes.yaml").write_text(SHAPES, encoding="utf-8")
    (source / "demo" / "table.yaml").write_text(table.replace("DOSE", dose), encoding="utf-8")
    return source


def build(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("--source", str(tmp_path / "source"), "--out", str(tmp_path / "out"), *extra)


def read(tmp_path: Path, fid: str) -> dict:
    return json.loads((tmp_path / "out" / "demo" / f"{fid}.json").read_text(encoding="utf-8"))


def test_committed_fixtures_are_what_the_tables_produce() -> None:
    result = run("--check")
    assert result.returncode == 0, result.stderr


def test_a_table_entry_becomes_a_fixture(tmp_path: Path) -> None:
    tables(tmp_path)
    assert build(tmp_path).returncode == 0
    doc = read(tmp_path, "X-low-egfr")
    assert list(doc) == ["id", "scenario", "description", "source", "facts", "expect"]
    facts = doc["facts"]
    assert facts["as_of"] == "2026-01-15T12:00:00+00:00"
    assert facts["birth_date"] == "1980-12-16"  # 45 years and 30 days before 2026-01-15
    assert facts["renal"] == {"egfr": {"value": 25, "date": "2026-01-05"}, "dialysis": "none"}
    ms = {"system": "http://snomed.info/sct", "code": "24700007", "display": "Multiple sclerosis (disorder)"}
    assert facts["conditions"] == [{"code": ms}]
    assert facts["order"] == {
        "product": {
            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
            "code": "197391",
            "display": "Baclofen 10 MG Oral Tablet",
        },
        "dose_amount": 10,
        "date": "2026-01-15",
    }
    assert facts["encounter"] == {"admitted": "2026-01-14T08:30:00+00:00", "discharge": "2026-01-18"}
    assert doc["expect"] == {"fire": {"BAC-R02": "warning"}, "silent": ["BAC-D02"], "cannot_assess": []}
    crcl = read(tmp_path, "X-crcl")
    assert crcl["note"] == "replace keeps the written key order"
    assert list(crcl["facts"]["renal"]) == ["dialysis", "crcl"]


def test_an_edit_to_the_table_flows_through_and_check_sees_it(tmp_path: Path) -> None:
    tables(tmp_path)
    assert build(tmp_path).returncode == 0
    assert build(tmp_path, "--check").returncode == 0
    tables(tmp_path, dose="20")
    stale = build(tmp_path, "--check")
    assert stale.returncode == 1 and "demo/X-low-egfr.json" in stale.stderr
    assert read(tmp_path, "X-low-egfr")["facts"]["order"]["dose_amount"] == 10  # --check wrote nothing
    assert build(tmp_path).returncode == 0
    assert read(tmp_path, "X-low-egfr")["facts"]["order"]["dose_amount"] == 20


def test_a_fixture_dropped_from_the_table_is_removed(tmp_path: Path) -> None:
    tables(tmp_path)
    assert build(tmp_path).returncode == 0
    tables(tmp_path, table=TABLE.split("- id: X-crcl")[0])
    assert build(tmp_path).returncode == 0
    assert not (tmp_path / "out" / "demo" / "X-crcl.json").exists()
    assert (tmp_path / "out" / "demo" / "X-low-egfr.json").exists()


def test_a_table_it_cannot_read_fails_loudly_and_writes_nothing(tmp_path: Path) -> None:
    for broken, message in (
        (TABLE.replace("today+3d", "'@unknown'"), "unknown coding '@unknown'"),
        (TABLE.replace("today+3d", "today+3w"), "'today+3w' is not a relative date"),
        (
            TABLE.replace(
                "shape: start\n  facts:\n    renal: {egfr", "shape: nope\n  facts:\n    renal: {egfr"
            ),
            "unknown shape 'nope'",
        ),
        (TABLE.replace("[order.doses_per_day]", "[order.nothing]"), "remove 'order.nothing' names nothing"),
        (
            TABLE.replace("  scenario: X\n  description: eGFR 25\n", "  description: eGFR 25\n"),
            "'scenario' is required",
        ),
        (TABLE.replace("  note:", "  notes:"), "unknown keys ['notes']"),
        (TABLE + TABLE.split("fixtures:\n")[1], "duplicate fixture ids"),
    ):
        tables(tmp_path, table=broken)
        result = build(tmp_path)
        assert result.returncode == 2, broken
        assert message in result.stderr
        assert not (tmp_path / "out").exists()
