"""Parse command forms by recursive descent, without Lark, when that is safe.

Lark's LALR parser, with its contextual lexer and the transformer running
inside it, took about 60% of a cold parse of agents that share no line
(pyinstrument on scripts/bench/parse.py --distinct). This parser reads
the same grammar (expressions.lark) in one pass and builds the same nodes.
It accepts only what it can read without doubt and returns None for
everything else: any syntax error, a line longer than `SHALLOW_LINE`, a
reserved word where a name belongs, a `#` where free text may start. The caller then asks Lark, so every error message still comes
from one place. tests/lang/test_descent.py compares both parsers on
generated lines.
"""

from __future__ import annotations

import re
import sys
from typing import Any

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
from fleetd.lang.perlre import PatternError, compile_perl
from fleetd.lang.templates import string_literal, variable_path
from fleetd.lang.values import number_literal

# Words that Lark's lexer reads as keywords when they stand alone.
RESERVED_WORDS = frozenset({"AND", "OR", "NOT", "IN", "MATCHES", "TRUE", "FALSE", "DO"})
# Evaluation and validation recurse once per level of nesting, so a limit
# keeps them far from Python's recursion limit. Each level takes at least
# two characters, so a line this short is shallow.
MAX_DEPTH = 100
SHALLOW_LINE = 2 * MAX_DEPTH

# The terminals of expressions.lark.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_NUMBER_RE = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.])")
_STRING_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_REGEX_RE = re.compile(r"/(?:[^/\\\n]|\\.)*/[A-Za-z]*")
# Blanks (WS), and a comment to the end of the line (COMMENT).
_IGNORED_RE = re.compile(r"[ \t\f\r]*(?:#.*)?")
_COMPARISONS = ("<>", "<=", ">=", "=", "<", ">")


class _Unsure(Exception):
    """Raised where Lark must decide: a syntax error or a doubtful case."""


class _Reader:
    """Recursive-descent parser over one line; `position` counts from 0."""

    __slots__ = ("line", "position")

    def __init__(self, line: str, position: int) -> None:
        self.line = line
        self.position = position

    # -- tokens -----------------------------------------------------------

    def skip(self) -> str:
        """Skip blanks and a comment; return the next character, or ""."""
        line = self.line
        match = _IGNORED_RE.match(line, self.position)
        position = match.end()  # type: ignore[union-attr]
        self.position = position
        return line[position] if position < len(line) else ""

    def word(self) -> str:
        """Return the name at the current position without consuming it, or ""."""
        match = _NAME_RE.match(self.line, self.position)
        return match.group() if match is not None else ""

    def keyword(self, keyword: str) -> bool:
        """Consume `keyword` if it is the next token."""
        self.skip()
        if self.word() == keyword:
            self.position += len(keyword)
            return True
        return False

    def expect(self, char: str) -> None:
        if self.skip() != char:
            raise _Unsure
        self.position += 1

    def name(self) -> str:
        """Consume a name that is not a reserved word."""
        self.skip()
        name = self.word()
        if not name or name in RESERVED_WORDS:
            raise _Unsure
        self.position += len(name)
        return sys.intern(name)

    def end(self) -> None:
        if self.skip():
            raise _Unsure

    # -- expressions ------------------------------------------------------

    def expr(self) -> Expr:
        left = self.and_expr()
        while self.keyword("OR"):
            left = Or(left, self.and_expr(), left.column)
        return left

    def and_expr(self) -> Expr:
        left = self.not_expr()
        while self.keyword("AND"):
            left = And(left, self.not_expr(), left.column)
        return left

    def not_expr(self) -> Expr:
        self.skip()
        column = self.position + 1
        if self.keyword("NOT"):
            return Not(self.not_expr(), column)
        return self.predicate()

    def predicate(self) -> Expr:
        left = self.atom()
        char = self.skip()
        if char in ("<", ">", "="):
            line, position = self.line, self.position
            for operator in _COMPARISONS:
                if line.startswith(operator, position):
                    self.position += len(operator)
                    return Compare(operator, left, self.atom(), left.column)
        if self.keyword("IN"):
            return Membership(left, self.atom(), False, left.column)
        if self.keyword("NOT"):
            if not self.keyword("IN"):
                raise _Unsure
            return Membership(left, self.atom(), True, left.column)
        if self.keyword("MATCHES"):
            return Match(left, self.pattern(), left.column)
        return left

    def pattern(self) -> Any:
        self.skip()
        match = _REGEX_RE.match(self.line, self.position)
        if match is None:
            raise _Unsure
        self.position = match.end()
        text = match.group()
        end = text.rindex("/")
        try:
            return compile_perl(text[1:end], text[end + 1 :])
        except PatternError:
            raise _Unsure from None

    def atom(self) -> Expr:
        char = self.skip()
        line, position = self.line, self.position
        column = position + 1
        if char == '"':
            match = _STRING_RE.match(line, position)
            if match is None:
                raise _Unsure
            self.position = match.end()
            return string_literal(match.group(), column)

        if char == "[":
            self.position += 1
            items = self.arguments("]")
            return ListExpr(items, column)

        if char == "(":
            self.position += 1
            inner = self.expr()
            self.expect(")")
            return inner

        if char.isdigit() or char in ("+", "-"):
            match = _NUMBER_RE.match(line, position)
            if match is None:
                raise _Unsure
            self.position = match.end()
            return Literal(number_literal(match.group()), column)

        word = self.word()
        if not word:
            raise _Unsure
        if word in RESERVED_WORDS:
            if word == "TRUE":
                self.position += 4
                return Literal(1, column)
            if word == "FALSE":
                self.position += 5
                return Literal("", column)
            raise _Unsure

        self.position += len(word)
        if self.skip() == "(":
            self.position += 1
            return FunctionCall(sys.intern(word), self.arguments(")"), column)
        return Variable(variable_path(word), column)

    def arguments(self, closing: str) -> tuple[Expr, ...]:
        """Read comma-separated expressions and then `closing`.

        A trailing comma is allowed, as in the grammar's `args` rule.
        """
        items: list[Expr] = []
        if self.skip() == closing:
            self.position += 1
            return ()
        while True:
            items.append(self.expr())
            char = self.skip()
            if char == ",":
                self.position += 1
                char = self.skip()
                if char == closing:
                    break
                continue
            if char == closing:
                break
            raise _Unsure
        self.position += 1
        return tuple(items)

    # -- start symbols ----------------------------------------------------

    def condition(self) -> Expr:
        expr = self.expr()
        self.end()
        return expr

    def when_head(self) -> Expr:
        expr = self.expr()
        if not self.keyword("DO"):
            raise _Unsure
        self.end()
        return expr

    def foreach_head(self) -> tuple[str, Expr]:
        name = self.name()
        if not self.keyword("IN"):
            raise _Unsure
        expr = self.expr()
        if not self.keyword("DO"):
            raise _Unsure
        self.end()
        return (name, expr)

    def assignment(self) -> tuple[str, bool, Expr]:
        name = self.name()
        self.skip()
        if self.line.startswith("//=", self.position):
            self.position += 3
            only_if_undefined = True
        elif self.line.startswith("=", self.position):
            self.position += 1
            only_if_undefined = False
        else:
            raise _Unsure
        expr = self.expr()
        self.end()
        return (name, only_if_undefined, expr)

    def option_if(self) -> tuple[Expr, str, int]:
        self.expect("(")
        expr = self.expr()
        self.expect(")")
        line = self.line
        position = self.position
        while position < len(line) and line[position] in " \t":
            position += 1
        if position == len(line):
            return (expr, "", 0)
        # A comment and free text both may start here, and a form feed or
        # a carriage return may be a blank or text: Lark's lexer decides.
        if line[position] in "#\f\r":
            raise _Unsure
        return (expr, line[position:], position + 1)

    def call_command(self) -> FunctionCall:
        self.skip()
        column = self.position + 1
        name = self.name()
        self.expect("(")
        call = FunctionCall(name, self.arguments(")"), column)
        self.end()
        return call


_STARTS = {
    "assignment": _Reader.assignment,
    "condition": _Reader.condition,
    "when_head": _Reader.when_head,
    "foreach_head": _Reader.foreach_head,
    "option_if": _Reader.option_if,
    "call_command": _Reader.call_command,
}


def try_parse_form(start: str, line: str, offset: int) -> Any:
    """Parse `line[offset:]` as the form `start`, or return None if unsure.

    A result equals what `fleetd.lang.expressions.parse_form` returns for
    the same line. None means Lark must parse the line, because it may be
    invalid or uses syntax this parser leaves to Lark.
    """
    if len(line) > SHALLOW_LINE:
        return None
    try:
        return _STARTS[start](_Reader(line, offset))
    except (_Unsure, RecursionError):
        return None
