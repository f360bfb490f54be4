"""One honest line from a ``pip-audit --format json`` report: how many pins were actually audited.

Usage (scripts/test.sh): ``pip-audit -r requirements.lock -f json ... | python scripts/audit_summary.py
requirements.lock [EXIT_CODE]``. A package the advisory source does not know, or a source that does not
answer, is *not audited* — never counted as "no known vulnerabilities". Exit status: 0 always (the
test run is not failed by advisories; see SECURITY.md "Dependencies").
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==")


def count_pins(lock_text: str) -> int:
    return sum(1 for line in lock_text.splitlines() if PIN.match(line))


def summarise(report: dict[str, Any] | None, pins: int, exit_code: int = 0) -> str:
    """The line printed by the test script; ``report`` None when pip-audit gave no readable report."""
    if report is None:
        return (f"pip-audit: could not complete (exit {exit_code}); none of the {pins} pinned packages "
                "audited — no vulnerability statement is possible")
    deps = report.get("dependencies") or []
    audited = [d for d in deps if not d.get("skip_reason")]
    vulnerable = [d for d in audited if d.get("vulns")]
    head = f"pip-audit: {len(audited)} of {pins} pinned packages audited"
    if not audited:
        return (f"pip-audit: none of the {pins} pinned packages audited (unknown to the advisory source, "
                "or it did not answer) — no vulnerability statement is possible")
    if vulnerable:
        names = ", ".join(
            f"{d['name']} {d.get('version', '')} ({', '.join(v.get('id', '?') for v in d['vulns'])})"
            for d in vulnerable
        )
        return f"WARNING: {head}; {len(vulnerable)} with known vulnerabilities: {names}"
    return f"{head}: no known vulnerabilities among them; {pins - len(audited)} not audited"


def main(argv: list[str]) -> int:
    pins = count_pins(Path(argv[1]).read_text(encoding="utf-8"))
    exit_code = int(argv[2]) if len(argv) > 2 else 0
    text = sys.stdin.read()
    start = text.find("{")  # pip-audit may print warnings before its JSON
    try:
        report = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        report = None
    print(summarise(report, pins, exit_code))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
