"""Evaluate expressions and interpolate templates against a scope."""

from __future__ import annotations

from fleetd.lang.ast import (
    And,
    Compare,
    Expr,
    FunctionCall,
    ListExpr,
    Literal,
    Location,
    Match,
    Membership,
    Not,
    Or,
    Template,
    Variable,
)
from fleetd.lang.errors import EvaluationError
from fleetd.lang.perlre import PatternTimeout, search
from fleetd.lang.registry import Registry
from fleetd.lang.scope import Scope
from fleetd.lang.tree import chain_operands
from fleetd.lang.values import (
    Value,
    compare_values,
    looks_like_number,
    numbers_to_compare,
    render,
    truth,
)

TRUE: Value = 1
FALSE: Value = ""


def interpolate(template: Template, scope: Scope) -> str:
    """Return the text of `template` with each `${name}` replaced by its rendered value."""
    parts = template.parts
    if len(parts) == 1 and isinstance(parts[0], str):
        return parts[0]
    pieces: list[str] = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
        else:
            pieces.append(render(scope.lookup(part.path)))
    return "".join(pieces)


def _equal(left: Value, right: Value) -> bool:
    if right is None:
        return False
    if looks_like_number(left) and looks_like_number(right):
        a, b = numbers_to_compare(left, right)
        return a == b
    return render(left) == render(right)


def evaluate(
    expr: Expr, scope: Scope, registry: Registry, at: Location | None = None
) -> Value:
    """Return the value of `expr` in `scope`.

    Comparisons and `NOT` return 1 or "" as Perl does; `AND` and `OR`
    return the operand that decided, as Perl's `&&` and `||` do.

    `at` is the location of the command that holds `expr`. An error's
    location is the failing node's column on that line, or None without
    `at`.

    Raises:
        EvaluationError: a function is unknown or raised, or an operand
            has the wrong kind (e.g. `IN` on a dict).
    """
    if isinstance(expr, Literal):
        return expr.value
    if isinstance(expr, Variable):
        return scope.lookup(expr.path)
    if isinstance(expr, Template):
        return interpolate(expr, scope)
    if isinstance(expr, Compare):
        left = evaluate(expr.left, scope, registry, at)
        right = evaluate(expr.right, scope, registry, at)
        if left is None or right is None:
            return FALSE
        return TRUE if compare_values(expr.op, left, right) else FALSE
    if isinstance(expr, (And, Or)):
        return _chain(expr, scope, registry, at)
    if isinstance(expr, Not):
        return FALSE if truth(evaluate(expr.operand, scope, registry, at)) else TRUE
    if isinstance(expr, FunctionCall):
        return _call(expr, scope, registry, at)
    if isinstance(expr, ListExpr):
        return [evaluate(item, scope, registry, at) for item in expr.items]
    if isinstance(expr, Membership):
        item = evaluate(expr.item, scope, registry, at)
        if item is None:
            return FALSE
        container = evaluate(expr.container, scope, registry, at)
        if container is None:
            elements: list[Value] = []
        elif isinstance(container, list):
            elements = container
        elif isinstance(container, dict):
            raise EvaluationError(
                "IN needs a list, got a record", _location(at, expr.column)
            )
        else:
            elements = [container]
        found = any(_equal(item, element) for element in elements)
        return TRUE if found != expr.negated else FALSE
    if isinstance(expr, Match):
        subject = render(evaluate(expr.subject, scope, registry, at))
        try:
            match = search(expr.pattern, subject)
        except PatternTimeout as error:
            raise EvaluationError(str(error), _location(at, expr.column)) from None
        if match is None:
            return FALSE
        for index, group in enumerate(match.groups(), start=1):
            scope.define(str(index), group)
        return TRUE
    raise EvaluationError(f"cannot evaluate {type(expr).__name__}")


def _chain(
    expr: And | Or, scope: Scope, registry: Registry, at: Location | None
) -> Value:
    """Evaluate a run of the same operator, `a OR b OR c`, without recursing.

    As in Perl, the operand that decides is the result: the first false one
    for AND, the first true one for OR, else the last.
    """
    stop_when_true = isinstance(expr, Or)
    value: Value = None
    for operand in chain_operands(expr):
        value = evaluate(operand, scope, registry, at)
        if truth(value) == stop_when_true:
            return value
    return value


def _location(at: Location | None, column: int) -> Location | None:
    return None if at is None else at.with_column(column)


def _call(
    call: FunctionCall, scope: Scope, registry: Registry, at: Location | None
) -> Value:
    spec = registry.function(call.name)
    if spec is None:
        raise EvaluationError(
            f"unknown function {call.name!r}", _location(at, call.column)
        )
    args = [evaluate(arg, scope, registry, at) for arg in call.args]
    try:
        return spec.impl(*args)
    except EvaluationError:
        raise
    except Exception as error:
        raise EvaluationError(
            f"{call.name}() failed: {error}", _location(at, call.column)
        ) from error
