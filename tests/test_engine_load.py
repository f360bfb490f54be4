"""Loading a rules directory does each piece of work once, and the shortcuts give what the long way gave.

``Engine.from_dir`` parses every pack once (the parameters read for the site file and the compiler
share the parse), reads the big vocabulary tables by column position instead of a dict per row,
compiles the term patterns of a kind when first needed, and pauses cyclic garbage collection while
it builds. Each test here compares a shortcut with the plain way it replaced (csv.DictReader, a
fresh parse, eager compilation) or checks that the collector is restored.
"""

from __future__ import annotations

import csv
import gc
import io
import shutil
from pathlib import Path

import pytest

from cds_engine import engine as engine_module
from cds_engine.codes import Coding
from cds_engine.engine import Engine
from cds_engine.rules import yaml_lines
from cds_engine.rules.compile import compile_pack
from cds_engine.rules.errors import PackLoadError
from cds_engine.rules.site import declared_parameters
from cds_engine.rules.yaml_lines import YamlError, load_parsed, load_with_lines, parse_once
from cds_engine.vocabulary import Vocabulary, _columns, term_regex
from conftest import RULES

PACKS = sorted(RULES.glob("*/pack.yaml"))


def _copy_rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def test_each_pack_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = yaml_lines.load_with_lines

    def counting(text: str):  # type: ignore[no-untyped-def]
        calls.append(len(text))
        return real(text)

    monkeypatch.setattr(yaml_lines, "load_with_lines", counting)
    Engine.from_dir(RULES, site=False)
    assert len(calls) == len(PACKS)


def test_shared_parse_compiles_the_same_pack() -> None:
    """The engine's packs equal packs compiled from a fresh parse (hash, every tier, parameters)."""
    engine = Engine.from_dir(RULES, site=False)
    for pack, path in zip(engine.packs, PACKS, strict=True):
        content = path.read_bytes()
        fresh = compile_pack(content.decode("utf-8"), str(path), pack.vocabulary, {}, content)
        assert pack.content_hash == fresh.content_hash
        assert pack.params == fresh.params
        assert pack.spec == fresh.spec
        assert repr(pack.tiers) == repr(fresh.tiers)
        assert pack.one_click == fresh.one_click and pack.dose_dependent == fresh.dose_dependent


def test_parse_of_another_text_is_not_reused() -> None:
    text = PACKS[0].read_text(encoding="utf-8")
    stale = parse_once("parameters: {}\n")
    assert load_parsed(text, stale) == load_with_lines(text)
    assert declared_parameters(text, stale) == declared_parameters(text)


def test_kept_yaml_error_is_raised_as_before() -> None:
    bad = "pack:\n  id: [x\n"
    with pytest.raises(YamlError) as fresh:
        load_with_lines(bad)
    with pytest.raises(YamlError) as kept:
        load_parsed(bad, parse_once(bad))
    assert (str(kept.value), kept.value.line) == (str(fresh.value), fresh.value.line)


def test_scalars_are_what_safe_load_builds() -> None:
    """The string shortcut of the YAML walk: same values and types as yaml.safe_load, every pack."""
    import yaml

    for path in PACKS:
        text = path.read_text(encoding="utf-8")
        assert load_with_lines(text)[0] == yaml.safe_load(text)
    odd = "a: '1'\nb: 1\nc: 1.5\nd: yes\ne: ~\nf: 2026-01-02\n'3': !!str 4\ng: [x, 'y', 0x10]\n"
    raw, _ = load_with_lines(odd)
    assert raw == yaml.safe_load(odd)
    assert [type(v) for v in raw.values()] == [type(v) for v in yaml.safe_load(odd).values()]


_TRICKY = [
    "a,b,c\n1,2,3\n",
    "a,b,c\n\n1,2,3\n\n\n4,5\n6\n7,8,9,10,11\n",  # blank lines, short and long rows
    'a,b,c\n"x\ny",2," 3 "\n',  # a quoted cell across lines
    "a,b,c,a\n1,2,3,4\n",  # a repeated column: the last one wins
    "a,b,a\n1,2,3\n",
    "c,b,a\n3,2,1\n",
    "a,b,c\n",
    "",
    "\na,b,c\n1,2,3\n",  # a blank first line: no header names
    "a,x,c\n1,2,3\n",  # a column missing
    "a,x,c\n\n",
    "a,x,c\n1\n",
]


@pytest.mark.parametrize("text", _TRICKY)
def test_columns_read_like_dictreader(text: str) -> None:
    names = ("c", "a", "b")

    def by_dict() -> list[object]:
        out: list[object] = []
        try:
            for row in csv.DictReader(io.StringIO(text, newline="")):
                out.append(tuple(row[n] for n in names))
        except KeyError as exc:
            out.append(("KeyError", str(exc)))
        return out

    def by_position() -> list[object]:
        out: list[object] = []
        try:
            for row in _columns(io.StringIO(text, newline=""), names):
                out.append(tuple(row[i] for i in range(len(names))))
        except KeyError as exc:
            out.append(("KeyError", str(exc)))
        return out

    assert by_position() == by_dict()


def test_term_patterns_compiled_when_needed_are_the_file_order() -> None:
    vocab = Vocabulary.from_dir(RULES / "vocabulary")
    assert not vocab._patterns  # nothing compiled by loading
    with (RULES / "vocabulary" / "ingredients.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["term"].strip()]
    eager: dict[str, list[tuple[object, str]]] = {}
    for r in rows:
        eager.setdefault(r["kind"], []).append((term_regex(r["term"].strip()), r["group"]))
    assert vocab.terms == eager
    found = vocab.classify(
        Coding(system="http://example.org", code="x", display=rows[0]["term"]), rows[0]["kind"]
    )
    assert rows[0]["group"] in found


def test_collector_paused_while_loading_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real = Vocabulary.from_dir

    def recording(directory: Path) -> Vocabulary:
        seen.append(gc.isenabled())
        return real(directory)

    monkeypatch.setattr(engine_module.Vocabulary, "from_dir", staticmethod(recording))
    assert gc.isenabled()
    Engine.from_dir(RULES, site=False)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        Engine.from_dir(RULES, site=False)
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def test_collector_restored_after_a_refused_pack(tmp_path: Path) -> None:
    rules = _copy_rules(tmp_path)
    pack = rules / PACKS[0].parent.name / "pack.yaml"
    pack.write_text(pack.read_text(encoding="utf-8").replace("\npack:\n", "\npack: [\n", 1), encoding="utf-8")
    with pytest.raises(PackLoadError) as info:
        Engine.from_dir(rules, site=False)
    assert "YAML syntax error" in str(info.value)
    assert gc.isenabled()
