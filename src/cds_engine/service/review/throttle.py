"""Sign-in throttling and the password-check pool (security issue 15, item 3; red-team M2, L5).

Online guessing is slowed, never turned into a lockout an attacker could use against a
pharmacist:

* per (account, client address): after 5 failures each further attempt waits a delay that
  doubles (1 s, 2 s, 4 s … at most 60 s) from the last failure; a success clears it;
* per client address: at most 20 attempts a minute, whatever the account;
* per account across addresses: past 60 failures in an hour, an address that has not signed in to
  that account successfully before waits 60 s between attempts (a delay, not a lock) — the
  pharmacist's own workstation is not slowed by someone guessing elsewhere;
* a refused attempt is answered 429 with ``Retry-After`` and costs no password check.

The client address is the connection's peer; uvicorn replaces it by ``X-Forwarded-For`` only when
the peer is in ``--forwarded-allow-ips`` (so a client cannot pick its own address).

Password checks (argon2, 64 MiB each) run on a pool of 2 threads with a queue of 8: more waiting
checks are answered 429 at once, so a flood cannot use more than 2 × 64 MiB or the threads the
hook service needs. Failed sign-ins are audited in aggregate (:meth:`SignInThrottle.failure`
says when a row is due): the first failure of a (account, address) pair in a 10-minute window,
then one row with the count when the window closes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["Busy", "PasswordPool", "SignInThrottle", "ThrottlePolicy"]

T = TypeVar("T")


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 5  # per (account, address) before the doubling delay starts
    first_delay_seconds: float = 1.0
    max_delay_seconds: float = 60.0
    address_attempts_per_minute: int = 20
    account_failures_per_hour: int = 60
    account_delay_seconds: float = 60.0
    audit_window_seconds: float = 600.0
    max_keys: int = 100_000  # bounded memory: the oldest entries are forgotten first


@dataclass
class _Pair:
    failures: int = 0
    last_failure: float = 0.0
    window_start: float = 0.0
    window_count: int = 0  # failures in the audit window after the first (the first is written at once)


@dataclass
class _Account:
    failures: deque[float] = field(default_factory=deque)
    known: dict[str, float] = field(default_factory=dict)  # address -> last successful sign-in


class SignInThrottle:
    """In-memory, per process (like the JWT replay cache): run one process per address."""

    def __init__(
        self, policy: ThrottlePolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or ThrottlePolicy()
        self.clock = clock
        self._lock = threading.Lock()
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._addresses: OrderedDict[str, deque[float]] = OrderedDict()
        self._accounts: OrderedDict[str, _Account] = OrderedDict()

    @staticmethod
    def _bounded(table: OrderedDict, key: object, make: Callable[[], T], limit: int) -> T:  # type: ignore[type-arg]
        value = table.get(key)
        if value is None:
            value = table[key] = make()
            while len(table) > limit:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return value  # type: ignore[no-any-return]

    def wait_seconds(self, account: str, address: str) -> float:
        """0 when an attempt may go ahead now (and it is counted); else seconds to wait (429)."""
        p, now = self.policy, self.clock()
        account = account.lower()
        with self._lock:
            recent = self._bounded(self._addresses, address, deque, p.max_keys)
            while recent and now - recent[0] >= 60:
                recent.popleft()
            waits = [0.0]
            if len(recent) >= p.address_attempts_per_minute:
                waits.append(60 - (now - recent[0]))
            pair = self._pairs.get((account, address))
            if pair is not None and pair.failures >= p.free_failures:
                extra = pair.failures - p.free_failures
                delay = min(p.max_delay_seconds, p.first_delay_seconds * 2 ** min(extra, 30))
                waits.append(pair.last_failure + delay - now)
            state = self._accounts.get(account)
            if state is not None and address not in state.known:
                while state.failures and now - state.failures[0] >= 3600:
                    state.failures.popleft()
                if len(state.failures) >= p.account_failures_per_hour:
                    waits.append(state.failures[-1] + p.account_delay_seconds - now)
            wait = max(waits)
            if wait <= 0:
                recent.append(now)
            return max(0.0, wait)

    def failure(self, account: str, address: str) -> int | None:
        """Count a failed sign-in; the number of failures to audit now (None: nothing to write yet)."""
        p, now = self.policy, self.clock()
        account = account.lower()
        with self._lock:
            pair = self._bounded(self._pairs, (account, address), _Pair, p.max_keys)
            pair.failures += 1
            pair.last_failure = now
            state = self._bounded(self._accounts, account, _Account, p.max_keys)
            state.failures.append(now)
            while len(state.failures) > p.account_failures_per_hour * 2:
                state.failures.popleft()
            if pair.window_start and now - pair.window_start < p.audit_window_seconds:
                pair.window_count += 1
                return None
            flushed = pair.window_count
            pair.window_start, pair.window_count = now, 0
            return 1 + flushed  # this failure, plus the ones counted in the window that just closed

    def success(self, account: str, address: str) -> int:
        """Clear the pair's delay and remember the address; failures still to audit (0: none)."""
        now = self.clock()
        account = account.lower()
        with self._lock:
            pair = self._pairs.pop((account, address), None)
            state = self._bounded(self._accounts, account, _Account, self.policy.max_keys)
            state.known[address] = now
            if len(state.known) > 64:
                oldest = min(state.known, key=state.known.__getitem__)
                del state.known[oldest]
            return pair.window_count if pair is not None else 0


class Busy(Exception):
    """The password-check queue is full: answer 429."""


class PasswordPool:
    """Password checks on ``threads`` threads with at most ``queue`` more waiting."""

    def __init__(self, threads: int = 2, queue: int = 8) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="cds-argon2")
        self._slots = threading.BoundedSemaphore(threads + queue)

    def run(self, fn: Callable[[], T]) -> T:
        if not self._slots.acquire(blocking=False):
            raise Busy
        try:
            return self._executor.submit(fn).result()
        finally:
            self._slots.release()
