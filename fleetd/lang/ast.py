"""Typed syntax tree of an agent file.

The parser builds these nodes once per file; the runtime never walks the
source again. Every command carries its phase, its location and its source
text, and `Agent.phase()` returns the commands of one phase as a tree that
keeps only the `WHEN`, `FOREACH`, `PARALLEL` and cleanup blocks leading to
them, computed at parse time.

An expression node holds only its column. Its file and line are those of
the command that contains the expression (`Location.with_column`), because
every expression lies on its command's line. So agents that repeat a line
share one expression tree: 10,000 agents of one template keep one tree per
distinct line, not one per agent.

Nodes are frozen `msgspec.Struct` classes: agents are shared between
concurrent runs and across reloads, and expression trees between agents,
so nothing in a tree may change after parsing. They have the fields,
equality, hash and repr that frozen dataclasses had, and
`msgspec.structs.replace` copies one with changes. As frozen dataclasses,
these classes took about 20 ms of every start, because a dataclass
compiles its methods when its class is defined; as Structs they take less
than 1 ms (Python 3.11, msgspec 0.23, a 2-core AMD EPYC).
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class Phase(enum.Enum):
    """Phase of a run in which a command executes."""

    INITIALIZE = "initialize"
    REQUIREMENTS = "requirements"
    CHECK = "check"
    RUN = "run"
    CLEANUP = "cleanup"


class CleanupWhen(enum.Enum):
    """Condition under which a cleanup block runs."""

    ALWAYS = "always"  # CLEANUP
    FAILURE = "failure"  # ON_FAILURE: Check or Run failed
    SUCCESS = "success"  # ON_SUCCESS: Run succeeded


class Location(msgspec.Struct, frozen=True):
    """Position in an agent file; line and column count from 1."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def with_column(self, column: int) -> Location:
        """Return the location of `column` on this location's line."""
        return Location(self.file, self.line, column)


# -- expressions ------------------------------------------------------------
#
# `column` counts from 1 in the line of the command that contains the node.


class Literal(msgspec.Struct, frozen=True):
    """Constant: a number, a plain string, or TRUE (1) and FALSE ("")."""

    value: int | float | str
    column: int


class Template(msgspec.Struct, frozen=True):
    """Text with `${name}` interpolations, kept as alternating parts.

    `parts` holds plain `str` pieces and `Variable` references in source
    order. A template without references has a single `str` part.
    """

    parts: tuple[str | Variable, ...]
    column: int


class Variable(msgspec.Struct, frozen=True):
    """Variable reference; `path` is the dotted name split on dots.

    `this.id` is ("this", "id"); a match group `1` is ("1",).
    """

    path: tuple[str, ...]
    column: int

    @property
    def name(self) -> str:
        return ".".join(self.path)


class ListExpr(msgspec.Struct, frozen=True):
    items: tuple[Expr, ...]
    column: int


class FunctionCall(msgspec.Struct, frozen=True):
    """Call of a built-in or plugin function, resolved at load."""

    name: str
    args: tuple[Expr, ...]
    column: int


class Compare(msgspec.Struct, frozen=True):
    """Comparison; `op` is one of `=`, `<>`, `<`, `>`, `<=`, `>=`."""

    op: str
    left: Expr
    right: Expr
    column: int


class Membership(msgspec.Struct, frozen=True):
    """`item IN list`, or `item NOT IN list` when `negated`."""

    item: Expr
    container: Expr
    negated: bool
    column: int


class Match(msgspec.Struct, frozen=True):
    """`subject MATCHES /re/flags`; a match sets `1`, `2`, ... in scope."""

    subject: Expr
    pattern: Any  # a compiled `regex` pattern (fleetd.lang.perlre)
    column: int


class Not(msgspec.Struct, frozen=True):
    operand: Expr
    column: int


class And(msgspec.Struct, frozen=True):
    left: Expr
    right: Expr
    column: int


class Or(msgspec.Struct, frozen=True):
    left: Expr
    right: Expr
    column: int


Expr = (
    Literal
    | Template
    | Variable
    | ListExpr
    | FunctionCall
    | Compare
    | Membership
    | Match
    | Not
    | And
    | Or
)


# -- commands ---------------------------------------------------------------
#
# Every command has `loc`, `source` (its line as written, stripped) and
# `phase`. Block commands also have `body`.


class Condition(msgspec.Struct, frozen=True):
    """PREREQUISITE, REQUIRE or CHECK; which one follows from `phase`."""

    expr: Expr
    loc: Location
    source: str
    phase: Phase


class Assign(msgspec.Struct, frozen=True):
    """Any `*SET` command: `target = expr`, or `target //= expr`.

    `target` is a dotted name; a target under `this.` is a staged change to
    the record. `only_if_undefined` is the `//=` form.
    """

    target: tuple[str, ...]
    expr: Expr
    only_if_undefined: bool
    loc: Location
    source: str
    phase: Phase


class Echo(msgspec.Struct, frozen=True):
    text: Template
    loc: Location
    source: str
    phase: Phase


class Log(msgspec.Struct, frozen=True):
    """LOG; `level` is normalised to a syslog name in lower case.

    One of debug, info, notice, warning, error, critical, alert, emergency.
    """

    level: str
    text: Template
    loc: Location
    source: str
    phase: Phase


class ExecCommand(msgspec.Struct, frozen=True):
    """EXEC_COMMAND: `argv` contains one template per shell-split word."""

    argv: tuple[Template, ...]
    ignore_failure: bool
    loc: Location
    source: str
    phase: Phase


class ProgramStart(msgspec.Struct, frozen=True):
    """COMMAND: starts building a program's command line."""

    argv: tuple[Template, ...]
    loc: Location
    source: str
    phase: Phase


class ProgramOption(msgspec.Struct, frozen=True):
    """OPTION, or OPTION_IF when `condition` is set: appends words."""

    words: tuple[Template, ...]
    condition: Expr | None
    loc: Location
    source: str
    phase: Phase


class ProgramExec(msgspec.Struct, frozen=True):
    """EXEC, or EXEC_IF_OPTION when `only_if_option`: runs the built program."""

    ignore_failure: bool
    only_if_option: bool
    loc: Location
    source: str
    phase: Phase


class CallCommand(msgspec.Struct, frozen=True):
    """CALL of a plugin command."""

    name: str
    args: tuple[Expr, ...]
    loc: Location
    source: str
    phase: Phase


class When(msgspec.Struct, frozen=True):
    condition: Expr
    body: tuple[Command, ...]
    loc: Location
    source: str
    phase: Phase | None = None  # blocks span phases


class Foreach(msgspec.Struct, frozen=True):
    variable: str
    items: Expr
    body: tuple[Command, ...]
    loc: Location
    source: str
    phase: Phase | None = None


class Parallel(msgspec.Struct, frozen=True):
    """PARALLEL: each direct child runs at once in one task group."""

    body: tuple[Command, ...]
    loc: Location
    source: str
    phase: Phase = Phase.RUN


class CleanupBlock(msgspec.Struct, frozen=True):
    """CLEANUP, ON_FAILURE or ON_SUCCESS; its commands run in Cleanup."""

    when: CleanupWhen
    body: tuple[Command, ...]
    loc: Location
    source: str
    phase: Phase = Phase.CLEANUP


Command = (
    Condition
    | Assign
    | Echo
    | Log
    | ExecCommand
    | ProgramStart
    | ProgramOption
    | ProgramExec
    | CallCommand
    | When
    | Foreach
    | Parallel
    | CleanupBlock
)
Block = (When, Foreach, Parallel, CleanupBlock)


# -- agent ------------------------------------------------------------------


class Schedule(msgspec.Struct, frozen=True):
    """SCHEDULE line: `every` seconds, or `manual`; None means the default."""

    every: float | None = None
    manual: bool = False


class Agent(msgspec.Struct, frozen=True):
    """One parsed and validated agent file."""

    path: str
    name: str
    mnemonic: str
    commands: tuple[Command, ...]
    description: str | None = None
    version: str | None = None
    workflow: str = "Null"
    schedule: Schedule | None = None
    concurrency: int = 1
    timeout: float | None = None  # seconds, bounds Check plus Run
    digest: str = ""  # hash of the source text, for reload caching
    by_phase: dict[Phase, tuple[Command, ...]] = msgspec.field(default_factory=dict)
    # Where each header line (NAME, WORKFLOW, ...) starts, for load errors.
    header_locations: dict[str, Location] = msgspec.field(default_factory=dict)

    def phase(self, phase: Phase) -> tuple[Command, ...]:
        """Return the commands of `phase`, inside the blocks enclosing them.

        `WHEN` and `FOREACH` blocks appear with only the commands of `phase`
        in their bodies, and only when they contain any. For
        `Phase.CLEANUP` the result contains `CleanupBlock` nodes (possibly
        inside `WHEN`/`FOREACH`), whose bodies are run-like commands.
        """
        return self.by_phase.get(phase, ())
