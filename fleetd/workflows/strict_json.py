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
import sys
from typing import Any


def load_json(data: str | bytes) -> Any:
    """Parse `data`, raising ValueError on NaN, Infinity or a number out of range."""
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite)
    except ValueError as error:
        if _beyond_digit_limit(error):
            raise _digit_limit_error() from None
        raise


def dump_json(value: Any, *, indent: int | None = None) -> str:
    """Serialize `value`, raising ValueError on a NaN or infinite float."""
    try:
        return json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as error:
        if _beyond_digit_limit(error):
            raise _digit_limit_error() from None
        raise


def _beyond_digit_limit(error: ValueError) -> bool:
    # Python's own message for it suggests sys.set_int_max_str_digits(),
    # which no operator of fleetd can call.
    return "integer string conversion" in str(error)


def _digit_limit_error() -> ValueError:
    limit = sys.get_int_max_str_digits()

    return ValueError(f"an integer has more than {limit} digits, the limit")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text} is out of range")

    return number
