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

Nodes are frozen slotted dataclasses: agents are shared between concurrent
runs and across reloads, and expression trees between agents, so nothing
in a tree may change after parsing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Union


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


@dataclass(frozen=True, slots=True)
class Location:
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


@dataclass(frozen=True, slots=True)
class Literal:
    """Constant: an int, a plain string, or TRUE (1) and FALSE ("")."""

    value: int | str
    column: int


@dataclass(frozen=True, slots=True)
class Template:
    """Text with `${name}` interpolations, kept as alternating parts.

    `parts` holds plain `str` pieces and `Variable` references in source
    order. A template without references has a single `str` part.
    """

    parts: tuple[Union[str, "Variable"], ...]
    column: int


@dataclass(frozen=True, slots=True)
class Variable:
    """Variable reference; `path` is the dotted name split on dots.

    `this.id` is ("this", "id"); a match group `1` is ("1",).
    """

    path: tuple[str, ...]
    column: int

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple["Expr", ...]
    column: int


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """Call of a built-in or plugin function, resolved at load."""

    name: str
    args: tuple["Expr", ...]
    column: int


@dataclass(frozen=True, slots=True)
class Compare:
    """Comparison; `op` is one of `=`, `<>`, `<`, `>`, `<=`, `>=`."""

    op: str
    left: "Expr"
    right: "Expr"
    column: int


@dataclass(frozen=True, slots=True)
class Membership:
    """`item IN list`, or `item NOT IN list` when `negated`."""

    item: "Expr"
    container: "Expr"
    negated: bool
    column: int


@dataclass(frozen=True, slots=True)
class Match:
    """`subject MATCHES /re/flags`; a match sets `1`, `2`, ... in scope."""

    subject: "Expr"
    pattern: Any  # a compiled `regex` pattern (fleetd.lang.perlre)
    column: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: "Expr"
    column: int


@dataclass(frozen=True, slots=True)
class And:
    left: "Expr"
    right: "Expr"
    column: int


@dataclass(frozen=True, slots=True)
class Or:
    left: "Expr"
    right: "Expr"
    column: int


Expr = Union[
    Literal, Template, Variable, ListExpr, FunctionCall, Compare, Membership,
    Match, Not, And, Or,
]


# -- commands ---------------------------------------------------------------
#
# Every command has `loc`, `source` (its line as written, stripped) and
# `phase`. Block commands also have `body`.


@dataclass(frozen=True, slots=True)
class Condition:
    """PREREQUISITE, REQUIRE or CHECK; which one follows from `phase`."""

    expr: Expr
    loc: Location
    source: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class Assign:
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


@dataclass(frozen=True, slots=True)
class Echo:
    text: Template
    loc: Location
    source: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class Log:
    """LOG; `level` is normalised to a syslog name in lower case.

    One of debug, info, notice, warning, error, critical, alert, emergency.
    """

    level: str
    text: Template
    loc: Location
    source: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class ExecCommand:
    """EXEC_COMMAND: `argv` contains one template per shell-split word."""

    argv: tuple[Template, ...]
    ignore_failure: bool
    loc: Location
    source: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class ProgramStart:
    """COMMAND: starts building a program's command line."""

    argv: tuple[Template, ...]
    loc: Location
    source: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class ProgramOption:
    """OPTION, or OPTION_IF when `condition` is set: appends words."""

    words: tuple[Template, ...]
    condition: Expr | None
    loc: Location
    source: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class ProgramExec:
    """EXEC, or EXEC_IF_OPTION when `only_if_option`: runs the built program."""

    ignore_failure: bool
    only_if_option: bool
    loc: Location
    source: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class CallCommand:
    """CALL of a plugin command."""

    name: str
    args: tuple[Expr, ...]
    loc: Location
    source: str
    phase: Phase


@dataclass(frozen=True, slots=True)
class When:
    condition: Expr
    body: tuple["Command", ...]
    loc: Location
    source: str
    phase: Phase | None = None  # blocks span phases


@dataclass(frozen=True, slots=True)
class Foreach:
    variable: str
    items: Expr
    body: tuple["Command", ...]
    loc: Location
    source: str
    phase: Phase | None = None


@dataclass(frozen=True, slots=True)
class Parallel:
    """PARALLEL: each direct child runs at once in one task group."""

    body: tuple["Command", ...]
    loc: Location
    source: str
    phase: Phase = Phase.RUN


@dataclass(frozen=True, slots=True)
class CleanupBlock:
    """CLEANUP, ON_FAILURE or ON_SUCCESS; its commands run in Cleanup."""

    when: CleanupWhen
    body: tuple["Command", ...]
    loc: Location
    source: str
    phase: Phase = Phase.CLEANUP


Command = Union[
    Condition, Assign, Echo, Log, ExecCommand, ProgramStart, ProgramOption,
    ProgramExec, CallCommand, When, Foreach, Parallel, CleanupBlock,
]
Block = (When, Foreach, Parallel, CleanupBlock)


# -- agent ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """SCHEDULE line: `every` seconds, or `manual`; None means the default."""

    every: float | None = None
    manual: bool = False


@dataclass(frozen=True, slots=True)
class Agent:
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
    by_phase: dict[Phase, tuple[Command, ...]] = field(default_factory=dict)
    # Where each header line (NAME, WORKFLOW, ...) starts, for load errors.
    header_locations: dict[str, Location] = field(default_factory=dict)

    def phase(self, phase: Phase) -> tuple[Command, ...]:
        """Return the commands of `phase`, inside the blocks enclosing them.

        `WHEN` and `FOREACH` blocks appear with only the commands of `phase`
        in their bodies, and only when they contain any. For
        `Phase.CLEANUP` the result contains `CleanupBlock` nodes (possibly
        inside `WHEN`/`FOREACH`), whose bodies are run-like commands.
        """
        return self.by_phase.get(phase, ())
