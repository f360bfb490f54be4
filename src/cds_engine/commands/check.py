"""``cds-engine check FACTS.json``: the engine core's command (rule tools are in :mod:`.rules_tools`).

Exit codes: 0 evaluated (alerts or not); 2 usage or configuration error (unreadable facts, no rules
directory, no pack, an unknown ``--evaluator``), with one line on stderr; 4 nothing evaluated because
no pack applies to this patient (the reason is printed: an empty alert list is then not an all-clear).
It always says which packs it evaluated (on stderr with ``--json``, so stdout stays the alert list).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cds_engine.alerts import Alert
from cds_engine.engine import EVALUATORS, Engine
from cds_engine.facts.model import PatientFacts
from cds_engine.rules.errors import PackLoadError

__all__ = ["EXIT_NOTHING_EVALUATED", "load_facts_file", "register"]

EXIT_USAGE = 2
EXIT_NOTHING_EVALUATED = 4

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def load_facts_file(path: Path, as_of: str | None = None) -> PatientFacts:
    """Read a facts JSON file (a bare PatientFacts document or a fixture with a ``facts`` key).

    Raises ``typer.BadParameter`` with the field path on invalid input.
    """
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{path}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if isinstance(raw, dict) and "facts" in raw and "as_of" not in raw:
        raw = raw["facts"]
    if not isinstance(raw, dict):
        raise typer.BadParameter(f"{path}: expected a JSON object of patient facts")
    if as_of is not None:
        raw = {**raw, "as_of": _parse_as_of(as_of)}
    try:
        return PatientFacts.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: invalid facts:"]
        for err in exc.errors():
            lines.append(f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        raise typer.BadParameter("\n".join(lines)) from exc


def _parse_as_of(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"--as-of {text!r} is not an ISO date/time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _table(alerts: list[Alert]) -> Table:
    table = Table(title=f"{len(alerts)} alert(s)", show_lines=False)
    table.add_column("severity")
    table.add_column("rule")
    table.add_column("tier")
    table.add_column("summary", overflow="fold")
    for a in alerts:
        table.add_row(f"[{_SEVERITY_STYLE[a.severity]}]{a.severity}[/]", a.rule_id, a.tier_id, a.summary)
    return table


def _rules_error(rules: Path, exc: PackLoadError) -> str:
    """One clear line for a missing or empty rules directory; the authoring findings otherwise."""
    if all(f.line is None and f.file == str(rules) for f in exc.findings):
        problems = "; ".join(f.message for f in exc.findings)
        hint = "the default is ./rules: run from the repository root or give --rules DIR"
        return f"error: --rules {rules}: {problems} ({hint})"
    return str(exc)


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    @app.command()
    def check(
        facts_file: Annotated[Path, typer.Argument(help="PatientFacts JSON (or a fixture file)")],
        as_of: Annotated[str | None, typer.Option(help="Evaluate as of this ISO date/time")] = None,
        rules: Annotated[Path, typer.Option(help="Rule directory")] = Path("rules"),
        as_json: Annotated[bool, typer.Option("--json", help="Print alerts as JSON")] = False,
        evaluator: Annotated[
            str, typer.Option(help="rete (durable_rules) or oracle (plain Python)")
        ] = "rete",
    ) -> None:
        """Evaluate one patient's facts and print the alerts (exit 4 when no pack applies)."""
        if evaluator not in EVALUATORS:
            choices = ", ".join(EVALUATORS)
            typer.echo(f"error: --evaluator must be one of {choices}, not {evaluator!r}", err=True)
            raise typer.Exit(EXIT_USAGE)
        facts = load_facts_file(facts_file, as_of)
        try:
            engine = Engine.from_dir(rules, evaluator=evaluator)  # type: ignore[arg-type]
        except PackLoadError as exc:
            typer.echo(_rules_error(rules, exc), err=True)
            raise typer.Exit(EXIT_USAGE) from exc
        result = engine.evaluate(facts)
        if result.nothing_evaluated:
            reasons = "; ".join(str(n) for n in result.not_applicable) or "no pack loaded"
            typer.echo(f"nothing evaluated: no pack applies to this patient ({reasons})", err=True)
            raise typer.Exit(EXIT_NOTHING_EVALUATED)
        if as_json:
            typer.echo(json.dumps([a.model_dump(mode="json") for a in result], indent=2))
            typer.echo(result.coverage(), err=True)
        else:
            Console().print(_table(list(result)))
            typer.echo(result.coverage())

