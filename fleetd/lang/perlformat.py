"""Perl's `sprintf`, `pack` and `unpack`, for the built-in functions.

Python's `%` operator shares most of `sprintf`'s conversions, but it
numifies and stringifies differently: Perl's `%d` of "42abc" is 42. It
also has no `%b` and no explicit argument indexes. So each conversion is
formatted on its own, after Perl's conversion of the argument.

`pack` and `unpack` cover the string and integer letters that command
lines and record fields need: a A Z H h C c n N v V U w, without
modifiers. Other letters raise ValueError.
"""

from __future__ import annotations

import math
import re
import struct

from fleetd.lang.values import (
    IV_MIN,
    UV_MAX,
    Value,
    format_number,
    render,
    to_integer,
    to_number,
)

_CONVERSION_RE = re.compile(
    r"%(?:(?P<index>\d+)\$)?(?P<flags>[-+ 0#]*)(?P<width>\*|\d+)?"
    r"(?:\.(?P<precision>\*|\d*))?(?P<size>hh|h|ll|l|q|L|V)?(?P<conv>[%csduoxXeEfFgGbBiDUO])"
)


def perl_sprintf(template: Value, *args: Value) -> str:
    """Format `args` into `template` as Perl's sprintf does."""
    text = render(template)
    values = list(args)
    position = 0
    out: list[str] = []
    last = 0

    def next_arg() -> Value:
        nonlocal position
        value = values[position] if position < len(values) else None
        position += 1
        return value

    for match in _CONVERSION_RE.finditer(text):
        out.append(text[last : match.start()])
        last = match.end()
        # %D, %U and %O are Perl's synonyms of %ld, %lu and %lo.
        conv = _SYNONYMS.get(match.group("conv"), match.group("conv"))
        if conv == "%":
            # Perl formats a literal % like a string: padded, and cut by a
            # precision.
            width_text = match.group("width")
            width = int(width_text) if width_text and width_text != "*" else None
            precision_text = match.group("precision")
            percent = (
                "%"[: int(precision_text or "0")] if precision_text is not None else "%"
            )
            out.append(_pad(percent, match.group("flags") or "", width))
            continue
        flags = match.group("flags") or ""
        width_text = match.group("width")
        precision_text = match.group("precision")
        width: int | None = None
        if width_text == "*":
            width = to_integer(next_arg())
            if width < 0:
                flags += "-"
                width = -width
        elif width_text:
            width = int(width_text)
        precision: int | None = None
        if precision_text == "*":
            # A negative precision from the arguments counts as none, as in C.
            requested = to_integer(next_arg())
            precision = requested if requested >= 0 else None
        elif precision_text is not None:
            precision = int(precision_text or "0")
        if match.group("index"):
            index = int(match.group("index")) - 1
            value = values[index] if 0 <= index < len(values) else None
        else:
            value = next_arg()
        if (width or 0) > MAX_FIELD or (precision or 0) > MAX_FIELD:
            raise ValueError(f"sprintf field width or precision must be <= {MAX_FIELD}")
        try:
            out.append(
                _format_one(conv, flags, width, precision, value, match.group("size"))
            )
        except OverflowError as error:
            raise ValueError(
                f"sprintf cannot format {render(value)!r}: {error}"
            ) from None
    out.append(text[last:])
    return "".join(out)


def _pad(text: str, flags: str, width: int | None, *, zero: bool = True) -> str:
    """Pad `text` to `width` as Perl pads `%s`: left with `-`, zeros with `0`."""
    if width is None or len(text) >= width:
        return text
    if "-" in flags:
        return text.ljust(width)
    fill = "0" if zero and "0" in flags else " "
    return text.rjust(width, fill)


def _format_one(
    conv: str,
    flags: str,
    width: int | None,
    precision: int | None,
    value: Value,
    size: str | None = None,
) -> str:
    if conv == "s":
        text = render(value)
        if precision is not None:
            text = text[:precision]
        return _pad(text, flags, width)
    if conv == "c":
        code = to_integer(value)
        return _pad(chr(code) if 0 <= code <= 0x10FFFF else "\ufffd", flags, width)
    number = to_number(value)
    infinite = isinstance(number, float) and (math.isinf(number) or math.isnan(number))
    if infinite:
        # Every numeric conversion prints Inf, -Inf or NaN. The + and space
        # flags both give +Inf, and the 0 flag pads with zeros before the
        # sign ("0-Inf"), as perl 5.36 prints them.
        text = format_number(number)
        signed = "+" in flags or " " in flags
        if signed and not text.startswith("-") and not math.isnan(number):
            text = "+" + text
        return _pad(text, flags, width)
    if conv in "fFeEgG":
        spec = flags + (str(width) if width is not None else "")
        prec = "" if precision is None else f".{precision}"
        return ("%" + spec + prec + conv) % float(number)
    return _format_integer(
        conv, flags, width, precision, _c_integer(number, conv, size)
    )


def _c_integer(number: float, conv: str, size: str | None) -> int:
    """Cast `number` as Perl's sprintf does for an integer conversion.

    A double beyond 64 bits saturates (1e20 becomes the largest unsigned
    value), then %d reads the 64 bits as signed, so sprintf("%d", "1e20")
    is -1. The h and hh sizes cut to 16 and 8 bits.
    """
    if isinstance(number, float):
        if number < IV_MIN:
            number = IV_MIN
        elif number > UV_MAX:
            number = UV_MAX
        number = math.trunc(number)
    bits = {"h": 16, "hh": 8}.get(size or "", 64)
    integer = int(number) & ((1 << bits) - 1)
    if conv in "di" and integer >= 1 << (bits - 1):
        integer -= 1 << bits

    return integer


_SYNONYMS = {"D": "d", "U": "u", "O": "o"}
_DIGIT_FORMATS = {"d": "d", "i": "d", "u": "d", "o": "o", "x": "x", "X": "X"}
_PREFIXES = {"x": "0x", "X": "0X", "b": "0b", "B": "0B"}


def _format_integer(
    conv: str, flags: str, width: int | None, precision: int | None, integer: int
) -> str:
    """Format an integer conversion with C's rules, which Perl follows."""
    if conv in "uoxXbB" and integer < 0:
        integer &= (1 << 64) - 1
    sign = ""
    if conv in "di":
        if integer < 0:
            sign = "-"
        elif "+" in flags:
            sign = "+"
        elif " " in flags:
            sign = " "
    magnitude = abs(integer)
    digits = format(magnitude, _DIGIT_FORMATS.get(conv, "b"))
    # The # flag adds 0x or 0b only to a non-zero value.
    prefix = _PREFIXES.get(conv, "") if "#" in flags and magnitude else ""
    if precision is not None:
        # A zero precision prints no digit for zero.
        digits = "" if precision == 0 and magnitude == 0 else digits.zfill(precision)
    if conv == "o" and "#" in flags and not digits.startswith("0"):
        digits = "0" + digits
    lead = sign + prefix
    if width is None or len(lead) + len(digits) >= width:
        return lead + digits
    if "-" in flags:
        return (lead + digits).ljust(width)
    if "0" in flags and precision is None:
        return lead + digits.rjust(width - len(lead), "0")
    return (lead + digits).rjust(width)


# Upper bound on a field width, precision or pack count, so that a typo such
# as %99999999999d fails instead of exhausting memory.
MAX_FIELD = 1_000_000

_PACK_RE = re.compile(r"([aAZHhCcnNvVUw])(\*|\d+)?")
_INTEGER_FORMATS = {"C": ">B", "c": ">b", "n": ">H", "N": ">I", "v": "<H", "V": "<I"}


def _pack_items(template: str) -> list[tuple[str, str | None]]:
    compact = re.sub(r"\s+", "", template)
    items: list[tuple[str, str | None]] = []
    position = 0
    for match in _PACK_RE.finditer(compact):
        if match.start() != position:
            raise ValueError(f"unsupported pack template {template!r}")
        count = match.group(2)
        if count not in (None, "*") and int(count) > MAX_FIELD:
            raise ValueError(f"pack count must be <= {MAX_FIELD}")
        items.append((match.group(1), match.group(2)))
        position = match.end()
    if position != len(compact):
        raise ValueError(f"unsupported pack letter in template {template!r}")
    return items


def _pack_text(letter: str, count: str | None, value: Value) -> bytes:
    """Pack one value with a, A or Z."""
    data = render(value).encode("latin-1", "replace")
    if count == "*":
        return data + (b"\0" if letter == "Z" else b"")
    size = int(count or 1)
    pad = b" " if letter == "A" else b"\0"
    field = data[: size - 1 if letter == "Z" else size]
    return field + pad * (size - len(field))


def _pack_hex(letter: str, count: str | None, value: Value) -> bytes:
    """Pack one value with H (high nybble first) or h."""
    digits = render(value)
    if count != "*":
        digits = digits[: int(count or 1)]
    if len(digits) % 2:
        digits += "0"
    if letter == "h":
        digits = "".join(digits[i + 1] + digits[i] for i in range(0, len(digits), 2))
    return bytes.fromhex(digits)


def _pack_number(letter: str, number: int) -> bytes:
    """Pack one integer with C, c, n, N, v, V, w, or U as UTF-8 bytes."""
    if letter == "U":
        return chr(number).encode("utf-8")
    if letter == "w":
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        return bytes(reversed(chunk))
    fmt = _INTEGER_FORMATS[letter]
    if letter == "c":
        return struct.pack(fmt, (number + 128) % 256 - 128)
    bits = struct.calcsize(fmt) * 8
    return struct.pack(fmt, number % (1 << bits))


def perl_pack(template: Value, items: Value) -> str:
    """Pack the list `items` by the template; bytes come back as Latin-1 text."""
    values = list(items) if isinstance(items, list) else [items]
    letters = _pack_items(render(template))
    # A template that starts with U packs characters; U elsewhere packs the
    # UTF-8 bytes of the character.
    characters = bool(letters) and letters[0][0] == "U"
    pieces: list[str] = []
    for letter, count in letters:
        if letter in "aAZ":
            data = _pack_text(letter, count, values.pop(0) if values else None)
            pieces.append(data.decode("latin-1"))
            continue
        if letter in "Hh":
            data = _pack_hex(letter, count, values.pop(0) if values else None)
            pieces.append(data.decode("latin-1"))
            continue
        repeat = len(values) if count == "*" else int(count or 1)
        for _ in range(repeat):
            number = to_integer(values.pop(0) if values else None)
            if letter == "U" and characters:
                pieces.append(chr(number))
            else:
                pieces.append(_pack_number(letter, number).decode("latin-1"))
    return "".join(pieces)


def perl_unpack(template: Value, data: Value) -> list[Value]:
    """Unpack the Latin-1 text `data` by the template into a list."""
    raw = render(data).encode("latin-1", "replace")
    offset = 0
    result: list[Value] = []
    for letter, count in _pack_items(render(template)):
        if letter == "Z" and count == "*":
            end = raw.find(b"\0", offset)
            end = len(raw) if end < 0 else end
            result.append(raw[offset:end].decode("latin-1"))
            offset = min(end + 1, len(raw))
        elif letter in "aAZ":
            size = len(raw) - offset if count == "*" else int(count or 1)
            field = raw[offset : offset + size]
            offset += size
            if letter == "A":
                field = field.rstrip(b" \0\t\n\r\f")
            elif letter == "Z":
                field = field.split(b"\0", 1)[0]
            result.append(field.decode("latin-1"))
        elif letter in "Hh":
            digits_count = (len(raw) - offset) * 2 if count == "*" else int(count or 1)
            size = (digits_count + 1) // 2
            text = raw[offset : offset + size].hex()
            if letter == "h":
                text = "".join(text[i + 1] + text[i] for i in range(0, len(text), 2))
            offset += size
            result.append(text[:digits_count])
        elif letter in "Uw":
            raise ValueError(f"unpack letter {letter!r} is not supported")
        else:
            fmt = _INTEGER_FORMATS[letter]
            size = struct.calcsize(fmt)
            repeat = (len(raw) - offset) // size if count == "*" else int(count or 1)
            for _ in range(repeat):
                if offset + size > len(raw):
                    break
                result.append(struct.unpack_from(fmt, raw, offset)[0])
                offset += size
    return result
