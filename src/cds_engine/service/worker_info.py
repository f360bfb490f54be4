"""Which worker process answered and which rules it serves (``/healthz`` ``worker``).

With ``serve --workers N`` every worker loads the packs and hot-reloads them on its own; an
operator (and the tests) must be able to see, worker by worker, that all of them serve the same
generation and that a refused reload left each on its last good packs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["worker_state"]


def worker_state(engine_provider: Callable[[], Any]) -> dict[str, Any]:
    """pid, reload generation, and whether the last reload was refused (the holder's findings count)."""
    last_error = getattr(engine_provider, "last_error", None)
    return {
        "pid": os.getpid(),
        "rules_generation": getattr(engine_provider, "generation", None),
        "rules_reload_refused": last_error is not None,
        "rules_reload_findings": len(last_error or ()),
    }
