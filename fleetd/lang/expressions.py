"""Parse expressions and the command forms built on them, with Lark.

The grammar (expressions.lark) is LALR(1); Lark's contextual lexer lets the
same characters mean different things by position, e.g. the `/re/` after
`MATCHES` and the free text after `OPTION_IF (...)`. The transformer runs
inside the parser, so no parse tree is built: each rule returns its syntax
tree node directly.

Precedence, from loosest to tightest: `OR`, `AND`, `NOT`, then one
comparison, `IN`, `NOT IN` or `MATCHES`. `AND` and `OR` group to the left.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

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
    Variable,
)
from fleetd.lang.perlre import PatternError, compile_perl
from fleetd.lang.templates import string_literal

START_SYMBOLS = (
    "assignment",
    "condition",
    "when_head",
    "foreach_head",
    "option_if",
    "call_command",
)

RESERVED_WORDS = frozenset({"AND", "OR", "NOT", "IN", "MATCHES", "TRUE", "FALSE", "DO"})

_TERMINAL_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "REGEX": "a /regular expression/",
    "TEXT": "text",
    "COMP_OP": "a comparison (= <> < > <= >=)",
    "ASSIGN_OP": "'=' or '//='",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "$END": "the end of the line",
}


class ExpressionError(ValueError):
    """A syntax error in an expression; `column` counts from 1 in the line."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


class _Position(threading.local):
    file: str = ""
    line: int = 0


_position = _Position()


def _loc(token: Token) -> Location:
    return Location(_position.file, _position.line, token.column or 1)


def _check_not_reserved(token: Token) -> None:
    if str(token) in RESERVED_WORDS:
        raise ExpressionError(f"unexpected keyword {str(token)!r}", token.column or 1)


def _node_loc(item: Any) -> Location:
    if isinstance(item, Token):
        return _loc(item)
    return item.loc


@v_args(inline=True)
class _Builder(Transformer[Token, Any]):
    """Build syntax tree nodes while the LALR parser reduces."""

    def number(self, token: Token) -> Literal:
        text = str(token)
        value: int | str = int(text) if "." not in text else text
        return Literal(value, _loc(token))

    def string(self, token: Token) -> Expr:
        return string_literal(str(token), _loc(token))

    def true(self, token: Token) -> Literal:
        return Literal(1, _loc(token))

    def false(self, token: Token) -> Literal:
        return Literal("", _loc(token))

    def variable(self, token: Token) -> Variable:
        _check_not_reserved(token)
        return Variable(tuple(str(token).split(".")), _loc(token))

    def args(self, *items: Expr) -> tuple[Expr, ...]:
        return items

    def call(self, name: Token, args: tuple[Expr, ...] | None) -> FunctionCall:
        _check_not_reserved(name)
        return FunctionCall(str(name), args or (), _loc(name))

    def list(self, bracket: Token, args: tuple[Expr, ...] | None) -> ListExpr:
        return ListExpr(args or (), _loc(bracket))

    def compare(self, left: Expr, op: Token, right: Expr) -> Compare:
        return Compare(str(op), left, right, _node_loc(left))

    def member(self, item: Expr, _in: Token, container: Expr) -> Membership:
        return Membership(item, container, False, _node_loc(item))

    def not_member(
        self, item: Expr, _not: Token, _in: Token, container: Expr
    ) -> Membership:
        return Membership(item, container, True, _node_loc(item))

    def match(self, subject: Expr, keyword: Token, regex: Token) -> Match:
        text = str(regex)
        end = text.rindex("/")
        try:
            pattern = compile_perl(text[1:end], text[end + 1 :])
        except PatternError as error:
            raise ExpressionError(str(error), regex.column or 1) from None
        return Match(subject, pattern, _node_loc(subject))

    def not_(self, keyword: Token, operand: Expr) -> Not:
        return Not(operand, _loc(keyword))

    def and_(self, left: Expr, right: Expr) -> And:
        return And(left, right, _node_loc(left))

    def or_(self, left: Expr, right: Expr) -> Or:
        return Or(left, right, _node_loc(left))

    # Start symbols return plain tuples; the line parser builds the commands.

    def assignment(self, name: Token, op: Token, expr: Expr) -> tuple[str, bool, Expr]:
        _check_not_reserved(name)
        return (str(name), str(op) == "//=", expr)

    def condition(self, expr: Expr) -> Expr:
        return expr

    def when_head(self, expr: Expr) -> Expr:
        return expr

    def foreach_head(self, name: Token, _in: Token, expr: Expr) -> tuple[str, Expr]:
        _check_not_reserved(name)
        return (str(name), expr)

    def option_if(self, expr: Expr, text: Token | None) -> tuple[Expr, str, int]:
        if text is None:
            return (expr, "", 0)
        return (expr, str(text), text.column or 1)

    def call_command(self, name: Token, args: tuple[Expr, ...] | None) -> FunctionCall:
        return FunctionCall(str(name), args or (), _loc(name))


_grammar = resources.files("fleetd.lang").joinpath("expressions.lark").read_text()
_parser = Lark(
    _grammar,
    parser="lalr",
    lexer="contextual",
    start=list(START_SYMBOLS),
    transformer=_Builder(),
    maybe_placeholders=True,
    cache=False,
)


def _describe(error: UnexpectedInput) -> str:
    if isinstance(error, UnexpectedToken):
        token = error.token
        if token.type == "$END":
            found = "end of the line"
        else:
            found = repr(str(token))
        expected = sorted(
            _TERMINAL_NAMES.get(name, repr(name.strip("_")) if name.isupper() else name)
            for name in error.expected
        )
        shown = ", ".join(expected[:6]) + (", ..." if len(expected) > 6 else "")
        return f"unexpected {found}; expected {shown}"
    if isinstance(error, UnexpectedCharacters):
        return f"unexpected character {error.char!r}"
    if isinstance(error, UnexpectedEOF):
        return "unexpected end of the line"
    return "syntax error"


def parse_form(start: str, line: str, offset: int, file: str, line_number: int) -> Any:
    """Parse `line[offset:]` as the command form `start`.

    Columns in nodes and errors count from 1 in the whole line.

    Raises:
        ExpressionError: a syntax error or a malformed regular expression.
    """
    _position.file = file
    _position.line = line_number
    text = " " * offset + line[offset:]
    try:
        return _parser.parse(text, start=start)
    except UnexpectedInput as error:
        column = getattr(error, "column", None) or offset + 1
        if isinstance(error, UnexpectedToken) and error.token.type == "$END":
            column = len(text.rstrip()) + 1
        raise ExpressionError(_describe(error), column) from None
    except VisitError as error:
        if isinstance(error.orig_exc, ExpressionError):
            raise error.orig_exc from None
        raise
