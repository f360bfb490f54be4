"""The README's commands work from a clone: every fenced ``bash`` command is run from the repository root.

Rule (also stated in the README): a fenced ``bash`` block holds commands a reader can paste in the
repository root, and this test runs each of them (continuation lines joined, comments dropped) with a
time-out; a fenced ``sh`` block is an illustration with placeholders (your own files, hosts) and is not
run. Three kinds of ``bash`` line are skipped, by the explicit table below: commands that start the
long-running server, the test script itself, and ``users add`` (it prompts for a password).

The commands run in a scratch directory whose entries link to the repository's top-level entries, so
what they write (``out/``, ``catalog.html``) stays out of the working tree. The ``python`` block (the
API example) is run too and must print the alerts it promises.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = {  # a bash line containing this is not run — and why
    "cds-engine serve": "starts the long-running server",
    "bash scripts/test.sh": "is the test run itself",
    "cds-engine users add": "prompts for a password on a terminal",
}


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    blocks: list[tuple[str, list[str]]] = []
    lang: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        match = FENCE.match(stripped)
        if match and lang is None:
            lang, lines = match.group(1), []
        elif stripped == "```" and lang is not None:
            blocks.append((lang, lines))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def bash_commands(text: str) -> list[str]:
    commands: list[str] = []
    for lang, lines in fenced_blocks(text):
        if lang != "bash":
            continue
        joined = "\n".join(lines).replace("\\\n", " ")
        for line in joined.splitlines():
            command = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if command:
                commands.append(command)
    return commands


COMMANDS = bash_commands(README.read_text(encoding="utf-8"))
RUN = [c for c in COMMANDS if not any(key in c for key in SKIP)]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A scratch copy of the repository root made of links: commands see the clone, writes stay here."""
    scratch = tmp_path_factory.mktemp("readme-root")
    for entry in REPO.iterdir():
        if entry.name not in {".git", "out", "catalog.html", "cds.db"}:
            (scratch / entry.name).symlink_to(entry)
    return scratch


def test_the_readme_has_runnable_commands_and_skips_only_by_rule():
    assert len(RUN) >= 8, RUN
    skipped = [c for c in COMMANDS if c not in RUN]
    assert all(any(key in c for key in SKIP) for c in skipped)
    assert any("screen examples/synthea" in c for c in RUN)  # the shipped examples
    assert not any("../" in c for c in COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("command", RUN, ids=[c[:60] for c in RUN])
def test_readme_command_runs_from_the_repository_root(command: str, root: Path) -> None:
    done = subprocess.run(["bash", "-c", command], cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CI": "1", "COLUMNS": "120"})
    assert done.returncode == 0, f"{command}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr


def test_readme_python_example_prints_the_promised_alerts(root: Path) -> None:
    blocks = fenced_blocks(README.read_text(encoding="utf-8"))
    code = next(lines for lang, lines in blocks if lang == "python")
    done = subprocess.run([sys.executable, "-c", "\n".join(code)], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "BAC-R04" in done.stdout and "critical" in done.stdout
