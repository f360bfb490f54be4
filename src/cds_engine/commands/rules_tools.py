"""``cds-engine rules lint|test|docs|diff|facts``: the rule author's tools.

Each command is wiring only; the work is in :mod:`cds_engine.authoring.verify` (lint),
:mod:`cds_engine.authoring.fixtures` (test), :mod:`cds_engine.authoring.catalog` (docs) and
:mod:`cds_engine.authoring.shadow` (diff). Exit codes: 0 clean (warnings allowed), 1 errors found,
2 the input could not be read at all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cds_engine.authoring.catalog import write_catalog
from cds_engine.authoring.fixtures import fixtures_dir_for, run_pack_fixtures
from cds_engine.authoring.shadow import DiffReport, assumed_order, diff_engines, iter_population, load_version
from cds_engine.authoring.verify import DirReport, verify_dir
from cds_engine.engine import EVALUATORS
from cds_engine.facts.catalog import FACTS, FAMILIES
from cds_engine.rules.errors import Finding, PackLoadError

__all__ = ["register"]

RulesDir = Annotated[Path, typer.Argument(help="Rule directory (holds vocabulary/ and <pack>/pack.yaml)")]
SiteOpt = Annotated[Path | None, typer.Option(
    "--site", help="Site settings file (default: DIR/site.yaml if present)")]


def _echo_findings(findings: list[Finding]) -> None:
    for f in findings:
        typer.echo(str(f), err=f.severity == "error")


def _verify(directory: Path, site: Path | None) -> DirReport:
    if not directory.is_dir():
        typer.echo(f"{directory}: not a directory", err=True)
        raise typer.Exit(2)
    return verify_dir(directory, site if site is not None else True)


def _check_evaluator(evaluator: str) -> None:
    """An unknown --evaluator is a usage error (exit 2), never silently some evaluator."""
    if evaluator not in EVALUATORS:
        typer.echo(f"error: --evaluator must be one of {', '.join(EVALUATORS)}, not {evaluator!r}", err=True)
        raise typer.Exit(2)


def _parse_when(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"--as-of {text!r} is not an ISO date/time") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _print_diff(report: DiffReport, console: Console) -> None:
    old = ", ".join(f"{p} {v} ({h})" for p, v, h in report.old)
    new = ", ".join(f"{p} {v} ({h})" for p, v, h in report.new)
    left_out = f" ({report.deceased} deceased left out, as screen does)" if report.deceased else ""
    console.print(f"OLD: {old}\nNEW: {new}\npatients screened: {report.patients}{left_out}")
    totals = report.totals()
    console.print(f"alerts appearing: {totals['appear']}, disappearing: {totals['disappear']}, "
                  f"changing severity: {totals['severity_changed']}")
    table = Table(title="Per rule (rules with changes)")
    for col in ("pack", "rule", "old", "new", "appear", "disappear", "severity changed", "example patients"):
        table.add_column(col, overflow="fold")
    for d in report.changed():
        examples = []
        if d.appeared:
            examples.append("+ " + ", ".join(d.appeared[:3]))
        if d.disappeared:
            examples.append("- " + ", ".join(d.disappeared[:3]))
        if d.changed:
            examples.append("~ " + ", ".join(f"{p}: {a} → {b}" for p, a, b in d.changed[:3]))
        counts = (d.old, d.new, len(d.appeared), len(d.disappeared), len(d.changed))
        table.add_row(d.pack_id, d.rule_id, *(str(n) for n in counts), "\n".join(examples))
    console.print(table)
    unchanged = sum(1 for d in report.deltas.values() if not d.touched)
    console.print(f"{unchanged} rule(s) unchanged.")
    for s in report.skipped[:20]:
        console.print(f"[dim]skipped: {s}[/]")
    if len(report.skipped) > 20:
        console.print(f"[dim]… {len(report.skipped) - 20} more skipped[/]")


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    @rules_app.command("lint")
    def lint(directory: RulesDir = Path("rules"), site: SiteOpt = None) -> None:
        """Verify every pack: schema, facts, types, contradictions, band gaps/overlaps, dead or duplicate
        tiers and rules, unused parameters, messages, summary length, clinician text (authoring notes,
        raw codes, unrendered placeholders, thresholds written as literal numbers), approvals and
        parameter sign-offs (approved_by, approved_on), site settings. Exit 1 on any error."""
        report = _verify(directory, site)
        _echo_findings(report.findings)
        for pr in report.packs:
            if pr.pack is None:
                typer.echo(f"{pr.file}: REJECTED — {len(pr.errors)} error(s)", err=True)
                continue
            pack = pr.pack
            warnings = sum(f.severity == "warning" for f in pr.findings)
            state = "ok" if not pr.errors else f"{len(pr.errors)} error(s)"
            typer.echo(f"{pack.file}: {state} — pack {pack.id} {pack.version} ({pack.spec.pack.status}), "
                       f"{len(pack.rules)} rules, {len(pack.tiers)} tiers, {warnings} warning(s), "
                       f"hash {pack.content_hash[:12]}")
            if pr.skipped:
                typer.echo(f"{pack.file}: note: {len(pr.skipped)} check(s) skipped as too complex to decide")
        if report.site.file is not None:
            typer.echo(f"{report.site.file}: site settings sha256 {report.site.sha256}")
        if report.errors or not report.ok:
            raise typer.Exit(1)

    @rules_app.command("test")
    def test(
        directory: RulesDir = Path("rules"),
        fixtures: Annotated[Path | None, typer.Option(help="Fixture root (default: DIR/../fixtures)")] = None,
        evaluator: Annotated[str, typer.Option(help="oracle (plain Python) or rete")] = "oracle",
        site: SiteOpt = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every fixture")] = False,
    ) -> None:
        """Run each pack's fixtures (fixtures/<pack id>/*.json) and print per-rule coverage: fired, asserted
        silent, tiers reached. Failures, and missing coverage of an active pack, exit 1."""
        _check_evaluator(evaluator)
        report = _verify(directory, site)
        if not report.ok:
            _echo_findings(report.errors)
            typer.echo("packs do not load: fix the lint errors first", err=True)
            raise typer.Exit(1)
        console = Console()
        failed = False
        for pack in report.compiled():
            fdir = fixtures_dir_for(directory, pack.id, fixtures)
            result = run_pack_fixtures(pack, fdir, evaluator, report.site.sha256)  # type: ignore[arg-type]
            table = Table(title=f"{pack.id} {pack.version} ({pack.spec.pack.status}) — "
                                f"{result.passed}/{len(result.results)} fixtures pass ({fdir})")
            for col in ("rule", "fired", "silent", "tiers reached", "coverage"):
                table.add_column(col, overflow="fold")
            for rule_id, cov in result.coverage.items():
                reached = sum(1 for n in cov.tiers.values() if n)
                gaps = cov.gaps
                table.add_row(rule_id, str(cov.fired), str(cov.silent), f"{reached}/{len(cov.tiers)}",
                              "[green]full[/]" if not gaps else f"[red]{'; '.join(gaps)}[/]")
            console.print(table)
            if verbose:
                for res in result.results:
                    console.print(f"{'PASS' if res.ok else 'FAIL'} {res.id}")
            _echo_findings(result.findings)
            full = not any(cov.gaps for cov in result.coverage.values())
            typer.echo(f"{pack.id}: {result.passed}/{len(result.results)} fixtures pass; coverage "
                       f"{'full' if full else 'incomplete'}")
            failed |= bool(result.errors)
        if failed:
            raise typer.Exit(1)

    @rules_app.command("docs")
    def docs(
        directory: RulesDir = Path("rules"),
        out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write")] = Path("catalog.html"),
        title: Annotated[str, typer.Option(help="Page title")] = "Rule pack catalog",
        site: SiteOpt = None,
    ) -> None:
        """Write a self-contained HTML catalog for clinical review: rules in words, tiers, messages,
        parameters with basis and sign-off, sources, seed links and the discrepancy register."""
        report = _verify(directory, site)
        path = write_catalog(report, out, title)
        errors = len(report.errors)
        shown = f", {errors} lint error(s) shown" if errors else ""
        typer.echo(f"wrote {path} ({len(report.compiled())} pack(s){shown})")

    @rules_app.command("diff")
    def diff(
        old: Annotated[Path, typer.Argument(help="Old version: a rule directory or a pack.yaml")],
        new: Annotated[Path, typer.Argument(help="New version: a rule directory or a pack.yaml")],
        on: Annotated[Path, typer.Option("--on", help="Patients: PatientFacts/fixture JSON or FHIR bundles "
                                                      "(.json, .json.gz), a file or a directory")],
        assume_order: Annotated[str | None, typer.Option(
            "--assume-order", help="Put this draft order on every patient, e.g. '<drug> 20 mg PO QID' "
                                   "(or an Order as JSON)")] = None,
        as_of: Annotated[str | None, typer.Option(
            help="Evaluate FHIR bundles at this ISO date/time (default now); facts keep their own")] = None,
        pack: Annotated[list[str] | None, typer.Option(
            "--pack", help="Compare only this pack id (repeatable)")] = None,
        vocabulary: Annotated[Path | None, typer.Option(
            help="Vocabulary for a lone pack.yaml without one")] = None,
        evaluator: Annotated[str, typer.Option(help="oracle (default, faster) or rete")] = "oracle",
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    ) -> None:
        """Shadow mode: screen a population with both versions and report per rule how many alerts
        appear, disappear or change severity, with example patients."""
        _check_evaluator(evaluator)
        when = _parse_when(as_of)
        try:
            old_engine = load_version(old, evaluator, vocabulary)  # type: ignore[arg-type]
            fallback = vocabulary or _vocab_of(old_engine)
            new_engine = load_version(new, evaluator, fallback)  # type: ignore[arg-type]
        except PackLoadError as exc:
            _echo_findings(exc.findings)
            raise typer.Exit(2) from exc
        try:
            order = assumed_order(assume_order, new_engine) if assume_order else None
        except ValueError as exc:  # the parser's OrderTextError is a ValueError
            raise typer.BadParameter(str(exc), param_hint="--assume-order") from exc
        if not on.exists():
            typer.echo(f"{on}: no such file or directory", err=True)
            raise typer.Exit(2)
        skipped: list[str] = []
        report = diff_engines(old_engine, new_engine, iter_population(on, skipped), as_of=when,
                              assumed_order=order, pack_ids=set(pack) if pack else None, skipped=skipped)
        if as_json:
            typer.echo(json.dumps(report.as_dict(), indent=2))
        else:
            _print_diff(report, Console())

    @rules_app.command("facts")
    def facts() -> None:
        """List the facts a rule may read (name, type, unit, meaning) and the fact families."""
        typer.echo(f"{'fact':<34} {'type':<7} {'unit':<15} meaning")
        for spec in FACTS.values():
            kind = spec.type + ("*" if spec.bounded else "")
            always = " (never missing)" if spec.always else ""
            typer.echo(f"{spec.name:<34} {kind:<7} {spec.unit or '':<15} {spec.description}{always}")
        for fam in FAMILIES.values():
            absent = f" (absent = {fam.default})" if fam.default is not None else ""
            typer.echo(f"{fam.prefix + '.<' + fam.key_kind + '>':<34} {fam.type:<7} {'':<15} "
                       f"{fam.description}{absent}")
        typer.echo("* may arrive as a bound (e.g. eGFR >60): comparisons it cannot decide are 'unknown'")


def _vocab_of(engine: object) -> Path | None:
    packs = getattr(engine, "packs", [])
    for pack in packs:
        files = pack.vocabulary.files
        if files:
            return files[0].parent
    return None
