"""Write the gabapentinoid pack's fixtures (``fixtures/gabapentinoid/G-*.json``) from their tables.

Kept so the command named in docs/clinical/gabapentinoid.md still works: the fixtures are now
data (``fixtures/source/gabapentinoid/*.yaml``) and ``tools/make_fixtures.py`` writes every pack.
Run: ``.venv/bin/python tools/fixtures_gabapentinoid.py`` (same options as make_fixtures).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import main

if __name__ == "__main__":
    raise SystemExit(main(["--pack", "gabapentinoid", *sys.argv[1:]]))
