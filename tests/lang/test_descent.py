"""Differential test: the recursive-descent parser agrees with Lark.

Wherever `try_parse_form` returns a result, Lark must parse the same line
into an equal tree (nodes, columns and values). Wherever Lark reports an
error, `try_parse_form` must return None, so the error still comes from
Lark.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.lang.descent import try_parse_form
from fleetd.lang.expressions import START_SYMBOLS, ExpressionError, _parse_form

# The keyword in front of each form, as the line parser passes it.
PREFIXES = {
    "assignment": ["SET", "CHECK_SET", "  REQUIRE_SET"],
    "condition": ["CHECK", "REQUIRE", "\tPREREQUISITE"],
    "when_head": ["WHEN", "    WHEN"],
    "foreach_head": ["FOREACH"],
    "option_if": ["OPTION_IF", "  OPTION_IF"],
    "call_command": ["CALL"],
}
NAMES = ["x", "this.id", "this.a.b", "_v1", "lc", "split", "OS", "ORx", "INx", "DOx"]
KEYWORDS = ["AND", "OR", "NOT", "IN", "MATCHES", "TRUE", "FALSE", "DO"]
PIECES = [
    *NAMES, *KEYWORDS, "1", "+2", "-3", "4.5", "6.", "7a", "1.2.3", '"s"',
    '"a ${x} b"', '"\\"q\\""', '"\\x41"', '"open', "(", ")", "[", "]", ",",
    "=", "//=", "<>", "<", ">", "<=", ">=", "==", "/a(b)/i", "/x/", "/(/",
    "/x/q", "/open", "#", "# note", " ", "\t", "\f", "\r", "\v", "'", "$",
    "${x}", "é", "\\", ".", "--uid", "${this.uid}",
]  # fmt: skip
SEPARATORS = ["", " ", "  ", "\t"]


def lark_result(start: str, line: str, offset: int) -> Any:
    """Return Lark's tree, or the ExpressionError it raised."""
    try:
        return _parse_form(start, line, offset)
    except ExpressionError as error:
        return error


def check_agreement(start: str, line: str, offset: int) -> Any:
    expected = lark_result(start, line, offset)
    actual = try_parse_form(start, line, offset)
    if isinstance(expected, ExpressionError):
        assert actual is None, f"{line!r}: Lark raised {expected.message!r}"
    elif actual is not None:
        assert actual == expected, line
    return actual


atoms = st.one_of(
    st.sampled_from(["x", "this.status", "user", "_v1", "a.b.c"]),
    st.integers(-999, 999).map(str),
    st.sampled_from(["1.5", "+3", "-0", "TRUE", "FALSE"]),
    st.sampled_from(['""', '"linux"', '"${home}/mail"', '"a\\tb"', '"\\x{263A}"']),
)


def compound(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Build valid expressions from smaller ones."""
    operators = st.sampled_from(["=", "<>", "<", ">", "<=", ">="])
    return st.one_of(
        st.tuples(children, st.sampled_from([" AND ", " OR ", " AND\t"]), children).map(
            "".join
        ),
        children.map(lambda text: f"NOT {text}"),
        children.map(lambda text: f"({text})"),
        st.tuples(atoms, operators, atoms).map(lambda parts: " ".join(parts)),
        st.tuples(atoms, st.sampled_from([" IN ", " NOT IN ", "  IN\t"]), atoms).map(
            "".join
        ),
        atoms.map(lambda text: f"{text} MATCHES /^([a-z]+)@x\\.org$/i"),
        st.lists(children, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        st.lists(children, max_size=3).map(lambda items: f"lc({','.join(items)})"),
        st.lists(children, min_size=1, max_size=2).map(
            lambda items: f"size( {', '.join(items)}, )"
        ),
    )


valid_expressions = st.recursive(atoms, compound, max_leaves=12)


def wrap(start: str, expression: str, name: str, text: str) -> str:
    if start == "assignment":
        return f"{name} = {expression}"
    if start == "when_head":
        return f"{expression} DO"
    if start == "foreach_head":
        return f"{name} IN {expression} DO"
    if start == "option_if":
        return f"({expression}){text}"
    if start == "call_command":
        return f"{name}({expression})"
    return expression


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(START_SYMBOLS),
    st.data(),
    valid_expressions,
    st.sampled_from(["x", "this.home", "item"]),
    st.sampled_from(["", " --uid ${x}", "\t-v", "  ", " #x", "-x # y"]),
    st.sampled_from(["", "  ", " # trailing comment"]),
)
def test_valid_forms_agree(
    start: str, data: st.DataObject, expression: str, name: str, text: str, tail: str
) -> None:
    prefix = data.draw(st.sampled_from(PREFIXES[start]))
    body = wrap(start, expression, name, text)
    if start != "option_if":
        body += tail
    line = f"{prefix} {body}"
    check_agreement(start, line, len(prefix))


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(START_SYMBOLS),
    st.data(),
    st.lists(
        st.tuples(st.sampled_from(PIECES), st.sampled_from(SEPARATORS)), max_size=9
    ),
)
def test_random_forms_agree(
    start: str, data: st.DataObject, pieces: list[tuple[str, str]]
) -> None:
    prefix = data.draw(st.sampled_from(PREFIXES[start]))
    line = prefix + " " + "".join(piece + separator for piece, separator in pieces)
    check_agreement(start, line, len(prefix))


@pytest.mark.parametrize(
    ("start", "line"),
    [
        ("condition", 'PREREQUISITE OS() = "linux"'),
        ("assignment", 'PREREQUISITE_SET home_root = "/srv/home"'),
        ("condition", 'REQUIRE this.status = "approved" AND this.kind IN ["u", "a"]'),
        ("condition", "REQUIRE this.email MATCHES /^([a-z0-9._-]+)@example\\.org$/i"),
        ("assignment", 'REQUIRE_SET user = lc("${1}")'),
        ("condition", 'REQUIRE NOT IsPathExists("${home_root}/${user}")'),
        ("condition", 'CHECK length(user) <= 32 AND index(user, ".") <> 0'),
        ("assignment", 'CHECK_SET shell //= "/bin/bash"'),
        ("option_if", "OPTION_IF (defined(this.uid)) --uid ${this.uid}"),
        ("when_head", "WHEN this.quota > 0 DO"),
        ("foreach_head", 'FOREACH group IN split(",", this.groups) DO'),
        ("when_head", '    WHEN NOT group IN ["wheel", "root"] DO'),
        ("assignment", "SET this.home = home # comment"),
        ("call_command", "CALL notify(this.id, [1, 2,], -3.5)"),
    ],
)
def test_common_lines_skip_lark(start: str, line: str) -> None:
    offset = len(line) - len(line.lstrip()) + len(line.split()[0])
    assert check_agreement(start, line, offset) is not None


@pytest.mark.parametrize(
    ("start", "line"),
    [
        ("condition", "CHECK x = = 1"),
        ("condition", "CHECK AND"),
        ("condition", "CHECK x MATCHES /(/"),
        ("condition", 'CHECK "open'),
        ("assignment", "SET TRUE = 1"),
        ("when_head", "WHEN x"),
        ("option_if", "OPTION_IF (x) # comment or text"),
        ("condition", "CHECK " + "(" * 120 + "x" + ")" * 120),
    ],
)
def test_doubtful_lines_go_to_lark(start: str, line: str) -> None:
    offset = len(line.split()[0])
    assert try_parse_form(start, line, offset) is None
    check_agreement(start, line, offset)
