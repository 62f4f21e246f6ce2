"""Walks over parsed syntax trees used by validation and phase selection."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from msgspec.structs import replace

from fleetd.lang.ast import (
    And,
    Command,
    Compare,
    Foreach,
    FunctionCall,
    ListExpr,
    Match,
    Membership,
    Not,
    Or,
    Phase,
    When,
)


def suggest_name(name: str, known: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for a close known name, else ""."""
    # Only a load error needs difflib, so a start without one skips it.
    import difflib

    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    if not matches:
        lowered = {candidate.lower(): candidate for candidate in known}
        if name.lower() in lowered:
            matches = [lowered[name.lower()]]
    return f"; did you mean {matches[0]!r}?" if matches else ""


def chain_operands(node: And | Or) -> list[Any]:
    """Return the operands of a run of one operator, `a OR b OR c`, in order.

    The parser groups such a run to the left, one node per operator; this
    walks it in a loop, so a long run takes no Python frame per term.
    """
    kind = type(node)
    operands = []
    item: Any = node
    while type(item) is kind:
        operands.append(item.right)
        item = item.left
    operands.append(item)
    operands.reverse()

    return operands


def function_calls(item: Any) -> Iterator[FunctionCall]:
    """Yield every function call inside a parsed form, outermost first."""
    if isinstance(item, FunctionCall):
        yield item
        for arg in item.args:
            yield from function_calls(arg)
    elif isinstance(item, (And, Or)):
        for operand in chain_operands(item):
            yield from function_calls(operand)
    elif isinstance(item, Compare):
        yield from function_calls(item.left)
        yield from function_calls(item.right)
    elif isinstance(item, Not):
        yield from function_calls(item.operand)
    elif isinstance(item, Membership):
        yield from function_calls(item.item)
        yield from function_calls(item.container)
    elif isinstance(item, Match):
        yield from function_calls(item.subject)
    elif isinstance(item, ListExpr):
        for element in item.items:
            yield from function_calls(element)
    elif isinstance(item, tuple):
        for element in item:
            yield from function_calls(element)


def commands_of_phase(
    commands: tuple[Command, ...], phase: Phase
) -> tuple[Command, ...]:
    """Keep the commands of `phase`, with the WHEN/FOREACH blocks leading to them."""
    kept: list[Command] = []
    for command in commands:
        if isinstance(command, (When, Foreach)):
            body = commands_of_phase(command.body, phase)
            if body:
                kept.append(
                    command if body == command.body else replace(command, body=body)
                )
        elif command.phase is phase:
            kept.append(command)
    return tuple(kept)
