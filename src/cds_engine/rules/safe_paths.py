"""Rule files stay inside the rules directory, and their content is never echoed (red-team L9).

A pack, vocabulary or site file that is a symlink (or sits under a symlinked directory) pointing
outside the rules directory is refused before it is read: ``ln -s /etc/shadow
rules/<pack>/pack.yaml`` must not put ``/etc/shadow`` into the lint output or the server log.
Findings quote unknown keys only when they look like a key an author would write.
"""

from __future__ import annotations

import re
from pathlib import Path

from cds_engine.rules.errors import Finding, PackLoadError

__all__ = ["require_inside", "shown_key"]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,39}$")


def require_inside(path: Path, root: Path) -> Path:
    """``path`` itself when its real location is inside ``root`` (symlinks resolved); else refused."""
    try:
        real = path.resolve(strict=True)
        inside = real.is_relative_to(root.resolve(strict=True))
    except (OSError, RuntimeError):  # missing, a symlink loop
        inside = path.exists() and not path.is_symlink()
    if not inside:
        raise PackLoadError(
            [Finding(str(path), None, None, "links to a file outside the rules directory: refused, not read")]
        )
    return path


def shown_key(part: object) -> str:
    """A path element of a finding: an index, a plausible key, or a placeholder (never raw content)."""
    if isinstance(part, int):
        return str(part)
    text = str(part)
    return text if _KEY.match(text) else "<unreadable key>"
