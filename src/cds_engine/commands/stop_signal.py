"""A stop signal held back until clean-up has run, then obeyed: for ``serve`` and its workers.

uvicorn shuts down gracefully on SIGTERM and then raises the signal again with the handler it
found installed — by default the one that ends the process at once, which skipped the clean-up
(the store was not closed: the writer process found its parent gone and logged a warning; the
Prometheus directory stayed in the temporary folder; a worker's ``atexit`` release never ran).
With :func:`raise_stop_signal` installed, uvicorn's re-raise becomes :class:`StopSignal`, the
``finally`` blocks run, and :func:`end_by` raises the signal again with the default handler, so
the process still ends *by* SIGTERM (what process managers expect).
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["StopSignal", "end_by", "raise_stop_signal"]


class StopSignal(BaseException):
    """The signal, as an exception (a BaseException: no handler swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def raise_stop_signal(signum: int, _frame: Any) -> None:
    """The signal handler that turns the signal into :class:`StopSignal`."""
    raise StopSignal(signum)


def end_by(stop: StopSignal) -> None:
    """Everything is cleaned up: end the process the way the signal asked."""
    signal.signal(stop.signum, signal.SIG_DFL)
    signal.raise_signal(stop.signum)
