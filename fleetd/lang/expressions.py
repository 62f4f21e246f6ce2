"""Parse expressions and the command forms built on them.

Most lines are read by the recursive-descent parser in fleetd.lang.descent.
The lines it leaves, and every line with an error, go to Lark's LALR parser
(fleetd.lang.lark_parser), which is imported on first use, so that a conf
dir whose lines all parse without it never imports Lark.

Precedence, from loosest to tightest: `OR`, `AND`, `NOT`, then one
comparison, `IN`, `NOT IN` or `MATCHES`. `AND` and `OR` group to the left.
"""

from __future__ import annotations

from typing import Any

from fleetd.lang.ast import (
    And,
    Compare,
    FunctionCall,
    ListExpr,
    Match,
    Membership,
    Not,
    Or,
)
from fleetd.lang.descent import MAX_DEPTH, SHALLOW_LINE, try_parse_form

START_SYMBOLS = (
    "assignment",
    "condition",
    "when_head",
    "foreach_head",
    "option_if",
    "call_command",
)
# Marker characters that name the form of each line of a batch parse.
_MARKERS = {name: chr(index) for index, name in enumerate(START_SYMBOLS, start=1)}


class ExpressionError(ValueError):
    """A syntax error in an expression; `column` counts from 1 in the line."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


# Parsed forms by (start, offset, text). Agents of one conf dir repeat many
# lines (`REQUIRE this.status = "approved"`). Nodes hold only columns, so
# every agent with the same line gets the same parsed form, and each agent
# adds only its own command and location.
_memo: dict[tuple[str, int, str], Any] = {}
_MEMO_LIMIT = 20_000


def parse_form(start: str, line: str, offset: int) -> Any:
    """Parse `line[offset:]` as the command form `start`.

    Columns in nodes and errors count from 1 in the whole line. The result
    may be shared with other lines of the same text, so it must not change.

    Raises:
        ExpressionError: a syntax error or a malformed regular expression.
    """
    key = (start, offset, line[offset:])
    cached = _memo.get(key)
    if cached is not None:
        return cached
    result = try_parse_form(start, line, offset)
    if result is None:
        result = _parse_form(start, line, offset)
    if len(_memo) >= _MEMO_LIMIT:
        _memo.clear()
    _memo[key] = result
    return result


def parse_forms(requests: list[tuple[str, str, int]]) -> list[Any] | None:
    """Parse many forms at once; None if any has an error.

    Each request is (start, line, offset), as for `parse_form`. Forms seen
    before come from the memo. The others go through one parse of a batch
    text, which saves the setup cost of a parse per line. After an error
    the caller parses line by line, to report every error.
    """
    results: list[Any] = [None] * len(requests)
    missing: list[int] = []
    for index, (start, line, offset) in enumerate(requests):
        key = (start, offset, line[offset:])
        cached = _memo.get(key)
        if cached is None:
            cached = try_parse_form(start, line, offset)
            if cached is not None:
                if len(_memo) >= _MEMO_LIMIT:
                    _memo.clear()
                _memo[key] = cached
        if cached is None:
            missing.append(index)
        else:
            results[index] = cached
    if not missing:
        return results
    pieces = []
    for index in missing:
        start, line, offset = requests[index]
        pieces.append(_MARKERS[start] + " " * (offset - 1) + line[offset:] + "\n")
    from fleetd.lang import lark_parser

    parsed = lark_parser.parse_batch("".join(pieces))
    if parsed is None or len(parsed) != len(missing):
        return None
    for index, result in zip(missing, parsed, strict=True):
        if len(requests[index][1]) > SHALLOW_LINE and _too_deep(result):
            return None
    if len(_memo) + len(missing) > _MEMO_LIMIT:
        _memo.clear()
    for index, result in zip(missing, parsed, strict=True):
        start, line, offset = requests[index]
        _memo[(start, offset, line[offset:])] = result
        results[index] = result
    return results


def _parse_form(start: str, line: str, offset: int) -> Any:
    from fleetd.lang import lark_parser

    result = lark_parser.parse(" " * offset + line[offset:], start, offset)
    if len(line) > SHALLOW_LINE and _too_deep(result):
        raise ExpressionError(
            f"expression nested deeper than {MAX_DEPTH} levels; split it with SET",
            offset + 1,
        )
    return result


def _too_deep(item: Any) -> bool:
    """Tell whether a parsed form nests deeper than MAX_DEPTH, without recursing."""
    stack: list[tuple[Any, int]] = [(item, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(node, tuple):
            stack.extend((element, depth) for element in node)
        elif isinstance(node, (And, Or)):
            # A run of one operator is evaluated without recursing, so its
            # left spine counts as one level.
            same = type(node.left) is type(node)
            stack.append((node.left, depth if same else depth + 1))
            stack.append((node.right, depth + 1))
        elif isinstance(node, Compare):
            stack.append((node.left, depth + 1))
            stack.append((node.right, depth + 1))
        elif isinstance(node, Not):
            stack.append((node.operand, depth + 1))
        elif isinstance(node, Membership):
            stack.append((node.item, depth + 1))
            stack.append((node.container, depth + 1))
        elif isinstance(node, Match):
            stack.append((node.subject, depth + 1))
        elif isinstance(node, (ListExpr, FunctionCall)):
            children = node.items if isinstance(node, ListExpr) else node.args
            stack.extend((child, depth + 1) for child in children)
    return False
