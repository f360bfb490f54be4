"""``serve --worker-cpus`` / ``--writer-cpus``: the serving workers and the store's writer process on CPUs
of their own (issue 19 goal 2(a); :mod:`cds_engine.cpu_affinity`), read back from real processes'
``/proc/PID/task/*/status`` (``Cpus_allowed_list``, every thread).

Off by default: without the options nothing is pinned and the writer is told nothing. A list that
does not parse, or names a CPU this process may not use, stops ``serve`` at start (exit 2) naming the
option.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cds_engine import cpu_affinity
from cds_engine.cpu_affinity import WRITER_CPUS_ENV, format_cpus, parse_cpus, pin_from_env, pin_process
from cds_engine.store.writer_process import read_status
from conftest import RULES
from service_helpers import serve_process, wait_for

START = 240.0  # a busy 2-core machine: a worker may take long to import and compile the packs
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
INITIAL = format_cpus(CPUS)
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs this process may use")


@pytest.fixture(autouse=True)
def _no_writer_cpus_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers started here inherit this environment: a CDS_WRITER_CPUS of the caller's is not theirs."""
    monkeypatch.delenv(WRITER_CPUS_ENV, raising=False)


def _allowed(pid: int) -> set[str]:
    """``Cpus_allowed_list`` of every thread of ``pid`` (one value when all agree)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(line.split(":", 1)[1].strip())
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


def _writer_pid(spool: Path) -> int:
    wait_for(lambda: (read_status(spool) or {}).get("pid"), 60, what="the writer process's status")
    return int((read_status(spool) or {})["pid"])


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--no-auth", "--db", f"sqlite:///{tmp_path}/cds.db", "--rules", str(RULES), *extra]


def test_cpu_lists_read_and_print_as_the_kernel_writes_them() -> None:
    assert parse_cpus("1") == {1} and parse_cpus("0,2-3") == {0, 2, 3} and parse_cpus(" 3, 1 ") == {1, 3}
    assert format_cpus({0, 2, 3}) == "0,2-3" and format_cpus([5, 1, 2, 3]) == "1-3,5"
    assert format_cpus([4]) == "4"
    for bad in ("", "x", "3-1", "-1", "1-", "1,,2", "1-2-3", "1.0", "²"):
        with pytest.raises(ValueError):
            parse_cpus(bad)
    with pytest.raises(ValueError, match="--writer-cpus: CPU 7 not available"):
        cpu_affinity.check_cpus("0,7", "--writer-cpus", frozenset({0, 1}))
    assert cpu_affinity.check_cpus("7", "--writer-cpus", None) == {7}  # the platform cannot tell: not checked
    # the writer gets the CPUs serve started with when only the workers are pinned (not theirs, inherited)
    initial = frozenset({0, 1, 2})
    assert cpu_affinity.writer_cpus(None, None, initial) is None
    assert cpu_affinity.writer_cpus(frozenset({2}), frozenset({0}), initial) == "2"
    assert cpu_affinity.writer_cpus(None, frozenset({0}), initial) == "0-2"


def test_where_pinning_is_missing_or_the_list_is_bad_the_process_goes_on_unpinned(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "cds_engine.cpu_affinity")
    assert pin_from_env(None, "writer") is False and pin_from_env(" ", "writer") is False
    assert pin_from_env("1-0", "writer") is False and "ignored" in caplog.text
    monkeypatch.delattr(os, "sched_setaffinity")
    assert cpu_affinity.available_cpus() is None
    assert pin_process(frozenset({0}), "serve worker") is False
    assert "not available on this platform" in caplog.text


@two_cpus
def test_serve_pins_its_worker_and_the_writer_process(tmp_path: Path) -> None:
    worker, writer = str(CPUS[0]), str(CPUS[1])
    spool = tmp_path / "spool"
    args = _args(tmp_path, "--worker-cpus", worker, "--writer-cpus", writer)
    env = {"CDS_SPOOL_DIR": str(spool)}
    with serve_process(args, tmp_path, env=env, timeout=START) as (base, serve, log):
        assert httpx.get(f"{base}/healthz", timeout=10).json()["worker"]["pid"] == serve.pid
        writer_pid = _writer_pid(spool)
        assert _allowed(serve.pid) == {worker}, "every thread of the serving worker"
        assert _allowed(writer_pid) == {writer}
        assert _environ(writer_pid)[WRITER_CPUS_ENV] == writer
    text = log.read_text()
    assert f"serve worker [{serve.pid}]: CPU affinity {worker}" in text
    assert f"store writer process [{writer_pid}]: CPU affinity {writer}" in text


@two_cpus
def test_with_only_the_workers_pinned_the_writer_keeps_every_cpu(tmp_path: Path) -> None:
    """serve (a pinned worker) starts the writer: told the CPUs serve started with, it does not inherit
    the worker's (nor does a replacement started later)."""
    spool = tmp_path / "spool"
    args = _args(tmp_path, "--worker-cpus", str(CPUS[0]))
    env = {"CDS_SPOOL_DIR": str(spool)}
    with serve_process(args, tmp_path, env=env, timeout=START) as (_base, serve, _log):
        assert _allowed(serve.pid) == {str(CPUS[0])}
        assert _allowed(_writer_pid(spool)) == {INITIAL}


def test_without_the_options_nothing_is_pinned(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    env = {"CDS_SPOOL_DIR": str(spool)}
    with serve_process(_args(tmp_path), tmp_path, env=env, timeout=START) as (_base, serve, log):
        writer_pid = _writer_pid(spool)
        assert _allowed(serve.pid) == {INITIAL} and _allowed(writer_pid) == {INITIAL}
        assert WRITER_CPUS_ENV not in _environ(writer_pid)
    assert "CPU affinity" not in log.read_text()


@two_cpus
def test_every_worker_of_several_pins_itself_and_the_supervisor_does_not(tmp_path: Path) -> None:
    worker, writer = str(CPUS[0]), str(CPUS[1])
    spool = tmp_path / "spool"
    args = _args(tmp_path, "--workers", "2", "--worker-cpus", worker, "--writer-cpus", writer)
    env = {"CDS_SPOOL_DIR": str(spool), "CDS_SERVE_SPARE": "0"}
    with serve_process(args, tmp_path, env=env, timeout=START) as (base, parent, _log):
        pids: set[int] = set()

        def both() -> bool:
            pids.add(httpx.get(f"{base}/healthz", timeout=10).json()["worker"]["pid"])
            return len(pids) == 2

        wait_for(both, START, interval=0.1, what="two workers answering", ignoring=(httpx.HTTPError,))
        assert all(_allowed(pid) == {worker} for pid in pids)
        assert _allowed(parent.pid) == {INITIAL}  # it answers nothing
        assert _allowed(_writer_pid(spool)) == {writer}


def _refused(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != WRITER_CPUS_ENV}
    return subprocess.run([sys.executable, "-m", "cds_engine.cli", "serve", "--no-auth", "--db", "none",
                           "--rules", str(RULES), *args], env={**environment, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_a_bad_list_or_a_cpu_not_available_is_refused_at_start_naming_the_option() -> None:
    missing = str(max(CPUS, default=0) + 1)
    for args, env, named in (
        (["--worker-cpus", "1-0"], None, "--worker-cpus"),
        (["--writer-cpus", "one"], None, "--writer-cpus"),
        (["--writer-cpus", missing], None, "--writer-cpus: CPU"),
        (["--worker-cpus", f"0,{missing}"], None, "--worker-cpus: CPU"),
        ([], {WRITER_CPUS_ENV: "x"}, WRITER_CPUS_ENV),
    ):
        done = _refused(*args, env=env)
        assert done.returncode == 2, (args, env, done.stderr[-2000:])
        assert named in done.stderr, (args, env, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
