"""Perl patterns translated to Python's re match what Perl matches."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from fleetd.lang.perlre import (
    MATCH_TIMEOUT,
    PatternError,
    PatternTimeout,
    compile_perl,
    search,
)

# (pattern, flags, subject). `\Q...\E` is left out: Perl applies it only to
# pattern literals, not to a pattern held in a variable as here.
CASES = [
    (r"^([a-z]+)@example\.org$", "", "bob@example.org"),
    (r"^([a-z]+)@example\.org$", "", "bob@example.org\n"),
    (r"b\z", "", "ab\n"),
    (r"b\Z", "", "ab\n"),
    (r"^b$", "m", "a\nb\nc"),
    (r"a.c", "s", "a\nc"),
    (r"A B # comment", "x", "AB"),
    (r"abc", "i", "xABCx"),
    (r"(?<user>\w+)-\k<user>", "", "ab-ab"),
    (r"^[[:alpha:]]+[[:digit:]]+$", "", "abc123"),
    (r"[[:punct:]]", "", "a-b"),
    (r"a\hb", "", "a\tb"),
    (r"a\vb", "", "a\nb"),
    (r"a\Rb", "", "a\r\nb"),
    (r"\x{41}\x42", "", "zABz"),
    (r"(a)|(b)", "", "b"),
    (r"^(\d+)\.(\d+)$", "", "10.25"),
    (r"(?i)hello", "", "HeLLo"),
    (r"\bword\b", "", "a word here"),
    (r"^\s*$", "", "   "),
    (r"colou?r", "", "color"),
    (r"x{2,3}", "", "axxxxb"),
    (r"^\p{L}+$", "", "abc"),
    (r"\p{Lu}", "", "abCd"),
    (r"a(?i:B)c", "", "abc"),
    (r"^\N$", "", "x"),
    (r"^\N$", "", "\n"),
    (r"^(a)\g1$", "", "aa"),
    (r"^(a)\g{1}$", "", "aa"),
    (r"^(?<n>a)\g{n}$", "", "aa"),
    (r"^\e$", "", "\x1b"),
    (r"^\o{101}$", "", "A"),
    (r"^(?:abc){e<=1}$", "", "abd"),
    (r"^a{e<=1}$", "", "a{e<=1}"),
    (r"^a{,2}b$", "", "aab"),
    (r"^(?:a{10}){100}$", "", "a" * 1000),
]


def perl_result(pattern: str, flags: str, subject: str) -> str:
    program = (
        "my ($p, $s) = @ARGV; "
        f"if ($s =~ /$p/{flags}) {{ "
        'print "1:", join(",", map { defined $_ ? $_ : "undef" } '
        "map { defined $-[$_] ? substr($s, $-[$_], $+[$_] - $-[$_]) : undef } 1..$#-) } "
        'else { print "0" }'
    )
    result = subprocess.run(
        ["perl", "-e", program, "--", pattern, subject],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return result.stdout


def python_result(pattern: str, flags: str, subject: str) -> str:
    match = compile_perl(pattern, flags).search(subject)
    if match is None:
        return "0"
    groups = ["undef" if group is None else group for group in match.groups()]
    return "1:" + ",".join(groups)


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
@pytest.mark.parametrize(("pattern", "flags", "subject"), CASES)
def test_translation_matches_perl(pattern: str, flags: str, subject: str) -> None:
    assert python_result(pattern, flags, subject) == perl_result(
        pattern, flags, subject
    )


@pytest.mark.parametrize(
    ("pattern", "flags", "message"),
    [
        ("(", "", "invalid regular expression /(/"),
        ("a", "g", "unsupported regular expression flag 'g'"),
        ("(?{ 1 })", "", "code blocks and recursion are not supported"),
        (r"\Ga", "", r"\G is not supported"),
        ("[[:nosuch:]]", "", "unsupported POSIX class [:nosuch:]"),
        ("[abc", "", "unterminated character class"),
        (r"\x{110000}", "", "character code 110000 is out of range"),
        ("a(?i)b", "", "inline flags such as (?i) are supported only at the start"),
        (r"\mword", "", r"\m is not supported"),
        (
            "(?:a{1000}){10000}",
            "",
            (
                "invalid regular expression /(?:a{1000}){10000}/: nested"
                " repetition counts multiply to more than 100,000"
            ),
        ),
        (r"(a)\g{-1}", "", "relative backreferences such as"),
        (
            r"\p{NoSuchProperty}",
            "",
            r"invalid regular expression /\p{NoSuchProperty}/: unknown property",
        ),
    ],
)
def test_rejected_patterns(pattern: str, flags: str, message: str) -> None:
    with pytest.raises(PatternError) as caught:
        compile_perl(pattern, flags)
    assert message in str(caught.value)
    if not flags:
        # Every pattern error names the pattern, as a load error must.
        assert str(caught.value).startswith(f"invalid regular expression /{pattern}/")


def test_backtracking_match_stopped() -> None:
    # Exponential backtracking on a value that almost matches.
    pattern = compile_perl(r"^(a|aa)+$", "")
    started = time.monotonic()

    with pytest.raises(PatternTimeout, match="took longer than"):
        search(pattern, "a" * 60 + "!")

    assert time.monotonic() - started < MATCH_TIMEOUT + 2.0
