"""Exit codes that mean something, and no false all-clear (issue 14, items 2 and 5).

``check``: 0 evaluated; 2 usage or configuration error (no rules directory, no pack, unknown
``--evaluator``), one line; 4 nothing evaluated because no pack applies, with the reason. It always
says which packs it evaluated. ``screen``: 2 for an unknown drug in ``--assume-order``, an order no
pack reviews, ``--out`` naming a file, a missing input. The smaller items of the newcomer audit each
have a test here: the skipped-file count, ``rules diff`` leaving deceased patients out as ``screen``
does, ``--evaluator`` validated everywhere, the 412 wording, the ``serve`` options in the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.service_helpers import hook_request, medication_request
from typer.testing import CliRunner

from cds_engine.cli import app
from cds_engine.engine import Engine
from cds_engine.rules.errors import PackLoadError
from cds_engine.service import create_app
from conftest import EXAMPLES, REPO, RULES

T11 = REPO / "fixtures" / "baclofen" / "T11.json"
runner = CliRunner()


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """The real command, as a user types it (so the working directory matters)."""
    return subprocess.run([sys.executable, "-m", "cds_engine.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CI": "1"})


def _no_order_facts(tmp_path: Path) -> Path:
    facts = json.loads(T11.read_text())["facts"]
    facts.pop("order", None)
    facts["medications"] = []
    path = tmp_path / "no-order.json"
    path.write_text(json.dumps(facts))
    return path


# ── check ───────────────────────────────────────────────────────────────────────────────────
def test_check_from_another_directory_with_rules_evaluates(tmp_path):
    done = cli("check", str(T11), "--rules", str(RULES), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "BAC-R04" in done.stdout and "packs evaluated: baclofen 1.0.0" in done.stdout


@pytest.mark.parametrize("where", ["other-directory", "typo", "empty"])
def test_check_without_usable_rules_is_exit_2_not_zero_alerts(tmp_path, where):
    (tmp_path / "empty").mkdir()
    args = {"other-directory": [], "typo": ["--rules", str(REPO / "rule")],
            "empty": ["--rules", "empty"]}[where]
    done = cli("check", str(T11), *args, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "0 alert" not in done.stdout and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --rules")
    assert ("no rule packs found" if where == "empty" else "rules directory not found") in lines[0]


def test_check_unknown_evaluator_is_exit_2():
    result = runner.invoke(app, ["check", str(T11), "--rules", str(RULES), "--evaluator", "fast"])
    assert result.exit_code == 2
    assert "--evaluator must be one of rete, oracle, not 'fast'" in result.output


def test_check_nothing_applicable_is_exit_4_with_the_reason(tmp_path):
    result = runner.invoke(app, ["check", str(_no_order_facts(tmp_path)), "--rules", str(RULES)])
    assert result.exit_code == 4, result.output
    assert "nothing evaluated" in result.output and "no baclofen order and none active" in result.output
    assert "0 alert" not in result.output


def test_check_json_keeps_stdout_the_alert_list_and_names_the_packs_on_stderr():
    done = cli("check", str(T11), "--json")
    assert done.returncode == 0, done.stderr
    alerts = json.loads(done.stdout)
    assert isinstance(alerts, list) and {a["rule_id"] for a in alerts} >= {"BAC-R04", "BAC-D02"}
    assert "packs evaluated: baclofen 1.0.0" in done.stderr


# ── the Python API ─────────────────────────────────────────────────────────────────────────
def test_from_dir_raises_on_a_directory_without_packs(tmp_path):
    with pytest.raises(PackLoadError, match="rules directory not found"):
        Engine.from_dir(tmp_path / "nope")
    with pytest.raises(PackLoadError, match="no rule packs found"):
        Engine.from_dir(tmp_path)


def test_engine_refuses_an_unknown_evaluator():
    with pytest.raises(ValueError, match="evaluator must be one of rete, oracle"):
        Engine([], evaluator="fast")  # type: ignore[arg-type]


def test_evaluate_reports_packs_evaluated_and_not_applicable(engine, tmp_path):
    facts = json.loads(T11.read_text())["facts"]
    result = engine.evaluate(facts)
    assert [p.id for p in result.evaluated] == ["baclofen"] and len(result) >= 3
    assert {n.pack_id for n in result.not_applicable} == {"gabapentinoid"}  # draft: not run here
    none = engine.evaluate(json.loads(_no_order_facts(tmp_path).read_text()))
    assert none == [] and none.nothing_evaluated
    reasons = {n.pack_id: n.reason for n in none.not_applicable}
    assert reasons["baclofen"] == "no baclofen order and none active"
    assert "packs evaluated: none" in none.coverage()


# ── screen ─────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--assume-order", "baclofn 5 mg PO TID"], "'baclofn' is not in the vocabulary"),
        (["--assume-order", "lisinopril 10 mg PO daily"], "no active pack reviews an order for lisinopril"),
        (["--out", "README.md"], "--out README.md: is a file"),
        (["--engine", "fast"], "--engine must be vector or rete"),
    ],
)
def test_screen_usage_errors_are_exit_2_with_one_line(tmp_path, args, message):
    base = ["screen", "examples/synthea", "--as-of", "2026-01-15"]
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out")]
    done = cli(*base, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert message in done.stderr
    assert not (tmp_path / "out").exists()


def test_screen_missing_input_says_not_found(tmp_path):
    result = runner.invoke(app, ["screen", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "input not found" in result.output


# ── smaller items ──────────────────────────────────────────────────────────────────────────
def test_rules_diff_leaves_deceased_patients_out_as_screen_does():
    result = runner.invoke(app, ["rules", "diff", str(RULES), str(RULES), "--on", str(EXAMPLES / "synthea"),
                                 "--assume-order", "baclofen 5 mg PO TID", "--as-of", "2026-01-15", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["deceased_left_out"] == 1
    assert report["patients"] == 14  # 15 patients read, 1 deceased: the same count as screen's "screened"


@pytest.mark.parametrize("command", [["rules", "diff", "rules", "rules", "--on", "fixtures/gabapentinoid"],
                                     ["rules", "test", "rules"]])
def test_rules_tools_refuse_an_unknown_evaluator(command, monkeypatch):
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, [*command, "--evaluator", "fast"])
    assert result.exit_code == 2 and "--evaluator must be one of rete, oracle" in result.output


def test_412_names_an_unreachable_fhir_server_without_echoing_it(engine):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    service = create_app(lambda: engine, auth=None, fhir_transport=httpx.MockTransport(refuse))
    with TestClient(service) as client:
        given = hook_request("order-sign", "p1", [medication_request()], fhir_server="https://ehr.example/fhir")
        response = client.post("/cds-services/baclofen-order-sign", json=given)
        assert response.status_code == 412
        assert "the FHIR server in fhirServer could not be read" in response.text
        assert "no FHIR access" not in response.text and "ehr.example" not in response.text
        absent = hook_request("order-sign", "p1", [medication_request()])
        response = client.post("/cds-services/baclofen-order-sign", json=absent)
        assert response.status_code == 412 and "no fhirServer to read it from" in response.text


def test_evaluate_endpoint_says_which_packs_ran(engine, tmp_path):
    service = create_app(lambda: engine, auth=None)
    with TestClient(service) as client:
        facts = json.loads(T11.read_text())["facts"]
        ran = client.post("/evaluate", json=facts)
        assert ran.status_code == 200 and ran.headers["x-packs-evaluated"].startswith("baclofen 1.0.0")
        none = client.post("/evaluate", json=json.loads(_no_order_facts(tmp_path).read_text()))
        assert none.json() == [] and none.headers["x-packs-evaluated"] == "none"
        assert "no baclofen order and none active" in none.headers["x-packs-not-applicable"]


def test_readme_serve_options_list_host_and_port():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "| `--host ADDRESS` |" in readme and "| `--port N` |" in readme
    result = runner.invoke(app, ["serve", "--help"])
    assert "--host" in result.output and "--port" in result.output


def test_screen_with_nothing_applicable_says_nothing_was_evaluated(tmp_path):
    """Most patients are not on the drug: not a failure (exit 0), but never a bare "0 alerts"."""
    control = next((EXAMPLES / "synthea").rglob("Buster_Hoeger_*.json.gz"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / control.name).write_bytes(control.read_bytes())
    done = cli("screen", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--as-of", "2026-01-15")
    assert done.returncode == 0, done.stderr
    assert "0 alerts for the 0 patient(s) a pack reviewed" in done.stdout
    assert "nothing was evaluated" in done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["evaluated_patients"] == 0 and summary["counts"]["screened"] == 1
    assert "nothing was evaluated" in (tmp_path / "out" / "report.html").read_text()
