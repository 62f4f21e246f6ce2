"""Values of the agent language and Perl's rules for them.

FleetConf agents were evaluated by Perl, so a value is a scalar (string or
number), undefined, or a list. Truth, stringification and numification
follow Perl 5, because agents rely on them: `"0"` is false, `"10" = "10.0"`
is true and `0` interpolates as `0`.
"""

from __future__ import annotations

import json
import math
import re
from typing import TypeAlias, Union

# A recursive alias needs Union with string forward references on Python 3.11.
Value: TypeAlias = Union[None, str, int, float, list["Value"], dict[str, "Value"]]  # noqa: UP007

# Perl's looks_like_number: optional blanks, sign, digits with an optional
# fraction and exponent (or Inf/Infinity/NaN), then optional blanks. Perl's
# blanks and digits are ASCII ones (re.ASCII), so "\u0661" (the Arabic-Indic
# digit one) and a leading no-break space make a string that is not a number.
_NUMBER_RE = re.compile(
    r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)\s*\Z",
    re.IGNORECASE | re.ASCII,
)
# The prefix that Perl's numification reads from a string; the rest is ignored.
_NUMERIC_PREFIX_RE = re.compile(
    r"\s*([+-]?)(?:(\d+)(\.\d*)?|(\.\d+))([eE][+-]?\d+)?"
    r"|\s*([+-]?)(inf(?:inity)?|nan)",
    re.IGNORECASE | re.ASCII,
)
# Perl's looks_like_number accepts this exact text, which numifies to 0
# without a warning (srand returns it for a seed of 0, as in Perl).
ZERO_BUT_TRUE = "0 but true"


def truth(value: Value) -> bool:
    """Return Perl's truth of `value`: undefined, "", "0" and 0 are false."""
    if value is None:
        return False
    if isinstance(value, str):
        return value != "" and value != "0"
    if isinstance(value, (int, float)):
        return value != 0
    return True


def format_number(number: float) -> str:
    """Format a number as Perl prints it (`%.15g` for floats)."""
    if isinstance(number, bool):
        return "1" if number else ""
    if isinstance(number, int):
        return str(number)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Inf" if number > 0 else "-Inf"
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.15g}"


def render(value: Value) -> str:
    """Return the text of `value`, as interpolation shows it.

    0 is "0", undefined is "", a list joins its rendered items with spaces
    and a dict renders as JSON.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return format_number(value)
    if isinstance(value, list):
        return " ".join(render(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def looks_like_number(value: Value) -> bool:
    """Tell whether Perl's `looks_like_number` holds for `value`."""
    if value is None or isinstance(value, (list, dict)):
        return False
    if isinstance(value, (int, float)):
        return True
    return _NUMBER_RE.match(value) is not None or value == ZERO_BUT_TRUE


def to_number(value: Value) -> int | float:
    """Numify `value` as Perl does: the numeric prefix of its text, else 0."""
    return _numify(value)[0]


def _numify(value: Value) -> tuple[int | float, bool]:
    """Return `value` numified, and whether Perl holds the number as a double.

    A number beyond 64 bits is a double, and so is text with Inf, NaN or a
    decimal point without an exponent. Text with an exponent whose value
    is a whole number within 64 bits ("1e18", "1.5e18") is read as that
    integer, as perl 5.36 compares it.
    """
    if value is None:
        return 0, False
    if isinstance(value, bool):
        return int(value), False
    if isinstance(value, int):
        number = perl_integer(value)  # a JSON integer beyond 64 bits
        return number, isinstance(number, float)
    if isinstance(value, float):
        return value, True
    if isinstance(value, (list, dict)):
        return len(value), False
    match = _NUMERIC_PREFIX_RE.match(value)
    if match is None:
        return 0, False
    if match.group(7):
        sign = -1.0 if match.group(6) == "-" else 1.0
        word = match.group(7).lower()
        return (math.nan if word == "nan" else sign * math.inf), True
    sign_text, whole, fraction = match.group(1, 2, 3)
    exponent = match.group(5)
    if whole is not None and fraction is None and exponent is None:
        number = perl_integer(int(sign_text + whole))
        return number, isinstance(number, float)
    # Perl keeps an integral result in an integer (IV) where it fits, so
    # "1e15" + 0 prints as 1000000000000000.
    number = normalize_number(float(match.group(0)))
    if exponent is not None:
        return number, isinstance(number, float) and not (
            number.is_integer() and IV_MIN <= number <= UV_MAX
        )

    return number, True


def number_literal(text: str) -> int | float:
    """Return the value of a number written in an agent, as Perl reads it.

    A decimal is a number, not its text: `2.50` is 2.5 and prints as
    `2.5`, `0.0` is false, and `1.0` is 1.
    """
    if "." not in text:
        return perl_integer(int(text))

    return normalize_number(float(text))


def to_integer(value: Value) -> int:
    """Numify `value` and truncate it toward zero, as Perl's `int` does."""
    number = to_number(value)
    if isinstance(number, float):
        if math.isnan(number) or math.isinf(number):
            raise ValueError(f"cannot convert {format_number(number)} to an integer")
        return int(number)
    return number


#: The integers Perl keeps exact: a signed (IV) or unsigned (UV) 64-bit one.
IV_MIN = -(2**63)
UV_MAX = 2**64 - 1


def perl_integer(number: int) -> int | float:
    """Return `number` as Perl stores it: exact in 64 bits, else a double."""
    if IV_MIN <= number <= UV_MAX:
        return number

    return float(number)


def normalize_number(number: float) -> int | float:
    """Turn an integral float into an int, as Perl keeps integer results."""
    if isinstance(number, float) and number.is_integer() and abs(number) < 2**63:
        return int(number)
    return number


def numbers_to_compare(left: Value, right: Value) -> tuple[int | float, int | float]:
    """Return two values that look like numbers as Perl compares them.

    When either is a double (`_numify`), both are: "18446744073709551616"
    equals "18446744073709551617", which Python's exact comparison of
    integers would tell apart.
    """
    a, left_double = _numify(left)
    b, right_double = _numify(right)
    if left_double or right_double:
        return float(a), float(b)

    return a, b


def compare_values(op: str, left: Value, right: Value) -> bool:
    """Compare two defined values: numerically when both look like numbers.

    Lists and dicts compare by their rendered text.
    """
    a: int | float | str
    b: int | float | str
    if looks_like_number(left) and looks_like_number(right):
        a, b = numbers_to_compare(left, right)
    else:
        a = render(left)
        b = render(right)
    if op == "=":
        return a == b
    if op == "<>":
        return a != b
    if op == "<":
        return a < b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    if op == "<=":
        return a <= b  # type: ignore[operator]
    if op == ">=":
        return a >= b  # type: ignore[operator]
    raise ValueError(f"unknown comparison operator {op!r}")
