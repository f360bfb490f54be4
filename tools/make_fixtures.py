"""Write the committed JSON fixtures (``fixtures/<pack>/*.json``) from the fixture tables.

Why: a fixture is clinical knowledge — a patient, an order, and what the rules must say about
it — so it is kept as data a pharmacist edits (``fixtures/source/<pack>/*.yaml``, read by
``tools/fixture_tables.py``; see ``fixtures/source/README.md``), and this script only turns the
tables into the JSON files the engine's test runner reads. Each JSON file is self-contained:
``facts`` (a PatientFacts document) and ``expect`` (``fire``: the complete {rule id: severity}
set; ``silent``: key "must not fire" checks, rule ids or tier ids; ``cannot_assess``: the
complete set of missing-data items).

Run: ``.venv/bin/python tools/make_fixtures.py`` (every pack; ``--pack baclofen`` for one;
``--check`` exits 1 if a file would change, without writing). A JSON file in a generated pack
folder that no table entry names is removed (stale), so a renamed fixture leaves no orphan.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_tables import TableError, read_codings, read_pack

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "fixtures" / "source"


def packs(source: Path) -> list[str]:
    """Pack folders under the table root (each holds a ``shapes.yaml``)."""
    return sorted(p.name for p in source.iterdir() if (p / "shapes.yaml").is_file())


def render(fixture: dict[str, Any]) -> str:
    return json.dumps(fixture, indent=2, ensure_ascii=False) + "\n"


def write_pack(fixtures: list[dict[str, Any]], out: Path, *, check: bool) -> tuple[list[str], list[str]]:
    """Write (or with ``check`` only compare) one pack; returns (changed, stale) file names."""
    changed: list[str] = []
    wanted: set[str] = set()
    if not check:
        out.mkdir(parents=True, exist_ok=True)
    for fixture in fixtures:
        path = out / f"{fixture['id']}.json"
        wanted.add(path.name)
        body = render(fixture)
        if not path.exists() or path.read_text(encoding="utf-8") != body:
            changed.append(path.name)
            if not check:
                path.write_text(body, encoding="utf-8")
    stale = sorted(p.name for p in out.glob("*.json") if p.name not in wanted) if out.is_dir() else []
    if not check:
        for name in stale:
            (out / name).unlink()
    return changed, stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any file would change")
    parser.add_argument("--pack", action="append", help="only this pack (repeatable); default: all")
    parser.add_argument("--source", type=Path, default=SOURCE, help="table root (fixtures/source)")
    parser.add_argument("--out", type=Path, default=REPO / "fixtures", help="JSON root (fixtures)")
    args = parser.parse_args(argv)
    try:
        codings = read_codings(args.source / "codings.yaml")
        selected = args.pack or packs(args.source)
        built = {pack: read_pack(args.source / pack, codings) for pack in selected}
    except (TableError, OSError) as exc:
        print(f"fixture tables: {exc}", file=sys.stderr)
        return 2
    out_of_date: list[str] = []
    for pack, fixtures in built.items():
        out = args.out / pack
        changed, stale = write_pack(fixtures, out, check=args.check)
        out_of_date += [f"{pack}/{name}" for name in changed + stale]
        if not args.check:
            print(f"{len(fixtures)} fixtures in {out} ({len(changed)} written, {len(stale)} removed)")
    if args.check and out_of_date:
        print("out of date:", ", ".join(out_of_date), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
