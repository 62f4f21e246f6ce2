"""Translate Perl regular expressions to Python patterns, with a time limit.

Patterns compile with the `regex` module (in its `re`-compatible V0 mode)
rather than `re`, because `regex` can stop a match after a time limit.
The module is imported when the first pattern compiles, so a start whose
agents have no pattern does not pay for importing it.
With `re`, a pattern that backtracks catastrophically on a record value,
such as `/^(a|aa)+$/` on forty a's and a "!", held the event loop until
it finished, and with it every agent, lease renewal and the watchdog.
`search` and `substitute` stop a match after `MATCH_TIMEOUT` seconds and
raise `PatternTimeout`. Inside `match_budget` (one command's evaluation)
that time is shared by every match, so a function that matches a list of
values cannot take a second per value.

FleetConf agents write Perl patterns (`/re/flags`). Most of the syntax is
shared; this module rewrites what differs and rejects what Python cannot
express, so a pattern fails at load rather than matching differently:

- flags `i`, `m`, `s`, `x` map to `re.I`, `re.M`, `re.S`, `re.X`;
- `\\z` becomes `\\Z`, and Perl's `\\Z` (end, or before a final newline)
  becomes `(?=\\n?\\Z)`;
- `(?<name>...)` becomes `(?P<name>...)` and `\\k<name>` becomes `(?P=name)`;
- `\\Q...\\E` quotes its text;
- `\\h`, `\\H`, `\\v`, `\\V` and `\\R` (horizontal and vertical blanks, line
  break) become character classes, since Python's `\\v` is only a vertical tab;
- `\\x{263A}` becomes `\\U0000263a`;
- POSIX classes such as `[[:alpha:]]` become ASCII ranges;
- code blocks `(?{...})`, `\\G` and recursion `(?R)` are rejected.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable
from typing import Any

#: Seconds one match of an agent's pattern, or all the matches of one
#: command inside `match_budget`, may take.
MATCH_TIMEOUT = 1.0

# Monotonic time at which the matches of the current command must end.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "fleetd_match_deadline", default=None
)


def start_match_budget() -> contextvars.Token[float | None]:
    """Give the matches that follow `MATCH_TIMEOUT` seconds in all.

    Pass the token to `end_match_budget` when the command's evaluation ends.
    """
    return _deadline.set(time.monotonic() + MATCH_TIMEOUT)


def end_match_budget(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def _time_left() -> float:
    """Return the seconds the next match may take; raise TimeoutError at 0."""
    deadline = _deadline.get()
    if deadline is None:
        return MATCH_TIMEOUT
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


# Perl's pattern flags and the names of the `regex` module's flags for them.
_FLAGS = {
    "i": "IGNORECASE",
    "m": "MULTILINE",
    "s": "DOTALL",
    "x": "VERBOSE",
}

_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\r\f\v",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "xdigit": "0-9A-Fa-f",
    "word": r"\w",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
    "ascii": r"\x00-\x7f",
}


_HORIZONTAL = r" \t"
_VERTICAL = r"\n\x0b\f\r\x85\u2028\u2029"
# Escapes that Perl and Python read differently, outside character classes.
_ESCAPES = {
    "h": f"[{_HORIZONTAL}]",
    "H": f"[^{_HORIZONTAL}]",
    "v": f"[{_VERTICAL}]",
    "V": f"[^{_VERTICAL}]",
    "R": f"(?:\\r\\n|[{_VERTICAL}])",
}
# The same inside a character class, where only the members can be listed.
_CLASS_ESCAPES = {"h": _HORIZONTAL, "v": _VERTICAL}
_FLAG_GROUP_RE = re.compile(r"\(\?[a-zA-Z^-]+\)")
_BRACED_HEX_RE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def _braced_hex(pattern: str, index: int) -> tuple[str, int] | None:
    """Translate a `\\x{...}` escape at `index`; return it and where it ends."""
    match = _BRACED_HEX_RE.match(pattern, index)
    if match is None:
        return None
    code = int(match.group(1), 16)
    if code > 0x10FFFF:
        raise PatternError(f"character code {match.group(1)} is out of range")
    return f"\\U{code:08x}", match.end()


class PatternError(ValueError):
    """A Perl pattern that is malformed or that Python cannot express."""


def _translate_class(pattern: str, index: int, out: list[str]) -> int:
    """Copy the character class starting at `index`; return where it ends."""
    out.append("[")
    index += 1
    if index < len(pattern) and pattern[index] == "^":
        out.append("^")
        index += 1
    if index < len(pattern) and pattern[index] == "]":
        out.append(r"\]")
        index += 1
    while index < len(pattern):
        char = pattern[index]
        if char == "]":
            out.append("]")
            return index + 1
        if char == "\\" and index + 1 < len(pattern):
            braced = _braced_hex(pattern, index)
            if braced is not None:
                out.append(braced[0])
                index = braced[1]
                continue
            escaped = pattern[index + 1]
            out.append(_CLASS_ESCAPES.get(escaped, pattern[index : index + 2]))
            index += 2
            continue
        if pattern.startswith("[:", index):
            end = pattern.find(":]", index + 2)
            if end < 0:
                raise PatternError("unterminated POSIX class [: :]")
            name = pattern[index + 2 : end]
            negated = name.startswith("^")
            ranges = _POSIX_CLASSES.get(name.lstrip("^"))
            if ranges is None or negated:
                raise PatternError(f"unsupported POSIX class [:{name}:]")
            out.append(ranges)
            index = end + 2
            continue
        if char == "[":
            out.append(r"\[")
            index += 1
            continue
        out.append(char)
        index += 1
    raise PatternError("unterminated character class [ ]")


_QUANTIFIER_RE = re.compile(r"\{(?:\d+(?:,\d*)?|,\d+)\}")
# Letters whose escape means something else in Perl than in the regex
# module (or nothing in Perl), so a pattern using them fails at load.
_UNSUPPORTED_ESCAPES = frozenset("mMjJiIyYlLuUFO")
_BACKREFERENCE_RE = re.compile(r"\\g(?:(\d+)|\{(-?\w+)\})")
_OCTAL_RE = re.compile(r"\\o\{([0-7]+)\}")


def _perl_escape(pattern: str, index: int) -> tuple[str, int]:
    """Translate `\\N`, `\\g`, `\\c`, `\\e` or `\\o` at `index`.

    Returns the Python form and the index after the escape; raises
    PatternError for an escape that has no equal meaning in both engines.
    """
    escaped = pattern[index + 1]
    if escaped == "N":
        if pattern.startswith("{", index + 2):
            # A named character, \N{NAME}, means the same in both.
            end = pattern.find("}", index + 3)
            if end < 0:
                raise PatternError("unterminated \\N{NAME}")
            return pattern[index : end + 1], end + 1
        return "[^\\n]", index + 2
    if escaped == "e":
        return "\\x1b", index + 2
    if escaped == "c" and index + 2 < len(pattern):
        control = chr(ord(pattern[index + 2].upper()) ^ 0x40)
        return re.escape(control), index + 3
    if escaped == "o":
        match = _OCTAL_RE.match(pattern, index)
        if match is not None:
            return f"\\U{int(match.group(1), 8):08x}", match.end()
    if escaped == "g":
        match = _BACKREFERENCE_RE.match(pattern, index)
        if match is not None:
            target = match.group(1) or match.group(2)
            if target.startswith("-"):
                raise PatternError(
                    "relative backreferences such as \\g{-1} are not supported"
                )
            text = f"(?:\\{target})" if target.isdigit() else f"(?P={target})"
            return text, match.end()
    raise PatternError(f"\\{escaped} is not supported")


def translate(pattern: str) -> str:
    """Return the Python form of the Perl `pattern`.

    Raises:
        PatternError: the pattern uses Perl syntax without a Python form.
    """
    out: list[str] = []
    index = 0
    length = len(pattern)
    while index < length:
        char = pattern[index]
        if char == "\\" and index + 1 < length:
            escaped = pattern[index + 1]
            if escaped == "z":
                out.append(r"\Z")
            elif escaped == "Z":
                out.append(r"(?=\n?\Z)")
            elif escaped in _ESCAPES:
                out.append(_ESCAPES[escaped])
            elif escaped == "x" and _braced_hex(pattern, index) is not None:
                text, end = _braced_hex(pattern, index)  # type: ignore[misc]
                out.append(text)
                index = end
                continue
            elif escaped == "G":
                raise PatternError(r"\G is not supported")
            elif escaped == "Q":
                end = pattern.find(r"\E", index + 2)
                end = length if end < 0 else end
                out.append(re.escape(pattern[index + 2 : end]))
                index = end + 2
                continue
            elif escaped == "E":
                pass
            elif escaped == "k" and index + 2 < length and pattern[index + 2] in "<{'":
                closer = {"<": ">", "{": "}", "'": "'"}[pattern[index + 2]]
                end = pattern.find(closer, index + 3)
                if end < 0:
                    raise PatternError(r"unterminated \k<name>")
                out.append(f"(?P={pattern[index + 3 : end]})")
                index = end + 1
                continue
            elif escaped in "pP" and pattern.startswith("{", index + 2):
                end = pattern.find("}", index + 3)
                if end < 0:
                    raise PatternError(f"unterminated \\{escaped}{{...}}")
                out.append(pattern[index : end + 1])
                index = end + 1
                continue
            elif escaped in "Ngceo" or escaped in _UNSUPPORTED_ESCAPES:
                text, index = _perl_escape(pattern, index)
                out.append(text)
                continue
            else:
                out.append(pattern[index : index + 2])
            index += 2
            continue
        if char == "{" and not _QUANTIFIER_RE.match(pattern, index):
            # Perl reads a brace that starts no quantifier as itself; the
            # regex module would read some of them as fuzzy matching.
            out.append(r"\{")
            index += 1
            continue
        if char == "[":
            index = _translate_class(pattern, index, out)
            continue
        if pattern.startswith("(?", index):
            rest = pattern[index + 2 : index + 4]
            if rest.startswith(("{", "?{", "R")):
                raise PatternError("code blocks and recursion are not supported")
            if index > 0 and _FLAG_GROUP_RE.match(pattern, index):
                # Perl applies these to the end of the enclosing group, the
                # regex module to the whole pattern.
                raise PatternError(
                    "inline flags such as (?i) are supported only at the"
                    " start of the pattern; use (?i:...) for a part of it"
                )
            if (
                rest.startswith("<")
                and not rest.startswith("<=")
                and not rest.startswith("<!")
            ):
                out.append("(?P<")
                index += 3
                continue
            if rest.startswith("'"):
                end = pattern.find("'", index + 3)
                if end < 0:
                    raise PatternError("unterminated (?'name' group")
                out.append(f"(?P<{pattern[index + 3 : end]}>")
                index = end + 1
                continue
        out.append(char)
        index += 1
    return "".join(out)


class PatternTimeout(ValueError):
    """A match took longer than `MATCH_TIMEOUT` seconds."""

    def __init__(self, pattern: Any, length: int) -> None:
        super().__init__(
            f"regular expression /{pattern.pattern}/ took longer than"
            f" {MATCH_TIMEOUT:g} s, the time all matches of one command may"
            f" take, on a value of {length} characters; it backtracks too"
            " much, so simplify it"
        )


def search(pattern: Any, text: str, position: int = 0) -> Any:
    """Return `pattern.search(text, position)`, stopped after `MATCH_TIMEOUT`."""
    try:
        return pattern.search(text, position, timeout=_time_left())
    except TimeoutError:
        raise PatternTimeout(pattern, len(text)) from None


def substitute(
    pattern: Any, replace: Callable[[Any], str], text: str, count: int = 0
) -> str:
    """Return `pattern.sub(replace, text, count)`, stopped after `MATCH_TIMEOUT`."""
    try:
        return pattern.sub(replace, text, count=count, timeout=_time_left())
    except TimeoutError:
        raise PatternTimeout(pattern, len(text)) from None


#: Largest product of nested counted repetitions, as in (?:a{100}){1000}.
#: The regex module expands nested counts when it compiles: a product of
#: 10^6 took 0.5 s and 300 MB here, 10^5 took 0.07 s.
MAX_REPEAT_PRODUCT = 100_000
_COUNT_RE = re.compile(r"\{(\d*)(?:,(\d*))?\}")


def _repeat_product(pattern: str) -> int:
    """Return the largest product of counted repetitions nested in `pattern`.

    `pattern` is in Python syntax. Escapes and character classes are
    skipped; a count applies to the atom or group just before it, and an
    open count such as {3,} counts as its lower bound.
    """
    groups: list[tuple[int, int]] = []  # (start, end) of each group
    counts: list[tuple[int, int, int]] = []  # (start, end, count) of each repetition
    open_groups: list[int] = []
    last_start = 0
    index = 0
    while index < len(pattern):
        char = pattern[index]
        start = index
        if char == "\\":
            index += 2
            if pattern[index - 1 : index] in ("p", "P", "N") and pattern.startswith(
                "{", index
            ):
                index = pattern.find("}", index) + 1 or len(pattern)
        elif char == "[":
            index += 1
            if pattern.startswith("^", index):
                index += 1
            if pattern.startswith("]", index):
                index += 1
            while index < len(pattern) and pattern[index] != "]":
                index += 2 if pattern[index] == "\\" else 1
            index += 1
        elif char == "(":
            open_groups.append(index)
            index += 1
            continue
        elif char == ")":
            index += 1
            if open_groups:
                start = open_groups.pop()
                groups.append((start, index))
        elif char == "{":
            match = _COUNT_RE.match(pattern, index)
            if match is not None:
                low, high = match.group(1), match.group(2)
                count = int(high) if high else int(low or 0)
                counts.append((last_start, index, count))
                index = match.end()
                continue
            index += 1
        else:
            index += 1
        last_start = start
    # A count right after a group repeats the whole group.
    group_counts = {(start, end): count for start, end, count in counts}
    product = 1
    for start, end, count in counts:
        total = count
        for group_start, group_end in groups:
            if group_start < start and end <= group_end:
                total *= group_counts.get((group_start, group_end), 1)
        product = max(product, total)

    return product


def compile_regex(pattern: str, flags: int = 0) -> Any:
    """Compile a pattern in Python syntax with the `regex` module.

    Case-insensitive matching uses full case folding, as Perl's /i does:
    /^ß$/i matches "SS". FULLCASE changes nothing without IGNORECASE.
    """
    import regex

    return regex.compile(pattern, flags | regex.V0 | regex.FULLCASE)


def compile_perl(pattern: str, flags: str) -> Any:
    """Compile a Perl pattern with its flags (`imsx`) into a Python pattern.

    Raises:
        PatternError: an unknown flag, or a malformed pattern.
    """
    import regex

    python_flags = 0
    for flag in flags:
        if flag not in _FLAGS:
            raise PatternError(
                f"unsupported regular expression flag {flag!r}; use i, m, s or x"
            )
        python_flags |= getattr(regex, _FLAGS[flag])
    try:
        translated = translate(pattern)
    except PatternError as error:
        raise PatternError(f"invalid regular expression /{pattern}/: {error}") from None
    if _repeat_product(translated) > MAX_REPEAT_PRODUCT:
        raise PatternError(
            f"invalid regular expression /{pattern}/: nested repetition counts"
            f" multiply to more than {MAX_REPEAT_PRODUCT:,}"
        )
    try:
        return compile_regex(translated, python_flags)
    except regex.error as error:
        raise PatternError(
            f"invalid regular expression /{pattern}/: {error.msg}"
        ) from None
    except (RecursionError, OverflowError) as error:
        raise PatternError(f"invalid regular expression /{pattern}/: {error}") from None
