"""The built-in functions: FleetConf 0.01_016's set, with Perl's semantics.

Argument counts follow FleetConf's Perl subs (`index` takes 2 or 3,
`size` 0 or 1). Where FleetConf's wrapper had a bug, the function does
what its name describes, and docs/agent-language.md lists each such case.
`IsSocket` tests for a socket (FleetConf used -s), and `ChangeDays` uses
the inode change time (FleetConf used -A). `substr` works, where
FleetConf's wrapper modified a read-only value and died. `grep` filters by
a pattern, `lstat` and `stat` return the 13 fields, and `join` also takes
a separator and a list.
"""

from __future__ import annotations

import glob as globbing
import math
import os
import random
import re
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from fleetd.lang.builtins_files import FILE_TESTS, newer_than
from fleetd.lang.perlcrypt import perl_crypt
from fleetd.lang.perlformat import perl_pack, perl_sprintf, perl_unpack
from fleetd.lang.perlre import compile_perl, compile_regex, search, substitute
from fleetd.lang.registry import FunctionSpec
from fleetd.lang.values import (
    IV_MIN,
    UV_MAX,
    ZERO_BUT_TRUE,
    Value,
    normalize_number,
    perl_integer,
    render,
    to_integer,
    to_number,
)

TRUE: Value = 1
FALSE: Value = ""


def _list(value: Value, name: str) -> list[Value]:
    if isinstance(value, list):
        return value
    if value is None:
        return []
    raise ValueError(f"{name}() needs a list, got {render(value)!r}")


def _number_function(
    function: Callable[[float], float], name: str
) -> Callable[[Value], Value]:
    def apply(value: Value) -> Value:
        # Perl's math gives Inf and NaN where Python's math module raises.
        number = to_number(value)
        try:
            result = function(number)
        except OverflowError:
            return math.inf
        except ValueError:
            return math.nan
        return _double(result)

    apply.__name__ = name
    return apply


def _log(value: Value) -> Value:
    number = to_number(value)
    if number <= 0:
        raise ValueError(f"can't take log of {render(value) or 0}")
    return math.log(number)


def _sqrt(value: Value) -> Value:
    number = to_number(value)
    if number < 0:
        raise ValueError(f"can't take sqrt of {render(value)}")
    return _double(math.sqrt(number))


def _double(number: float) -> Value:
    """Return the double result of a math function as Perl prints it.

    Perl keeps it a double (NV), so from 1e15 on it prints as 1e+15. A
    smaller integral one prints the same as an integer, and becomes one.
    """
    return number if abs(number) >= 1e15 else normalize_number(number)


def _abs(value: Value) -> Value:
    number = abs(to_number(value))
    return perl_integer(number) if isinstance(number, int) else number


def _atan2(y: Value, x: Value) -> Value:
    return normalize_number(math.atan2(to_number(y), to_number(x)))


def _int(value: Value) -> Value:
    number = to_number(value)
    if isinstance(number, float) and (math.isinf(number) or math.isnan(number)):
        return number
    # Beyond 64 bits Perl's int keeps a double: int("1e20") prints 1e+20.
    if isinstance(number, float) and not IV_MIN <= number <= UV_MAX:
        return float(math.trunc(number))
    return int(number)


def _digits(text: str, digit: str) -> str:
    """Return the digits Perl reads from the start of `text`.

    An underscore counts only before a digit, so "1_f" is 1f and "1__f"
    stops at 1, as Perl's grok_hex, grok_oct and grok_bin read them.
    """
    match = re.match(f"(?:_?{digit})*", text)
    assert match is not None  # the pattern matches the empty string
    return match.group().replace("_", "")


def _hex(value: Value) -> Value:
    # Unlike oct, Perl's hex skips no leading blanks: hex(" 1f") is 0.
    text = render(value)
    if text[:2].lower() == "0x":
        text = text[2:]
    elif text[:1].lower() == "x":
        text = text[1:]
    digits = _digits(text, "[0-9A-Fa-f]")
    return perl_integer(int(digits, 16)) if digits else 0


def _oct(value: Value) -> Value:
    # Perl's oct skips leading ASCII blanks only.
    text = render(value).lstrip(" \t\n\r\f\v")
    lower = text.lower()
    for prefixes, base, digit in (
        (("0x", "x"), 16, "[0-9a-f]"),
        (("0b", "b"), 2, "[01]"),
        (("0o", "o"), 8, "[0-7]"),
    ):
        for prefix in prefixes:
            if lower.startswith(prefix):
                digits = _digits(lower[len(prefix) :], digit)
                return perl_integer(int(digits, base)) if digits else 0
    digits = _digits(lower, "[0-7]")
    return perl_integer(int(digits, 8)) if digits else 0


def _chr(value: Value) -> Value:
    # A negative number, even one above -1, is no code point (Perl: U+FFFD).
    if to_number(value) < 0:
        return "\ufffd"
    number = to_integer(value)
    if number > 0x10FFFF:
        return "\ufffd"
    return chr(number)


def _ord(value: Value) -> Value:
    text = render(value)
    return ord(text[0]) if text else 0


def _chomp(value: Value) -> Value:
    text = render(value)
    return text.removesuffix("\n")


def _chop(value: Value) -> Value:
    return render(value)[:-1]


def _crypt(word: Value, salt: Value) -> Value:
    return perl_crypt(render(word), render(salt))


def _defined(value: Value) -> Value:
    return TRUE if value is not None else FALSE


def _index(text: Value, needle: Value, position: Value = None) -> Value:
    haystack, target = render(text), render(needle)
    start = 0 if position is None else to_integer(position)
    start = min(max(start, 0), len(haystack))
    return haystack.find(target, start)


# The default of an optional argument left out. An argument given as an
# undefined value is not left out: Perl reads it as 0 or "", so that
# substr("hello", 1, missing) is "", not "ello".
OMITTED: Any = object()


def _rindex(text: Value, needle: Value, position: Value = OMITTED) -> Value:
    haystack, target = render(text), render(needle)
    if position is OMITTED:
        return haystack.rfind(target)
    start = to_integer(position)
    if start < 0:
        return 0 if target == "" else -1
    return haystack.rfind(target, 0, min(start, len(haystack)) + len(target))


def _join(first: Value, second: Value = OMITTED) -> Value:
    # FleetConf: join([separator, items...]); also join(separator, list).
    if second is OMITTED:
        items = _list(first, "join")
        if not items:
            return ""
        return render(items[0]).join(render(item) for item in items[1:])
    return render(first).join(render(item) for item in _list(second, "join"))


def _length(value: Value) -> Value:
    return None if value is None else len(render(value))


def _lc(value: Value) -> Value:
    text = render(value)
    if "\u03a3" not in text:
        return text.lower()
    # str.lower maps a capital sigma that ends a word to the final ς, while
    # Perl's lc maps every one to σ.
    return "".join(character.lower() for character in text)


def _lcfirst(value: Value) -> Value:
    text = render(value)
    return text[:1].lower() + text[1:]


def _ucfirst(value: Value) -> Value:
    # Perl maps the first character to title case: "ǆ" becomes "ǅ", not
    # "Ǆ", and "ß" becomes "Ss".
    text = render(value)
    return text[:1].title() + text[1:]


def _quotemeta(value: Value) -> Value:
    return re.sub(r"([^A-Za-z0-9_\x80-\U0010ffff])", r"\\\1", render(value))


def _rand(limit: Value = None) -> Value:
    number = to_number(limit) if limit is not None else 1
    return random.random() * (number or 1)


def _srand(seed: Value = None) -> Value:
    value = (
        to_integer(seed) if seed is not None else int(time.time() * 1000) & 0xFFFFFFFF
    )
    random.seed(value)
    return value if value else ZERO_BUT_TRUE


def _replace(text: Value, pattern: Value, replacement: Value) -> Value:
    compiled = compile_perl(render(pattern), "")
    literal = render(replacement)
    return substitute(compiled, lambda _match: literal, render(text), count=1)


def _grep(pattern: Value, items: Value) -> Value:
    compiled = compile_perl(render(pattern), "")
    return [item for item in _list(items, "grep") if search(compiled, render(item))]


def _reverse(items: Value) -> Value:
    return list(reversed(_list(items, "reverse")))


def _sort(items: Value) -> Value:
    return sorted(_list(items, "sort"), key=render)


def _scalar(items: Value) -> Value:
    return len(_list(items, "scalar"))


def _size(items: Value = None) -> Value:
    return len(items) if isinstance(items, list) else 0


def _pop(items: Value) -> Value:
    values = _list(items, "pop")
    return values.pop() if values else None


def _shift(items: Value) -> Value:
    values = _list(items, "shift")
    return values.pop(0) if values else None


def _push(items: Value, *more: Value) -> Value:
    values = _list(items, "push")
    values.extend(more)
    return len(values)


def _unshift(items: Value, *more: Value) -> Value:
    values = _list(items, "unshift")
    values[0:0] = more
    return len(values)


def _splice(
    items: Value, offset: Value = OMITTED, length: Value = OMITTED, *insert: Value
) -> Value:
    values = _list(items, "splice")
    start = 0 if offset is OMITTED else to_integer(offset)
    if start < 0:
        start = max(len(values) + start, 0)
    start = min(start, len(values))
    if length is OMITTED:
        end = len(values)
    else:
        count = to_integer(length)
        end = start + count if count >= 0 else max(len(values) + count, start)
    removed = values[start:end]
    values[start:end] = list(insert)
    return removed


def _split(pattern: Value, text: Value = None, limit: Value = None) -> Value:
    subject = render(text)
    maximum = 0 if limit is None else to_integer(limit)
    source = render(pattern)
    if source == " ":
        compiled = compile_regex(r"\s+")
        # Leading blanks are dropped, every one that \s matches (U+2003 too).
        leading = compiled.match(subject)
        if leading is not None:
            subject = subject[leading.end() :]
    elif source == "^":
        import regex

        # Perl's /^/m does not match after a newline that ends the text.
        compiled = compile_regex(r"^(?!\Z)", regex.MULTILINE)
    else:
        compiled = compile_perl(source, "")
    if not subject:
        return []  # empty text splits into no field, whatever the limit
    fields: list[Value] = []
    # The limit counts the fields between separators, not captured groups.
    count = 0
    position = 0
    search_from = 0
    while maximum <= 0 or count < maximum - 1:
        match = search(compiled, subject, search_from)
        if match is None:
            break
        if match.end() == match.start() and match.start() == position:
            # A zero-width match never splits where the last field ended (the
            # start, or right after a match): split(/x*/, "axb") is a, b.
            if match.start() >= len(subject):
                break
            search_from = match.start() + 1
            continue
        fields.append(subject[position : match.start()])
        count += 1
        fields.extend(match.groups())
        position = match.end()
        search_from = position if match.end() > match.start() else position + 1
        if search_from > len(subject):
            break
    fields.append(subject[position:])
    if maximum == 0:
        while fields and (fields[-1] is None or fields[-1] == ""):
            fields.pop()
    return fields


def _substr(
    text: Value, offset: Value, length: Value = OMITTED, replacement: Value = None
) -> Value:
    subject = render(text)
    size = len(subject)
    start = to_integer(offset)
    if start < 0:
        start += size
    if length is OMITTED:
        end = size
    else:
        count = to_integer(length)
        end = start + count if count >= 0 else size + count
    # Perl returns undef for a part wholly outside the string, and the
    # overlap for a part partly outside it.
    if start > size or (start < 0 and end < 0):
        return None
    start = max(start, 0)
    end = min(max(end, start), size)
    return subject[start:end]


def _glob(pattern: Value) -> Value:
    results: list[Value] = []
    for word in render(pattern).split():
        for expanded in _expand_braces(word):
            expanded = os.path.expanduser(expanded)
            if not re.search(r"[*?\[]", expanded):
                results.append(expanded)
                continue
            results.extend(sorted(globbing.glob(expanded), key=str.lower))
    return results


def _expand_braces(word: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", word)
    if match is None or "," not in match.group(1):
        return [word]
    head, tail = word[: match.start()], word[match.end() :]
    expanded: list[str] = []
    for choice in match.group(1).split(","):
        expanded.extend(_expand_braces(head + choice + tail))
    return expanded


def _gmtime(seconds: Value = OMITTED) -> Value:
    # Perl rounds a fraction down, so gmtime(-0.5) is the last second of 1969.
    moment = time.gmtime(
        time.time() if seconds is OMITTED else math.floor(to_number(seconds))
    )
    return [
        moment.tm_sec,
        moment.tm_min,
        moment.tm_hour,
        moment.tm_mday,
        moment.tm_mon - 1,
        moment.tm_year - 1900,
        (moment.tm_wday + 1) % 7,
        moment.tm_yday - 1,
        0,
    ]


def _stat_list(follow: bool) -> Callable[[Value], Value]:
    def fields(path: Value) -> Value:
        try:
            result = os.stat(render(path), follow_symlinks=follow)
        except (OSError, ValueError):
            return []
        return [
            result.st_dev,
            result.st_ino,
            result.st_mode,
            result.st_nlink,
            result.st_uid,
            result.st_gid,
            result.st_rdev,
            result.st_size,
            int(result.st_atime),
            int(result.st_mtime),
            int(result.st_ctime),
            result.st_blksize,
            result.st_blocks,
        ]

    return fields


def _time() -> Value:
    return int(time.time())


def _times() -> Value:
    times = os.times()
    return [
        normalize_number(times.user),
        normalize_number(times.system),
        normalize_number(times.children_user),
        normalize_number(times.children_system),
    ]


def _os_name() -> Value:
    return "linux" if sys.platform.startswith("linux") else sys.platform


def _hostname() -> Value:
    return socket.gethostname()


def _spec(
    name: str,
    low: int,
    high: int | None,
    impl: Callable[..., Value],
    doc: str,
    pure: bool = True,
    patterns: tuple[int, ...] = (),
) -> FunctionSpec:
    return FunctionSpec(name, low, high, impl, pure, doc, patterns)


BUILTIN_FUNCTIONS: tuple[FunctionSpec, ...] = (
    *(_spec(name, 1, 1, impl, doc) for name, (impl, doc) in FILE_TESTS.items()),
    _spec(
        "NewerThan", 2, 2, newer_than, "the first path was modified after the second"
    ),
    _spec("abs", 1, 1, _abs, "absolute value"),
    _spec("atan2", 2, 2, _atan2, "arc tangent of y/x"),
    _spec("chomp", 1, 1, _chomp, "the text without one trailing newline"),
    _spec("chop", 1, 1, _chop, "the text without its last character"),
    _spec("chr", 1, 1, _chr, "the character of a code point"),
    _spec("cos", 1, 1, _number_function(math.cos, "cos"), "cosine (radians)"),
    _spec("crypt", 2, 2, _crypt, "crypt(3) of a word with a salt"),
    _spec("defined", 1, 1, _defined, '1 when the value is defined, else ""'),
    _spec("exp", 1, 1, _number_function(math.exp, "exp"), "e to the power"),
    _spec("glob", 1, 1, _glob, "paths matching csh-style patterns"),
    _spec("gmtime", 0, 1, _gmtime, "the 9 UTC time fields of epoch seconds"),
    _spec("grep", 2, 2, _grep, "the list items matching a pattern", patterns=(0,)),
    _spec("hex", 1, 1, _hex, "the value of hexadecimal text"),
    _spec("index", 2, 3, _index, "position of a substring, or -1"),
    _spec("int", 1, 1, _int, "the integer part"),
    _spec("join", 1, 2, _join, "items joined by a separator"),
    _spec("lc", 1, 1, _lc, "lower case"),
    _spec("lowercase", 1, 1, _lc, "lower case"),
    _spec("lcfirst", 1, 1, _lcfirst, "first character in lower case"),
    _spec("length", 1, 1, _length, "number of characters"),
    _spec("log", 1, 1, _log, "natural logarithm"),
    _spec("lstat", 1, 1, _stat_list(False), "the 13 lstat fields"),
    _spec("oct", 1, 1, _oct, "the value of octal, 0x hex or 0b binary text"),
    _spec("ord", 1, 1, _ord, "code point of the first character"),
    _spec("pack", 2, 2, perl_pack, "pack a list by a template"),
    _spec("pop", 1, 1, _pop, "remove and return the last item", pure=False),
    _spec("push", 1, None, _push, "append items; returns the new size", pure=False),
    _spec("quotemeta", 1, 1, _quotemeta, "text with regex metacharacters escaped"),
    _spec("rand", 0, 1, _rand, "random number below the limit (default 1)", pure=False),
    _spec(
        "replace",
        3,
        3,
        _replace,
        "the text with the first pattern match replaced",
        patterns=(1,),
    ),
    _spec("reverse", 1, 1, _reverse, "the list reversed"),
    _spec("rindex", 2, 3, _rindex, "last position of a substring, or -1"),
    _spec("scalar", 1, 1, _scalar, "number of items of a list"),
    _spec("size", 0, 1, _size, "number of items of a list; 0 when undefined"),
    _spec("shift", 1, 1, _shift, "remove and return the first item", pure=False),
    _spec("sin", 1, 1, _number_function(math.sin, "sin"), "sine (radians)"),
    _spec("sort", 1, 1, _sort, "the list sorted as text"),
    _spec(
        "splice",
        1,
        None,
        _splice,
        "remove (and replace) items; returns the removed",
        pure=False,
    ),
    _spec(
        "split", 2, 3, _split, "fields of the text split by a pattern", patterns=(0,)
    ),
    _spec("sprintf", 1, None, perl_sprintf, "formatted text"),
    _spec("sqrt", 1, 1, _sqrt, "square root"),
    _spec("srand", 0, 1, _srand, "seed rand", pure=False),
    _spec("stat", 1, 1, _stat_list(True), "the 13 stat fields"),
    _spec("substr", 2, 4, _substr, "part of the text"),
    _spec("time", 0, 0, _time, "epoch seconds"),
    _spec("times", 0, 0, _times, "user, system, children user and system CPU seconds"),
    _spec("uc", 1, 1, lambda value: render(value).upper(), "upper case"),
    _spec("uppercase", 1, 1, lambda value: render(value).upper(), "upper case"),
    _spec("ucfirst", 1, 1, _ucfirst, "first character in upper case"),
    _spec("unpack", 2, 2, perl_unpack, "unpack text by a template into a list"),
    _spec("upack", 2, 2, perl_unpack, "FleetConf's spelling of unpack"),
    _spec(
        "unshift", 1, None, _unshift, "prepend items; returns the new size", pure=False
    ),
    _spec("OS", 0, 0, _os_name, "the operating system name, as Perl's $^O"),
    _spec("hostname", 0, 0, _hostname, "this host's name"),
)
