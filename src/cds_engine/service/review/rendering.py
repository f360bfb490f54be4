"""Jinja2 for the review pages, autoescaping *always* on: patient references, summaries and
comments are data, never markup."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader

__all__ = ["render", "safe_url"]


def safe_url(url: str | None) -> str | None:
    """Only http(s) links are rendered as links (no ``javascript:`` or ``data:`` URLs)."""
    if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
        return url
    return None


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


_env = Environment(
    loader=PackageLoader("cds_engine.service.review", "templates"),
    autoescape=True,  # every template, whatever its extension
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["when"] = _when
_env.filters["safe_url"] = safe_url


def render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(**context)
