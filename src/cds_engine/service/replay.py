"""The ``jti`` replay check: a shared store with a deadline, a failure policy and a per-issuer quota.

Several workers and hosts answer the same EHR, so a token seen by one must be refused by all:
:class:`ReplayGuard` asks a shared :mod:`~cds_engine.service.replay_store` on a small thread pool
of its own (never the event loop, never the evaluation store's threads or connections). The
answer must come within ``timeout_seconds`` (default 50 ms). When it does not — the store is
locked, paused, unreachable or its threads are all busy — ``on_store_failure`` decides:

* ``per-process`` (default): the verdict of this process's own :class:`ReplayCache`, which every
  check consults and records in *first*, under one lock, before the store is asked (re-audit #4:
  the fallback used to be checked apart from the store's answers, so within one process one token
  could pass once through the store and once more through the fallback). Logged as an ERROR and
  counted (``/healthz`` ``jti_replay.store_failures_total``). A database blip must not become no
  advice for anyone; within a process a replay is always caught, while across workers and hosts it
  is caught only through the store: while the store does not answer, each process may accept the
  same token once.
* ``refuse``: the token is refused (401), counted the same way.

After a failure the store is left alone for ``retry_seconds`` (the policy applies at once), so an
outage costs each request nothing rather than the whole deadline.

The quota: at most ``quota_per_issuer`` live ids per issuer (default 100,000). Live counts come
from the store, refreshed by the purge thread every ``purge_seconds`` plus this process's inserts
since; past the quota new tokens are refused rather than old ids forgotten (a flood must not
re-enable replays). Across hosts the count can lag by one purge interval of the others' inserts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from cds_engine.service.replay_store import ReplayStore, open_replay_store

__all__ = ["FAILURE_POLICIES", "ReplayCache", "ReplayGuard", "ReplaySettings", "Verdict"]

log = logging.getLogger("cds_engine.service.auth")

FailurePolicy = Literal["per-process", "refuse"]
FAILURE_POLICIES: tuple[str, ...] = ("per-process", "refuse")
Verdict = Literal["first-use", "replayed", "quota", "store-unavailable"]
DEFAULT_QUOTA = 100_000
MAX_JTI_CHARS = 256
LOG_EVERY_SECONDS = 10.0


@dataclass(frozen=True)
class ReplaySettings:
    """Where seen ids are kept and what happens when that place does not answer."""

    url: str | None = None  # sqlite:///FILE | postgresql://…; None: this process only (one worker)
    timeout_seconds: float = 0.05
    on_store_failure: FailurePolicy = "per-process"
    quota_per_issuer: int = DEFAULT_QUOTA
    purge_seconds: float = 30.0
    retry_seconds: float = 1.0
    threads: int = 4

    def __post_init__(self) -> None:
        if self.on_store_failure not in FAILURE_POLICIES:
            raise ValueError(f"jti_on_store_failure must be one of {FAILURE_POLICIES}")
        if self.timeout_seconds <= 0 or self.quota_per_issuer < 1 or self.threads < 1:
            raise ValueError("replay timeout, quota and threads must be positive")


@dataclass
class ReplayCache:
    """Seen ``(iss, jti)`` pairs of this process until their token expires; per-issuer quota."""

    max_per_issuer: int = DEFAULT_QUOTA
    _seen: dict[tuple[str, str], float] = field(default_factory=dict)
    _per_issuer: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, iss: str, jti: str, expires: float, now: float) -> Verdict:
        with self._lock:
            key = (iss, jti)
            if key in self._seen and self._seen[key] > now:
                return "replayed"
            if key not in self._seen and self._per_issuer[iss] >= self.max_per_issuer:
                self._forget_expired(now)
                if self._per_issuer[iss] >= self.max_per_issuer:
                    return "quota"  # refuse rather than forget: a flood must not re-enable replays
            if key not in self._seen:
                self._per_issuer[iss] += 1
            self._seen[key] = expires
            return "first-use"

    def first_use(self, iss: str, jti: str, expires: float, now: float) -> bool:
        return self.check(iss, jti, expires, now) == "first-use"

    def purge(self, now: float) -> None:
        """Forget expired ids (the guard's purge thread: with a store, every id is recorded here too)."""
        with self._lock:
            self._forget_expired(now)

    def _forget_expired(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if v > now}
        self._per_issuer = Counter(iss for iss, _ in self._seen)


class ReplayGuard:
    """The asynchronous replay check the JWT verifier awaits (see the module docstring)."""

    def __init__(
        self,
        settings: ReplaySettings | None = None,
        store: ReplayStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or ReplaySettings()
        self.clock = clock
        self.local = ReplayCache(max_per_issuer=self.settings.quota_per_issuer)
        self.store = store
        if self.store is None and self.settings.url is not None:
            self.store = open_replay_store(self.settings.url)  # unreachable at start: refuse to start
        self._pool: ThreadPoolExecutor | None = None  # started on first use, again after close()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._skip_until = 0.0
        self._next_log = 0.0
        self._unlogged = 0
        self._counts: dict[str, int] = {}
        self._since_count: Counter[str] = Counter()
        self._stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._purger: threading.Thread | None = None
        if self.store is not None:
            self._refresh()
            self._purger = threading.Thread(target=self._purge_loop, name="cds-jti-purge", daemon=True)
            self._purger.start()

    @property
    def backend(self) -> str:
        return self.store.backend if self.store is not None else "per-process"

    async def check(self, iss: str, jti: str, expires: float) -> Verdict:
        """``first-use`` (recorded), ``replayed``, ``quota``, or ``store-unavailable`` (policy refuse)."""
        now = self.clock()
        if len(jti) > MAX_JTI_CHARS:
            return "quota"  # bounded input: nobody's ids need to be this long
        if self.store is None:
            return self.local.check(iss, jti, expires, now)
        with self._lock:
            if self._counts.get(iss, 0) + self._since_count[iss] >= self.settings.quota_per_issuer:
                self._stats["quota_refused_total"] += 1
                return "quota"
        local: Verdict | None = None
        reason = self._unavailable_reason()
        if reason is None:
            if self.settings.on_store_failure == "per-process":
                # this process first, checked and recorded in one step under the cache's lock: a
                # second use here is refused however the store answers (or does not), so the
                # fallback never accepts a token that a store check in this process also accepts
                local = self.local.check(iss, jti, expires, now)
                if local != "first-use":
                    return local
            try:
                pending = self._submit(iss, jti, expires, now)
                first = await asyncio.wait_for(pending, self.settings.timeout_seconds)
            except TimeoutError:
                reason = f"no answer within {self.settings.timeout_seconds * 1000:.0f} ms"
            except Exception as exc:
                reason = type(exc).__name__
            else:
                if first:
                    with self._lock:
                        self._since_count[iss] += 1
                return "first-use" if first else "replayed"
            with self._lock:
                self._skip_until = time.monotonic() + self.settings.retry_seconds
        return self._on_failure(reason, iss, jti, expires, now, local)

    def _unavailable_reason(self) -> str | None:
        with self._lock:
            if time.monotonic() < self._skip_until:
                return "failed recently"
            if self._in_flight >= self.settings.threads:
                return "all store threads busy"
        return None

    def _submit(self, iss: str, jti: str, expires: float, now: float) -> asyncio.Future[bool]:
        store = self.store
        assert store is not None

        def run() -> bool:
            try:
                return store.first_use(iss, jti, expires, now)
            finally:
                with self._lock:
                    self._in_flight -= 1

        with self._lock:
            self._in_flight += 1
        try:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="cds-jti")
                pool = self._pool
            return asyncio.get_running_loop().run_in_executor(pool, run)
        except BaseException:
            with self._lock:
                self._in_flight -= 1
            raise

    def _on_failure(
        self, reason: str, iss: str, jti: str, expires: float, now: float, local: Verdict | None = None
    ) -> Verdict:
        """The failure policy's verdict; ``local``: this request's own cache verdict, when check()
        already took it (then it is the answer: checking again would find the request's own id)."""
        policy = self.settings.on_store_failure
        with self._lock:
            self._stats["store_failures_total"] += 1
            self._unlogged += 1
            due = time.monotonic() >= self._next_log
            if due:  # an outage at hundreds of calls a second: one ERROR line per interval, with the count
                self._next_log = time.monotonic() + LOG_EVERY_SECONDS
                count, self._unlogged = self._unlogged, 0
        if due:
            log.error(
                "jti replay store (%s) unavailable: %s; policy %s%s (%d check(s) since the last report)",
                self.backend,
                reason,
                policy,
                ": checked against this process only" if policy == "per-process" else ": token refused",
                count,
            )
        if policy == "refuse":
            return "store-unavailable"
        return local if local is not None else self.local.check(iss, jti, expires, now)

    # upkeep
    def _refresh(self) -> None:
        assert self.store is not None
        now = self.clock()
        self.local.purge(now)
        self.store.purge(now)
        counts = self.store.live_counts(now)
        with self._lock:
            self._counts, self._since_count = counts, Counter()

    def _purge_loop(self) -> None:
        while not self._stop.wait(self.settings.purge_seconds):
            try:
                self._refresh()
            except Exception as exc:  # the checks report outages; this only keeps the table small
                log.warning("jti replay store purge failed: %s", type(exc).__name__)

    def stats(self) -> dict[str, Any]:
        """For ``/healthz``: where ids are kept and how often that place failed."""
        with self._lock:
            return {
                "backend": self.backend,
                "on_store_failure": self.settings.on_store_failure,
                "store_failures_total": self._stats["store_failures_total"],
                "quota_refused_total": self._stats["quota_refused_total"],
            }

    def close(self) -> None:
        """Stop the purge thread and close connections (a later check reopens them)."""
        self._stop.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            self.store.close()
