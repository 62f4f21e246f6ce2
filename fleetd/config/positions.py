"""Find where a key is set in a TOML file, for error messages.

tomllib reports positions only for syntax errors. A value of the wrong type
is found after parsing, so this module scans the file's lines for the
table header or `key =` line that sets it. It understands table headers,
dotted and quoted keys. A key set inside an inline table or a multi-line
value is reported at the nearest enclosing key that the scan finds.
"""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"\[\[?\s*(.+?)\s*\]\]?\s*(?:#.*)?$")
_KEY_PART = re.compile(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)')


def split_key(text: str) -> tuple[str, ...]:
    """Split a TOML key such as `workflows."a b".path` into its parts."""
    return tuple(
        quoted or literal or bare for quoted, literal, bare in _KEY_PART.findall(text)
    )


def locate_key(path: Path, key_path: tuple[str, ...]) -> tuple[int, int] | None:
    """Return the line and column (from 1) where `key_path` is set in `path`.

    Falls back to the longest leading part of `key_path` that the scan
    finds; returns None when the file cannot be read or nothing matches.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    found: dict[tuple[str, ...], tuple[int, int]] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        column = len(line) - len(line.lstrip()) + 1
        header = _HEADER.match(stripped)
        if header:
            table = split_key(header.group(1))
            key = table
        elif "=" in stripped:
            key = table + split_key(stripped.split("=", 1)[0])
        else:
            continue
        # `[workflow.requests]` also defines the table `workflow`, which
        # no line of its own names.
        for length in range(1, len(key) + 1):
            found.setdefault(key[:length], (number, column))
    for length in range(len(key_path), 0, -1):
        position = found.get(key_path[:length])
        if position is not None:
            return position

    return None
