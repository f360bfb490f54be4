"""Pin the card sets the CDS Hooks Sandbox captures get: ``tests/expected/sandbox-NN.json``.

Each capture in ``examples/cds-hooks/sandbox/`` (the order-select/order-sign bodies) is evaluated
in-process on the baclofen pack of ``rules/`` (with the vocabulary) at the capture date, and the
cards it gets (rule id, indicator, summary) are written to ``tests/expected/sandbox-NN.json``.
``tests/test_sandbox_captures.py`` then checks that the real ``serve`` process answers exactly that.

A pinned set is clinical output: its header says it awaits pharmacist review. When a pharmacist
has reviewed a file, fill in ``reviewed_by`` and ``reviewed_on`` in its header by hand (a real
name and date, never a placeholder). Re-pinning keeps that review only if the cards are unchanged;
changed cards go back to "awaiting pharmacist review".

    .venv/bin/python tools/pin_sandbox_cards.py          # write the files
    .venv/bin/python tools/pin_sandbox_cards.py --check  # exit 1 when a file would change
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SANDBOX = REPO / "examples" / "cds-hooks" / "sandbox"
EXPECTED = REPO / "tests" / "expected"
CAPTURE_INSTANT = "2026-12-05T21:48:00+00:00"  # the captures' date (their feedback's outcomeTimestamp)
AWAITING = "awaiting pharmacist review"
PACK_DIRS = ("baclofen", "vocabulary")  # the captures order baclofen; other packs cannot change their cards


def card_set(response: dict[str, Any]) -> list[dict[str, str]]:
    """What is pinned of each card: rule id, indicator and summary, in the order answered."""
    return [
        {"rule": c["source"]["topic"]["code"], "indicator": c["indicator"], "summary": c["summary"]}
        for c in response.get("cards", [])
    ]


def captures() -> list[Path]:
    return sorted(p for p in SANDBOX.glob("[0-9][0-9]-order-*.json"))


def service_path(body: dict[str, Any]) -> str:
    return f"/cds-services/baclofen-{body['hook']}"


def pin(check: bool = False) -> int:
    from cds_engine.engine import Engine

    with tempfile.TemporaryDirectory() as tmp:
        return _pin(Engine.from_dir(pack_rules(Path(tmp))), check)


def pack_rules(directory: Path) -> Path:
    """A rules directory with the baclofen pack and the vocabulary only (what the captures order)."""
    target = directory / "rules"
    for part in PACK_DIRS:
        shutil.copytree(REPO / "rules" / part, target / part)
    return target


def _pin(engine: Any, check: bool) -> int:
    from fastapi.testclient import TestClient

    from cds_engine.service import ServiceSettings, create_app

    instant = datetime.fromisoformat(CAPTURE_INSTANT)
    settings = ServiceSettings(allow_loopback_fhir=True)  # as the serve test runs it (the captures' server)
    app = create_app(lambda: engine, auth=None, clock=lambda: instant, settings=settings)
    EXPECTED.mkdir(parents=True, exist_ok=True)
    changed = 0
    with TestClient(app) as client:
        for path in captures():
            body = json.loads(path.read_text(encoding="utf-8"))
            response = client.post(service_path(body), json=body)
            if response.status_code != 200:
                print(f"{path.name}: HTTP {response.status_code}", file=sys.stderr)
                return 2
            cards = card_set(response.json())
            target = EXPECTED / f"sandbox-{path.name[:2]}.json"
            old = json.loads(target.read_text(encoding="utf-8")) if target.exists() else None
            review = {"status": AWAITING, "reviewed_by": None, "reviewed_on": None}
            if old is not None and old.get("cards") == cards:
                review = old.get("review", review)
            pinned = {
                "review": review,
                "capture": f"examples/cds-hooks/sandbox/{path.name}",
                "evaluated_as_of": CAPTURE_INSTANT,
                "status": 200,
                "cards": cards,
            }
            text = json.dumps(pinned, indent=2, ensure_ascii=False) + "\n"
            if old is None or target.read_text(encoding="utf-8") != text:
                changed += 1
                print(f"{'would change' if check else 'wrote'} {target.relative_to(REPO)}")
                if not check:
                    target.write_text(text, encoding="utf-8")
    return 1 if check and changed else 0


if __name__ == "__main__":
    raise SystemExit(pin(check="--check" in sys.argv[1:]))
