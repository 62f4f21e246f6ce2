"""Strict JSON for record data: no NaN, no Infinity, no number beyond a double.

Python's json module accepts `NaN` and `Infinity`, reads `1e999` as
infinity, and writes both back as `NaN` and `Infinity`. RFC 8259 allows
neither, so strict readers reject such a file. Records read with
`load_json` and written with `dump_json` stay valid JSON for the
programs that share them.
"""

from __future__ import annotations

import json
import math
from typing import Any


def load_json(data: str | bytes) -> Any:
    """Parse `data`, raising ValueError on NaN, Infinity or a number out of range."""
    return json.loads(data, parse_constant=_reject_constant, parse_float=_finite)


def dump_json(value: Any, *, indent: int | None = None) -> str:
    """Serialize `value`, raising ValueError on a NaN or infinite float."""
    return json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text} is out of range")

    return number
