"""The vocabulary curation is data (``tools/vocabulary-sources/curation/*.yaml``).

The committed tables must read cleanly and name only value sets shipped with the repository; an
edit to a table (tiny copies in ``tmp_path``) must reach what the build uses; and a table the
reader cannot read must stop the build with the file and entry named — never drop codes silently.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
CURATION = TOOLS / "vocabulary-sources" / "curation"
VALUESETS = TOOLS / "vocabulary-sources" / "valuesets"


def _curation() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vocabulary_curation", TOOLS / "vocabulary_curation.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("vocabulary_curation", module)
    spec.loader.exec_module(module)
    return module


vc = _curation()


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    target = tmp_path / "curation"
    shutil.copytree(CURATION, target)
    return target


def edit(directory: Path, name: str, old: str, new: str) -> None:
    path = directory / name
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_committed_tables_read_and_name_only_shipped_value_sets() -> None:
    refs = vc.ValueSetRefs()
    _default, classes = vc.drug_classes(refs)
    rules = vc.value_set_rules(refs)
    files = {f for c in classes for f in c.class_sets}
    files |= {r.file for r in rules["set_rules"]} | set(refs.unused)
    files |= {f for sets in refs.lists.values() for f in sets}
    missing = sorted(f for f in files if not (VALUESETS / f"{f}.gz").is_file())
    assert not missing, f"value sets named by the curation but not shipped under {VALUESETS}: {missing}"
    assert {c.group for c in classes} >= {"opioid_agonist", "benzodiazepine", "gabapentinoid"}
    for reader in (
        vc.terms,
        vc.product_classes,
        vc.codes_csv,
        vc.extra_codes,
        vc.products,
        vc.matching_examples,
        vc.readme_notes,
    ):
        assert reader()
    _source, cues = vc.context_cues(("peptic_ulcer",), ("opioid_agonist",))
    assert ("history", "history of", "condition_group;condition_history;indication", "peptic_ulcer") in cues


def test_an_edit_to_each_table_reaches_the_build(tables: Path) -> None:
    edit(tables, "drug_classes.yaml", "  - tramadol\n", "  - tramadol\n  - newopioidine\n")
    edit(tables, "terms.yaml", "  pregnancy: [pregnant]", "  pregnancy: [pregnant, gravid]")
    edit(
        tables,
        "extra_codes.yaml",
        "unverified:\n",
        "unverified:\n- {kind: condition_group, group: aki, system: icd10cm, code: N17.0, display: AKI A}\n",
    )
    edit(tables, "value_set_rules.yaml", "  alcohol: &alcohol ", "  alcohol: &alcohol \\bethyl alcohol|")
    edit(
        tables,
        "codes_csv.yaml",
        "  egfr: [observation/egfr]",
        "  egfr: [observation/egfr, observation/renal]",
    )
    refs = vc.ValueSetRefs(tables)
    _default, classes = vc.drug_classes(refs, tables)
    opioid = next(c for c in classes if c.group == "opioid_agonist")
    assert opioid.terms[-1] == "newopioidine"
    assert opioid.class_sets[0] == "cdc-opioid-cds-r4/opioid-analgesics-with-ambulatory-misuse-potential.json"
    assert vc.terms(tables)["condition_group"]["pregnancy"] == ("pregnant", "gravid")
    added = ("condition_group", "aki", "http://hl7.org/fhir/sid/icd-10-cm", "N17.0", "AKI A")
    assert added in vc.extra_codes(tables)["unverified"]
    aud = [r for r in vc.value_set_rules(refs, tables)["set_rules"] if r.group == "alcohol_use_disorder"]
    assert aud and all(r.include.startswith(r"\bethyl alcohol|") for r in aud)  # the alias follows the filter
    assert vc.codes_csv(tables)["targets"]["egfr"] == (("observation", "egfr"), ("observation", "renal"))


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        (
            "drug_classes.yaml",
            "  class_sets: opioid\n",
            "  class_sets: opioids\n",
            "no value-set list 'opioids'",
        ),
        (
            "drug_classes.yaml",
            "  codes_csv_concept: cns_depressant_ingredient_opioid\n",
            "  codes_csv_concept: cns_depressant_ingredient_opioid\n  term: x\n",
            "unknown keys ['term']",
        ),
        (
            "value_sets.yaml",
            "  - vsac:2.16.840.1.113762.1.4.1196.226",
            "  - 2.16.840.1.113762.1.4.1196.226",
            "is not vsac:<OID> or cdc:<file>",
        ),
        (
            "value_set_rules.yaml",
            "  lactation_exclude: &lactation_exclude suppressed",
            "  lactation_exclude: &lactation_exclude (suppressed",
            "not a regular expression",
        ),
        (
            "extra_codes.yaml",
            "system: loinc, code: 2339-0",
            "system: lonic, code: 2339-0",
            "unknown system 'lonic'",
        ),
        (
            "context_cues.yaml",
            "groups: '@drug_classes_of_no_pack'",
            "groups: '@no_such_list'",
            "unknown group list '@no_such_list'",
        ),
        ("terms.yaml", "  pregnancy: [pregnant]", "  pregnancy: pregnant", "expected a list of texts"),
    ],
)
def test_a_table_it_cannot_read_stops_the_build(
    tables: Path, name: str, old: str, new: str, message: str
) -> None:
    edit(tables, name, old, new)
    with pytest.raises(vc.CurationError) as caught:
        refs = vc.ValueSetRefs(tables)
        vc.drug_classes(refs, tables)
        vc.value_set_rules(refs, tables)
        vc.extra_codes(tables)
        vc.context_cues(("peptic_ulcer",), ("opioid_agonist",), tables)
        vc.terms(tables)
    assert message in str(caught.value)
    assert name.split(".")[0] in str(caught.value) or "value_sets" in str(caught.value)
