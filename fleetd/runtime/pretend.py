"""Pretend mode: evaluate Requirements and Check, show Run and Cleanup.

No lock is taken and nothing is written. Run and Cleanup commands are
logged as `pretend_*` events instead of executed: a program's argument
vector, an ECHO's text, a `SET this.f` with its new value. Assignments
are evaluated, so later commands show the values they would see. A CALL
runs only when its plugin command declares itself free of side effects.
"""

from __future__ import annotations

import structlog

from fleetd.lang import Scope
from fleetd.lang.ast import Phase
from fleetd.runtime.interpreter import ProgramBuilder, RunState, run_block
from fleetd.runtime.phases import _walk_cleanup, evaluate_conditions


async def pretend_run(state: RunState, scope: Scope) -> tuple[str, str | None]:
    """Show what a run would do; return the resolution it would reach.

    The resolution assumes every Run and Cleanup command succeeds: commit
    after a passed Check; after a failed Check, rollback when a cleanup
    command would run, else commit with error. The reason names the
    failed checks.
    """
    structlog.contextvars.bind_contextvars(phase="check")
    failed = evaluate_conditions(
        state.agent.phase(Phase.CHECK), scope, state, stop_at_first=False
    )
    check_passed = not failed
    if check_passed:
        structlog.contextvars.bind_contextvars(phase="run")
        await run_block(
            state.agent.phase(Phase.RUN), scope, state, ProgramBuilder(), stop=False
        )
    structlog.contextvars.bind_contextvars(phase="cleanup")
    state.commands_run = 0
    await _walk_cleanup(state.agent.phase(Phase.CLEANUP), scope, state, check_passed)
    if check_passed:
        would = "commit"
    elif state.commands_run > 0:
        would = "rollback"
    else:
        would = "error"
    state.log.info("pretend_resolution", would=would, failed_checks=failed or None)

    return would, "; ".join(failed) if failed else None
