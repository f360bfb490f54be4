"""``serve --writer process``: the writer process's entry point, logging the way ``serve`` logs.

:mod:`cds_engine.store.writer_process` holds the writer itself; the store knows no web layer, so the
``--log-level``/``--log-format`` of ``serve`` (:mod:`cds_engine.service.log_format`) are applied here,
one layer up (:data:`LOG_ENV` carries them from ``serve``: ``LEVEL:FORMAT``).
"""

from __future__ import annotations

import os
import sys

from cds_engine.service.log_format import configure_logging
from cds_engine.store import writer_process

__all__ = ["LOG_ENV", "MODULE", "main"]

LOG_ENV = "CDS_WRITER_LOG"
MODULE = "cds_engine.commands.serve_writer"


def main(argv: list[str] | None = None) -> int:
    level, _, fmt = (os.environ.get(LOG_ENV) or "info:text").partition(":")
    configure_logging(level or "info", fmt or "text")
    return writer_process.main(argv, configure=False)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
