"""Built-in functions give the values Perl 5 gives.

Each case pairs an agent expression with the Perl expression that
FleetConf's wrapper evaluated; one `perl` process computes all of them.
List results are compared joined with ",".
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from fleetd.lang import Registry, Scope, evaluate, parse_agent, render
from fleetd.lang.ast import Assign
from fleetd.lang.perlformat import perl_sprintf

CASES: list[tuple[str, str]] = [
    ("chr(90)", "chr(90)"),
    ('ord("Z")', 'ord("Z")'),
    ('ord("")', 'ord("")'),
    ('crypt("testing", "testing")', 'crypt("testing", "testing")'),
    ('crypt("secret", "ab")', 'crypt("secret", "ab")'),
    ('crypt("secret", "$1$saltsalt$")', "crypt('secret', q{$1$saltsalt$})"),
    ('crypt("secret", "!")', 'crypt("secret", "!")'),
    ('hex("0x15")', 'hex("0x15")'),
    ('hex("ff")', 'hex("ff")'),
    ('hex("x1f")', 'hex("x1f")'),
    ('oct("0777")', 'oct("0777")'),
    ('oct("0x1f")', 'oct("0x1f")'),
    ('oct("0b101")', 'oct("0b101")'),
    ('oct(" 12")', 'oct(" 12")'),
    ('int("42.174895")', 'int("42.174895")'),
    ("int(-3.7)", "int(-3.7)"),
    ('int("4abc")', 'int("4abc")'),
    ('index("Hello World!", "o")', 'index("Hello World!", "o")'),
    ('index("Hello World!", "o", 5)', 'index("Hello World!", "o", 5)'),
    ('index("hello", "l", -5)', 'index("hello", "l", -5)'),
    ('index("hello", "z")', 'index("hello", "z")'),
    ('index("abc", "", 10)', 'index("abc", "", 10)'),
    ('rindex("hello", "l")', 'rindex("hello", "l")'),
    ('rindex("hello", "l", 2)', 'rindex("hello", "l", 2)'),
    ('rindex("hello", "", 2)', 'rindex("hello", "", 2)'),
    ('lc("HeLLo")', 'lc("HeLLo")'),
    ('lowercase("HeLLo")', 'lc("HeLLo")'),
    ('uc("HeLLo")', 'uc("HeLLo")'),
    ('uppercase("HeLLo")', 'uc("HeLLo")'),
    ('lcfirst("HeLLo")', 'lcfirst("HeLLo")'),
    ('ucfirst("heLLo")', 'ucfirst("heLLo")'),
    ('length("hello")', 'length("hello")'),
    (
        'replace("hello", "^h", "c")',
        'do { my $s = "hello"; my $p = "^h"; my $r = "c"; $s =~ s/$p/$r/; $s }',
    ),
    (
        'replace("a.b.c", "\\\\.", "$1")',
        'do { my $s = "a.b.c"; my $p = "\\\\."; my $r = q{$1}; $s =~ s/$p/$r/; $s }',
    ),
    ('scalar(["a","b","c","d","e"])', 'scalar(@{["a","b","c","d","e"]})'),
    ("size()", "0"),
    ("size([])", "scalar(@{[]}) || 0"),
    ("size([1, 2])", "scalar(@{[1, 2]}) || 0"),
    ('abs("-3")', 'abs("-3")'),
    ("abs(-2.5)", "abs(-2.5)"),
    ("sqrt(16)", "sqrt(16)"),
    ("sqrt(2)", "sqrt(2)"),
    ("exp(1)", "exp(1)"),
    ("log(10)", "log(10)"),
    ("atan2(1, 1)", "atan2(1, 1)"),
    ("sin(1)", "sin(1)"),
    ("cos(0)", "cos(0)"),
    ('chomp("line\\n")', 'do { my $x = "line\\n"; chomp $x; $x }'),
    ('chomp("line")', 'do { my $x = "line"; chomp $x; $x }'),
    ('chop("ab")', 'do { my $x = "ab"; chop $x; $x }'),
    ('quotemeta("a.b*c d")', 'quotemeta("a.b*c d")'),
    # FleetConf meant join([separator, items...]); its Perl returned "".
    ('join(["-", "a", "b"])', 'join("-", "a", "b")'),
    ('join(":", ["a", "b"])', 'join(":", "a", "b")'),
    ('split(",", "a,b,,c,,")', 'join ",", split(",", "a,b,,c,,")'),
    ('split(" ", "  a b  c ")', 'join ",", split(" ", "  a b  c ")'),
    ('split("", "abc")', 'join ",", split("", "abc")'),
    ('split("(,)", "a,b")', 'join ",", split("(,)", "a,b")'),
    ('split(",", "a,b,c", 2)', 'join ",", split(",", "a,b,c", 2)'),
    ('split("b", "abc")', 'join ",", split("b", "abc")'),
    ('split(",", "")', 'join ",", split(",", "")'),
    ("reverse([1, 2, 3])", 'join ",", reverse(1, 2, 3)'),
    ('sort(["b", "a", "C", 10, 9])', 'join ",", sort("b", "a", "C", 10, 9)'),
    ('grep("^a", ["ab", "ba", "ac"])', 'join ",", grep(/^a/, "ab", "ba", "ac")'),
    ('substr("hello", 1)', 'substr("hello", 1)'),
    ('substr("hello", -3, 2)', 'substr("hello", -3, 2)'),
    ('substr("hello", 1, -1)', 'substr("hello", 1, -1)'),
    (
        'sprintf("%05.2f|%s|%d|%x|%o|%e", 3.14159, "x", "42abc", 255, 8, 1234.5)',
        'sprintf("%05.2f|%s|%d|%x|%o|%e", 3.14159, "x", "42abc", 255, 8, 1234.5)',
    ),
    (
        'sprintf("%b|%-5s|%+d|%5.3d|%%|%c|%.2s", 5, "ab", 7, 42, 65, "xyz")',
        'sprintf("%b|%-5s|%+d|%5.3d|%%|%c|%.2s", 5, "ab", 7, 42, 65, "xyz")',
    ),
    ('sprintf("%2$s %1$s", "a", "b")', "sprintf(q{%2$s %1$s}, 'a', 'b')"),
    ('sprintf("%s", 0.1)', 'sprintf("%s", 0.1)'),
    ("gmtime(0)", 'join ",", gmtime(0)'),
    ("gmtime(1700000000)", 'join ",", gmtime(1700000000)'),
    ('pack("A3 n C", ["abcdef", 258, 65])', 'pack("A3 n C", "abcdef", 258, 65)'),
    (
        'unpack("A3 n C", "abc\\x01\\x02A")',
        'join ",", unpack("A3 n C", "abc\\x01\\x02A")',
    ),
    ("defined(missing)", 'defined(undef) ? 1 : ""'),
    ('defined("")', 'defined("") ? 1 : ""'),
    ("OS()", "$^O"),
    ('split(",", "a,,", 5)', 'join ",", split(",", "a,,", 5)'),
    ('split(",", "a,b,,", 0)', 'join ",", split(",", "a,b,,", 0)'),
    ('hex("1_f")', 'hex("1_f")'),
    ('oct("0b1_01")', 'oct("0b1_01")'),
    ('oct("789")', 'oct("789")'),
    ('oct("x1F")', 'oct("x1F")'),
    ('oct("0o17")', 'oct("0o17")'),
    ('hex("")', 'hex("")'),
    ('int("  -7.9e1xyz")', 'int("  -7.9e1xyz")'),
    ('int("inf")', 'int("inf")'),
    ('abs("abc")', 'abs("abc")'),
    ('sqrt("16abc")', 'sqrt("16abc")'),
    (
        'sprintf("%g|%G|%.3g|%e|%.0f|%.0f", 0.0001, "1e20", 3.14159, 0, 0.5, 1.5)',
        'sprintf("%g|%G|%.3g|%e|%.0f|%.0f", 0.0001, "1e20", 3.14159, 0, 0.5, 1.5)',
    ),
    (
        'sprintf("%5s|%-5d|%05d|%x|%X|%#x|%#o|%+.2f", "ab", -3, -42, -1, 255, 255, 8, 2.345)',
        'sprintf("%5s|%-5d|%05d|%x|%X|%#x|%#o|%+.2f", "ab", -3, -42, -1, 255, 255, 8, 2.345)',
    ),
    ('sprintf("%s %s", "a")', 'sprintf("%s %s", "a")'),
    ('sprintf("%d", "abc")', 'sprintf("%d", "abc")'),
    ('sprintf("%.2e", 12345.678)', 'sprintf("%.2e", 12345.678)'),
    (
        'sprintf("%3$s %1$s %s", "a", "b", "c")',
        "sprintf(q{%3$s %1$s %s}, 'a', 'b', 'c')",
    ),
    ('sprintf("%*d|%-*d", 5, 42, 4, 7)', 'sprintf("%*d|%-*d", 5, 42, 4, 7)'),
    ('sprintf("%c%c", 72, 105)', 'sprintf("%c%c", 72, 105)'),
    ('sprintf("%%|%5%|%-3%|%s", "x")', 'sprintf("%%|%5%|%-3%|%s", "x")'),
    (
        'sprintf("%.3s|%10.4f|%-10.2e|", "abcdef", 3.14159265, 1234.5)',
        'sprintf("%.3s|%10.4f|%-10.2e|", "abcdef", 3.14159265, 1234.5)',
    ),
    ('split(",", "a,b,c,,,", -1)', 'join ",", split(",", "a,b,c,,,", -1)'),
    ('split("", "abc", 2)', 'join ",", split("", "abc", 2)'),
    ('split("x*", "abc")', 'join ",", split("x*", "abc")'),
    ('split(",", ",a,b")', 'join ",", split(",", ",a,b")'),
    (
        'split("(a)|b", "1a2b3")',
        'join ",", map { defined ? $_ : "" } split(/(a)|b/, "1a2b3")',
    ),
    ('split(" ", "\\ta  b\\n")', 'join ",", split(" ", "\\ta  b\\n")'),
    ('split("\\\\s+", " a b")', 'join ",", split(/\\s+/, " a b")'),
    ('substr("hello", 10)', 'substr("hello", 10)'),
    ('substr("hello", -10)', 'substr("hello", -10)'),
    ('substr("hello", -10, 5)', 'substr("hello", -10, 5)'),
    ('substr("hello", -10, 7)', 'substr("hello", -10, 7)'),
    ('substr("hello", -10, -7)', 'substr("hello", -10, -7)'),
    ('substr("hello", 5)', 'substr("hello", 5)'),
    ('substr("hello", 2, 100)', 'substr("hello", 2, 100)'),
    ('substr("hello", 3, -5)', 'substr("hello", 3, -5)'),
    ('index("hello", "")', 'index("hello", "")'),
    ('index("", "a")', 'index("", "a")'),
    ('index("hello", "l", 10)', 'index("hello", "l", 10)'),
    ('rindex("hello", "l", 10)', 'rindex("hello", "l", 10)'),
    ('rindex("hello", "h", -1)', 'rindex("hello", "h", -1)'),
    ('lc("ÀB")', 'lc("ÀB")'),
    ('ucfirst("")', 'ucfirst("")'),
    ('chop("")', 'do { my $x = ""; chop $x; $x }'),
    ("chr(-1)", "chr(-1)"),
    ("chr(65.7)", "chr(65.7)"),
    ('ord("€")', 'ord("€")'),
    ("reverse([])", 'join ",", reverse()'),
    ('sort([10, 9, 100, "a"])', 'join ",", sort(10, 9, 100, "a")'),
    ('quotemeta("")', 'quotemeta("")'),
    ('quotemeta("a_b-c/d")', 'quotemeta("a_b-c/d")'),
    ('replace("aaa", "a", "b")', 'do { my $s = "aaa"; $s =~ s/a/b/; $s }'),
    ('replace("abc", "x", "y")', 'do { my $s = "abc"; $s =~ s/x/y/; $s }'),
    ("gmtime(-1)", 'join ",", gmtime(-1)'),
    ("gmtime(951782400)", 'join ",", gmtime(951782400)'),
    ('join(", ", [1, 2.5, "x"])', 'join(", ", 1, 2.5, "x")'),
    ('length("")', 'length("")'),
    ("log(2.718281828459045)", "log(2.718281828459045)"),
    ("exp(0)", "exp(0)"),
    ("atan2(0, -1)", "atan2(0, -1)"),
    ('pack("N n C*", [1, 2, 3, 4])', 'pack("N n C*", 1, 2, 3, 4)'),
    ('unpack("H*", "AB")', 'join ",", unpack("H*", "AB")'),
    ('pack("H4", ["4142"])', 'pack("H4", "4142")'),
    (
        'unpack("v V", "\\x01\\x02\\x03\\x04\\x05\\x06")',
        'join ",", unpack("v V", "\\x01\\x02\\x03\\x04\\x05\\x06")',
    ),
    ('pack("Z5 a3 A3", ["ab", "c", "d"])', 'pack("Z5 a3 A3", "ab", "c", "d")'),
    ('unpack("Z* A2", "ab\\x00cd ")', 'join ",", unpack("Z* A2", "ab\\x00cd ")'),
    ('pack("w", [300])', 'pack("w", 300)'),
    ('pack("c", [-1])', 'pack("c", -1)'),
    ('pack("U", [8364])', 'pack("U", 8364)'),
]


def perl_values(expressions: list[str]) -> list[str]:
    # Text is characters on both sides: the program is UTF-8 source, and
    # output (pack's bytes included) is written as UTF-8.
    program = 'use utf8; binmode STDOUT, ":encoding(UTF-8)";\n' + "\n".join(
        f'{{ my @v = ({expr}); print join(",", map {{ defined $_ ? $_ : "" }} @v), "\\x1e\\x1f"; }}'
        for expr in expressions
    )
    result = subprocess.run(
        ["perl", "-e", program], capture_output=True, text=True, check=True, timeout=30
    )
    return result.stdout.split("\x1e\x1f")[:-1]


def agent_value(expression: str, scope: Scope | None = None) -> object:
    agent = parse_agent(f"NAME t\nMNEMONIC t\nSET v = {expression}\n", "t.agent")
    (command,) = agent.commands
    assert isinstance(command, Assign)
    return evaluate(command.expr, scope or Scope(), Registry.default())


def joined(value: object) -> str:
    if isinstance(value, list):
        return ",".join(render(item) for item in value)
    return render(value)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
def test_builtins_match_perl() -> None:
    expected = perl_values([perl for _, perl in CASES])
    assert len(expected) == len(CASES)
    mismatches = []
    for (expression, perl), want in zip(CASES, expected, strict=True):
        got = joined(agent_value(expression))
        if got != want:
            mismatches.append(f"{expression}: fleetd {got!r}, perl {want!r} ({perl})")
    assert mismatches == []


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
def test_file_tests_match_perl(tmp_path: Path) -> None:
    (tmp_path / "empty").touch()
    (tmp_path / "text").write_text("hello\n")
    (tmp_path / "binary").write_bytes(b"\0\1\2\3" * 10)
    (tmp_path / "link").symlink_to(tmp_path / "text")
    os.mkfifo(tmp_path / "fifo")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o4755)
    functions = {
        "IsReadable": "-r", "IsWritable": "-w", "IsExecutable": "-x", "IsOwned": "-o",
        "IsReallyReadable": "-R", "IsReallyWritable": "-W", "IsReallyExecutable": "-X",
        "IsReallyOwned": "-O", "IsPathExists": "-e", "IsEmpty": "-z", "IsNonEmpty": "-s",
        "FileSize": "-s", "IsFile": "-f", "IsDir": "-d", "IsSymLink": "-l",
        "IsPipe": "-p", "IsSocket": "-S", "IsBlockSpecial": "-b", "IsCharSpecial": "-c",
        "IsSetUID": "-u", "IsSetGID": "-g", "IsSticky": "-k", "IsASCII": "-T",
        "IsBinary": "-B",
    }  # fmt: skip
    paths = [
        str(tmp_path / name)
        for name in ("empty", "text", "binary", "link", "fifo", "script", "missing")
    ]
    paths += [str(tmp_path), "/dev/null"]
    # Perl's -T and -B open a named pipe and block; fleetd returns "" for it.
    cases = [
        (f'{name}("{path}")', f'{test} "{path}"')
        for name, test in functions.items()
        for path in paths
        if not (test in ("-T", "-B") and path.endswith("fifo"))
    ]
    cases.append(
        (
            f'NewerThan("{script}", "{tmp_path / "missing"}")',
            f'(lstat "{script}")[9] > 0 ? 1 : ""',
        )
    )
    expected = perl_values([perl for _, perl in cases])
    mismatches = [
        f"{expression}: fleetd {joined(agent_value(expression))!r}, perl {want!r}"
        for (expression, _), want in zip(cases, expected, strict=True)
        if joined(agent_value(expression)) != want
    ]
    assert mismatches == []


def test_modification_days(tmp_path: Path) -> None:
    path = tmp_path / "old"
    path.touch()
    two_days_ago = path.stat().st_mtime - 2 * 86400
    os.utime(path, (two_days_ago, two_days_ago))
    days = agent_value(f'ModificationDays("{path}")')
    assert isinstance(days, float)
    assert 1.99 < days < 2.01
    assert agent_value(f'ModificationDays("{tmp_path}/missing")') is None


def test_list_functions_change_variables() -> None:
    scope = Scope({"items": [1, 2, 3]})
    assert agent_value("push(items, 4, 5)", scope) == 5
    assert agent_value("pop(items)", scope) == 5
    assert agent_value("shift(items)", scope) == 1
    assert agent_value("unshift(items, 0)", scope) == 4
    assert agent_value("splice(items, 1, 2)", scope) == [2, 3]
    assert scope.lookup(("items",)) == [0, 4]


def test_misc_builtins() -> None:
    assert agent_value("hostname()") == __import__("socket").gethostname()
    assert isinstance(agent_value("time()"), int)
    assert len(agent_value("times()")) == 4  # type: ignore[arg-type]
    assert 0 <= agent_value("rand(10)") < 10  # type: ignore[operator]
    assert agent_value(f'glob("{Path(__file__).parent}/test_b*.py")') == [__file__]
    assert agent_value('glob("/nonexistent/{a,b}")') == [
        "/nonexistent/a",
        "/nonexistent/b",
    ]
    assert len(agent_value(f'stat("{__file__}")')) == 13  # type: ignore[arg-type]
    assert agent_value('stat("/nonexistent")') == []


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
def test_sprintf_matches_perl_on_generated_formats() -> None:
    generator = random.Random(7)
    values = ["42", "-7", "3.14159", "0", "abc", "12abc", "1e3", "-0.5", "255", "65"]
    cases = []
    for _ in range(300):
        flags = "".join(generator.sample("-+ 0#", generator.randint(0, 2)))
        width = generator.choice(["", "1", "5", "10"])
        precision = generator.choice(["", ".0", ".2", ".5"])
        conversion = generator.choice("sdiuxXobeEfgGc%")
        value = generator.choice(values)
        if conversion == "c":
            # Perl dies on %c of a negative number; fleetd gives U+FFFD.
            precision = ""
            value = generator.choice(["65", "0", "255", "3.14159"])
        cases.append((f"%{flags}{width}{precision}{conversion}", value))
    expected = perl_values(
        [f"sprintf(q{{{fmt}}}, q{{{value}}})" for fmt, value in cases]
    )
    mismatches = []
    for (fmt, value), want in zip(cases, expected, strict=True):
        got = perl_sprintf(fmt, value)
        if got != want:
            mismatches.append(
                f"sprintf({fmt!r}, {value!r}): fleetd {got!r}, perl {want!r}"
            )
    assert mismatches == []
