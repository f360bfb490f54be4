"""A small pool of long-lived threads for the CPU work of a hook call (security issue 15, H1).

Draft validation, fact mapping and evaluation of a large call must not run on the event loop: it
would stall every other caller and ``/healthz`` (a call under the size bound of
:class:`~cds_engine.service.limits.HookLimits` costs less inline than the hop here). They run
here instead, on a fixed number of threads that live as long as the service — not on anyio's
default pool, whose threads expire after 10 s idle (each new thread would build its own durable
ruleset again, a cost on the next clinician's order and memory the engine keeps until it is
closed) and which sync endpoints such as ``/healthz`` share. ``warm`` builds every thread's
rulesets at start-up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

__all__ = ["WorkerPool"]

T = TypeVar("T")


class WorkerPool:
    def __init__(self, threads: int, name: str = "cds-eval") -> None:
        self.threads = max(1, threads)
        self._name = name
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def _executor(self) -> ThreadPoolExecutor:
        """The live executor; a pool closed at one shutdown starts afresh at the next start-up."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self._name)
            return self._pool

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a pool thread; the event loop stays free meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args))

    def warm(self, fn: Callable[[], object], timeout: float = 60.0) -> None:
        """Run ``fn`` once on *every* pool thread (a barrier keeps each call on its own thread)."""
        barrier = threading.Barrier(self.threads)

        def once() -> None:
            barrier.wait(timeout)
            fn()

        for future in [self._executor.submit(once) for _ in range(self.threads)]:
            future.result(timeout)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
