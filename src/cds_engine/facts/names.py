"""Medicine and condition names for card text: which medicines make up a class count.

A prescriber acts on the names of the interacting medicines, not on "class: 1". Names
come from the record (the coding's display or text), else the vocabulary's product display, else
the code itself. They are untrusted text bound for a markdown card: control characters are
dropped, markdown and HTML punctuation escaped, each name shortened, and a list capped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from cds_engine.facts.model import Coding
from cds_engine.facts.text_cache import CLIENT_TEXT_CHARS, bounded_text_cache
from cds_engine.vocabulary import Vocabulary

__all__ = ["MAX_NAMES", "MAX_NAME_CHARS", "class_names", "join_names", "medicine_name"]

MAX_NAME_CHARS = 60
MAX_NAMES = 4
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#|!~])")


# pure; many drafts name the same co-medicines again and again (client texts: facts/text_cache.py)
@bounded_text_cache(maxsize=4096, max_chars=CLIENT_TEXT_CHARS)
def _clean(text: str) -> str:
    """``text`` as a card shows a name: control characters blanked, one line, cut, escaped."""
    kept = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    kept = " ".join(kept.split())
    if len(kept) > MAX_NAME_CHARS:
        kept = kept[: MAX_NAME_CHARS - 1].rstrip() + "…"
    return _MARKDOWN.sub(r"\\\1", kept)


def medicine_name(coding: Coding | None, vocab: Vocabulary, unnamed: str = "unnamed medicine") -> str:
    """A short, escaped name for one medicine or condition (``unnamed`` when the record gives none)."""
    if coding is None:
        return unnamed
    if coding.display and coding.display.strip():
        return _clean(coding.display)
    product = vocab.product(coding)
    if product is not None and product.display:
        return _clean(product.display)
    if coding.code and coding.code.strip():
        return _clean(f"code {coding.code}")
    return unnamed


def join_names(names: Iterable[str]) -> str:
    """Distinct names in order, '; '-separated, at most MAX_NAMES (then '+N more')."""
    unique = list(dict.fromkeys(names))
    shown = "; ".join(unique[:MAX_NAMES])
    return shown + (f"; +{len(unique) - MAX_NAMES} more" if len(unique) > MAX_NAMES else "")


def class_names(
    entries: Iterable[tuple[Coding | None, Iterable[str]]], vocab: Vocabulary, family: str = "meds_named"
) -> dict[str, str]:
    """``<family>.<group>`` → the joined names of that group's entries (medicines, conditions)."""
    by_class: dict[str, list[str]] = {}
    unnamed = "unnamed condition" if family == "cond_named" else "unnamed medicine"
    for coding, classes in entries:
        name = medicine_name(coding, vocab, unnamed)
        for cls in sorted(classes):
            by_class.setdefault(cls, []).append(name)
    return {f"{family}.{cls}": join_names(names) for cls, names in by_class.items()}
