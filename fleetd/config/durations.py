"""Durations as configuration and agents write them: `250ms`, `30s`, `5m`, `1h30m`."""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")

DURATION_FORM = 'a duration such as "250ms", "30s", "5m" or "1h30m"'


def parse_duration(text: str) -> float:
    """Parse a duration into seconds.

    A duration is one or more numbers, each followed by a unit: `ms`, `s`,
    `m` or `h`. Raises ValueError when `text` is not of that form.
    """
    compact = text.strip()
    if not _WHOLE.fullmatch(compact):
        raise ValueError(f"invalid duration {text!r}: expected {DURATION_FORM}")

    return sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(compact)
    )
