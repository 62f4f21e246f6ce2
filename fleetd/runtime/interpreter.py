"""Execution of single commands and blocks of one run of one record.

The phase rules (which commands run, where a phase stops) live in
`fleetd.runtime.phases`; this module executes each command and decides
what counts as its failure. Every failure kind is turned into a `False`
result here, logged once with the command's `file:line: source`:
expression errors, plugin exceptions, spawn failures and non-zero exits.
Cancellation is the one exception that passes through, so that TIMEOUT,
PARALLEL siblings and shutdown can stop a run.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec

from fleetd.config.secrets import MASK
from fleetd.lang import (
    EvaluationError,
    Registry,
    Scope,
    Value,
    evaluate,
    interpolate,
    render,
    truth,
)
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
    ProgramExec,
    ProgramOption,
    ProgramStart,
    Template,
    When,
)
from fleetd.lang.perlre import end_match_budget, start_match_budget
from fleetd.locks import Transaction
from fleetd.runtime.logs import log_at
from fleetd.runtime.process import KILL_GRACE, run_program

Hook = Callable[[], Any]


def command_text(command: Command) -> str:
    """Return how reports name a command: `file:line: source text`."""
    return f"{command.loc.file}:{command.loc.line}: {command.source}"


class CommandError(Exception):
    """Failure of one command; the message gives the cause, without the command itself."""


class ProgramBuilder(msgspec.Struct):
    """Command line built by COMMAND, OPTION and OPTION_IF for EXEC."""

    words: list[str] | None = None
    options: int = 0

    def copy(self) -> ProgramBuilder:
        words = None if self.words is None else list(self.words)
        return ProgramBuilder(words, self.options)


class RunState(msgspec.Struct):
    """Everything the commands of one run of one record share."""

    agent: Agent
    registry: Registry
    workflow: str
    record_id: str | None
    this: dict[str, Value]
    log: Any
    echo: Callable[[str], None]
    safe_path: tuple[str, ...] = ()
    conf_dir: Path | None = None
    pretend: bool = False
    kill_grace: float = KILL_GRACE
    transaction: Transaction | None = None
    staged: dict[str, Value] = msgspec.field(default_factory=dict)
    # Leaf commands executed (or shown, in pretend) in the current phase.
    commands_run: int = 0
    # `file:line: source: why` of every failed command of the current phase.
    failures: list[str] = msgspec.field(default_factory=list)
    hooks: dict[str, list[Hook]] = msgspec.field(
        default_factory=lambda: {"commit": [], "rollback": [], "error": []}
    )
    # Values of the `*_secret` and `*_password` globals, masked in logs.
    secrets: tuple[str, ...] = ()
    # Commands being executed, so a timeout can name what was still running.
    running: list[Command] = msgspec.field(default_factory=list)

    @property
    def mnemonic(self) -> str:
        return self.agent.mnemonic

    def redact(self, text: str) -> str:
        """Return `text` with every secret value replaced by `***`."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def fail(self, command: Command, why: str) -> None:
        """Record and log the failure of `command`, with secrets masked.

        A reason can hold interpolated values: the path of a program that
        was not found, a program's last stderr line, an expression's error.
        """
        text = command_text(command)
        if self.secrets:
            why = self.redact(why)
        self.failures.append(f"{text}: {why}" if why else text)
        self.log.error("command_failed", command=text, error=why)


class RunCommandContext:
    """What a plugin command receives: the run's identity and its hooks.

    Hooks go to the run's lock transaction; in pretend mode, where no lock
    is taken, they are kept and never called.
    """

    def __init__(self, state: RunState, log: Any) -> None:
        self._state = state
        self.agent = state.agent.name
        self.mnemonic = state.agent.mnemonic
        self.workflow = state.workflow
        self.record_id = state.record_id
        self.record: Mapping[str, Value] = state.this
        self.pretend = state.pretend
        self.log = log

    def _add(self, kind: str, hook: Hook) -> None:
        transaction = self._state.transaction
        if transaction is None:
            self._state.hooks[kind].append(hook)
        elif kind == "commit":
            transaction.on_commit(hook)
        elif kind == "rollback":
            transaction.on_rollback(hook)
        else:
            transaction.on_error(hook)

    def on_commit(self, hook: Hook) -> None:
        self._add("commit", hook)

    def on_rollback(self, hook: Hook) -> None:
        self._add("rollback", hook)

    def on_error(self, hook: Hook) -> None:
        self._add("error", hook)


def evaluate_value(expr: Any, scope: Scope, state: RunState, at: Location) -> Value:
    """Evaluate an expression of the command at `at`; errors become `CommandError`.

    All regular expression matches of the evaluation share one time limit
    (`fleetd.lang.perlre.MATCH_TIMEOUT`).
    """
    budget = start_match_budget()
    try:
        return evaluate(expr, scope, state.registry, at)
    except EvaluationError as error:
        raise CommandError(str(error)) from error
    except (Exception, SystemExit) as error:  # a broken function fails its command
        raise CommandError(f"{type(error).__name__}: {error}") from error
    finally:
        end_match_budget(budget)


def interpolate_words(templates: Sequence[Template], scope: Scope) -> list[str]:
    """Interpolate each word of a command line into exactly one argument."""
    try:
        return [interpolate(template, scope) for template in templates]
    except EvaluationError as error:
        raise CommandError(str(error)) from error


def interpolate_text(template: Template, scope: Scope) -> str:
    try:
        return interpolate(template, scope)
    except EvaluationError as error:
        raise CommandError(str(error)) from error


def assign(command: Assign, scope: Scope, state: RunState) -> None:
    """Execute a `*SET`; a target under `this.` is also staged for commit."""
    if command.only_if_undefined and scope.lookup(command.target) is not None:
        return
    value = evaluate_value(command.expr, scope, state, command.loc)
    if command.target[0] == "this" and len(command.target) > 1:
        old = scope.lookup(command.target) if state.pretend else None
        try:
            scope.assign(command.target, copy.deepcopy(value))
        except EvaluationError as error:
            raise CommandError(str(error)) from error
        field_name = command.target[1]
        state.staged[field_name] = copy.deepcopy(state.this.get(field_name))
        if state.pretend:
            state.log.info(
                "pretend_set",
                command=command_text(command),
                field=field_name,
                old=state.redact(render(old)),
                value=state.redact(render(value)),
            )
        return
    try:
        scope.assign(command.target, value)
    except EvaluationError as error:
        raise CommandError(str(error)) from error


def when_scope(scope: Scope, command: When) -> Scope:
    """Return the scope a WHEN body runs in; it keeps its variables across phases."""
    return scope.block(command.loc.line, command.loc.column)


def iteration_scope(scope: Scope, command: Foreach, number: int) -> Scope:
    """Return the scope of iteration `number` of a FOREACH, kept across phases."""
    return scope.block(command.loc.line, command.loc.column, number)


def iteration_items(value: Value) -> list[Value]:
    """Return what FOREACH iterates over: a list, one scalar, or nothing."""
    if value is None:
        return []
    if isinstance(value, list):
        return list(value)

    return [value]


def find_command(registry: Registry, name: str) -> Any:
    """Return the plugin command spec named `name`."""
    spec = registry.command(name)
    if spec is None:
        raise CommandError(f"unknown command {name}")

    return spec


async def call(command: CallCommand, scope: Scope, state: RunState) -> bool:
    """Call a plugin command; return its truth, or False when it raised."""
    spec = find_command(state.registry, command.name)
    args = [evaluate_value(arg, scope, state, command.loc) for arg in command.args]
    if state.pretend and not getattr(spec, "side_effect_free", False):
        state.log.info("pretend_call", command=command_text(command))
        return True
    context = RunCommandContext(state, state.log.bind(command=command.name))
    try:
        result = spec.impl(context, *args)
        if inspect.isawaitable(result):
            result = await result
    except anyio.get_cancelled_exc_class():
        raise
    except (Exception, SystemExit) as error:  # noqa: BLE001 - a plugin error fails its command
        raise CommandError(f"{command.name} raised {type(error).__name__}: {error}")
    if not truth(result):
        raise CommandError(f"{command.name} returned false")

    return True


async def exec_program(
    command: Command, argv: list[str], ignore_failure: bool, state: RunState
) -> None:
    """Run a program (or show it, in pretend); raise `CommandError` on failure.

    IGNORE_FAILURE ignores a non-zero exit only: a program that cannot start
    (not found, not executable, NUL in an argument) still fails, because
    that is a mistake in the agent or the host, not an outcome of the
    program.
    """
    if state.pretend:
        shown = [state.redact(word) for word in argv]
        state.log.info("pretend_exec", command=command_text(command), argv=shown)
        return
    result = await run_program(
        argv,
        safe_path=state.safe_path,
        conf_dir=state.conf_dir,
        kill_grace=state.kill_grace,
        log=state.log,
        redact=state.redact if state.secrets else None,
    )
    if result.ok:
        return
    if ignore_failure and result.error is None:
        state.log.warning(
            "command_failure_ignored",
            command=command_text(command),
            error=state.redact(result.describe()),
        )
        return
    raise CommandError(result.describe())


async def execute_leaf(
    command: Command, scope: Scope, state: RunState, builder: ProgramBuilder
) -> None:
    """Execute one command that is not a block; raise `CommandError` on failure."""
    if isinstance(command, Assign):
        assign(command, scope, state)
    elif isinstance(command, Echo):
        text = interpolate_text(command.text, scope)
        if state.pretend:
            state.log.info(
                "pretend_echo", command=command_text(command), text=state.redact(text)
            )
        else:
            try:
                state.echo(text)
            except OSError as error:
                # A full disk or a closed pipe fails only this command, so
                # the run goes on to Cleanup and resolves its lock.
                raise CommandError(
                    f"cannot write to standard output: {error.strerror or error}"
                ) from error
    elif isinstance(command, Log):
        text = interpolate_text(command.text, scope)
        if state.pretend:
            state.log.info(
                "pretend_log", command=command_text(command), text=state.redact(text)
            )
        else:
            log_at(state.log, command.level, "agent_log", message=state.redact(text))
    elif isinstance(command, ExecCommand):
        argv = interpolate_words(command.argv, scope)
        await exec_program(command, argv, command.ignore_failure, state)
    elif isinstance(command, ProgramStart):
        builder.words = interpolate_words(command.argv, scope)
        builder.options = 0
    elif isinstance(command, ProgramOption):
        if builder.words is None:
            raise CommandError("OPTION before any COMMAND")
        condition = command.condition
        if condition is not None and not truth(
            evaluate_value(condition, scope, state, command.loc)
        ):
            return
        builder.words.extend(interpolate_words(command.words, scope))
        builder.options += 1
    elif isinstance(command, ProgramExec):
        if builder.words is None:
            raise CommandError("EXEC before any COMMAND")
        argv, options = builder.words, builder.options
        builder.words, builder.options = None, 0
        if command.only_if_option and options == 0:
            return
        await exec_program(command, argv, command.ignore_failure, state)
    elif isinstance(command, CallCommand):
        await call(command, scope, state)
    elif isinstance(command, Condition):
        # A condition inside Run (never produced by the parser) is a check.
        if not truth(evaluate_value(command.expr, scope, state, command.loc)):
            raise CommandError("condition is false")
    else:
        raise CommandError(f"{type(command).__name__} cannot run here")


async def run_command(
    command: Command,
    scope: Scope,
    state: RunState,
    builder: ProgramBuilder,
    *,
    stop: bool,
) -> bool:
    """Run one command or block; return False when it (or a child) failed.

    With `stop` (the Run phase) a block ends at its first failure and a
    PARALLEL block cancels its other children; without it (Cleanup) every
    command runs.
    """
    if isinstance(command, When):
        try:
            matched = truth(
                evaluate_value(command.condition, scope, state, command.loc)
            )
        except CommandError as error:
            state.fail(command, str(error))
            return False
        if not matched:
            return True
        return await run_block(
            command.body, when_scope(scope, command), state, builder, stop=stop
        )
    if isinstance(command, Foreach):
        try:
            items = iteration_items(
                evaluate_value(command.items, scope, state, command.loc)
            )
        except CommandError as error:
            state.fail(command, str(error))
            return False
        succeeded = True
        for number, item in enumerate(items):
            inner = iteration_scope(scope, command, number)
            inner.define(command.variable, item)
            if not await run_block(command.body, inner, state, builder, stop=stop):
                succeeded = False
                if stop:
                    break
        return succeeded
    if isinstance(command, Parallel):
        return await run_parallel(command, scope, state, builder, stop=stop)
    if isinstance(command, CleanupBlock):
        # Cleanup blocks run only in Cleanup; `phases` picks them there.
        return True

    state.commands_run += 1
    # A command cancelled by a timeout stays in `running`, where the
    # timeout's reason finds it.
    state.running.append(command)
    try:
        await execute_leaf(command, scope, state, builder)
    except CommandError as error:
        state.running.remove(command)
        state.fail(command, str(error))
        return False
    except (Exception, SystemExit) as error:
        state.running.remove(command)
        state.log.exception("command_crashed", command=command_text(command))
        state.fail(command, f"internal error: {type(error).__name__}: {error}")
        return False
    state.running.remove(command)

    return True


async def run_block(
    commands: Sequence[Command],
    scope: Scope,
    state: RunState,
    builder: ProgramBuilder,
    *,
    stop: bool,
) -> bool:
    """Run commands in order; with `stop`, end at the first failure."""
    succeeded = True
    for command in commands:
        if not await run_command(command, scope, state, builder, stop=stop):
            succeeded = False
            if stop:
                break

    return succeeded


async def run_parallel(
    block: Parallel,
    scope: Scope,
    state: RunState,
    builder: ProgramBuilder,
    *,
    stop: bool,
) -> bool:
    """Run the children of a PARALLEL block at once in one task group.

    With `stop`, the first failure cancels the task group: the siblings'
    programs get SIGTERM and are reaped before this returns. In pretend
    mode the children are shown one after another.
    """
    if state.pretend:
        return await run_block(block.body, scope, state, builder, stop=stop)
    failed = False

    async def child(command: Command) -> None:
        nonlocal failed
        ok = await run_command(command, scope, state, builder.copy(), stop=stop)
        if not ok:
            failed = True
            if stop:
                group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        for command in block.body:
            group.start_soon(child, command)

    return not failed
