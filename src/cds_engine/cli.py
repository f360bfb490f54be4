"""``cds-engine`` command line (typer). Wiring only: each command calls the library.

Commands live in :mod:`cds_engine.commands`; each module there exposes ``register(app)`` so
the service, batch and rule-authoring commands stay in their own files.
"""

from __future__ import annotations

from cds_engine import allocator

allocator.configure()  # before any command module imports polars: jemalloc reads it when polars loads

import importlib  # noqa: E402
import pkgutil  # noqa: E402

import typer  # noqa: E402

from cds_engine import commands  # noqa: E402

__all__ = ["app"]

app = typer.Typer(
    name="cds-engine",
    help="Clinical decision support: evaluate patients against declarative rule packs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
rules_app = typer.Typer(help="Validate, test and document rule packs.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")

for _module in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
    # a command module exposes ``register``; a module without one is a helper of a command
    _register = getattr(importlib.import_module(f"{commands.__name__}.{_module}"), "register", None)
    if _register is not None:
        _register(app, rules_app)


if __name__ == "__main__":  # pragma: no cover
    app()
