"""Evaluation: comparisons, truth, MATCHES groups, interpolation and scopes."""

from __future__ import annotations

import pytest

from fleetd.lang import (
    Condition,
    EvaluationError,
    FunctionSpec,
    Registry,
    Scope,
    Template,
    evaluate,
    interpolate,
    parse_agent,
    render,
    truth,
)


def condition(text: str, registry: Registry | None = None) -> Condition:
    agent = parse_agent(
        f"NAME t\nMNEMONIC t\nCHECK {text}\n", "t.agent", registry=registry
    )
    (command,) = agent.commands
    assert isinstance(command, Condition)
    return command


def expression(text: str, registry: Registry | None = None):
    return condition(text, registry).expr


def value(text: str, variables: dict | None = None, registry: Registry | None = None):
    registry = registry or Registry.default()
    command = condition(text, registry)
    return evaluate(command.expr, Scope(variables or {}), registry, command.loc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"10" = "10.0"', 1),
        ('"10" = 10', 1),
        ('"abc" = "abc"', 1),
        ('"abc" <> "abd"', 1),
        ("9 < 10", 1),
        ('"9" < "10"', 1),  # numeric: both look like numbers
        ('"9a" < "10a"', ""),  # string comparison
        ('"b" > "a"', 1),
        ('"a" >= "a"', 1),
        ('"a" <= "b"', 1),
        ('" 1 " = 1', 1),
        ('"1e3" = 1000', 1),
        ("TRUE", 1),
        ("FALSE", ""),
        ("2 IN [1, 2, 3]", 1),
        ('"2.0" IN [1, 2, 3]', 1),
        ('"x" IN ["a", "b"]', ""),
        ('"x" NOT IN ["a", "b"]', 1),
        ('"a" NOT IN ["a", "b"]', ""),
        ("NOT TRUE", ""),
        ("NOT FALSE", 1),
        ("TRUE AND FALSE", ""),
        ("FALSE OR TRUE", 1),
        ("NOT FALSE AND FALSE", ""),  # NOT binds tighter than AND
        ("TRUE OR TRUE AND FALSE", 1),  # AND binds tighter than OR
        ("(TRUE OR TRUE) AND FALSE", ""),
        ('"x" AND "y"', "y"),  # Perl's && returns the deciding operand
        ('"" OR "fallback"', "fallback"),
    ],
)
def test_expression_values(text: str, expected: object) -> None:
    assert value(text) == expected


@pytest.mark.parametrize(
    "text",
    ['missing = ""', 'missing <> ""', "missing = 0", 'missing < "a"', '"" = missing'],
)
def test_undefined_compares_false(text: str) -> None:
    assert value(text) == ""


def test_undefined_in_list() -> None:
    assert value("missing IN [1]") == ""
    assert value("missing NOT IN [1]") == ""
    assert value("1 IN missing") == ""


def test_defined_tests_undefined() -> None:
    assert value("defined(missing)") == ""
    assert value("defined(empty)", {"empty": ""}) == 1
    assert value("NOT defined(missing)") == 1


@pytest.mark.parametrize(
    ("item", "expected"),
    [(None, False), ("", False), ("0", False), (0, False), (0.0, False),
     ("0.0", True), ("00", True), (" ", True), ("a", True), (1, True),
     (-1, True), ([], True), ({}, True)],
)  # fmt: skip
def test_truth_is_perl_truth(item: object, expected: bool) -> None:
    assert truth(item) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("item", "expected"),
    [(None, ""), (0, "0"), (0.0, "0"), (1.5, "1.5"), (0.1 + 0.2, "0.3"),
     (1e20, "1e+20"), (["a", 0, None, 2], "a 0  2"), ("x", "x"), (-7, "-7")],
)  # fmt: skip
def test_render(item: object, expected: str) -> None:
    assert render(item) == expected  # type: ignore[arg-type]


def test_matches_sets_groups_on_success() -> None:
    scope = Scope({"email": "bob@example.org"})
    registry = Registry.default()
    expr = expression(r"email MATCHES /^([a-z]+)@(example)\.(org|com)(x)?$/")
    assert evaluate(expr, scope, registry) == 1
    assert scope.lookup(("1",)) == "bob"
    assert scope.lookup(("2",)) == "example"
    assert scope.lookup(("3",)) == "org"
    assert scope.lookup(("4",)) is None
    scope.define("1", "kept")
    assert evaluate(expression("email MATCHES /^(z+)$/"), scope, registry) == ""
    assert scope.lookup(("1",)) == "kept"


def test_matches_flags() -> None:
    assert value('"ABC" MATCHES /abc/i') == 1
    assert value('"a\\nb" MATCHES /^b$/m') == 1
    assert value('"a\\nb" MATCHES /a.b/s') == 1
    assert value('"ab" MATCHES / a b /x') == 1
    assert value('"ab\\n" MATCHES /b\\z/') == ""
    assert value('"ab\\n" MATCHES /b\\Z/') == 1
    assert value('"x:y" MATCHES /(?<k>\\w):\\k<k>/') == ""
    assert value('"a.b" MATCHES /\\Qa.b\\E/') == 1
    assert value('"Ab1" MATCHES /^[[:alpha:]]+[[:digit:]]$/') == 1


def test_interpolation() -> None:
    scope = Scope({"zero": 0, "items": ["a", "b"], "this": {"id": "7"}})
    template = (
        parse_agent(
            "NAME t\nMNEMONIC t\nECHO z=${zero} u=${missing} l=${items} id=${ this.id } $x ${}\n",
            "t.agent",
        )
        .commands[0]
        .text
    )
    assert isinstance(template, Template)
    assert interpolate(template, scope) == "z=0 u= l=a b id=7 $x ${}"


def test_string_literal_interpolates_at_evaluation() -> None:
    assert value('"${a}/${b}" = "x/1"', {"a": "x", "b": 1}) == 1


def test_function_failure_is_evaluation_error() -> None:
    registry = Registry.default()
    registry.add_function(FunctionSpec("boom", 0, 0, lambda: 1 / 0))
    with pytest.raises(EvaluationError) as caught:
        value("boom()", registry=registry)
    assert "boom() failed" in str(caught.value)
    assert str(caught.value).startswith("t.agent:3:7: ")


def test_scope_lookup_and_assign() -> None:
    outer = Scope({"a": 1, "this": {"id": "r1", "status": "new"}})
    inner = outer.child()
    inner.define("loop", "x")
    inner.assign(("a",), 2)
    inner.assign(("fresh",), 3)
    inner.assign(("this", "status"), "done")
    assert outer.lookup(("a",)) == 2
    assert outer.lookup(("fresh",)) is None
    assert inner.lookup(("fresh",)) == 3
    assert outer.lookup(("this", "status")) == "done"
    assert inner.lookup(("this", "missing", "deeper")) is None
    assert inner.flatten()["loop"] == "x"
    assert "loop" not in outer.flatten()
    with pytest.raises(EvaluationError):
        inner.assign(("nothing", "field"), 1)


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0, 1), (1999, 1), (2000, "")],
)
def test_long_or_chain_evaluates(x: int, expected: object) -> None:
    # Two thousand terms: evaluated without one Python frame per term.
    chain = " OR ".join(f"x = {number}" for number in range(2000))

    assert value(chain, {"x": x}) == expected


def test_and_chain_returns_deciding_operand() -> None:
    assert value('1 AND "a" AND 0 AND "b"') == 0
    assert value('1 AND "a" AND "b"') == "b"
    assert value('"" OR 0 OR "c" OR "d"') == "c"
    assert value('"" OR 0') == 0


def test_mixed_chain_keeps_precedence() -> None:
    # AND binds tighter than OR: 0 OR (1 AND 0) OR (1 AND 2).
    assert value("0 OR 1 AND 0 OR 1 AND 2") == 2
