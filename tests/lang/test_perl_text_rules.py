"""Numbers, case and patterns in non-ASCII and literal text, checked against perl."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fleetd.lang import (
    AgentError,
    Registry,
    Scope,
    evaluate,
    looks_like_number,
    parse_agent,
    render,
    truth,
)

NEEDS_PERL = pytest.mark.skipif(
    shutil.which("perl") is None, reason="perl is not installed"
)

# Perl's looks_like_number reads ASCII digits and ASCII blanks only, and it
# accepts "0 but true". Arabic-Indic and full-width digits, a no-break space
# and an em space make no number.
TEXTS = ["\u0661", "\uff11", "\u00a01", "1\u2003", "\u0661\u0662", "0 but true"]


def perl_lines(program: str, args: list[str]) -> list[str]:
    # -CA decodes the arguments as UTF-8, so perl reads characters, as fleetd does.
    result = subprocess.run(
        ["perl", "-CA", "-e", program, "--", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return result.stdout.split("\0")[:-1]


def value(expression: str, variables: dict | None = None) -> object:
    agent = parse_agent(f"NAME t\nMNEMONIC t\nSET v = {expression}\n", "t.agent")
    (command,) = agent.commands
    return evaluate(command.expr, Scope(variables or {}), Registry.default())


@NEEDS_PERL
def test_looks_like_number_non_ascii() -> None:
    program = (
        "use Scalar::Util qw(looks_like_number); "
        'print((looks_like_number($_) ? 1 : 0), "\\0") for @ARGV'
    )
    expected = perl_lines(program, TEXTS)
    got = ["1" if looks_like_number(text) else "0" for text in TEXTS]
    assert dict(zip(TEXTS, got, strict=True)) == dict(zip(TEXTS, expected, strict=True))


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [("\u0661", "1", ""), ("\uff11", "1", ""), ("\u00a01", "1", ""),
     ("0 but true", "0", 1)],
)  # fmt: skip
def test_equality_uses_perl_numbers(left: str, right: str, expected: object) -> None:
    # Both sides must look like numbers to Perl for a numeric comparison.
    # When one does not, the texts are compared, and these texts differ.
    assert value("a = b", {"a": left, "b": right}) == expected


@NEEDS_PERL
@pytest.mark.parametrize(
    ("expression", "perl"),
    [
        ("int(a)", "int($ARGV[0])"),
        ("abs(a)", "abs($ARGV[0])"),
        ('sprintf("%d", a)', 'sprintf("%d", $ARGV[0])'),
    ],
)
@pytest.mark.parametrize("text", ["\u0661\u0662", "\u00a05"])
def test_numification_non_ascii(expression: str, perl: str, text: str) -> None:
    [expected] = perl_lines(f'no warnings; print {perl}, "\\0"', [text])
    assert render(value(expression, {"a": text})) == expected


@NEEDS_PERL
def test_hex_leading_blank() -> None:
    [expected] = perl_lines('no warnings; print hex($ARGV[0]), "\\0"', [" 1f"])
    assert render(value('hex(" 1f")')) == expected


def test_decimal_literal_zero_is_false() -> None:
    # The literal 0.0 is the number zero, which Perl treats as false.
    assert truth(value("0.0")) is False


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("2.50", "2.5"), ("0.50", "0.5"), ("1.0", "1"), ("length(1.50)", "3")],
)
def test_decimal_literal_prints_as_number(expression: str, expected: str) -> None:
    # Perl prints a numeric literal by its value: 2.50 prints as 2.5.
    assert render(value(expression)) == expected


@NEEDS_PERL
@pytest.mark.parametrize("text", ["\u01c6emal", "\u00dfa"])
def test_ucfirst_uses_titlecase(text: str) -> None:
    # Perl's ucfirst maps the first character to its titlecase form.
    program = 'binmode STDOUT, ":utf8"; print ucfirst($ARGV[0]), "\\0"'
    [expected] = perl_lines(program, [text])
    assert value("ucfirst(a)", {"a": text}) == expected


@NEEDS_PERL
def test_ignore_case_folds_sharp_s() -> None:
    program = 'print(($ARGV[0] =~ /^\\x{df}$/i) ? 1 : 0, "\\0")'
    [expected] = perl_lines(program, ["SS"])
    assert expected == "1"
    assert value("a MATCHES /^\u00df$/i", {"a": "SS"}) == 1


@pytest.mark.parametrize(
    "expression",
    ['split("(", "a(b")', 'grep("[", ["a"])', 'replace("abc", "(", "x")'],
)
def test_constant_bad_pattern_is_load_error(expression: str) -> None:
    # A malformed regular expression is reported at load, at file:line:col,
    # and not left to fail the command at run time.
    with pytest.raises(AgentError) as caught:
        parse_agent(f"NAME t\nMNEMONIC t\nSET v = {expression}\n", "t.agent")
    [message] = [str(d) for d in caught.value.diagnostics]
    assert message.startswith("t.agent:3:")
    assert "regular expression" in message
