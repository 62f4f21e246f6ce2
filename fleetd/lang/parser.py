"""Parse and validate agent files into `Agent` syntax trees.

An agent file is line-based: each line starts with a keyword, and blocks
end with `END`. This module reads the lines, handles the header, the
blocks and the free-text commands (`ECHO`, `LOG`, program command lines),
and hands every expression to fleetd.lang.expressions. Parsing a line at a
time lets one pass report every error of a file, each at its line and
column, instead of stopping at the first one.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from fleetd.lang.ast import (
    Agent,
    Assign,
    CallCommand,
    CleanupBlock,
    Command,
    Condition,
    Echo,
    ExecCommand,
    Foreach,
    Location,
    Log,
    Parallel,
    Phase,
    ProgramExec,
    ProgramOption,
    ProgramStart,
    Schedule,
    When,
)
from fleetd.lang.errors import AgentError, Diagnostic
from fleetd.lang.keywords import (
    CLEANUP_KEYWORDS,
    COMMAND_KEYWORDS,
    CONDITION_PHASES,
    HEADER_KEYWORDS,
    LOG_LEVELS,
    MNEMONIC_RE,
    SET_PHASES,
    WORKFLOW_RE,
    parse_duration,
)
from fleetd.lang.reader import (
    BLANK_RE,
    KEYWORD_RE,
    MAX_BLOCK_DEPTH,
    TRAILING_COMMENT_RE,
    Frame,
    LineReader,
    leading_blanks,
    split_lines,
)
from fleetd.lang.registry import Registry, arity_error
from fleetd.lang.templates import variable_path
from fleetd.lang.tree import commands_of_phase, suggest_name


class _FileParser(LineReader):
    """Parser of one agent file: the header, commands and blocks."""

    # -- the file ---------------------------------------------------------

    def parse(self) -> None:
        """Read every line, then report unclosed blocks and missing header lines."""
        entries: list[tuple[int, str, int]] = []
        for number, line in enumerate(split_lines(self.text), start=1):
            if number == 1 and line.startswith("#!"):
                continue
            indent = BLANK_RE.match(line).end()  # type: ignore[union-attr]
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
        for frame in reversed(self.stack[1:]):
            self.diagnostics.append(
                Diagnostic(
                    frame.loc, f"{frame.keyword} block is never closed: END is missing"
                )
            )
        # Lines that end in CR only (classic Mac OS) read as one long line.
        hint = (
            " (the file's lines end in CR only; fleetd splits lines at LF)"
            if "\r" in self.text and "\n" not in self.text.rstrip("\n")
            else ""
        )
        for keyword in ("NAME", "MNEMONIC"):
            if keyword not in self.header_locs:
                self.diagnostics.append(
                    Diagnostic(
                        Location(self.path, 1, 1), f"missing {keyword} line{hint}"
                    )
                )

    def parse_line(self, line: str, indent: int) -> None:
        """Dispatch a line to the handler of its keyword (`cmd_<keyword>`)."""
        match = KEYWORD_RE.match(line, indent)
        column = indent + 1
        if match is None:
            self.error(column, f"expected a command keyword, found {line[indent]!r}")
            return
        keyword = sys.intern(match.group())
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
        value_column = rest_at + 1 + leading_blanks(line[rest_at:])
        if keyword in ("SCHEDULE", "CONCURRENCY", "TIMEOUT"):
            raw = TRAILING_COMMENT_RE.sub("", raw)
        if not raw and keyword not in ("DESCRIPTION", "VERSION"):
            self.error(column, f"{keyword} needs a value")
            return

        value = self.header_value(keyword, raw, value_column)
        if isinstance(value, str):
            # Agents of one conf dir often repeat WORKFLOW or DESCRIPTION.
            value = sys.intern(value)
        if value is not None:
            self.header[keyword] = value

    def header_value(self, keyword: str, raw: str, column: int) -> Any:
        """Return the value of a header line, or None after reporting an error."""
        if keyword == "MNEMONIC" and not MNEMONIC_RE.match(raw):
            message = f"invalid MNEMONIC {raw!r}; use letters, digits, '_' and '-'"
            self.error(column, message)
            return None
        if keyword == "WORKFLOW" and not WORKFLOW_RE.match(raw):
            self.error(column, f"invalid WORKFLOW name {raw!r}")
            return None
        if keyword == "CONCURRENCY":
            if not re.fullmatch(r"[0-9]+", raw) or int(raw) < 1:
                message = f"CONCURRENCY must be a whole number >= 1, got {raw!r}"
                self.error(column, message)
                return None
            return int(raw)
        if keyword == "TIMEOUT":
            try:
                seconds = parse_duration(raw)
            except ValueError as error:
                self.error(column, f"TIMEOUT: {error}")
                return None
            # A zero limit would time out every run before it starts.
            if seconds <= 0:
                self.error(column, "TIMEOUT: the limit must be longer than 0")
                return None
            return seconds
        if keyword == "SCHEDULE":
            return self.parse_schedule(raw, column)
        return raw

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
            phase = CONDITION_PHASES[keyword]
            self.add(Condition(expr, self.at(column), self.source(), phase))

    cmd_require = cmd_prerequisite
    cmd_check = cmd_prerequisite

    def cmd_set(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        phase = SET_PHASES[keyword]
        if phase is not Phase.RUN:
            if not self.require_run_like(keyword, column):
                return
        else:
            phase = self.run_phase()
        parsed = self.form("assignment", rest_at)
        if parsed is None:
            return
        name, only_if_undefined, expr = parsed
        target = variable_path(name)
        if target[0] == "this" and (len(target) == 1 or keyword != "SET"):
            message = (
                "cannot assign to this itself; set a field such as this.status"
                if len(target) == 1
                else f"{keyword} cannot change a record field; use SET {name} in Run"
            )
            self.error(rest_at + 1 + leading_blanks(line[rest_at:]), message)
            return
        self.add(
            Assign(
                target, expr, only_if_undefined, self.at(column), self.source(), phase
            )
        )

    cmd_prerequisite_set = cmd_set
    cmd_require_set = cmd_set
    cmd_check_set = cmd_set

    def text_after(self, line: str, rest_at: int) -> tuple[str, int]:
        """Return the free text after the keyword and its 1-based column."""
        blanks = leading_blanks(line[rest_at:])
        return line[rest_at + blanks :], rest_at + blanks + 1

    def cmd_echo(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        text, text_column = self.text_after(line, rest_at)
        template = self.template(text, text_column)
        self.add(Echo(template, self.at(column), self.source(), self.run_phase()))

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
        template = self.template(message.lstrip(), message_column)
        self.add(Log(level, template, self.at(column), self.source(), self.run_phase()))

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
        loc, source, phase = self.at(column), self.source(), self.run_phase()
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
            where = (
                " in its cleanup block, which builds its programs on its own"
                if self.frame.in_cleanup
                else ""
            )
            self.error(column, f"{keyword} without a COMMAND before it{where}")
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
            ProgramOption(words, None, self.at(column), self.source(), self.run_phase())
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
                words, condition, self.at(column), self.source(), self.run_phase()
            )
        )

    def cmd_exec(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        if not self.check_program_started(keyword, column):
            return
        ignore, after = self.ignore_failure(line, rest_at)
        rest = TRAILING_COMMENT_RE.sub("", line[after:])
        if rest.strip():
            self.error(
                after + 1 + leading_blanks(line[after:]),
                f"unexpected text after {keyword}",
            )
            return
        self.add(
            ProgramExec(
                ignore,
                keyword == "EXEC_IF_OPTION",
                self.at(column),
                self.source(),
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
                    self.at(call.column),
                    f"unknown command {call.name!r} in CALL"
                    + suggest_name(call.name, self.registry.commands),
                )
            )
            return
        message = arity_error(call.name, spec, len(call.args))
        if message is not None:
            self.error(call.column, message)
            return
        self.add(
            CallCommand(
                call.name, call.args, self.at(column), self.source(), self.run_phase()
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
            Frame(
                keyword,
                self.at(column),
                self.source(),
                head,
                in_cleanup=parent.in_cleanup or keyword in CLEANUP_KEYWORDS,
                in_parallel=parent.in_parallel or keyword == "PARALLEL",
                outer_seen_program=self.seen_program,
            )
        )
        if keyword in CLEANUP_KEYWORDS:
            # Each cleanup block runs with a program builder of its own.
            self.seen_program = False

    def cmd_when(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        start = "when_head" if keyword == "WHEN" else "foreach_head"
        head = self.form(start, rest_at)
        if keyword == "FOREACH" and head is not None and "." in head[0]:
            self.error(
                rest_at + 1 + leading_blanks(line[rest_at:]),
                "a FOREACH variable cannot contain '.'",
            )
            head = None
        self.open_block(keyword, line, column, head)

    cmd_foreach = cmd_when

    def cmd_parallel(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        ok = True
        if TRAILING_COMMENT_RE.sub("", line[rest_at:]).strip():
            self.error(
                rest_at + 1 + leading_blanks(line[rest_at:]),
                f"unexpected text after {keyword}",
            )
            ok = False
        elif keyword == "PARALLEL" and self.frame.in_cleanup:
            self.error(
                column, "PARALLEL is allowed only in Run, not inside a cleanup block"
            )
            ok = False
        elif keyword in CLEANUP_KEYWORDS and self.frame.in_cleanup:
            self.error(
                column, f"{keyword} cannot be nested inside another cleanup block"
            )
            ok = False
        elif keyword in CLEANUP_KEYWORDS and self.frame.in_parallel:
            self.error(column, f"{keyword} is not allowed inside PARALLEL")
            ok = False
        self.open_block(keyword, line, column, True if ok else None)

    cmd_cleanup = cmd_parallel
    cmd_on_failure = cmd_parallel
    cmd_on_success = cmd_parallel

    def cmd_end(self, keyword: str, line: str, rest_at: int, column: int) -> None:
        if TRAILING_COMMENT_RE.sub("", line[rest_at:]).strip():
            self.error(
                rest_at + 1 + leading_blanks(line[rest_at:]),
                "unexpected text after END",
            )
        if len(self.stack) == 1:
            self.error(column, "END without a block to close")
            return
        frame = self.stack.pop()
        if frame.keyword in CLEANUP_KEYWORDS:
            self.seen_program = frame.outer_seen_program
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
                CLEANUP_KEYWORDS[frame.keyword], body, frame.loc, frame.source
            )
        self.add(node)

    # -- result -----------------------------------------------------------

    def agent(self, digest: str) -> Agent:
        commands = tuple(self.stack[0].body)
        by_phase = {phase: commands_of_phase(commands, phase) for phase in Phase}
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
            header_locations=dict(self.header_locs),
        )


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
