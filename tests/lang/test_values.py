"""Numbers, comparisons and truth follow Perl 5, checked against perl."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fleetd.lang import (
    Registry,
    Scope,
    evaluate,
    looks_like_number,
    parse_agent,
    render,
)
from fleetd.lang.values import to_number

NEEDS_PERL = pytest.mark.skipif(
    shutil.which("perl") is None, reason="perl is not installed"
)

TEXTS = [
    "10", "10.0", " 1", "1 ", "1\n", "+1", "-1.5e3", ".5", "5.", "0x10", "1_000",
    "abc", "12abc", "", " ", "0", "-0", "0.0", "1e", "1e-5", "Inf", "-infinity",
    "123456789012345678", "0.1", "3.0", "1e15", "1e16", "00012",
]  # fmt: skip


def perl_lines(program: str, args: list[str]) -> list[str]:
    result = subprocess.run(
        ["perl", "-e", program, "--", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return result.stdout.split("\0")[:-1]


@NEEDS_PERL
def test_looks_like_number_matches_perl() -> None:
    program = (
        "use Scalar::Util qw(looks_like_number); "
        'print((looks_like_number($_) ? 1 : 0), "\\0") for @ARGV'
    )
    expected = perl_lines(program, TEXTS)
    got = ["1" if looks_like_number(text) else "0" for text in TEXTS]
    assert dict(zip(TEXTS, got, strict=True)) == dict(zip(TEXTS, expected, strict=True))


@NEEDS_PERL
def test_numification_matches_perl() -> None:
    program = 'no warnings; print $_ + 0, "\\0" for @ARGV'
    expected = perl_lines(program, TEXTS)
    got = [render(to_number(text)) for text in TEXTS]
    assert dict(zip(TEXTS, got, strict=True)) == dict(zip(TEXTS, expected, strict=True))


PAIRS = [
    ("10", "10.0"), ("9", "10"), ("9a", "10a"), ("abc", "abd"), ("", "0"),
    (" 1", "1"), ("1e3", "1000"), ("b", "a"), ("a", "a"), ("-1", "1"),
    ("0x10", "16"), ("1.5", "1.50"), ("Inf", "1e308"),
]  # fmt: skip
OPERATORS = ["=", "<>", "<", ">", "<=", ">="]
PERL_OPERATORS = {
    "=": ("==", "eq"),
    "<>": ("!=", "ne"),
    "<": ("<", "lt"),
    ">": (">", "gt"),
    "<=": ("<=", "le"),
    ">=": (">=", "ge"),
}


@NEEDS_PERL
def test_comparisons_match_perl_rules() -> None:
    # The rule of FleetConf's comparison, with the string operators as
    # written (FleetConf swapped le and ge).
    lines = []
    for op in OPERATORS:
        numeric, text = PERL_OPERATORS[op]
        lines.append(
            f"print((looks_like_number($a) && looks_like_number($b) "
            f'? ($a {numeric} $b) : ($a {text} $b)) ? 1 : 0, "\\0");'
        )
    program = (
        "use Scalar::Util qw(looks_like_number); no warnings; "
        "while (@ARGV) { my ($a, $b) = splice(@ARGV, 0, 2); " + " ".join(lines) + " }"
    )
    args = [text for pair in PAIRS for text in pair]
    expected = perl_lines(program, args)
    registry = Registry.default()
    got = []
    for left, right in PAIRS:
        for op in OPERATORS:
            agent = parse_agent(f"NAME t\nMNEMONIC t\nCHECK a {op} b\n", "t.agent")
            scope = Scope({"a": left, "b": right})
            result = evaluate(agent.commands[0].expr, scope, registry)
            got.append("1" if result == 1 else "0")
    labels = [f"{left!r} {op} {right!r}" for left, right in PAIRS for op in OPERATORS]
    assert dict(zip(labels, got, strict=True)) == dict(
        zip(labels, expected, strict=True)
    )
