"""Agents that repeat a line share its syntax tree but keep their own positions."""

from __future__ import annotations

import pytest

from fleetd.lang import (
    AgentError,
    Condition,
    Echo,
    EvaluationError,
    ExecCommand,
    FunctionSpec,
    Registry,
    Scope,
    evaluate,
    expressions,
    parse_agent,
    reader,
)

BODY = (
    'CHECK this.kind IN ["user", "admin"] AND length(this.uid) > 0\n'
    "ECHO creating ${this.uid} in ${home}\n"
    'EXEC_COMMAND install -d -o ${this.uid} "${home}/mail"\n'
)


def clear_memos() -> None:
    expressions._memo.clear()
    reader.WORDS_MEMO.clear()
    reader.TEMPLATE_MEMO.clear()


def two_agents(body: str, registry: Registry | None = None):
    """Parse `body` in a.agent from line 3 and in b.agent from line 5."""
    first = parse_agent(f"NAME A\nMNEMONIC a\n{body}", "a.agent", registry=registry)
    second = parse_agent(
        f"NAME B\nMNEMONIC b\n\n# moved down\n{body}", "b.agent", registry=registry
    )
    return first, second


def test_same_line_shares_nodes() -> None:
    first, second = two_agents(BODY)
    for one, two in zip(first.commands, second.commands, strict=True):
        assert one is not two
        assert one.source is two.source
    check_one, echo_one, exec_one = first.commands
    check_two, echo_two, exec_two = second.commands
    assert isinstance(check_one, Condition)
    assert isinstance(check_two, Condition)
    assert check_one.expr is check_two.expr
    assert isinstance(echo_one, Echo)
    assert isinstance(echo_two, Echo)
    assert echo_one.text is echo_two.text
    assert isinstance(exec_one, ExecCommand)
    assert isinstance(exec_two, ExecCommand)
    assert exec_one.argv is exec_two.argv


def test_shared_line_keeps_each_location() -> None:
    first, second = two_agents(BODY)
    assert [str(command.loc) for command in first.commands] == [
        "a.agent:3:1",
        "a.agent:4:1",
        "a.agent:5:1",
    ]
    assert [str(command.loc) for command in second.commands] == [
        "b.agent:5:1",
        "b.agent:6:1",
        "b.agent:7:1",
    ]
    check = second.commands[0]
    call = check.expr.right.left
    assert str(check.loc.with_column(call.column)) == "b.agent:5:42"


def test_memoized_tree_equals_fresh_parse() -> None:
    clear_memos()
    fresh, _ = two_agents(BODY)
    memoized, _ = two_agents(BODY)
    clear_memos()
    again, _ = two_agents(BODY)
    assert memoized.commands == fresh.commands
    assert again.commands == fresh.commands
    assert again.commands[0].expr is not fresh.commands[0].expr


def test_shared_line_load_error_location() -> None:
    body = "CHECK nosuch(1) = 1\n"
    for _ in range(2):
        with pytest.raises(AgentError) as first:
            parse_agent(f"NAME A\nMNEMONIC a\n{body}", "a.agent")
        with pytest.raises(AgentError) as second:
            parse_agent(f"NAME B\nMNEMONIC b\n\n\n{body}", "b.agent")
        assert str(first.value) == "a.agent:3:7: unknown function 'nosuch'"
        assert str(second.value) == "b.agent:5:7: unknown function 'nosuch'"


def test_shared_line_syntax_error_location() -> None:
    body = "CHECK this.a = = 1\n"
    with pytest.raises(AgentError) as first:
        parse_agent(f"NAME A\nMNEMONIC a\n{body}", "a.agent")
    with pytest.raises(AgentError) as second:
        parse_agent(f"NAME B\nMNEMONIC b\n\n\n{body}", "b.agent")
    assert str(first.value).startswith("a.agent:3:16: unexpected '='")
    assert str(second.value).startswith("b.agent:5:16: unexpected '='")


def test_shared_line_evaluation_error_location() -> None:
    registry = Registry.default()

    def boom() -> int:
        raise OSError("no route")

    registry.add_function(FunctionSpec("boom", 0, 0, boom))
    first, second = two_agents("CHECK TRUE AND boom() = 1\n", registry)
    check_one, check_two = first.commands[0], second.commands[0]
    assert check_one.expr is check_two.expr
    with pytest.raises(EvaluationError) as caught_one:
        evaluate(check_one.expr, Scope(), registry, check_one.loc)
    with pytest.raises(EvaluationError) as caught_two:
        evaluate(check_two.expr, Scope(), registry, check_two.loc)
    assert str(caught_one.value) == "a.agent:3:16: boom() failed: no route"
    assert str(caught_two.value) == "b.agent:5:16: boom() failed: no route"


def test_evaluation_error_without_location() -> None:
    registry = Registry.default()
    (command,) = parse_agent(
        'NAME A\nMNEMONIC a\nCHECK "x" IN this\n', "a.agent", registry=registry
    ).commands
    with pytest.raises(EvaluationError) as caught:
        evaluate(command.expr, Scope({"this": {"a": 1}}), registry)
    assert caught.value.loc is None
    assert str(caught.value) == "IN needs a list, got a record"
