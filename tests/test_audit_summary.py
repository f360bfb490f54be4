"""The dependency-audit line says how many pins were really audited; no registry host is named anywhere.

``scripts/test.sh`` pipes ``pip-audit --format json`` into ``scripts/audit_summary.py``. A run in which
the advisory source knew none of the pins (or did not answer) must say "none ... audited", never
"no known vulnerabilities". Whether the source answers is left to pip-audit's own time-out: the
repository probes no package registry itself and names none by host.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("audit_summary", REPO / "scripts" / "audit_summary.py")
assert _spec is not None and _spec.loader is not None
audit_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit_summary)


def _dep(name: str, *, skip: str | None = None, vulns: list[dict] | None = None) -> dict:
    dep = {"name": name, "version": "1.0"}
    if skip:
        dep["skip_reason"] = skip
    else:
        dep["vulns"] = vulns or []
    return dep


def test_none_audited_says_so():
    report = {"dependencies": [_dep(f"p{i}", skip="Dependency not found") for i in range(98)]}
    line = audit_summary.summarise(report, 98)
    assert line.startswith("pip-audit: none of the 98 pinned packages audited")
    assert "no known vulnerabilities" not in line


def test_some_audited_counts_them():
    report = {"dependencies": [_dep("a"), _dep("b"), _dep("c", skip="Dependency not found")]}
    assert audit_summary.summarise(report, 3) == (
        "pip-audit: 2 of 3 pinned packages audited: no known vulnerabilities among them; 1 not audited"
    )


def test_vulnerabilities_are_a_warning_naming_them():
    report = {"dependencies": [_dep("a", vulns=[{"id": "GHSA-xxxx"}]), _dep("b")]}
    line = audit_summary.summarise(report, 2)
    assert line.startswith("WARNING: pip-audit: 2 of 2 pinned packages audited; 1 with known vulnerabilities")
    assert "a 1.0 (GHSA-xxxx)" in line


def test_no_report_is_none_audited():
    line = audit_summary.summarise(None, 98, exit_code=124)
    assert "could not complete (exit 124)" in line and "none of the 98" in line


def test_the_script_reads_pip_audit_output_with_warnings_before_the_json():
    report = '{"dependencies": [{"name": "x", "version": "1", "skip_reason": "not found"}], "fixes": []}'
    text = "WARNING:pip_audit._cli:--no-deps is supported\n" + report
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "audit_summary.py"),
                           str(REPO / "requirements.lock"), "0"], input=text, capture_output=True, text=True)
    pins = audit_summary.count_pins((REPO / "requirements.lock").read_text())
    assert done.returncode == 0 and f"none of the {pins} pinned packages audited" in done.stdout


def test_no_package_registry_host_is_named_in_the_repository():
    hosts = ["pypi" + ".org", "pythonhosted" + ".org", "registry." + "npmjs", "proxy." + "golang.org"]
    pattern = re.compile("|".join(re.escape(h) for h in hosts), re.IGNORECASE)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    offenders = []
    for name in tracked:
        path = REPO / name
        if path.suffix in {".gz", ".parquet", ".png"} or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
    script = (REPO / "scripts" / "test.sh").read_text(encoding="utf-8")
    assert "urlopen" not in script and "audit_summary.py" in script
