"""Site settings: local policy laid over the packs without editing them.

A hospital may set its own maximum dose, monitoring interval or jurisdiction. Editing the
pack would fork the knowledge; instead ``rules/site.yaml`` (optional) overrides parameters::

    site:
      name: Example General Hospital
      note: Pharmacy & Therapeutics committee decisions
    packs:
      <pack id>:
        max_daily_mg: 60                    # plain value
        egfr_recheck_days: {value: 180, note: "P&T 2026-01-12, minute 4"}

Only parameters the pack declares can be overridden (an unknown name is an error with the
site file's line), and the value must have the parameter's type. The sha256 of the file's
bytes is recorded on every alert (``Alert.site_hash``), so each alert can be traced to the
exact local policy it was raised under; the overrides also enter the pack's content hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from cds_engine.rules.errors import Finding, PackLoadError
from cds_engine.rules.safe_paths import require_inside
from cds_engine.rules.yaml_lines import LineMap, Parsed, YamlError, load_parsed, load_with_lines

__all__ = ["SITE_FILE", "SiteSettings", "load_site", "resolve_site"]

SITE_FILE = "site.yaml"
Scalar = bool | int | float | str


class _Override(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Scalar | list[Scalar]
    note: str = ""


class _SiteInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""
    note: str = ""


class _SiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: _SiteInfo = _SiteInfo()
    packs: dict[str, dict[str, Scalar | list[Scalar] | _Override]] = {}


def _kind(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "text"


@dataclass(frozen=True)
class SiteSettings:
    """A parsed site file (or the empty settings when there is none)."""

    file: Path | None = None
    sha256: str | None = None
    name: str = ""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # pack id -> parameter -> value
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    lines: LineMap = field(default_factory=LineMap)

    def for_pack(self, pack_id: str, declared: Iterable[str] | None = None) -> dict[str, Any]:
        """Overrides of one pack; with ``declared``, only those the pack defines (others are lint errors)."""
        values = self.overrides.get(pack_id, {})
        if declared is None:
            return dict(values)
        known = set(declared)
        return {k: v for k, v in values.items() if k in known}

    def check(self, pack_id: str, parameters: Mapping[str, Any]) -> list[Finding]:
        """Errors for overrides of ``pack_id`` that name no parameter or change its type."""
        out: list[Finding] = []
        if self.file is None:
            return out
        for name, value in self.overrides.get(pack_id, {}).items():
            line = self.lines.line_of(("packs", pack_id, name))
            if name not in parameters:
                hint = ", ".join(sorted(parameters)[:8])
                out.append(Finding(str(self.file), line, None,
                                   f"site setting {pack_id}.{name} overrides no parameter of pack {pack_id}: "
                                   f"fix the name (the pack defines e.g. {hint})"))
                continue
            declared = parameters[name]
            default = getattr(declared, "value", declared)
            if _kind(default) != _kind(value):
                want = _kind(default)
                out.append(Finding(str(self.file), line, None,
                                   f"site setting {pack_id}.{name} is a {_kind(value)} but the parameter is "
                                   f"a {want} (pack default {default!r}): give a {want}"))
        return out

    def unknown_packs(self, pack_ids: Iterable[str]) -> list[Finding]:
        known = set(pack_ids)
        return [Finding(str(self.file), self.lines.line_of(("packs", pid)), None,
                        f"site settings name pack {pid!r}, which is not installed: fix the pack id "
                        f"(installed: {', '.join(sorted(known)) or 'none'})")
                for pid in self.overrides if pid not in known]


def load_site(path: str | Path) -> SiteSettings:
    """Parse a site file; raise :class:`PackLoadError` (file:line findings) if it is malformed."""
    path = Path(path)
    content = require_inside(path, path.parent).read_bytes()
    file = str(path)
    try:
        raw, lines = load_with_lines(content.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PackLoadError([Finding(file, None, None, f"site settings are not UTF-8 text: {exc}")]) from exc
    except YamlError as exc:
        raise PackLoadError([Finding(file, exc.line, None, str(exc))]) from exc
    try:
        parsed = _SiteFile.model_validate(raw or {})
    except ValidationError as exc:
        findings: dict[tuple[Any, ...], Finding] = {}
        for err in exc.errors():
            where = _raw_path(raw, err["loc"])
            findings.setdefault(where, Finding(
                file, lines.line_of(where), None,
                f"site settings {'.'.join(str(p) for p in where) or 'file'}: {err['msg']} — expected "
                "'site: {name, note}' and 'packs: {PACK: {PARAMETER: value or {value, note}}}'"))
        raise PackLoadError(list(findings.values())) from exc
    overrides: dict[str, dict[str, Any]] = {}
    notes: dict[str, dict[str, str]] = {}
    for pack_id, params in parsed.packs.items():
        for name, entry in params.items():
            if isinstance(entry, _Override):
                overrides.setdefault(pack_id, {})[name] = entry.value
                notes.setdefault(pack_id, {})[name] = entry.note
            else:
                overrides.setdefault(pack_id, {})[name] = entry
    return SiteSettings(path, hashlib.sha256(content).hexdigest(), parsed.site.name, overrides, notes, lines)


def _raw_path(raw: Any, loc: Iterable[Any]) -> tuple[Any, ...]:
    """The part of a pydantic error location that exists in the document (union tags dropped)."""
    path: list[Any] = []
    node = raw
    for part in loc:
        in_map = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_map or in_list:
            node = node[part]
            path.append(part)
    return tuple(path)


def resolve_site(directory: str | Path, site: str | Path | bool | None = True) -> SiteSettings:
    """``True``: ``directory/site.yaml`` if present; a path: that file; ``False``/``None``: none."""
    if site is True:
        candidate = Path(directory) / SITE_FILE
        return load_site(candidate) if candidate.is_file() else SiteSettings()
    if not site:
        return SiteSettings()
    return load_site(Path(site))  # type: ignore[arg-type]


def declared_parameters(text: str, parsed: Parsed | None = None) -> dict[str, Any]:
    """Parameter names and defaults a pack text declares (best effort; the compiler reports errors).

    ``parsed``: the text's parse when the caller has it (see :class:`Parsed`), else it is parsed here.
    """
    try:
        raw, _ = load_parsed(text, parsed)
    except YamlError:
        return {}
    params = raw.get("parameters") if isinstance(raw, dict) else None
    if not isinstance(params, dict):
        return {}
    return {k: (v.get("value") if isinstance(v, dict) else v) for k, v in params.items()}
