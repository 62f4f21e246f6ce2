"""Parse and validate agent files into `Agent` syntax trees.

An agent file is line-based: each line starts with a keyword, and blocks
end with `END`. This module reads the lines, handles the header, the
blocks and the free-text commands (`ECHO`, `LOG`, program command lines),
and hands every expression to the Lark LALR grammar in
fleetd.lang.expressions. Parsing a line at a time lets one pass report every
error of a file, each at its line and column, instead of stopping at the
first one.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fleetd.lang.ast import (
    Agent,
    And,
    Assign,
    CallCommand,
    CleanupBlock,
    CleanupWhen,
    Command,
    Compare,
    Condition,
    Echo,
    ExecCommand,
    Foreach,
    FunctionCall,
    ListExpr,
    Location,
    Log,
    Match,
    Membership,
    Not,
    Or,
    Parallel,
    Phase,
    ProgramExec,
    ProgramOption,
    ProgramStart,
    Schedule,
    Template,
    When,
)
from fleetd.lang.errors import AgentError, Diagnostic
from fleetd.lang.expressions import ExpressionError, parse_form, parse_forms, relocate
from fleetd.lang.registry import Registry, describe_arity
from fleetd.lang.templates import template_from_text
from fleetd.lang.words import WordError, split_words

HEADER_KEYWORDS = frozenset(
    {
        "NAME",
        "MNEMONIC",
        "DESCRIPTION",
        "VERSION",
        "WORKFLOW",
        "SCHEDULE",
        "CONCURRENCY",
        "TIMEOUT",
    }
)
_SET_PHASES = {
    "PREREQUISITE_SET": Phase.INITIALIZE,
    "REQUIRE_SET": Phase.REQUIREMENTS,
    "CHECK_SET": Phase.CHECK,
    "SET": Phase.RUN,
}
_CONDITION_PHASES = {
    "PREREQUISITE": Phase.INITIALIZE,
    "REQUIRE": Phase.REQUIREMENTS,
    "CHECK": Phase.CHECK,
}
_CLEANUP_KEYWORDS = {
    "CLEANUP": CleanupWhen.ALWAYS,
    "ON_FAILURE": CleanupWhen.FAILURE,
    "ON_SUCCESS": CleanupWhen.SUCCESS,
}
_PROGRAM_KEYWORDS = frozenset(
    {"COMMAND", "OPTION", "OPTION_IF", "EXEC", "EXEC_IF_OPTION"}
)
COMMAND_KEYWORDS = frozenset(
    {
        *_SET_PHASES,
        *_CONDITION_PHASES,
        *_CLEANUP_KEYWORDS,
        *_PROGRAM_KEYWORDS,
        "ECHO",
        "LOG",
        "EXEC_COMMAND",
        "CALL",
        "WHEN",
        "FOREACH",
        "PARALLEL",
        "END",
    }
)
LOG_LEVELS = {
    "DEBUG": "debug",
    "INFO": "info",
    "NOTICE": "notice",
    "WARNING": "warning",
    "WARN": "warning",
    "ERROR": "error",
    "ERR": "error",
    "CRITICAL": "critical",
    "CRIT": "critical",
    "ALERT": "alert",
    "EMERGENCY": "emergency",
    "EMERG": "emergency",
}

# The grammar start symbol of the expression part of each command.
_FORM_OF_KEYWORD = {
    **dict.fromkeys(_SET_PHASES, "assignment"),
    **dict.fromkeys(_CONDITION_PHASES, "condition"),
    "WHEN": "when_head",
    "FOREACH": "foreach_head",
    "OPTION_IF": "option_if",
    "CALL": "call_command",
}
_NOT_PREPARED = object()
# The runtime walks blocks recursively; a limit keeps it far from Python's
# recursion limit.
MAX_BLOCK_DEPTH = 100
# Split command lines by (text, column), as parsed forms are memoized in
# fleetd.lang.expressions: many agents repeat the same command lines.
_WORDS_MEMO: dict[tuple[str, int], tuple[Template, ...]] = {}
_WORDS_MEMO_LIMIT = 20_000
_KEYWORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BLANK_RE = re.compile(r"[ \t\f\v]*")
_TRAILING_COMMENT_RE = re.compile(r"\s+#.*\Z|\s+\Z")
_MNEMONIC_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
_WORKFLOW_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+\Z")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return the seconds of a duration such as `90s`, `5m` or `1h30m`.

    Raises:
        ValueError: `text` is not a sequence of numbers with units ms, s, m, h.
    """
    if not _DURATION_RE.match(text):
        raise ValueError(
            f"invalid duration {text!r}; expected a number with a unit ms, s, m or h, e.g. 5m"
        )
    return sum(
        float(number) * _DURATION_UNITS[unit]
        for number, unit in _DURATION_PART_RE.findall(text)
    )


@dataclass(slots=True)
class _Frame:
    """A block being read: its opening line and the commands read so far."""

    keyword: str
    loc: Location
    source: str
    head: Any  # parsed opening line; None when it had an error
    body: list[Command] = field(default_factory=list)
    in_cleanup: bool = False
    in_parallel: bool = False


class _FileParser:
    """The state of parsing one file."""

    def __init__(self, text: str, path: str, registry: Registry) -> None:
        self.text = text
        self.path = path
        self.registry = registry
        self.diagnostics: list[Diagnostic] = []
        self.header: dict[str, Any] = {}
        self.header_locs: dict[str, Location] = {}
        self.stack: list[_Frame] = [_Frame("", Location(path, 1, 1), "", None)]
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
        requests: list[tuple[str, str, int, int]] = []
        for number, line, indent in entries:
            match = _KEYWORD_RE.match(line, indent)
            if match is None or "\0" in line:
                continue
            start = _FORM_OF_KEYWORD.get(match.group())
            if start is not None:
                requests.append((start, line, match.end(), number))
        results = parse_forms(requests, self.path)
        if results is not None:
            self.prepared = {
                (request[3], request[0]): result
                for request, result in zip(requests, results, strict=True)
            }

    def form(self, start: str, offset: int) -> Any:
        """Parse the rest of the line as a grammar form; None after an error.

        Function calls in the result are checked against the registry; the
        call of a `call_command` form names a command, so only its
        arguments are.
        """
        result = self.prepared.pop((self.line_number, start), _NOT_PREPARED)
        try:
            if result is _NOT_PREPARED:
                result = parse_form(
                    start, self.line, offset, self.path, self.line_number
                )
        except ExpressionError as error:
            self.error(error.column, error.message)
            return None
        # A form without "(" calls no function, so it needs no walk.
        if "(" in self.line[offset:]:
            self.validate(result.args if start == "call_command" else result)
        return result

    def validate(self, item: Any) -> None:
        """Check the functions called in a parsed form against the registry."""
        for call in _function_calls(item):
            spec = self.registry.function(call.name)
            if spec is None:
                self.diagnostics.append(
                    Diagnostic(
                        call.loc,
                        f"unknown function {call.name!r}"
                        + _suggestion(call.name, self.registry.functions),
                    )
                )
                continue
            count = len(call.args)
            if count < spec.min_args or (
                spec.max_args is not None and count > spec.max_args
            ):
                arity = describe_arity(spec.min_args, spec.max_args)
                noun = "argument" if arity == "1" else "arguments"
                self.diagnostics.append(
                    Diagnostic(
                        call.loc, f"{call.name}() takes {arity} {noun}, got {count}"
                    )
                )

    def words(self, text: str, column: int) -> tuple[Template, ...] | None:
        key = (text, column)
        cached = _WORDS_MEMO.get(key)
        if cached is not None:
            return relocate(cached, self.path, self.line_number)  # type: ignore[no-any-return]
        try:
            words = split_words(text, self.at(column))
        except WordError as error:
            self.error(column + error.offset, error.message)
            return None
        if len(_WORDS_MEMO) >= _WORDS_MEMO_LIMIT:
            _WORDS_MEMO.clear()
        _WORDS_MEMO[key] = words
        return words

    def add(self, command: Command) -> None:
        self.stack[-1].body.append(command)

    @property
    def frame(self) -> _Frame:
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

    # -- the file ---------------------------------------------------------

    def parse(self) -> None:
        entries: list[tuple[int, str, int]] = []
        for number, line in enumerate(_lines(self.text), start=1):
            if number == 1 and line.startswith("#!"):
                continue
            indent = _BLANK_RE.match(line).end()  # type: ignore[union-attr]
            if indent == len(line) or line[indent] == "#":
                continue
            entries.append((number, line, indent))
        self.prepare_forms(entries)
        for number, line, indent in entries:
            self.line_number = number
            self.line = line
            if "\0" in line:
                self.error(line.index("\0") + 1, "NUL character in the file")
                continue
            self.parse_line(line, indent)
        self.line_number = len(self.text.splitlines()) or 1
        for frame in reversed(self.stack[1:]):
            self.diagnostics.append(
                Diagnostic(
                    frame.loc, f"{frame.keyword} block is never closed: END is missing"
                )
            )
        for keyword in ("NAME", "MNEMONIC"):
            if keyword not in self.header_locs:
                self.diagnostics.append(
                    Diagnostic(Location(self.path, 1, 1), f"missing {keyword} line")
                )

    def parse_line(self, line: str, indent: int) -> None:
        match = _KEYWORD_RE.match(line, indent)
        column = indent + 1
        if match is None:
            self.error(column, f"expected a command keyword, found {line[indent]!r}")
            return
        keyword = match.group()
        rest_at = match.end()
        if rest_at < len(line) and line[rest_at] not in " \t\f\v(":
            self.error(rest_at + 1, f"unexpected {line[rest_at]!r} after {keyword}")
            return
        if keyword in HEADER_KEYWORDS:
            self.parse_header(keyword, line, rest_at, column)
            return
        if keyword not in COMMAND_KEYWORDS:
            hint = ""
            if (
                keyword.upper() in COMMAND_KEYWORDS
                or keyword.upper() in HEADER_KEYWORDS
            ):
                hint = f"; keywords are upper case: {keyword.upper()}"
            self.error(column, f"unknown command {keyword!r}{hint}")
            return
        self.seen_command = True
        handler = getattr(self, "cmd_" + keyword.lower())
        handler(keyword, line, rest_at, column)

    # -- header -----------------------------------------------------------

    def parse_header(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        if self.seen_command:
            self.error(
                column,
                f"{keyword} is a header line and must come before the first command",
            )
            return
        if keyword in self.header_locs:
            first = self.header_locs[keyword]
            self.error(
                column, f"duplicate {keyword} line; the first is at line {first.line}"
            )
            return
        self.header_locs[keyword] = self.at(column)
        raw = line[rest_at:].strip()
        value_column = (
            rest_at + 1 + (len(line[rest_at:]) - len(line[rest_at:].lstrip()))
        )
        value: Any = raw
        if keyword in ("SCHEDULE", "CONCURRENCY", "TIMEOUT"):
            raw = _TRAILING_COMMENT_RE.sub("", raw)
        if not raw and keyword not in ("DESCRIPTION", "VERSION"):
            self.error(column, f"{keyword} needs a value")
            return
        if keyword == "MNEMONIC" and not _MNEMONIC_RE.match(raw):
            self.error(
                value_column,
                f"invalid MNEMONIC {raw!r}; use letters, digits, '_' and '-'",
            )
            return
        if keyword == "WORKFLOW" and not _WORKFLOW_RE.match(raw):
            self.error(value_column, f"invalid WORKFLOW name {raw!r}")
            return
        if keyword == "CONCURRENCY":
            if not raw.isdigit() or int(raw) < 1:
                self.error(
                    value_column,
                    f"CONCURRENCY must be a whole number >= 1, got {raw!r}",
                )
                return
            value = int(raw)
        elif keyword == "TIMEOUT":
            try:
                value = parse_duration(raw)
            except ValueError as error:
                self.error(value_column, f"TIMEOUT: {error}")
                return
        elif keyword == "SCHEDULE":
            value = self.parse_schedule(raw, value_column)
            if value is None:
                return
        self.header[keyword] = value

    def parse_schedule(self, raw: str, column: int) -> Schedule | None:
        words = raw.split()
        if len(words) == 1 and words[0].lower() == "manual":
            return Schedule(manual=True)
        if len(words) == 2 and words[0].lower() == "every":
            try:
                seconds = parse_duration(words[1])
            except ValueError as error:
                self.error(column, f"SCHEDULE: {error}")
                return None
            if seconds <= 0:
                self.error(column, "SCHEDULE: the interval must be longer than 0")
                return None
            return Schedule(every=seconds)
        self.error(
            column, f"invalid SCHEDULE {raw!r}; expected 'every <duration>' or 'manual'"
        )
        return None

    # -- commands ---------------------------------------------------------

    def cmd_prerequisite(
        self, keyword: str, line: str, rest_at: int, column: int
    ) -> None:
        if not self.require_run_like(keyword, column):
            return
        expr = self.form("condition", rest_at)
        if expr is not None:
            phase = _CONDITION_PHASES[keyword]
            self.add(Condition(expr, self.at(column), line.strip(), phase))

    cmd_require = cmd_prerequisite
    cmd_check = cmd_prerequisite

    def cmd_set(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        phase = _SET_PHASES[keyword]
        if phase is not Phase.RUN:
            if not self.require_run_like(keyword, column):
                return
        else:
            phase = self.run_phase()
        parsed = self.form("assignment", rest_at)
        if parsed is None:
            return
        name, only_if_undefined, expr = parsed
        target = tuple(name.split("."))
        if target[0] == "this" and (len(target) == 1 or keyword != "SET"):
            message = (
                "cannot assign to this itself; set a field such as this.status"
                if len(target) == 1
                else f"{keyword} cannot change a record field; use SET {name} in Run"
            )
            self.error(rest_at + 1 + _leading_blanks(line[rest_at:]), message)
            return
        self.add(
            Assign(
                target, expr, only_if_undefined, self.at(column), line.strip(), phase
            )
        )

    cmd_prerequisite_set = cmd_set
    cmd_require_set = cmd_set
    cmd_check_set = cmd_set

    def text_after(self, line: str, rest_at: int) -> tuple[str, int]:
        """Return the free text after the keyword and its 1-based column."""
        blanks = _leading_blanks(line[rest_at:])
        return line[rest_at + blanks :], rest_at + blanks + 1

    def cmd_echo(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        text, text_column = self.text_after(line, rest_at)
        template = template_from_text(text, self.at(text_column))
        self.add(Echo(template, self.at(column), line.strip(), self.run_phase()))

    def cmd_log(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        text, text_column = self.text_after(line, rest_at)
        level_word, _, message = text.partition(" ")
        if "\t" in level_word:
            level_word, _, tail = level_word.partition("\t")
            message = tail + (" " + message if message else "")
        level = LOG_LEVELS.get(level_word.upper())
        if level is None:
            shown = level_word or "nothing"
            self.error(
                text_column,
                f"invalid LOG level {shown!r}; expected one of DEBUG, INFO, NOTICE, "
                "WARNING, ERROR, CRITICAL, ALERT, EMERGENCY",
            )
            return
        message_column = text_column + len(text) - len(message.lstrip())
        template = template_from_text(message.lstrip(), self.at(message_column))
        self.add(Log(level, template, self.at(column), line.strip(), self.run_phase()))

    def ignore_failure(self, line: str, rest_at: int) -> tuple[bool, int]:
        """Consume an IGNORE_FAILURE word; return the flag and where the rest starts."""
        text, text_column = self.text_after(line, rest_at)
        if text.startswith("IGNORE_FAILURE") and (
            len(text) == len("IGNORE_FAILURE") or text[len("IGNORE_FAILURE")] in " \t"
        ):
            return True, text_column - 1 + len("IGNORE_FAILURE")
        return False, rest_at

    def cmd_exec_command(
        self, keyword: str, line: str, rest_at: int, column: int
    ) -> None:
        ignore, rest_at = self.ignore_failure(line, rest_at)
        self.program_line(keyword, line, rest_at, column, ignore)

    def cmd_command(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        self.program_line(keyword, line, rest_at, column, False)

    def program_line(
        self, keyword: str, line: str, rest_at: int, column: int, ignore: bool
    ) -> None:
        if (
            keyword == "COMMAND"
            and self.frame.in_parallel
            and self.frame.keyword == "PARALLEL"
        ):
            self.direct_parallel_error(keyword, column)
            return
        text, text_column = self.text_after(line, rest_at)
        argv = self.words(text, text_column)
        if argv is None:
            return
        if not argv:
            self.error(column, f"{keyword} needs a command line")
            return
        loc, source, phase = self.at(column), line.strip(), self.run_phase()
        if keyword == "COMMAND":
            self.seen_program = True
            self.add(ProgramStart(argv, loc, source, phase))
        else:
            self.add(ExecCommand(argv, ignore, loc, source, phase))

    def direct_parallel_error(self, keyword: str, column: int) -> None:
        self.error(
            column,
            f"{keyword} cannot be a direct part of PARALLEL, whose commands run at once; "
            "put the whole COMMAND ... EXEC sequence inside a WHEN TRUE DO ... END",
        )

    def check_program_started(self, keyword: str, column: int) -> bool:
        if self.frame.keyword == "PARALLEL":
            self.direct_parallel_error(keyword, column)
            return False
        if not self.seen_program:
            self.error(column, f"{keyword} without a COMMAND before it")
            return False
        return True

    def cmd_option(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        if not self.check_program_started(keyword, column):
            return
        text, text_column = self.text_after(line, rest_at)
        words = self.words(text, text_column)
        if words is None:
            return
        if not words:
            self.error(column, "OPTION needs text")
            return
        self.add(
            ProgramOption(words, None, self.at(column), line.strip(), self.run_phase())
        )

    def cmd_option_if(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        if not self.check_program_started(keyword, column):
            return
        parsed = self.form("option_if", rest_at)
        if parsed is None:
            return
        condition, text, text_column = parsed
        words = self.words(text, text_column) if text else ()
        if words is None:
            return
        if not words:
            self.error(column, "OPTION_IF needs text after its condition")
            return
        self.add(
            ProgramOption(
                words, condition, self.at(column), line.strip(), self.run_phase()
            )
        )

    def cmd_exec(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        if not self.check_program_started(keyword, column):
            return
        ignore, after = self.ignore_failure(line, rest_at)
        rest = _TRAILING_COMMENT_RE.sub("", line[after:])
        if rest.strip():
            self.error(
                after + 1 + _leading_blanks(line[after:]),
                f"unexpected text after {keyword}",
            )
            return
        self.add(
            ProgramExec(
                ignore,
                keyword == "EXEC_IF_OPTION",
                self.at(column),
                line.strip(),
                self.run_phase(),
            )
        )

    cmd_exec_if_option = cmd_exec

    def cmd_call(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        call = self.form("call_command", rest_at)
        if call is None:
            return
        spec = self.registry.command(call.name)
        if spec is None:
            self.diagnostics.append(
                Diagnostic(
                    call.loc,
                    f"unknown command {call.name!r} in CALL"
                    + _suggestion(call.name, self.registry.commands),
                )
            )
            return
        count = len(call.args)
        if count < spec.min_args or (
            spec.max_args is not None and count > spec.max_args
        ):
            arity = describe_arity(spec.min_args, spec.max_args)
            self.diagnostics.append(
                Diagnostic(
                    call.loc, f"{call.name}() takes {arity} arguments, got {count}"
                )
            )
            return
        self.add(
            CallCommand(
                call.name, call.args, self.at(column), line.strip(), self.run_phase()
            )
        )

    # -- blocks -----------------------------------------------------------

    def open_block(self, keyword: str, line: str, column: int, head: Any) -> None:
        parent = self.frame
        if len(self.stack) == MAX_BLOCK_DEPTH + 1:
            self.error(column, f"blocks nested deeper than {MAX_BLOCK_DEPTH} levels")
        if len(self.stack) > MAX_BLOCK_DEPTH:
            head = None
        self.stack.append(
            _Frame(
                keyword,
                self.at(column),
                line.strip(),
                head,
                in_cleanup=parent.in_cleanup or keyword in _CLEANUP_KEYWORDS,
                in_parallel=parent.in_parallel or keyword == "PARALLEL",
            )
        )

    def cmd_when(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        start = "when_head" if keyword == "WHEN" else "foreach_head"
        head = self.form(start, rest_at)
        if keyword == "FOREACH" and head is not None and "." in head[0]:
            self.error(
                rest_at + 1 + _leading_blanks(line[rest_at:]),
                "a FOREACH variable cannot contain '.'",
            )
            head = None
        self.open_block(keyword, line, column, head)

    cmd_foreach = cmd_when

    def cmd_parallel(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        ok = True
        if _TRAILING_COMMENT_RE.sub("", line[rest_at:]).strip():
            self.error(
                rest_at + 1 + _leading_blanks(line[rest_at:]),
                f"unexpected text after {keyword}",
            )
            ok = False
        elif keyword == "PARALLEL" and self.frame.in_cleanup:
            self.error(
                column, "PARALLEL is allowed only in Run, not inside a cleanup block"
            )
            ok = False
        elif keyword in _CLEANUP_KEYWORDS and self.frame.in_cleanup:
            self.error(
                column, f"{keyword} cannot be nested inside another cleanup block"
            )
            ok = False
        elif keyword in _CLEANUP_KEYWORDS and self.frame.in_parallel:
            self.error(column, f"{keyword} is not allowed inside PARALLEL")
            ok = False
        self.open_block(keyword, line, column, True if ok else None)

    cmd_cleanup = cmd_parallel
    cmd_on_failure = cmd_parallel
    cmd_on_success = cmd_parallel

    def cmd_end(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        if _TRAILING_COMMENT_RE.sub("", line[rest_at:]).strip():
            self.error(
                rest_at + 1 + _leading_blanks(line[rest_at:]),
                "unexpected text after END",
            )
        if len(self.stack) == 1:
            self.error(column, "END without a block to close")
            return
        frame = self.stack.pop()
        if frame.head is None:
            return
        body = tuple(frame.body)
        node: Command
        if frame.keyword == "WHEN":
            node = When(frame.head, body, frame.loc, frame.source)
        elif frame.keyword == "FOREACH":
            variable, items = frame.head
            node = Foreach(variable, items, body, frame.loc, frame.source)
        elif frame.keyword == "PARALLEL":
            node = Parallel(body, frame.loc, frame.source)
        else:
            node = CleanupBlock(
                _CLEANUP_KEYWORDS[frame.keyword], body, frame.loc, frame.source
            )
        self.add(node)

    # -- result -----------------------------------------------------------

    def agent(self, digest: str) -> Agent:
        commands = tuple(self.stack[0].body)
        by_phase = {phase: _commands_of_phase(commands, phase) for phase in Phase}
        header = self.header
        return Agent(
            path=self.path,
            name=header["NAME"],
            mnemonic=header["MNEMONIC"],
            commands=commands,
            description=header.get("DESCRIPTION"),
            version=header.get("VERSION"),
            workflow=header.get("WORKFLOW", "Null"),
            schedule=header.get("SCHEDULE"),
            concurrency=header.get("CONCURRENCY", 1),
            timeout=header.get("TIMEOUT"),
            digest=digest,
            by_phase=by_phase,
        )


def _suggestion(name: str, known: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for a close known name, else ""."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    if not matches:
        lowered = {candidate.lower(): candidate for candidate in known}
        if name.lower() in lowered:
            matches = [lowered[name.lower()]]
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _leading_blanks(text: str) -> int:
    return len(text) - len(text.lstrip(" \t\f\v"))


def _lines(text: str) -> Iterator[str]:
    """Yield the lines of `text` without their LF, CRLF or CR ending."""
    for line in text.split("\n"):
        if "\r" in line:
            line = line.rstrip("\r")
            if "\r" in line:
                # Old Mac line ends: treat a lone CR as a line end too would
                # shift every line number, so it is kept as a blank.
                line = line.replace("\r", " ")
        yield line


def _function_calls(item: Any) -> Iterator[FunctionCall]:
    """Yield every function call inside a parsed form, outermost first."""
    if isinstance(item, FunctionCall):
        yield item
        for arg in item.args:
            yield from _function_calls(arg)
    elif isinstance(item, (And, Or, Compare)):
        yield from _function_calls(item.left)
        yield from _function_calls(item.right)
    elif isinstance(item, Not):
        yield from _function_calls(item.operand)
    elif isinstance(item, Membership):
        yield from _function_calls(item.item)
        yield from _function_calls(item.container)
    elif isinstance(item, Match):
        yield from _function_calls(item.subject)
    elif isinstance(item, ListExpr):
        for element in item.items:
            yield from _function_calls(element)
    elif isinstance(item, tuple):
        for element in item:
            yield from _function_calls(element)


def _commands_of_phase(
    commands: tuple[Command, ...], phase: Phase
) -> tuple[Command, ...]:
    """Keep the commands of `phase`, with the WHEN/FOREACH blocks leading to them."""
    kept: list[Command] = []
    for command in commands:
        if isinstance(command, (When, Foreach)):
            body = _commands_of_phase(command.body, phase)
            if body:
                kept.append(
                    command if body == command.body else replace(command, body=body)
                )
        elif command.phase is phase:
            kept.append(command)
    return tuple(kept)


def parse_agent(text: str, path: str, *, registry: Registry | None = None) -> Agent:
    """Parse and validate the agent `text`, read from `path`.

    Raises:
        AgentError: with every problem found, each at file:line:col.
    """
    return _parse(text, path, registry, _digest(text))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _parse(text: str, path: str, registry: Registry | None, digest: str) -> Agent:
    parser = _FileParser(
        text, path, registry if registry is not None else _default_registry()
    )
    parser.parse()
    if parser.diagnostics:
        raise AgentError(parser.diagnostics)
    return parser.agent(digest)


_DEFAULT: list[Registry] = []


def _default_registry() -> Registry:
    if not _DEFAULT:
        _DEFAULT.append(Registry.default())
    return _DEFAULT[0]


def decode_agent(data: bytes, path: str) -> str:
    """Decode an agent file's bytes as UTF-8 (a BOM is dropped).

    Raises:
        AgentError: the bytes are not valid UTF-8; the location is the
            first invalid byte.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise AgentError(
            [
                Diagnostic(
                    Location(path, line, column),
                    "invalid UTF-8 byte; agent files must be UTF-8",
                )
            ]
        ) from None


def load_agent(path: str | Path, *, registry: Registry | None = None) -> Agent:
    """Read, parse and validate the agent file at `path`.

    Raises:
        AgentError: the file has problems, each at file:line:col.
        OSError: the file cannot be read.
    """
    name = str(path)
    data = Path(path).read_bytes()
    text = decode_agent(data, name)
    return _parse(text, name, registry, _digest(text))
