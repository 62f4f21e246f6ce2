"""One run of one record: Requirements, lock, Check, Run, Cleanup, resolution.

Design note. Check and Run execute inside one cancel scope. The agent's
TIMEOUT is its deadline, and `Engine.cancel_runs` cancels it at shutdown.
Either makes Run fail, while a failed Check stays a failed Check. Cleanup
and the resolution execute in shielded cancel scopes. Cleanup is bounded
by `cleanup_timeout` alone, and the resolution always completes, so a run
that took a lock ends with it resolved, whatever cancels it. The
resolution follows this table:

    Run        Cleanup    resolution          outcome
    succeeded  succeeded  commit              committed
    succeeded  failed     commit (warning)    committed
    failed     succeeded  rollback            rolled_back
    failed     failed     commit with error   error

A failed Check counts as a failed Run, and the report then gives
`run = not_run`. The report is returned only after the resolution is
durable.
"""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from msgspec.structs import replace
from structlog.contextvars import bind_contextvars, reset_contextvars

from fleetd.config.secrets import is_secret
from fleetd.lang import Registry, Scope, Value, render
from fleetd.lang.ast import Agent, Phase
from fleetd.lang.scope import BlockKey
from fleetd.locks import (
    Done,
    InTransaction,
    LeaseLost,
    Locked,
    LockInfo,
    LockKey,
    LockManager,
    Resolution,
)
from fleetd.locks.manager import Apply
from fleetd.logs import get_logger
from fleetd.runtime.interpreter import RunState, command_text
from fleetd.runtime.phases import (
    NO_CLEANUP_COMMAND,
    cleanup_phase,
    evaluate_conditions,
    run_phase,
)
from fleetd.runtime.pretend import pretend_run
from fleetd.runtime.process import KILL_GRACE
from fleetd.runtime.report import Outcome, PhaseResult, RunReport
from fleetd.workflows.base import Record, Workflow
from fleetd.workflows.text import checked_record

logger = get_logger()

#: Reason of a run whose lock could not be taken or resolved before a
#: shutdown gave up waiting for the state store.
STORE_ABANDONED = "state store unavailable at shutdown; nothing was written"
#: Reason of a run whose resolution was rejected: its lock was no longer its own.
LEASE_LOST = "lease lost"

# Records whose fields nest deeper are invalid: copying a record and
# evaluating expressions on it recurse once per level, and on CPython 3.11
# a record nested 600 levels deep exceeded the recursion limit.
MAX_NESTING = 64


class RunSettings(msgspec.Struct):
    """Settings that every run of one engine shares."""

    registry: Registry
    locks: LockManager | None  # None in pretend mode
    echo: Callable[[str], None]
    safe_path: tuple[str, ...] = ()
    conf_dir: Path | None = None
    cleanup_timeout: float = 60.0
    kill_grace: float = KILL_GRACE
    pretend: bool = False
    # In pretend mode: resolution marks and held locks, by (workflow, record,
    # mnemonic), read when the cycle starts.
    marks: Mapping[tuple[str, str, str], Resolution] = msgspec.field(
        default_factory=dict
    )
    held: Mapping[tuple[str, str, str], LockInfo] = msgspec.field(default_factory=dict)
    # In pretend mode: run ids of the held locks whose owner is gone.
    abandoned: set[str] = msgspec.field(default_factory=set)
    # Scopes of runs waiting on the state store (taking or resolving a lock),
    # which `Engine.cancel_runs` cancels when the store stays unavailable.
    store_waits: set[anyio.CancelScope] = msgspec.field(default_factory=set)
    # Scopes of runs that have not yet left Check and Run; a run's scope
    # leaves this set when Cleanup starts. `Engine.cancel_runs` cancels these.
    run_scopes: set[anyio.CancelScope] = msgspec.field(default_factory=set)


# Run ids are a random prefix per process and a counter: unique like a
# UUID4, but reading /dev/urandom for each run measured slow in VMs.
_RUN_ID_PREFIX = secrets.token_hex(6)
_run_numbers = itertools.count(1)


def new_run_id() -> str:
    """Return an id for a new run, unique across processes and hosts."""
    return f"{_RUN_ID_PREFIX}-{next(_run_numbers):x}"


def join_reasons(texts: list[str]) -> str | None:
    return "; ".join(texts) if texts else None


def copy_values(values: Mapping[str, Value]) -> dict[str, Value]:
    """Copy variables so a run's changes to lists and dicts stay its own."""
    return {
        name: copy.deepcopy(value) if isinstance(value, (dict, list)) else value
        for name, value in values.items()
    }


#: Characters a line of a multi-line secret needs to be masked on its own.
SECRET_LINE_MIN = 4


def secret_values(variables: Mapping[str, Value]) -> tuple[str, ...]:
    """Return the texts to mask for the `*_secret` and `*_password` globals.

    Each value, longest first, and each line of a value of several lines:
    program output is logged and quoted line by line, so a private key
    printed by a program never appears whole. A line with fewer than
    `SECRET_LINE_MIN` characters besides blanks is masked only as part of
    its value, or every short word or indentation of the output would
    become `***`.
    """
    texts: set[str] = set()
    for name, value in variables.items():
        if not is_secret(name) or not isinstance(value, (str, int, float)):
            continue
        text = render(value)
        texts.add(text)
        if "\n" in text:
            lines = (line.rstrip("\r") for line in text.split("\n"))
            texts.update(line for line in lines if len(line.strip()) >= SECRET_LINE_MIN)

    return tuple(sorted((text for text in texts if text), key=len, reverse=True))


def nesting_depth(value: Any) -> int:
    """Return how deeply lists and dicts nest in `value` (a scalar is 0).

    Iterative, because the value may nest deeper than Python's recursion limit.
    """
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level + 1)
        stack.extend((child, level + 1) for child in children)

    return depth


def record_this(record: Record) -> dict[str, Value]:
    """Return `this` for a record: its id (unless Null) and its fields."""
    this: dict[str, Value] = copy_values(record.fields)
    if record.id is not None:
        this["id"] = record.id

    return this


Finish = Callable[[], Awaitable[RunReport]]


class PendingRun:
    """A run whose Cleanup has ended, and whose resolution may be pending.

    `finish` makes the resolution durable (shielded from cancellation) and
    returns the report. A run that never took a lock (skipped, locked,
    done, invalid, pretend) has nothing to resolve.
    """

    def __init__(
        self,
        context: dict[str, Any],
        started: float,
        report: RunReport | None = None,
        resolve: Finish | None = None,
        store_waits: set[anyio.CancelScope] | None = None,
    ) -> None:
        self.context = context
        self.started = started
        self._report = report
        self._resolve = resolve
        self._store_waits = store_waits if store_waits is not None else set()

    @property
    def locked(self) -> bool:
        """Whether a lock is held until `finish` resolves it."""
        return self._resolve is not None

    async def finish(self) -> RunReport:
        """Resolve the lock if one is held; log and return the report."""
        # bind and reset rather than bound_contextvars, which reads every
        # context variable to restore them.
        tokens = bind_contextvars(**self.context)
        try:
            if self._resolve is not None:
                with anyio.CancelScope(shield=True) as scope:
                    self._store_waits.add(scope)
                    bind_contextvars(phase="resolution")
                    resolved = await self._resolve()
                self._store_waits.discard(scope)
                # Cancelled only by a shutdown that gave up on the store.
                report = resolved if not scope.cancelled_caught else self._abandoned()
            else:
                assert self._report is not None
                report = self._report
            report = replace(report, duration_s=time.monotonic() - self.started)
            logger.info(
                "run_finished",
                outcome=report.outcome.value,
                run=report.run.value,
                cleanup=report.cleanup.value,
                reason=report.reason,
                duration_s=round(report.duration_s, 6),
            )
        finally:
            reset_contextvars(**tokens)

        return report

    def _abandoned(self) -> RunReport:
        logger.error("resolution_abandoned", reason=STORE_ABANDONED)
        return RunReport(
            agent=self.context["agent"],
            mnemonic=self.context["mnemonic"],
            workflow=self.context["workflow"],
            record=self.context["record"],
            outcome=Outcome.ERROR,
            reason=STORE_ABANDONED,
            run_id=self.context["run_id"],
        )


async def start_record(
    agent: Agent,
    variables: Mapping[str, Value],
    record: Record,
    workflow: Workflow,
    settings: RunSettings,
    *,
    cancel_scope: anyio.CancelScope | None = None,
    run_id: str | None = None,
    blocks: Mapping[BlockKey, Mapping[str, Value]] | None = None,
) -> PendingRun:
    """Run `record` through Requirements, lock, Check, Run and Cleanup.

    The resolution is left to `PendingRun.finish`, so that its durable
    write can overlap the next run. `cancel_scope`, when given, is the
    scope Check and Run execute in: its cancellation (by shutdown) fails
    Run but still runs Cleanup. `blocks` contains the PREREQUISITE_SET values
    made inside WHEN and FOREACH blocks (`LoadedAgent.blocks`).
    """
    run_id = run_id or new_run_id()
    # A record whose text cannot be encoded is reported invalid under an
    # escaped id, checked before the id reaches the log context.
    record = checked_record(record)
    context = {
        "agent": agent.name,
        "mnemonic": agent.mnemonic,
        "workflow": workflow.name,
        "record": record.id,
        "run_id": run_id,
    }
    started = time.monotonic()
    context["phase"] = "requirements"
    tokens = bind_contextvars(**context)
    try:
        # `_run` keeps context["phase"] at the phase the run is in, so the
        # events `finish` logs name the phase the run ended in.
        outcome = await _run(
            agent, variables, blocks, record, workflow, settings, cancel_scope, context
        )
    finally:
        reset_contextvars(**tokens)
    if isinstance(outcome, RunReport):
        return PendingRun(context, started, report=outcome)

    return PendingRun(
        context, started, resolve=outcome, store_waits=settings.store_waits
    )


async def run_record(
    agent: Agent,
    variables: Mapping[str, Value],
    record: Record,
    workflow: Workflow,
    settings: RunSettings,
    *,
    cancel_scope: anyio.CancelScope | None = None,
    run_id: str | None = None,
    blocks: Mapping[BlockKey, Mapping[str, Value]] | None = None,
) -> RunReport:
    """Run `record` through every phase and return its report.

    The report is returned once the resolution is durable.
    """
    pending = await start_record(
        agent,
        variables,
        record,
        workflow,
        settings,
        cancel_scope=cancel_scope,
        run_id=run_id,
        blocks=blocks,
    )

    return await pending.finish()


async def _run(
    agent: Agent,
    variables: Mapping[str, Value],
    blocks: Mapping[BlockKey, Mapping[str, Value]] | None,
    record: Record,
    workflow: Workflow,
    settings: RunSettings,
    cancel_scope: anyio.CancelScope | None,
    context: dict[str, Any],
) -> RunReport | Finish:
    """Run the phases up to Cleanup; return a report, or the resolution to make."""
    run_id = context["run_id"]

    def enter(phase: str) -> None:
        context["phase"] = phase
        bind_contextvars(phase=phase)

    def report(outcome: Outcome, **fields: Any) -> RunReport:
        return RunReport(
            agent=agent.name,
            mnemonic=agent.mnemonic,
            workflow=workflow.name,
            record=record.id,
            outcome=outcome,
            run_id=run_id,
            **fields,
        )

    invalid = record.invalid
    if invalid is None and nesting_depth(record.fields) > MAX_NESTING:
        invalid = f"fields nested deeper than {MAX_NESTING} levels"
    if invalid is not None:
        logger.error("record_invalid", reason=invalid)
        return report(Outcome.INVALID, reason=invalid)

    this = record_this(record)
    scope = Scope(
        {**copy_values(variables), "this": this},
        blocks={key: copy_values(values) for key, values in (blocks or {}).items()},
    )
    state = RunState(
        agent=agent,
        registry=settings.registry,
        workflow=workflow.name,
        record_id=record.id,
        this=this,
        log=logger,
        echo=settings.echo,
        safe_path=settings.safe_path,
        conf_dir=settings.conf_dir,
        pretend=settings.pretend,
        kill_grace=settings.kill_grace,
        secrets=secret_values(variables),
    )

    # Requirements: every command runs, every unmet one is named.
    unmet = evaluate_conditions(
        agent.phase(Phase.REQUIREMENTS), scope, state, stop_at_first=False
    )
    if unmet:
        logger.info("record_skipped", unmet=unmet)
        return report(Outcome.SKIPPED, reason=join_reasons(unmet))

    key = LockKey(workflow.name, record.id or "", agent.mnemonic)
    if settings.pretend:
        mark = settings.marks.get((key.workflow, key.record, key.mnemonic))
        if mark is not None and record.id is not None:
            reason = "in error" if mark is Resolution.ERROR else None
            return report(Outcome.DONE, reason=reason)
        holder = settings.held.get((key.workflow, key.record, key.mnemonic))
        if holder is not None:
            # As a real run would be refused. A real run would first resolve
            # a lock whose owner is gone, which pretend only reports.
            reason = _locked_reason(holder)
            if holder.run_id in settings.abandoned:
                reason += (
                    "; its owner is gone, so the next run that is not pretend"
                    " resolves it as error (interrupted)"
                )
            return report(Outcome.LOCKED, reason=reason)
        would, reason = await pretend_run(state, scope)
        context["phase"] = "cleanup"
        return report(Outcome.PRETEND, reason=reason, would=would)

    # Lock: refused when another run holds it or the mnemonic is done.
    assert settings.locks is not None
    enter("lock")
    try:
        with anyio.CancelScope() as lock_scope:
            settings.store_waits.add(lock_scope)
            transaction = await settings.locks.begin(
                key, agent=agent.name, run_id=run_id, check_mark=record.id is not None
            )
        settings.store_waits.discard(lock_scope)
        if lock_scope.cancelled_caught:
            logger.error("lock_abandoned", reason=STORE_ABANDONED)
            return report(Outcome.ERROR, reason=STORE_ABANDONED)
    except Done as done:
        reason = "in error" if done.mark.resolution is Resolution.ERROR else None
        logger.info("record_done", reason=reason)
        return report(Outcome.DONE, reason=reason)
    except Locked as locked:
        holder = locked.holder
        logger.info("record_locked", holder=str(holder.owner), run=holder.run_id)
        return report(Outcome.LOCKED, reason=_locked_reason(holder))
    state.transaction = transaction

    # Check and Run, bounded by TIMEOUT and cancelled by shutdown.
    check_failed: list[str] = []
    run_succeeded = False
    run_reason: str | None = None
    # One scope serves both: its deadline is the TIMEOUT.
    outer = cancel_scope if cancel_scope is not None else anyio.CancelScope()
    if agent.timeout is not None:
        outer.deadline = anyio.current_time() + agent.timeout
    with outer:
        try:
            # NOTE: expressions evaluate synchronously, so TIMEOUT cannot stop
            # a slow function inside Check; it takes effect at the next await.
            enter("check")
            check_failed = evaluate_conditions(
                agent.phase(Phase.CHECK), scope, state, stop_at_first=False
            )
            if not check_failed:
                enter("run")
                state.failures.clear()
                run_succeeded = await run_phase(state, scope)
                if not run_succeeded:
                    run_reason = join_reasons(state.failures)
        except Exception as error:
            logger.exception("run_crashed")
            run_succeeded = False
            run_reason = f"internal error: {type(error).__name__}: {error}"
    settings.run_scopes.discard(outer)
    timed_out = outer.cancelled_caught and anyio.current_time() >= outer.deadline
    if timed_out:
        run_succeeded = False
        run_reason = f"timed out after {agent.timeout:g} s"
        if state.running:
            texts = ", ".join(command_text(command) for command in state.running)
            run_reason += f" in {texts}"
        logger.error("run_timed_out", timeout_s=agent.timeout)
    elif outer.cancelled_caught:
        run_succeeded = False
        run_reason = "cancelled by shutdown"
        logger.warning("run_cancelled")
    if check_failed:
        run_result = PhaseResult.NOT_RUN
        run_reason = join_reasons(check_failed)
        logger.info("check_failed", failed=check_failed)
    else:
        run_result = PhaseResult.SUCCEEDED if run_succeeded else PhaseResult.FAILED

    # Cleanup: shielded, so shutdown cannot skip it.
    enter("cleanup")
    state.failures.clear()
    cleanup_succeeded = False
    deadline = anyio.current_time() + settings.cleanup_timeout
    with anyio.CancelScope(shield=True, deadline=deadline) as cleanup_scope:
        try:
            cleanup_succeeded = await cleanup_phase(state, scope, run_succeeded)
        except Exception as error:
            logger.exception("cleanup_crashed")
            state.failures.append(f"internal error: {type(error).__name__}: {error}")
    cleanup_reason = join_reasons(state.failures)
    if cleanup_scope.cancelled_caught:
        cleanup_succeeded = False
        cleanup_reason = f"cleanup timed out after {settings.cleanup_timeout:g} s"
        logger.error("cleanup_timed_out", timeout_s=settings.cleanup_timeout)
    cleanup_result = PhaseResult.SUCCEEDED if cleanup_succeeded else PhaseResult.FAILED

    async def finish() -> RunReport:
        outcome, reason = await _resolve(
            state,
            record,
            workflow,
            shares_store=_shares_store(workflow, settings),
            run_succeeded=run_succeeded,
            cleanup_succeeded=cleanup_succeeded,
            run_reason=run_reason,
            cleanup_reason=cleanup_reason,
        )
        return report(outcome, run=run_result, cleanup=cleanup_result, reason=reason)

    return finish


class ApplyFailed(Exception):
    """Staged changes could not be written; the message has secrets masked."""


def _locked_reason(holder: LockInfo) -> str:
    since = datetime.fromtimestamp(holder.since, UTC)
    return f"locked by {holder.owner} since {since:%Y-%m-%dT%H:%M:%SZ}"


def _shares_store(workflow: Workflow, settings: RunSettings) -> bool:
    """Tell whether the workflow's commit can run in the store's transaction."""
    shares = getattr(workflow, "shares_store", None)
    if settings.locks is None or shares is None:
        return False

    return bool(shares(settings.locks.store))


def _write_in_transaction(
    workflow: Workflow, record: Record, staged: dict[str, Any]
) -> InTransaction:
    changes = dict(staged)
    commit_in_transaction = workflow.commit_in_transaction  # type: ignore[attr-defined]
    if not inspect.iscoroutinefunction(commit_in_transaction):
        # SQLite: the store runs it synchronously with its write connection.
        return functools.partial(commit_in_transaction, record=record, changes=changes)

    async def write(connection: Any) -> None:
        await commit_in_transaction(connection, record, changes)

    return write


async def _resolve(
    state: RunState,
    record: Record,
    workflow: Workflow,
    *,
    shares_store: bool,
    run_succeeded: bool,
    cleanup_succeeded: bool,
    run_reason: str | None,
    cleanup_reason: str | None,
) -> tuple[Outcome, str | None]:
    """Resolve the lock per the resolution table; return outcome and reason."""
    transaction = state.transaction
    assert transaction is not None
    for field_name, value in state.staged.items():
        transaction.stage(field_name, value)

    async def write(changes: dict[str, Any]) -> None:
        try:
            await workflow.commit(record, changes)
        except Exception as error:
            if not state.secrets:
                raise
            # The workflow's message may quote the changes or a program's
            # output (update_command), so it is masked before anyone logs it.
            raise ApplyFailed(state.redact(str(error))) from None

    # A workflow on the store's database writes its UPDATE inside the
    # resolution transaction, so the changes and the mark commit together.
    apply: Apply | None = write
    in_transaction: InTransaction | None = None
    if shares_store and transaction.staged:
        apply = None
        in_transaction = _write_in_transaction(workflow, record, transaction.staged)

    try:
        if run_succeeded:
            if not cleanup_succeeded:
                logger.warning("cleanup_failed", reason=cleanup_reason)
            try:
                await transaction.commit(apply, in_transaction=in_transaction)
            except LeaseLost:
                raise
            except Exception as error:  # noqa: BLE001 - resolved as error below
                reason = state.redact(f"applying staged changes failed: {error}")
                logger.error("commit_failed", error=state.redact(repr(error)))
                await transaction.commit_with_error(None, reason=reason)
                return Outcome.ERROR, reason
            # A Cleanup that failed only because it had no command to run
            # is the usual case of an agent without cleanup blocks.
            reason = None
            if cleanup_reason and cleanup_reason != NO_CLEANUP_COMMAND:
                reason = f"cleanup failed: {cleanup_reason}"
            return Outcome.COMMITTED, reason
        if cleanup_succeeded:
            await transaction.rollback(reason=run_reason)
            return Outcome.ROLLED_BACK, run_reason
        reason = run_reason
        if cleanup_reason:
            reason = f"{run_reason}; cleanup: {cleanup_reason}"
        if in_transaction is None:
            await transaction.commit_with_error(apply, reason=reason)
            return Outcome.ERROR, reason
        try:
            await transaction.commit_with_error(
                None, reason=reason, in_transaction=in_transaction
            )
        except LeaseLost:
            raise
        except Exception as error:  # noqa: BLE001 - marked in error without changes
            logger.error("apply_failed", error=state.redact(repr(error)))
            reason = state.redact(f"{reason}; applying staged changes failed: {error}")
            await transaction.commit_with_error(None, reason=reason)
        return Outcome.ERROR, reason
    except LeaseLost:
        return Outcome.ERROR, LEASE_LOST
    except BaseException:
        # The store failed the resolution for good (a failed fsync, say),
        # or shutdown gave up on it. Renewing the lease would keep the lock
        # held for as long as this process lives, so let it expire and be
        # recovered as interrupted.
        if transaction.resolution is None:
            transaction.abandon()
        raise
