"""CPU affinity for ``serve --worker-cpus`` and ``--writer-cpus``: the store's writer off the answering CPUs.

Why (issue 19 goal 2(a), bench/RESULTS.md "Where the c1 tail comes from"): the answer does not wait for
the store, yet a single client's p99 rose by ~3 ms with the store on, because the client and the server
shared a CPU's time with the writer process whenever the scheduler put them on the writer's CPU —
not its priority (``SCHED_IDLE`` for the writer changed nothing). With the server and client pinned to
one CPU and the writer to another the difference fell to +0.5 ms. A host with spare cores can keep them
apart; a host without any cannot, so this is an option, off by default (then nothing is pinned).

Lists are written as the kernel writes ``Cpus_allowed_list`` (``/proc/PID/status``): ``1``, ``0,2-3``.
Pinning applies to every thread of the process (``sched_setaffinity`` of one thread id pins that thread
only; a thread started later inherits its creator's), and where the platform has no
``os.sched_setaffinity`` it is a warning, never a reason not to serve.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from contextlib import suppress

__all__ = ["WRITER_CPUS_ENV", "available_cpus", "check_cpus", "format_cpus", "parse_cpus", "pin_from_env",
           "pin_process", "supported", "writer_cpus"]

log = logging.getLogger("cds_engine.cpu_affinity")

WRITER_CPUS_ENV = "CDS_WRITER_CPUS"  # the writer process pins itself to this list at start
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")


def supported() -> bool:
    """Whether this platform can pin a process (Linux: yes)."""
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def parse_cpus(text: str) -> frozenset[int]:
    """``"1"``, ``"0,2-3"`` → the CPU numbers; ValueError for anything else (empty, ``3-1``, ``x``)."""
    cpus: set[int] = set()
    for part in text.split(","):
        match = _RANGE.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a CPU list (e.g. 1 or 0,2-3)")
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if last < first:
            raise ValueError(f"{text!r}: the range {part.strip()} runs backwards")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpus(cpus: Iterable[int]) -> str:
    """The kernel's list form (``0,2-3``) of ``cpus``: what ``Cpus_allowed_list`` shows once pinned."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    start = previous = None
    for cpu in [*ordered, None]:
        if cpu is not None and previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    return ",".join(parts)


def available_cpus() -> frozenset[int] | None:
    """The CPUs this process may run on now, or None where the platform cannot tell."""
    if not supported():
        return None
    return frozenset(os.sched_getaffinity(0))


def check_cpus(text: str, option: str, available: frozenset[int] | None) -> frozenset[int]:
    """``text`` parsed, every CPU in ``available`` (None: not checked); ValueError naming ``option``.

    Why at start: a CPU that is offline or outside this container's cpuset would otherwise show as a
    writer that never pins (or a kernel error) long after the operator has looked away."""
    try:
        cpus = parse_cpus(text)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from exc
    if available is not None and not cpus <= available:
        raise ValueError(f"{option}: CPU {format_cpus(cpus - available)} not available to this process "
                         f"(available: {format_cpus(available)})")
    return cpus


def writer_cpus(writer: frozenset[int] | None, worker: frozenset[int] | None,
                initial: frozenset[int] | None) -> str | None:
    """What the writer process is told to pin itself to (:data:`WRITER_CPUS_ENV`), or None (nothing).

    With only the workers pinned the writer gets the CPUs this process started with: it is started —
    and restarted — by a process that may itself be a pinned worker (``serve`` with one worker, a
    benchmark's server) and would otherwise inherit the workers' CPUs, the opposite of the point."""
    if writer is not None:
        return format_cpus(writer)
    if worker is not None and initial is not None:
        return format_cpus(initial)
    return None


def pin_process(cpus: frozenset[int], what: str) -> bool:
    """Pin every thread of this process to ``cpus``; logged at INFO. False (a WARNING) where unsupported
    or refused by the kernel: the process goes on unpinned."""
    if not supported():
        log.warning("%s: CPU pinning is not available on this platform; %s ignored", what, format_cpus(cpus))
        return False
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # no /proc: the calling thread (start-up: the only one)
    try:
        for tid in threads:
            with suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus)
    except OSError as exc:
        log.warning("%s: CPU affinity %s refused (%s); running unpinned", what, format_cpus(cpus), exc)
        return False
    log.info("%s [%d]: CPU affinity %s", what, os.getpid(), format_cpus(os.sched_getaffinity(0)))
    return True


def pin_from_env(value: str | None, what: str) -> bool:
    """Pin this process to ``value`` (:data:`WRITER_CPUS_ENV`) when set. A list that does not parse is
    logged and ignored: like the writer's niceness, where it runs is a speed matter, never a reason
    for the store to stop writing (``serve`` refuses a bad list before it starts the writer)."""
    if value is None or not value.strip():
        return False
    try:
        cpus = parse_cpus(value)
    except ValueError as exc:
        log.warning("%s: %s=%r ignored (%s); running unpinned", what, WRITER_CPUS_ENV, value, exc)
        return False
    return pin_process(cpus, what)
