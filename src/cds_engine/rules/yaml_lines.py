"""Safe YAML loading that remembers the line of every value.

Why not ``yaml.safe_load``: rule authors need errors as ``file:line: rule-id: message``, and
pydantic reports *paths* (``rules → 3 → tiers → 0 → when``). Composing the node tree keeps
each node's line, so a path can be turned back into a line.

Safety: only the YAML core tags are accepted and aliases are refused outright. Rule packs have
no use for either, and refusing them closes the "billion laughs" alias bomb and arbitrary
object construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["LineMap", "Parsed", "YamlError", "load_parsed", "load_with_lines", "parse_once"]

Path = tuple[str | int, ...]


class YamlError(ValueError):
    """The text is not acceptable YAML for a rule pack (syntax, alias, tag)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


@dataclass
class LineMap:
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """Line of the deepest prefix of ``path`` that exists in the document."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


_CORE = "tag:yaml.org,2002:"
_ALLOWED_TAGS = frozenset(
    _CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
)


_STR = _CORE + "str"


def load_with_lines(text: str) -> tuple[Any, LineMap]:
    """Parse YAML text into plain Python data and a map from paths to 1-based line numbers."""
    # libyaml's parser when present (same nodes and marks, ~10x faster); PyYAML's pure-Python one otherwise
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise YamlError(
            f"YAML syntax error: {getattr(exc, 'problem', exc)}", mark.line + 1 if mark else None
        ) from exc
    finally:
        loader.dispose()
    lines = LineMap()
    if node is None:
        return None, lines
    seen: set[int] = set()
    constructor = yaml.constructor.SafeConstructor()  # scalars only: one instance serves every node
    line_at = lines.lines
    mapping_node, sequence_node, scalar_node = yaml.MappingNode, yaml.SequenceNode, yaml.ScalarNode
    merge_tag = _CORE + "merge"

    def walk(n: yaml.Node, path: Path) -> Any:
        if id(n) in seen:
            raise YamlError("YAML aliases/anchors are not allowed in rule packs", n.start_mark.line + 1)
        seen.add(id(n))
        if n.tag not in _ALLOWED_TAGS:
            raise YamlError(f"YAML tag {n.tag!r} is not allowed in rule packs", n.start_mark.line + 1)
        line_at[path] = n.start_mark.line + 1
        if type(n) is scalar_node:  # the common case first; what walk_scalar does, without its checks
            return n.value if n.tag == _STR else constructor.construct_object(n)
        if isinstance(n, mapping_node):
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                if key_node.tag == merge_tag or key_node.value == "<<":
                    raise YamlError(
                        "YAML merge keys are not allowed in rule packs", key_node.start_mark.line + 1
                    )
                key = walk_scalar(key_node)
                if key in out:
                    raise YamlError(f"duplicate key {key!r}", key_node.start_mark.line + 1)
                key_path = (*path, key)
                out[key] = walk(value_node, key_path)
                line_at[key_path] = key_node.start_mark.line + 1
            return out
        if isinstance(n, sequence_node):
            return [walk(item, (*path, i)) for i, item in enumerate(n.value)]
        return walk_scalar(n)

    def walk_scalar(n: yaml.Node) -> Any:
        if not isinstance(n, scalar_node):
            raise YamlError("mapping keys must be plain scalars", n.start_mark.line + 1)
        if n.tag not in _ALLOWED_TAGS:
            raise YamlError(f"YAML tag {n.tag!r} is not allowed in rule packs", n.start_mark.line + 1)
        # a string's value is the node's own text: what SafeConstructor would build, minus its bookkeeping
        return n.value if n.tag == _STR else constructor.construct_object(n)

    return walk(node, ()), lines


@dataclass(frozen=True)
class Parsed:
    """One parse of a pack text (its data and lines, or the error), handed on so it is not parsed again.

    Why: loading a rules directory reads each pack's parameters before compiling it (the site file
    needs them), and both used to parse the same text — half of all YAML work at every start.
    """

    text: str
    raw: Any = None
    lines: LineMap = field(default_factory=LineMap)
    error: YamlError | None = None


def parse_once(text: str) -> Parsed:
    """Parse ``text`` once; a YAML error is kept (and raised again by :func:`load_parsed`)."""
    try:
        raw, lines = load_with_lines(text)
    except YamlError as exc:
        return Parsed(text, error=exc)
    return Parsed(text, raw, lines)


def load_parsed(text: str, parsed: Parsed | None) -> tuple[Any, LineMap]:
    """:func:`load_with_lines` of ``text``, reusing ``parsed`` when it is the parse of this very text."""
    if parsed is None or (parsed.text is not text and parsed.text != text):
        return load_with_lines(text)
    if parsed.error is not None:
        raise YamlError(str(parsed.error), parsed.error.line)
    return parsed.raw, parsed.lines
