"""The phase rules: which commands of a phase run and when a phase stops.

- Initialize: the PREREQUISITE commands in order, stopping at the first
  false or failing one.
- Requirements and Check: every command, even after a false one, so that
  each unmet requirement and each failed check is named.
- Run: in order, stopping at the first failure (inside FOREACH too); a
  PARALLEL block cancels its other children at its first failure.
- Cleanup: the CLEANUP blocks, and ON_FAILURE or ON_SUCCESS as fits, in
  source order, never stopping at a failure. It fails when any command
  failed, or when no command ran at all.

Timeouts and shielding belong to the caller (`fleetd.runtime.run`), which
knows the agent's TIMEOUT and the daemon's cleanup_timeout.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetd.lang import Scope, truth
from fleetd.lang.ast import (
    Assign,
    CleanupBlock,
    CleanupWhen,
    Command,
    Condition,
    Foreach,
    Phase,
    When,
)
from fleetd.runtime.interpreter import (
    CommandError,
    ProgramBuilder,
    RunState,
    assign,
    command_text,
    evaluate_value,
    iteration_items,
    iteration_scope,
    run_block,
    when_scope,
)

NO_CLEANUP_COMMAND = "no cleanup command ran"


def evaluate_conditions(
    commands: Sequence[Command],
    scope: Scope,
    state: RunState,
    *,
    stop_at_first: bool,
) -> list[str]:
    """Evaluate Initialize, Requirements or Check commands.

    Returns the `file:line: source` text of every false or failing command
    (only the first, with `stop_at_first`). An error is also logged with
    the reason the command could not be evaluated.
    """
    unmet: list[str] = []
    _walk_conditions(commands, scope, state, unmet, stop_at_first)

    return unmet


def _walk_conditions(
    commands: Sequence[Command],
    scope: Scope,
    state: RunState,
    unmet: list[str],
    stop_at_first: bool,
) -> bool:
    """Walk condition commands; return False when the walk must stop."""
    for command in commands:
        try:
            if isinstance(command, Condition):
                state.commands_run += 1
                if not truth(evaluate_value(command.expr, scope, state, command.loc)):
                    unmet.append(command_text(command))
                    state.log.info("condition_false", command=command_text(command))
                    if stop_at_first:
                        return False
            elif isinstance(command, Assign):
                state.commands_run += 1
                assign(command, scope, state)
            elif isinstance(command, When):
                matched = truth(
                    evaluate_value(command.condition, scope, state, command.loc)
                )
                if matched and not _walk_conditions(
                    command.body,
                    when_scope(scope, command),
                    state,
                    unmet,
                    stop_at_first,
                ):
                    return False
            elif isinstance(command, Foreach):
                items = iteration_items(
                    evaluate_value(command.items, scope, state, command.loc)
                )
                for number, item in enumerate(items):
                    inner = iteration_scope(scope, command, number)
                    inner.define(command.variable, item)
                    if not _walk_conditions(
                        command.body, inner, state, unmet, stop_at_first
                    ):
                        return False
            else:
                state.log.warning(
                    "command_ignored",
                    command=command_text(command),
                    error="not a condition",
                )
        except CommandError as error:
            state.fail(command, str(error))
            unmet.append(command_text(command))
            if stop_at_first:
                return False

    return True


async def run_phase(state: RunState, scope: Scope) -> bool:
    """Run the Run phase; return False at its first failure."""
    commands = state.agent.phase(Phase.RUN)
    builder = ProgramBuilder()

    return await run_block(commands, scope, state, builder, stop=True)


def cleanup_applies(block: CleanupBlock, run_succeeded: bool) -> bool:
    """Tell whether a cleanup block runs after Run succeeded or failed.

    A failed Check counts as a failed Run.
    """
    if block.when is CleanupWhen.ALWAYS:
        return True
    if block.when is CleanupWhen.FAILURE:
        return not run_succeeded

    return run_succeeded


async def cleanup_phase(state: RunState, scope: Scope, run_succeeded: bool) -> bool:
    """Run the Cleanup phase; return whether it succeeded.

    It fails when any command failed or when no command ran at all.
    """
    state.commands_run = 0
    failures_before = len(state.failures)
    await _walk_cleanup(state.agent.phase(Phase.CLEANUP), scope, state, run_succeeded)
    if state.commands_run == 0:
        state.failures.append(NO_CLEANUP_COMMAND)
        return False

    return len(state.failures) == failures_before


async def _walk_cleanup(
    commands: Sequence[Command], scope: Scope, state: RunState, run_succeeded: bool
) -> None:
    for command in commands:
        if isinstance(command, CleanupBlock):
            if cleanup_applies(command, run_succeeded):
                await run_block(
                    command.body, scope, state, ProgramBuilder(), stop=False
                )
        elif isinstance(command, When):
            try:
                matched = truth(
                    evaluate_value(command.condition, scope, state, command.loc)
                )
            except CommandError as error:
                state.fail(command, str(error))
                continue
            if matched:
                await _walk_cleanup(
                    command.body, when_scope(scope, command), state, run_succeeded
                )
        elif isinstance(command, Foreach):
            try:
                items = iteration_items(
                    evaluate_value(command.items, scope, state, command.loc)
                )
            except CommandError as error:
                state.fail(command, str(error))
                continue
            for number, item in enumerate(items):
                inner = iteration_scope(scope, command, number)
                inner.define(command.variable, item)
                await _walk_cleanup(command.body, inner, state, run_succeeded)
