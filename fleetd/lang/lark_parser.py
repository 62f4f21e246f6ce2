"""Parse command forms with Lark, for lines the recursive-descent parser leaves.

The grammar (expressions.lark) is LALR(1); Lark's contextual lexer lets the
same characters mean different things by position, e.g. the `/re/` after
`MATCHES` and the free text after `OPTION_IF (...)`. The transformer runs
inside the parser, so no parse tree is built: each rule returns its syntax
tree node directly.

fleetd.lang.expressions imports this module, and with it Lark and the
`regex` module that Lark uses, only when a line needs Lark: a line that
fleetd.lang.descent does not accept, or any line with an error.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from importlib import resources
from typing import Any

import lark
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
    Match,
    Membership,
    Not,
    Or,
    Variable,
)
from fleetd.lang.descent import RESERVED_WORDS
from fleetd.lang.expressions import START_SYMBOLS, ExpressionError
from fleetd.lang.perlre import PatternError, compile_perl
from fleetd.lang.templates import string_literal, variable_path
from fleetd.lang.values import number_literal

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


def _column(token: Token) -> int:
    return token.column or 1


def _check_not_reserved(token: Token) -> None:
    if str(token) in RESERVED_WORDS:
        raise ExpressionError(f"unexpected keyword {str(token)!r}", _column(token))


def _node_column(item: Any) -> int:
    if isinstance(item, Token):
        return _column(item)
    return item.column  # type: ignore[no-any-return]


@v_args(inline=True)
class _Builder(Transformer[Token, Any]):
    """Build syntax tree nodes while the LALR parser reduces."""

    def number(self, token: Token) -> Literal:
        return Literal(number_literal(str(token)), _column(token))

    def string(self, token: Token) -> Expr:
        return string_literal(str(token), _column(token))

    def true(self, token: Token) -> Literal:
        return Literal(1, _column(token))

    def false(self, token: Token) -> Literal:
        return Literal("", _column(token))

    def variable(self, token: Token) -> Variable:
        _check_not_reserved(token)
        return Variable(variable_path(str(token)), _column(token))

    def args(self, *items: Expr) -> tuple[Expr, ...]:
        return items

    def call(self, name: Token, args: tuple[Expr, ...] | None) -> FunctionCall:
        _check_not_reserved(name)
        return FunctionCall(sys.intern(str(name)), args or (), _column(name))

    def list(self, bracket: Token, args: tuple[Expr, ...] | None) -> ListExpr:
        return ListExpr(args or (), _column(bracket))

    def compare(self, left: Expr, op: Token, right: Expr) -> Compare:
        return Compare(sys.intern(str(op)), left, right, _node_column(left))

    def member(self, item: Expr, _in: Token, container: Expr) -> Membership:
        return Membership(item, container, False, _node_column(item))

    def not_member(
        self, item: Expr, _not: Token, _in: Token, container: Expr
    ) -> Membership:
        return Membership(item, container, True, _node_column(item))

    def match(self, subject: Expr, keyword: Token, regex: Token) -> Match:
        text = str(regex)
        end = text.rindex("/")
        try:
            pattern = compile_perl(text[1:end], text[end + 1 :])
        except PatternError as error:
            raise ExpressionError(str(error), _column(regex)) from None
        return Match(subject, pattern, _node_column(subject))

    def not_(self, keyword: Token, operand: Expr) -> Not:
        return Not(operand, _column(keyword))

    def and_(self, left: Expr, right: Expr) -> And:
        return And(left, right, _node_column(left))

    def or_(self, left: Expr, right: Expr) -> Or:
        return Or(left, right, _node_column(left))

    # Start symbols return plain tuples; the line parser builds the commands.

    def assignment(self, name: Token, op: Token, expr: Expr) -> tuple[str, bool, Expr]:
        _check_not_reserved(name)
        return (sys.intern(str(name)), str(op) == "//=", expr)

    def condition(self, expr: Expr) -> Expr:
        return expr

    def when_head(self, expr: Expr) -> Expr:
        return expr

    def foreach_head(self, name: Token, _in: Token, expr: Expr) -> tuple[str, Expr]:
        _check_not_reserved(name)
        return (sys.intern(str(name)), expr)

    def option_if(self, expr: Expr, text: Token | None = None) -> tuple[Expr, str, int]:
        # `TEXT?` leaves no placeholder, so a line without text passes one item.
        if text is None:
            return (expr, "", 0)
        return (expr, str(text), _column(text))

    def call_command(self, name: Token, args: tuple[Expr, ...] | None) -> FunctionCall:
        return FunctionCall(sys.intern(str(name)), args or (), _column(name))

    def batch(self, *results: Any) -> list[Any]:
        return list(results)


def _cache_file() -> str | bool:
    """Return where Lark keeps the analysed grammar, or False for no cache.

    Building the LALR tables takes about 100 ms, loading them from the cache
    about 5 ms. Lark stores the tables with pickle, so the folder must belong
    to this user and be writable by no one else. Otherwise the tables are
    built on every start. Lark checks the grammar's SHA-256 and its own
    version on load and rebuilds the file when either changed, and it falls
    back to building when the file cannot be read or written.
    """
    folder = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        folder = os.path.join(base, "fleetd")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.stat(folder)
    except OSError:
        return False
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        return False
    python = f"{sys.version_info[0]}{sys.version_info[1]}"

    return os.path.join(folder, f"expressions-lark{lark.__version__}-py{python}.tmp")


def _build_parser() -> Lark:
    grammar = resources.files("fleetd.lang").joinpath("expressions.lark").read_text()

    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        start=[*START_SYMBOLS, "batch"],
        transformer=_Builder(),
        maybe_placeholders=True,
        cache=_cache_file(),
    )


_parser_lock = threading.Lock()
_parser_instance: Lark | None = None


def _parser() -> Lark:
    """Return the shared parser, built (or loaded from the cache) on first use."""
    global _parser_instance
    if _parser_instance is None:
        with _parser_lock:
            if _parser_instance is None:
                _parser_instance = _build_parser()

    return _parser_instance


# A string token without its closing quote, as the free-text terminal reads it.
_UNTERMINATED_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*\Z')


def _describe(error: UnexpectedInput) -> str:
    if isinstance(error, UnexpectedToken):
        token = error.token
        text = str(token)
        if token.type == "$END":
            found = "end of the line"
        elif text.startswith('"') and _UNTERMINATED_STRING_RE.match(text):
            return 'unterminated string: the closing " is missing'
        elif text.startswith("/") and "REGEX" in error.expected:
            return "unterminated regular expression: the closing / is missing"
        else:
            # A free-text token can run to the end of the line; show its first word.
            words = text.split()
            found = repr(words[0][:40] if words else text)
        expected = sorted(
            _TERMINAL_NAMES.get(name, repr(name.strip("_")) if name.isupper() else name)
            for name in error.expected
        )
        shown = ", ".join(expected[:6]) + (", ..." if len(expected) > 6 else "")
        return f"unexpected {found}; expected {shown}"
    if isinstance(error, UnexpectedCharacters):
        if error.char == '"':
            return 'unterminated string: the closing " is missing'
        if error.char == "/":
            return "unterminated regular expression: the closing / is missing"
        return f"unexpected character {error.char!r}"
    if isinstance(error, UnexpectedEOF):
        return "unexpected end of the line"
    return "syntax error"


def parse(text: str, start: str, offset: int) -> Any:
    """Parse `text` from the start symbol `start`.

    `text` is a line with its first `offset` characters blanked, so that
    columns count from 1 in the whole line.

    Raises:
        ExpressionError: a syntax error or a malformed regular expression.
    """
    try:
        return _parser().parse(text, start=start)
    except UnexpectedInput as error:
        column = getattr(error, "column", None) or offset + 1
        if isinstance(error, UnexpectedToken) and error.token.type == "$END":
            column = max(len(text.rstrip()), offset) + 1
        raise ExpressionError(_describe(error), column) from None
    except VisitError as error:
        if isinstance(error.orig_exc, ExpressionError):
            raise error.orig_exc from None
        raise


def parse_batch(text: str) -> list[Any] | None:
    """Parse marked lines with the `batch` rule; return None after any error."""
    try:
        return _parser().parse(text, start="batch")  # type: ignore[no-any-return]
    except (UnexpectedInput, VisitError, ExpressionError):
        return None
