"""Built-in functions on edge inputs give the values Perl 5 gives.

Each case pairs an agent expression with the Perl expression that
FleetConf's wrapper evaluated, as in test_builtins, but each case is its
own test, so that a failure names the call. List results are compared
joined with ",".
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from fleetd.lang import Registry, Scope, evaluate, parse_agent
from fleetd.lang.values import render
from tests.lang.test_builtins import agent_value, joined, perl_values

NEEDS_PERL = pytest.mark.skipif(
    shutil.which("perl") is None, reason="perl is not installed"
)


def known(reason: str) -> pytest.MarkDecorator:
    """Mark a case where fleetd still differs from Perl, for the reason given."""
    return pytest.mark.xfail(strict=True, reason=f"known difference: {reason}")


def cases(pairs: list[tuple[str, str]], differences: dict[str, str]) -> list[object]:
    """Return the cases as params, the known differences marked with their reason."""
    return [
        pytest.param(
            expression,
            perl,
            id=expression,
            marks=[known(differences[expression])] if expression in differences else [],
        )
        for expression, perl in pairs
    ]


NUMBER_DIFFERENCES = {
    'atan2("-0.0", -1)': "a negative zero read from text loses its sign",
    'index("hello", "lo", "inf")': "an infinite position is an error",
    "srand(-1)": "srand keeps the sign of a negative seed",
}
SPRINTF_DIFFERENCES = {
    'sprintf("%a", 1)': "%a is not supported",
    'sprintf("%2$*1$d|", 5, 42)': "a width taken by explicit index is not supported",
    'sprintf("%*3$d|", 1, 2, 5)': "a width taken by explicit index is not supported",
    'sprintf("%0$s", "a")': "an index of 0 is read as no index",
}
PACK_DIFFERENCES = {
    'pack("a*", ["\\x{20ac}"])': "pack and unpack work on Latin-1 bytes",
    'unpack("C*", "\\x{e9}\\x{1f600}")': "pack and unpack work on Latin-1 bytes",
    'pack("N", ["1e20"])': "pack does not saturate a number beyond 64 bits",
    'pack("H*", ["zz"])': "pack H rejects a letter that is no hex digit",
}

# Perl keeps a number in a 64-bit integer (IV or UV) only while it fits.
# Beyond that it is a double, which prints with 15 significant digits. A
# double result of sqrt, exp or a trigonometric function stays a double
# even when it is integral, so it prints as 1e+15, not 1000000000000000.
NUMBER_CASES: list[tuple[str, str]] = [
    ('int("1e20")', 'int("1e20")'),
    ('int("99999999999999999999")', 'int("99999999999999999999")'),
    ('int("-9.3e18")', 'int("-9.3e18")'),
    ('abs("-99999999999999999999")', 'abs("-99999999999999999999")'),
    ('hex("ffffffffffffffffff")', 'hex("ffffffffffffffffff")'),
    ('oct("777777777777777777777777")', 'oct("777777777777777777777777")'),
    ('oct("0b1' + "1" * 64 + '")', 'oct("0b1' + "1" * 64 + '")'),
    ('sqrt("1e30")', 'sqrt("1e30")'),
    # A literal beyond 64 bits is a double too.
    ("99999999999999999999", "99999999999999999999"),
    ('sprintf("%d", 99999999999999999999)', 'sprintf("%d", 99999999999999999999)'),
    # The sign of a negative zero decides the quadrant of atan2.
    ('atan2("-0.0", -1)', 'atan2("-0.0", -1)'),
    # Perl returns Inf and NaN where Python's math module raises.
    ("exp(1000)", "exp(1000)"),
    ('sin("inf")', 'sin("inf")'),
    ('cos("inf")', 'cos("inf")'),
    # Perl skips one underscore between digits, and stops at a second one.
    ('hex("1__f")', 'hex("1__f")'),
    ('oct("1__7")', 'oct("1__7")'),
    # A negative number, even above -1, is no code point: Perl gives U+FFFD.
    ("chr(-0.5)", "chr(-0.5)"),
    ('index("hello", "lo", "inf")', 'index("hello", "lo", 9**9**9)'),
    # Perl's gmtime rounds a negative time down, not toward zero.
    ("gmtime(-1.5)", 'join ",", gmtime(-1.5)'),
    ("gmtime(-0.5)", 'join ",", gmtime(-0.5)'),
    # Perl's srand reads its seed's text as an unsigned number, dropping
    # a minus sign.
    ("srand(-1)", "srand(-1)"),
]


@cache
def perl_value(perl: str) -> str:
    [value] = perl_values([perl])
    return value


# Perl's sprintf casts %d to a 64-bit IV and %u and %x to a UV, applies the
# h and hh size modifiers, and reads a negative * precision as none. It
# also takes a width by explicit index and supports %D, %U, %O and %a.
SPRINTF_CASES: list[tuple[str, str]] = [
    ('sprintf("%d", "-inf")', 'sprintf("%d", "-inf")'),
    ('sprintf("%+f", "inf")', 'sprintf("%+f", "inf")'),
    ('sprintf("%.*f", -1, 3.14159)', 'sprintf("%.*f", -1, 3.14159)'),
    ('sprintf("%.*d", -1, 0)', 'sprintf("%.*d", -1, 0)'),
    ('sprintf("%hd", 70000)', 'sprintf("%hd", 70000)'),
    ('sprintf("%hhd", 300)', 'sprintf("%hhd", 300)'),
    ('sprintf("%hu", -1)', 'sprintf("%hu", -1)'),
    ('sprintf("%D|%U|%O", 5, 6, 8)', 'sprintf("%D|%U|%O", 5, 6, 8)'),
    ('sprintf("%a", 1)', 'sprintf("%a", 1)'),
    ('sprintf("%2$*1$d|", 5, 42)', "sprintf(q{%2$*1$d|}, 5, 42)"),
    ('sprintf("%*3$d|", 1, 2, 5)', "sprintf(q{%*3$d|}, 1, 2, 5)"),
    ('sprintf("%0$s", "a")', "sprintf(q{%0$s}, 'a')"),
    ('sprintf("%d", "9223372036854775808")', 'sprintf("%d", "9223372036854775808")'),
    ('sprintf("%d", "1e20")', 'sprintf("%d", "1e20")'),
    ('sprintf("%u", "18446744073709551616")', 'sprintf("%u", "18446744073709551616")'),
    ('sprintf("%x", "1e20")', 'sprintf("%x", "1e20")'),
    ('sprintf("%o", "-1e20")', 'sprintf("%o", "-1e20")'),
]


# Perl's split never splits with an empty match right where the previous
# match ended. With a negative limit, or a limit above the number of
# fields, it keeps the empty field after the last empty match. A split at
# " " drops every leading blank that \s matches, Unicode ones included.
SPLIT_CASES: list[tuple[str, str]] = [
    ('split("x*", "axb")', 'join ",", split(/x*/, "axb")'),
    ('split(",?", "a,b")', 'join ",", split(/,?/, "a,b")'),
    ('split("\\\\d*", "a1b22c")', 'join ",", split(/\\d*/, "a1b22c")'),
    ('split("x?", "xaxb")', 'join ",", split(/x?/, "xaxb")'),
    ('split("", "abc", -1)', 'join ",", split(//, "abc", -1)'),
    ('split("", "ab", 5)', 'join ",", split(//, "ab", 5)'),
    ('split(" ", "\\x{2003}a b")', 'join ",", split(" ", "\\x{2003}a b")'),
]


# Perl's lc maps each capital sigma to σ, because unlike Python's
# str.lower it applies no final-sigma rule.
CASE_MAPPING_CASES: list[tuple[str, str]] = [
    ('lc("ΑΣ")', 'lc("ΑΣ")'),
    ('lc("ΟΔΟΣ ΟΔΟΣ")', 'lc("ΟΔΟΣ ΟΔΟΣ")'),
    ('lowercase("ΣΑΣ")', 'lc("ΣΑΣ")'),
]


# An undefined argument is not a missing one: Perl reads it as 0 or "",
# so rindex searches at or before 0, substr takes 0 characters and gmtime
# gives the epoch.
UNDEFINED_CASES: list[tuple[str, str]] = [
    ('rindex("hello", "l", missing)', 'rindex("hello", "l", undef)'),
    ('substr("hello", 1, missing)', 'substr("hello", 1, undef)'),
    ("gmtime(missing)", 'join ",", gmtime(undef)'),
    ('join(":", missing)', 'join(":", @{[]})'),
]


@NEEDS_PERL
def test_splice_undefined_length() -> None:
    # Perl's splice reads an undefined length as 0, so it removes nothing.
    scope = Scope({"items": [1, 2, 3]})
    removed = agent_value("splice(items, 1, missing)", scope)
    program = "do { my @a = (1, 2, 3); my @r = splice(@a, 1, undef); @r }"
    assert joined(removed) == perl_value(program)
    left = "do { my @a = (1, 2, 3); splice(@a, 1, undef); @a }"
    assert joined(scope.lookup(("items",))) == perl_value(left)


# Perl's -T counts odd bytes in an all-ASCII block too. Odd bytes are
# control characters other than blanks, backspace and escape, and DEL and
# VT. A valid UTF-8 block with non-ASCII characters is text even when it
# contains a NUL.
TEXT_FILES = {
    "controls": b"\x01\x02\x03\x04\x05\x06abc",
    "deletes": b"\x7f\x7f\x7f\x7fab",
    "vertical-tabs": b"abc\x0b\x0b\x0b\x0b",
    "utf8-with-nul": "\u00e9\u00e9\0abc".encode(),
}


@NEEDS_PERL
@pytest.mark.parametrize("name", list(TEXT_FILES))
@pytest.mark.parametrize(
    ("function", "operator"), [("IsASCII", "-T"), ("IsBinary", "-B")]
)
def test_text_file_test_matches_perl(
    tmp_path: Path, name: str, function: str, operator: str
) -> None:
    path = tmp_path / name
    path.write_bytes(TEXT_FILES[name])
    expected = perl_value(f'{operator} "{path}"')
    assert joined(agent_value(f'{function}("{path}")')) == expected


# Perl compares numbers beyond 2**64, and an integer with a decimal
# beyond 2**53, as doubles, so the two sides of each pair are equal.
NUMBER_PAIRS = [
    ("18446744073709551616", "18446744073709551617"),
    ("99999999999999999999", "100000000000000000000"),
    ("100000000000000000001", "1e20"),
    ("-9223372036854775809", "-9223372036854775810"),
    ("9007199254740993", "9007199254740992.0"),
]


def perl_comparison(operator: str, left: str, right: str) -> str:
    result = subprocess.run(
        # "--" keeps a negative number from being read as a perl switch.
        [
            "perl",
            "-e",
            f"print(($ARGV[0] {operator} $ARGV[1]) ? 1 : 0)",
            "--",
            left,
            right,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return result.stdout


# Perl's pack and unpack work on characters: a character above U+00FF
# stays itself in "a", and "C" of one unpacks its code point. "N" casts a
# number beyond 2**64 to the maximum UV, and "H" maps a letter that is no
# hexadecimal digit to a nybble instead of failing.
PACK_CASES: list[tuple[str, str]] = [
    ('pack("a*", ["\\x{20ac}"])', 'pack("a*", "\\x{20ac}")'),
    (
        'unpack("C*", "\\x{e9}\\x{1f600}")',
        'join ",", unpack("C*", "\\x{e9}\\x{1f600}")',
    ),
    ('pack("N", ["1e20"])', 'pack("N", "1e20")'),
    ('pack("H*", ["zz"])', 'pack("H*", "zz")'),
]


def test_literals_beyond_64_bits_compare_as_doubles() -> None:
    # Perl reads both literals as the double 1e20, so they are equal.
    text = "NAME t\nMNEMONIC t\nCHECK 99999999999999999999 = 100000000000000000000\n"
    agent = parse_agent(text, "t.agent")
    assert evaluate(agent.commands[0].expr, Scope(), Registry.default()) == 1


# Perl reads an integer literal beyond 64 bits as a double, as it reads
# such text: %u saturates it to the largest unsigned value.
LITERAL_CASES: list[tuple[str, str]] = [
    ("18446744073709551616", "18446744073709551616"),
    ('sprintf("%u", 18446744073709551616)', 'sprintf("%u", 18446744073709551616)'),
]


@NEEDS_PERL
@pytest.mark.parametrize(("left", "right"), NUMBER_PAIRS)
def test_huge_number_membership_matches_perl(left: str, right: str) -> None:
    # IN compares each element by the same rule as =.
    agent = parse_agent("NAME t\nMNEMONIC t\nCHECK a IN [b]\n", "t.agent")
    scope = Scope({"a": left, "b": right})
    result = evaluate(agent.commands[0].expr, scope, Registry.default())
    got = "1" if result == 1 else "0"
    assert got == perl_comparison("==", left, right)


# Perl reads text in exponent form whose value is a whole number within
# 64 bits as that integer, so it compares exactly with an integer: "1e18"
# is below "1000000000000000001". Plain decimal text, such as
# "9007199254740992.0", still compares as a double.
EXPONENT_PAIRS = [
    ("1e18", "1000000000000000001"),
    ("1e19", "10000000000000000001"),
    ("1.5e18", "1500000000000000001"),
    ("9.007199254740992e15", "9007199254740993"),
]


@NEEDS_PERL
@pytest.mark.parametrize(("left", "right"), NUMBER_PAIRS + EXPONENT_PAIRS)
@pytest.mark.parametrize(("operator", "perl_operator"), [("=", "=="), ("<", "<")])
def test_number_comparison_matches_perl(
    left: str, right: str, operator: str, perl_operator: str
) -> None:
    agent = parse_agent(f"NAME t\nMNEMONIC t\nCHECK a {operator} b\n", "t.agent")
    scope = Scope({"a": left, "b": right})
    result = evaluate(agent.commands[0].expr, scope, Registry.default())
    got = "1" if result == 1 else "0"
    assert got == perl_comparison(perl_operator, left, right)


# Perl's split counts only the fields toward a positive limit, not the
# captured separators, and /^/ matches no empty line after a final
# newline. Splitting an empty string gives no field, whatever the limit.
SPLIT_LIMIT_CASES: list[tuple[str, str]] = [
    ('split("(=)", "a=b=c", 3)', 'join "|", split(/(=)/, "a=b=c", 3)'),
    ('split("(,)", "a,b,c,d", 3)', 'join "|", split(/(,)/, "a,b,c,d", 3)'),
    ('split("^", "x\\ny\\n", -1)', 'join "|", split(/^/, "x\\ny\\n", -1)'),
    ('size(split(",", "", -1))', 'scalar(my @f = split(/,/, "", -1))'),
    ('size(split(" ", " ", 5))', 'scalar(my @f = split(" ", " ", 5))'),
]


@NEEDS_PERL
@pytest.mark.parametrize(
    ("expression", "perl"),
    SPLIT_LIMIT_CASES,
    ids=[case[0] for case in SPLIT_LIMIT_CASES],
)
def test_split_limit_matches_perl(expression: str, perl: str) -> None:
    # Items are joined with "|", because the texts split here contain commas.
    value = agent_value(expression)
    if isinstance(value, list):
        got = "|".join(render(item) for item in value)
    else:
        got = render(value)
    assert got == perl_value(perl)


# Perl applies the space and zero flags to Inf too: "% d" prints "+Inf",
# and "%05d" pads it with zeros to "00Inf".
SPRINTF_INFINITY_CASES: list[tuple[str, str]] = [
    ('sprintf("% d", "inf")', 'sprintf("% d", 9**9**9)'),
    ('sprintf("% f", "inf")', 'sprintf("% f", 9**9**9)'),
    ('sprintf("%05d", "inf")', 'sprintf("%05d", 9**9**9)'),
    ('sprintf("%05f", "-inf")', 'sprintf("%05f", -9**9**9)'),
]


ALL_CASES = [
    *cases(NUMBER_CASES, NUMBER_DIFFERENCES),
    *cases(SPRINTF_CASES, SPRINTF_DIFFERENCES),
    *cases(SPLIT_CASES, {}),
    *cases(CASE_MAPPING_CASES, {}),
    *cases(UNDEFINED_CASES, {}),
    *cases(PACK_CASES, PACK_DIFFERENCES),
    *cases(LITERAL_CASES, {}),
    *cases(SPRINTF_INFINITY_CASES, {}),
]


@NEEDS_PERL
@pytest.mark.parametrize(("expression", "perl"), ALL_CASES)
def test_builtin_matches_perl(expression: str, perl: str) -> None:
    assert joined(agent_value(expression)) == perl_value(perl)
