"""Validate CDS Hooks responses with HealthChain 0.16.1's ``CDSResponse`` (run by its own venv's python).

Usage: ``.venv-healthchain/bin/python tests/healthchain_check.py RESPONSES.json`` where the file
holds a list of response objects. Prints a JSON list of problems (empty: every response valid).

HealthChain 0.16.1 has two known defects, masked here and listed in README: ``Link.autoLaunchable``
and ``Suggestion.isRecommended`` are declared ``Optional[bool]`` without a default, which makes
them *required*, although CDS Hooks 2.0 makes both optional (and spells the first
``autolaunchable``). The mask adds ``null`` for a missing one before validating; nothing else is
changed. This file must not import cds_engine: it runs in HealthChain's environment.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

from healthchain.models.responses.cdsresponse import CDSResponse  # type: ignore[import-not-found]
from pydantic import ValidationError


def masked(response: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(response)
    for card in out.get("cards") or []:
        for link in card.get("links") or []:
            link.setdefault("autoLaunchable", None)  # defect 1
        for suggestion in card.get("suggestions") or []:
            suggestion.setdefault("isRecommended", None)  # defect 2
    return out


def main(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        responses = json.load(handle)
    problems = []
    for i, response in enumerate(responses):
        try:
            CDSResponse.model_validate(masked(response))
        except ValidationError as exc:
            problems.extend(f"response {i}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    print(json.dumps(problems))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
