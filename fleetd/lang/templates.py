"""Templates: text with `${name}` references, and string literals.

A reference is `${name}` or `${ name }` where the name is a dotted path
such as `this.uid`, or a match group such as `1`. Text that looks like a
reference but is not one (`${}`, `${a b}`) stays as written, as it did in
FleetConf.
"""

from __future__ import annotations

import functools
import re
import sys

from fleetd.lang.ast import Literal, Template, Variable

REFERENCE_RE = re.compile(
    r"\$\{\s*([A-Za-z0-9_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*\}"
)

# Escapes of double-quoted strings, besides `\xHH` and `\x{HHHH}`. Any other
# escaped character stands for itself, as in FleetConf: `\"` is a quote and
# `\$` a dollar that starts no reference.
_HEX_ESCAPE_RE = re.compile(r"\\x(?:\{([0-9A-Fa-f]{1,6})\}|([0-9A-Fa-f]{1,2}))")
_STRING_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}


@functools.lru_cache(maxsize=16_384)
def variable_path(name: str) -> tuple[str, ...]:
    """Split a dotted variable name into its interned parts.

    Equal names get one shared tuple, as long as the cache keeps it.
    """
    return tuple([sys.intern(part) for part in name.split(".")])


def _variable(name: str, column: int) -> Variable:
    return Variable(variable_path(name), column)


def template_from_text(text: str, column: int) -> Template:
    """Build a template from raw text, where only `${name}` is special.

    `column` is where `text` starts in its line.
    """
    parts: list[str | Variable] = []
    position = 0
    for match in REFERENCE_RE.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()])
        parts.append(_variable(match.group(1), column + match.start()))
        position = match.end()
    if position < len(text) or not parts:
        parts.append(text[position:])
    return Template(tuple(parts), column)


def string_literal(token: str, column: int) -> Literal | Template:
    """Build the value of a double-quoted string token, quotes included.

    `column` is where the opening quote is in its line.

    A string without references becomes a `Literal`, else a `Template`.
    """
    body = token[1:-1]
    if "\\" not in body and "${" not in body:
        return Literal(body, column)
    parts: list[str | Variable] = []
    chunk: list[str] = []
    index = 0
    length = len(body)
    while index < length:
        char = body[index]
        if char == "\\" and index + 1 < length:
            escaped = body[index + 1]
            hex_match = _HEX_ESCAPE_RE.match(body, index)
            if hex_match is not None:
                digits = hex_match.group(1) or hex_match.group(2)
                chunk.append(chr(min(int(digits, 16), 0x10FFFF)))
                index = hex_match.end()
                continue
            chunk.append(_STRING_ESCAPES.get(escaped, escaped))
            index += 2
            continue
        if char == "$":
            match = REFERENCE_RE.match(body, index)
            if match is not None:
                if chunk:
                    parts.append("".join(chunk))
                    chunk = []
                # +1 for the opening quote
                parts.append(_variable(match.group(1), column + 1 + index))
                index = match.end()
                continue
        chunk.append(char)
        index += 1
    if chunk or not parts:
        parts.append("".join(chunk))
    if len(parts) == 1 and isinstance(parts[0], str):
        return Literal(parts[0], column)
    return Template(tuple(parts), column)
