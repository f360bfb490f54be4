"""Parameters the engine reads by name are never reported as unused by ``rules lint``.

The re-audit of 2026-12-08 found ``egfr_pair_window_minutes`` reported "defined but no condition or
message uses it" while ``rules/compile.py`` reads it for the race-stratified eGFR pair window — a
false warning invites a reviewer to delete a parameter the engine depends on.
"""

from __future__ import annotations

import re

from cds_engine.authoring.verify import ENGINE_PARAMETERS, verify_dir
from conftest import REPO, RULES

_READ = re.compile(r'params\.get\("([a-z_]+)"')


def _read_by_compile() -> set[str]:
    text = (REPO / "src" / "cds_engine" / "rules" / "compile.py").read_text(encoding="utf-8")
    return set(_READ.findall(text))


def test_every_parameter_compile_reads_by_name_is_an_engine_parameter() -> None:
    read = _read_by_compile()
    assert read, "compile.py reads no parameter by name: this test no longer looks at the right file"
    assert read <= ENGINE_PARAMETERS, sorted(read - ENGINE_PARAMETERS)


def test_the_shipped_packs_report_no_engine_parameter_as_unused() -> None:
    findings = verify_dir(RULES).findings
    unused = [f.message for f in findings if "is defined but no condition or message uses it" in f.message]
    read = _read_by_compile() | ENGINE_PARAMETERS
    assert not [m for m in unused if any(repr(p) in m for p in read)], unused
