"""Per-file state of the agent parser and the helpers its commands share."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import msgspec

from fleetd.lang.ast import Command, FunctionCall, Literal, Location, Phase, Template
from fleetd.lang.errors import Diagnostic
from fleetd.lang.expressions import ExpressionError, parse_form, parse_forms
from fleetd.lang.keywords import FORM_OF_KEYWORD
from fleetd.lang.perlre import PatternError, compile_perl
from fleetd.lang.registry import Registry, arity_error
from fleetd.lang.templates import template_from_text
from fleetd.lang.tree import function_calls, suggest_name
from fleetd.lang.words import WordError, split_words

# Marks a line whose form the batch parse did not prepare.
NOT_PREPARED = object()
# The runtime walks blocks recursively; a limit keeps it far from Python's
# recursion limit.
MAX_BLOCK_DEPTH = 100
# Split command lines by (text, column). Many agents repeat the same command
# lines, so they share the split words as they share parsed forms
# (fleetd.lang.expressions).
WORDS_MEMO: dict[tuple[str, int], tuple[Template, ...]] = {}
WORDS_MEMO_LIMIT = 20_000
# Templates of ECHO and LOG by (text, column), shared the same way.
TEMPLATE_MEMO: dict[tuple[str, int], Template] = {}
KEYWORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BLANK_RE = re.compile(r"[ \t\f\v]*")
TRAILING_COMMENT_RE = re.compile(r"\s+#.*\Z|\s+\Z")


def leading_blanks(text: str) -> int:
    """Return the number of blanks that `text` starts with."""
    return len(text) - len(text.lstrip(" \t\f\v"))


def split_lines(text: str) -> Iterator[str]:
    """Yield the lines of `text`, split at LF and without a CRLF's CR."""
    for line in text.split("\n"):
        if "\r" in line:
            line = line.rstrip("\r")
            if "\r" in line:
                # A lone CR stays inside its line as a blank, so line numbers
                # match those of editors that break lines at LF only.
                line = line.replace("\r", " ")
        yield line


class Frame(msgspec.Struct):
    """A block being read: its opening line and the commands read so far."""

    keyword: str
    loc: Location
    source: str
    head: Any  # parsed opening line; None when it had an error
    body: list[Command] = msgspec.field(default_factory=list)
    in_cleanup: bool = False
    in_parallel: bool = False
    # Whether a COMMAND came before a cleanup block, restored at its END:
    # a cleanup block builds its programs from a COMMAND of its own.
    outer_seen_program: bool = False


class LineReader:
    """The state of parsing one file, and the helpers that command parsers share."""

    def __init__(self, text: str, path: str, registry: Registry) -> None:
        self.text = text
        self.path = path
        self.registry = registry
        self.diagnostics: list[Diagnostic] = []
        self.header: dict[str, Any] = {}
        self.header_locs: dict[str, Location] = {}
        self.stack: list[Frame] = [Frame("", Location(path, 1, 1), "", None)]
        self.seen_command = False
        self.seen_program = False
        self.line_number = 0
        self.line = ""
        # Parsed forms by (line number, start symbol), from prepare_forms.
        self.prepared: dict[tuple[int, str], Any] = {}

    # -- helpers ----------------------------------------------------------

    def at(self, column: int) -> Location:
        return Location(self.path, self.line_number, column)

    def error(self, column: int, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.at(column), message))

    def prepare_forms(self, entries: list[tuple[int, str, int]]) -> None:
        """Parse the expressions of every line in one batch, when it has no error."""
        requests: list[tuple[str, str, int]] = []
        numbers: list[int] = []
        for number, line, indent in entries:
            match = KEYWORD_RE.match(line, indent)
            if match is None or "\0" in line:
                continue
            start = FORM_OF_KEYWORD.get(match.group())
            if start is not None:
                requests.append((start, line, match.end()))
                numbers.append(number)
        results = parse_forms(requests)
        if results is not None:
            self.prepared = {
                (number, request[0]): result
                for number, request, result in zip(
                    numbers, requests, results, strict=True
                )
            }

    def form(self, start: str, offset: int) -> Any:
        """Parse the rest of the line as a grammar form; None after an error.

        Function calls in the result are checked against the registry; the
        call of a `call_command` form names a command, so only its
        arguments are.
        """
        result = self.prepared.pop((self.line_number, start), NOT_PREPARED)
        try:
            if result is NOT_PREPARED:
                result = parse_form(start, self.line, offset)
        except ExpressionError as error:
            self.error(error.column, error.message)
            return None
        # A form without "(" calls no function, so it needs no walk.
        if "(" in self.line[offset:]:
            self.validate(result.args if start == "call_command" else result)
        return result

    def validate(self, item: Any) -> None:
        """Check the functions called in a parsed form against the registry."""
        for call in function_calls(item):
            spec = self.registry.function(call.name)
            if spec is None:
                self.error(
                    call.column,
                    f"unknown function {call.name!r}"
                    + suggest_name(call.name, self.registry.functions),
                )
                continue
            message = arity_error(call.name, spec, len(call.args))
            if message is not None:
                self.error(call.column, message)
                continue
            for position in spec.patterns:
                self.check_pattern(call, position)

    def check_pattern(self, call: FunctionCall, position: int) -> None:
        """Compile a constant pattern argument, so a malformed one fails at load."""
        if position >= len(call.args):
            return
        argument = call.args[position]
        if isinstance(argument, Literal) and isinstance(argument.value, str):
            pattern = argument.value
        elif isinstance(argument, Template) and len(argument.parts) == 1:
            pattern = argument.parts[0]
            assert isinstance(pattern, str)  # a template's one part is text
        else:
            return  # known only at run time
        try:
            compile_perl(pattern, "")
        except PatternError as error:
            self.error(argument.column, f"{call.name}(): {error}")

    def words(self, text: str, column: int) -> tuple[Template, ...] | None:
        key = (text, column)
        cached = WORDS_MEMO.get(key)
        if cached is not None:
            return cached
        # Blanks that end the line are not part of its last word, as with
        # every other command. A form feed or vertical tab inside the line
        # stays in its word, as in sh.
        trimmed = text.rstrip(" \t\f\v")
        if not trimmed.endswith("\\"):
            text = trimmed
        try:
            words = split_words(text, column)
        except WordError as error:
            self.error(column + error.offset, error.message)
            return None
        if len(WORDS_MEMO) >= WORDS_MEMO_LIMIT:
            WORDS_MEMO.clear()
        WORDS_MEMO[key] = words
        return words

    def template(self, text: str, column: int) -> Template:
        key = (text, column)
        cached = TEMPLATE_MEMO.get(key)
        if cached is not None:
            return cached
        template = template_from_text(text, column)
        if len(TEMPLATE_MEMO) >= WORDS_MEMO_LIMIT:
            TEMPLATE_MEMO.clear()
        TEMPLATE_MEMO[key] = template
        return template

    def source(self) -> str:
        """Return the current line, stripped; equal lines share one string."""
        return sys.intern(self.line.strip())

    def add(self, command: Command) -> None:
        self.stack[-1].body.append(command)

    @property
    def frame(self) -> Frame:
        return self.stack[-1]

    def run_phase(self) -> Phase:
        return Phase.CLEANUP if self.frame.in_cleanup else Phase.RUN

    def require_run_like(self, keyword: str, column: int) -> bool:
        """Reject commands of other phases inside cleanup and PARALLEL blocks."""
        if self.frame.in_cleanup:
            self.error(
                column,
                f"{keyword} is not allowed inside CLEANUP, ON_FAILURE or ON_SUCCESS; "
                "only SET, ECHO, LOG, EXEC*, COMMAND/OPTION*, CALL, WHEN and FOREACH are",
            )
            return False
        if self.frame.in_parallel:
            self.error(
                column,
                f"{keyword} is not allowed inside PARALLEL, which belongs to Run",
            )
            return False
        return True
