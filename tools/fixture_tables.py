"""Read the fixture tables (``fixtures/source/``) into fixture documents — the one shared reader.

Why: the clinical content of a fixture (patient shape, what changes, what must fire) is data a
pharmacist reviews and edits, so it lives in YAML tables, not in a program. This module is the
only code between those tables and the committed JSON fixtures; it knows no drug, dose or rule.

A table (``fixtures/source/<pack>/*.yaml``) holds ``fixtures:``, a list of entries::

    - id: T01-base                       # file name of the JSON fixture (unique per pack)
      scenario: T01
      description: New start 5 mg TID (15 mg/day)
      source: baclofen-knowledge.md §5 T01
      note: ...                          # optional
      shape: new-start                   # a patient in shapes.yaml (or "none": facts are complete)
      facts: {order: {dose_amount: 5}}   # merged into the shape: a mapping merges key by key,
                                         # any other value (text, number, list) replaces
      replace: [renal]                   # optional dotted paths whose mapping in 'facts' replaces
                                         # the shape's instead of merging into it (key order kept)
      remove: [order.doses_per_day]      # optional dotted paths dropped from the result
      expect: {fire: {RULE: severity}, silent: [RULE or TIER], cannot_assess: [ITEM]}

Two shorthands keep the tables readable; both are expanded here, so the JSON holds plain values:

* ``"@name"`` is a coding from ``fixtures/source/codings.yaml`` (e.g. ``"@ms"``).
* Dates are relative to the pack's ``as_of`` (``today`` = its date, ``now`` = the instant):
  ``today``, ``today-10d``, ``today+30d``, ``today-45y-30d`` (45 years and 30 days before),
  ``now-8h``, ``now-27h30m``. A literal ISO date is kept as written.
"""

from __future__ import annotations

import copy
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

MAX_TABLE_BYTES = 2_000_000  # a fixture table is hand-edited text; anything larger is a mistake
_DAY = re.compile(r"^today(?:-(?P<years>\d+)y)?(?:(?P<sign>[+-])(?P<days>\d+)d)?$")
_NOW = re.compile(r"^now(?:-(?P<hours>\d+)h(?:(?P<minutes>\d+)m)?)?$")
_RELATIVE = re.compile(r"^(today|now)([+-].*)?$")  # looks relative: must parse, never kept as text
ENTRY_KEYS = (
    "id",
    "scenario",
    "description",
    "source",
    "note",
    "shape",
    "facts",
    "replace",
    "remove",
    "expect",
)


class TableError(ValueError):
    """A table cannot be read as written; the message names the file and the entry."""


def load_yaml(path: Path) -> Any:
    """One YAML document, bounded in size (the tables are small hand-edited files)."""
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise TableError(f"{path}: larger than {MAX_TABLE_BYTES} bytes")
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


class Expander:
    """Expands the shorthands of one pack (its ``as_of`` and the shared codings)."""

    def __init__(self, as_of: str, codings: dict[str, dict[str, Any]]) -> None:
        self.now = datetime.fromisoformat(as_of)
        self.today: date = self.now.date()
        self.codings = codings

    def value(self, node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {k: self.value(v, f"{where}.{k}") for k, v in node.items()}
        if isinstance(node, list):
            return [self.value(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str):
            return self.text(node, where)
        return node

    def text(self, raw: str, where: str) -> Any:
        if raw.startswith("@"):
            if raw[1:] not in self.codings:
                raise TableError(f"{where}: unknown coding {raw!r} (add it to codings.yaml)")
            return dict(self.codings[raw[1:]])
        day = _DAY.match(raw)
        if day:
            when = self.today
            if day["years"]:
                when = when.replace(year=when.year - int(day["years"]))
            if day["days"]:
                step = timedelta(days=int(day["days"]))
                when = when + step if day["sign"] == "+" else when - step
            return when.isoformat()
        moment = _NOW.match(raw)
        if moment:
            back = timedelta(hours=int(moment["hours"] or 0), minutes=int(moment["minutes"] or 0))
            return (self.now - back).isoformat()
        if _RELATIVE.match(raw):
            raise TableError(f"{where}: {raw!r} is not a relative date (today-10d, today-45y-30d, now-8h30m)")
        return raw


def merge(
    base: dict[str, Any], patch: dict[str, Any], replace: frozenset[str] = frozenset(), prefix: str = ""
) -> dict[str, Any]:
    """``patch`` over ``base``: mappings merge key by key (new keys go last), other values replace.

    A dotted path in ``replace`` takes the patch's mapping as it is written (its keys, its order).
    """
    out = copy.deepcopy(base)
    for key, value in patch.items():
        path = prefix + key
        if isinstance(value, dict) and isinstance(out.get(key), dict) and path not in replace:
            out[key] = merge(out[key], value, replace, path + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def drop(facts: dict[str, Any], path: str, where: str) -> None:
    node: Any = facts
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        raise TableError(f"{where}: remove {path!r} names nothing in the facts")
    del node[leaf]


def read_codings(path: Path) -> dict[str, dict[str, Any]]:
    raw = load_yaml(path) or {}
    codings = raw.get("codings") if isinstance(raw, dict) else None
    if not isinstance(codings, dict):
        raise TableError(f"{path}: needs a 'codings:' mapping of name -> {{system, code, display}}")
    return codings


def read_pack(directory: Path, codings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every fixture of one pack folder: ``shapes.yaml`` plus each other ``*.yaml`` table, in name order."""
    shapes_doc = load_yaml(directory / "shapes.yaml") or {}
    as_of = shapes_doc.get("as_of")
    if not isinstance(as_of, str):
        raise TableError(f"{directory / 'shapes.yaml'}: needs 'as_of' (the fixtures' moment)")
    expand = Expander(as_of, codings)
    raw_shapes = shapes_doc.get("shapes") or {}
    shapes = {name: expand.value(facts, f"shapes.yaml:{name}") for name, facts in raw_shapes.items()}
    out: list[dict[str, Any]] = []
    for table in sorted(directory.glob("*.yaml")):
        if table.name == "shapes.yaml":
            continue
        doc = load_yaml(table) or {}
        for index, entry in enumerate(doc.get("fixtures") or []):
            out.append(fixture(entry, shapes, expand, f"{table.name}[{index}]"))
    ids = [f["id"] for f in out]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise TableError(f"{directory}: duplicate fixture ids {dupes}")
    return out


def fixture(
    entry: dict[str, Any], shapes: dict[str, dict[str, Any]], expand: Expander, where: str
) -> dict[str, Any]:
    """One table entry as the fixture document the engine's test runner reads."""
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise TableError(f"{where}: an entry needs an 'id'")
    where = f"{where} {entry['id']}"
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise TableError(f"{where}: unknown keys {unknown} (allowed: {', '.join(ENTRY_KEYS)})")
    for key in ("scenario", "description", "source", "expect"):
        if key not in entry:
            raise TableError(f"{where}: '{key}' is required")
    shape = entry.get("shape", "none")
    if shape != "none" and shape not in shapes:
        raise TableError(f"{where}: unknown shape {shape!r} (shapes.yaml has {sorted(shapes)})")
    patch = expand.value(entry.get("facts") or {}, f"{where}.facts")
    facts = merge(shapes.get(shape, {}), patch, frozenset(entry.get("replace") or []))
    for path in entry.get("remove") or []:
        drop(facts, path, where)
    expect = entry["expect"] or {}
    doc: dict[str, Any] = {
        "id": entry["id"],
        "scenario": entry["scenario"],
        "description": entry["description"],
        "source": entry["source"],
    }
    if entry.get("note"):
        doc["note"] = entry["note"]
    doc["facts"] = facts
    doc["expect"] = {
        "fire": dict(expect.get("fire") or {}),
        "silent": list(expect.get("silent") or []),
        "cannot_assess": list(expect.get("cannot_assess") or []),
    }
    return doc
