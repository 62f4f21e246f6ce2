"""The engine: cycles of agents over their workflows' records.

One `Engine` owns the state store, the lock manager and the workflows of
one configuration. `run_cycle` runs one agent over the records its
workflow lists. First it resolves the workflow's abandoned locks, each
reported once as `error` with reason `interrupted`. Then it runs the
records, at most the agent's CONCURRENCY at once and at most
`max_concurrency` runs of all agents together. A run holds its slot from
Requirements to the end of Cleanup; its resolution is written after the
slot is released, so that the fsync overlaps the next run.

Graceful stop: `stop_starting()` makes every cycle start no new run and
return once its runs in flight end; `cancel_runs()` also cancels the Check
and Run of the runs in flight, whose Cleanup and resolution still complete.
A run still waiting on the state store `STORE_WAIT_AFTER_CANCEL` seconds
after the longest Cleanup could end (a store that is down, busy or full) is
given up and reported as an error, so the process can exit.

Example::

    async with Engine(config) as engine:
        for loaded in AgentLoader(registry).load(config).agents.values():
            for report in await engine.run_cycle(loaded):
                print(report.to_json())
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Self

import anyio
import msgspec

from fleetd.config.model import Config
from fleetd.lang import Registry, load_plugins
from fleetd.locks import (
    LockManager,
    Owner,
    Resolution,
    StateStore,
    current_owner,
    open_store,
    owner_alive,
)
from fleetd.logs import get_logger
from fleetd.runtime.agents import LoadedAgent
from fleetd.runtime.loop import pidfd_child_watcher
from fleetd.runtime.report import Outcome, RunReport
from fleetd.runtime.run import LEASE_LOST, PendingRun, RunSettings, start_record
from fleetd.runtime.slots import RunSlots
from fleetd.streams import write_stdout
from fleetd.workflows import Workflow, open_workflow
from fleetd.workflows.base import Record

logger = get_logger()

#: Seconds that runs cancelled by a shutdown may still wait on the state
#: store, after `cleanup_timeout`, before they are given up.
STORE_WAIT_AFTER_CANCEL = 10.0

#: Resolutions one worker may leave pending while it runs its next records.
#: With 8 workers, 4 gave about 10% more runs of /bin/true per second than 1
#: in scripts/bench/engine.py, because a slow batch commit no longer
#: stops the worker whose resolution is in it.
RESOLUTIONS_PER_WORKER = 4

#: Number of runs, reported in error with their lock left in the store,
#: that the engine remembers so as not to report them again on recovery.
UNRESOLVED_REMEMBERED = 10_000

OnReport = Callable[[RunReport], None]


class EngineStatistics(msgspec.Struct, frozen=True):
    """Counters of one engine, for `status` and the daemon's STATUS line."""

    runs_in_flight: int
    runs_done: int
    last_error: str | None


def write_echo(text: str) -> None:
    """Write one ECHO line to standard output, or drop it when that fails.

    Standard output is where the line goes, not part of the run: a full
    disk or a journal stream that closed must not fail Run.
    """
    write_stdout(text + "\n")


class Engine:
    """Runs agents' cycles against one state store; see the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        pretend: bool = False,
        echo: Callable[[str], None] | None = None,
        registry: Registry | None = None,
        owner: Owner | None = None,
    ) -> None:
        self.config = config
        self.pretend = pretend
        self.echo = echo or write_echo
        if registry is None:
            registry = load_plugins(list(config.daemon.plugin_dirs))
        self.registry = registry
        self.owner = owner or current_owner()
        self.store: StateStore = open_store(config.daemon.state)
        self.locks = LockManager(self.store, self.owner, lease=config.daemon.lease)
        self._workflows: dict[str, Workflow] = {}
        # Workflows replaced by `reconfigure`, closed with the engine because
        # runs in flight may still use them.
        self._retired: list[Workflow] = []
        self._slots = RunSlots(config.daemon.max_concurrency)
        self._run_scopes: set[anyio.CancelScope] = set()
        self._store_waits: set[anyio.CancelScope] = set()
        # Runs already reported in error whose lock stayed in the store,
        # because the lease was lost or the store failed the resolution.
        # Recovering such a lock later must not report the run again.
        self._reported_unresolved: dict[str, None] = {}
        self._preparing: set[anyio.CancelScope] = set()
        self._give_up: asyncio.TimerHandle | None = None
        self._stopping = False
        self._cancelling = False
        self._runs_done = 0
        self._in_flight = 0
        self._last_error: str | None = None
        self._watcher: contextlib.AbstractContextManager[None] = (
            contextlib.nullcontext()
        )

    async def __aenter__(self) -> Self:
        self._watcher = pidfd_child_watcher()
        self._watcher.__enter__()
        try:
            await self.store.open()
            try:
                await self.locks.__aenter__()
            except BaseException:
                await self.store.close()
                raise
        except BaseException:
            self._watcher.__exit__(None, None, None)
            raise

        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._give_up is not None:
            self._give_up.cancel()
        try:
            await self.locks.__aexit__(exc_type, exc, traceback)
        finally:
            with anyio.CancelScope(shield=True):
                await self._close_workflows()
                await self.store.close()
            self._watcher.__exit__(None, None, None)

    async def _close_workflows(self) -> None:
        """Close the workflows that hold connections (an `aclose` method)."""
        workflows, self._retired = [*self._retired, *self._workflows.values()], []
        self._workflows = {}
        for workflow in workflows:
            aclose = getattr(workflow, "aclose", None)
            if aclose is None:
                continue
            try:
                await aclose()
            except Exception as error:  # noqa: BLE001 - closing the rest matters more
                logger.warning(
                    "workflow_close_failed", workflow=workflow.name, error=repr(error)
                )

    def reconfigure(self, config: Config) -> None:
        """Use `config` for the workflows and settings of runs that start later."""
        self.config = config
        self._retired.extend(self._workflows.values())
        self._workflows = {}
        self._slots.total = config.daemon.max_concurrency

    def workflow(self, name: str) -> Workflow:
        """Return the workflow called `name`, opened on first use."""
        workflow = self._workflows.get(name)
        if workflow is None:
            settings = None if name == "Null" else self.config.workflows[name]
            workflow = open_workflow(settings)
            self._workflows[name] = workflow

        return workflow

    def _settings(self) -> RunSettings:
        daemon = self.config.daemon
        return RunSettings(
            registry=self.registry,
            locks=None if self.pretend else self.locks,
            echo=self.echo,
            safe_path=tuple(daemon.safe_path),
            conf_dir=self.config.conf_dir,
            cleanup_timeout=daemon.cleanup_timeout,
            pretend=self.pretend,
            store_waits=self._store_waits,
            run_scopes=self._run_scopes,
        )

    async def _recover(self, workflow: Workflow) -> list[RunReport]:
        """Resolve the workflow's abandoned locks; report each as interrupted."""
        reports = []
        for lock in await self.locks.recover_abandoned(workflow.name):
            if lock.run_id in self._reported_unresolved:
                del self._reported_unresolved[lock.run_id]
                continue
            reports.append(
                RunReport(
                    agent=lock.agent,
                    mnemonic=lock.key.mnemonic,
                    workflow=lock.key.workflow,
                    record=lock.key.record or None,
                    outcome=Outcome.ERROR,
                    reason="interrupted",
                    run_id=lock.run_id,
                )
            )
        return reports

    async def run_cycle(
        self,
        loaded: LoadedAgent,
        on_report: OnReport | None = None,
        *,
        current: Callable[[], LoadedAgent | None] | None = None,
    ) -> list[RunReport]:
        """Run one cycle of one agent and return the report of every record.

        `on_report` is called with each report as soon as its run ends.
        `current`, when given, returns the agent's version in force now: each
        run starts on that version, so a reload during a long cycle takes
        effect from the next record on. The cycle ends early when it returns
        None (the agent was removed or unscheduled) or a version with another
        workflow or mnemonic, whose records this cycle did not list.
        """
        agent = loaded.agent
        reports: list[RunReport] = []

        def publish(report: RunReport) -> None:
            reports.append(report)
            if report.outcome is Outcome.ERROR and report.reason:
                self._last_error = f"{report.agent}: {report.reason}"
            if on_report is not None:
                on_report(report)

        if not loaded.scheduled or self._stopping:
            return reports
        log = logger.bind(agent=agent.name, mnemonic=agent.mnemonic)
        # No run has started yet, so a stop may cancel this part at once: a
        # state store that is down would otherwise keep it retrying forever.
        with anyio.CancelScope() as preparing:
            self._preparing.add(preparing)
            try:
                workflow = self.workflow(agent.workflow)
                # A record whose abandoned lock this cycle resolved has its
                # outcome, interrupted, and is not reported a second time.
                recovered: set[str] = set()
                if not self.pretend:
                    for report in await self._recover(workflow):
                        publish(report)
                        if report.mnemonic == agent.mnemonic and report.record:
                            recovered.add(report.record)
                records = await workflow.records()
                if recovered:
                    records = [
                        record for record in records if record.id not in recovered
                    ]
                settings = self._settings()
                if self.pretend:
                    settings.marks = {
                        (m.key.workflow, m.key.record, m.key.mnemonic): m.resolution
                        for m in await self.store.marks()
                        if m.resolution in (Resolution.COMMIT, Resolution.ERROR)
                    }
                    settings.held = {
                        (lock.key.workflow, lock.key.record, lock.key.mnemonic): lock
                        for lock in await self.store.locks()
                    }
                    settings.abandoned = {
                        lock.run_id
                        for lock in await self.store.abandoned(
                            self.owner.host, owner_alive
                        )
                    }
            except Exception as error:  # noqa: BLE001 - the daemon outlives a bad cycle
                self._last_error = f"{agent.name}: {error}"
                log.error("cycle_failed", workflow=agent.workflow, error=repr(error))
                return reports
            finally:
                self._preparing.discard(preparing)
        if preparing.cancelled_caught:
            log.info("cycle_stopped", phase="preparing")
            return reports
        log.debug("cycle_started", workflow=workflow.name, records=len(records))

        pending = iter(records)
        # Resolutions run as plain asyncio tasks: anyio's start_soon took
        # about 30 microseconds per task here, a visible part of a short
        # run. They are shielded inside `finish` and awaited below.
        resolutions: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            # While a run's resolution is made durable, the worker already
            # starts the next record, with at most RESOLUTIONS_PER_WORKER
            # resolutions pending.
            resolving: deque[asyncio.Task[None]] = deque()
            for record in pending:
                if self._stopping:
                    break
                async with self._slots:
                    if self._stopping:
                        break
                    version = loaded if current is None else current()
                    if not _same_cycle(loaded, version):
                        break
                    assert version is not None
                    run = await self._start_one(version, record, workflow, settings)
                if not run.locked:
                    await self._finish_one(run, publish)
                    continue
                while resolving and resolving[0].done():
                    resolving.popleft()
                if len(resolving) >= RESOLUTIONS_PER_WORKER:
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait([resolving.popleft()])
                task = loop.create_task(self._finish_one(run, publish))
                resolving.append(task)
                resolutions.add(task)
                task.add_done_callback(resolutions.discard)

        recovered = len(reports)
        try:
            async with anyio.create_task_group() as group:
                for _ in range(max(1, min(agent.concurrency, len(records)))):
                    group.start_soon(worker)
        finally:
            await _wait_resolutions(resolutions)
        # Reports arrive as runs end; the list keeps the workflow's order.
        order = {record.id: index for index, record in enumerate(records)}
        reports[recovered:] = sorted(
            reports[recovered:], key=lambda report: order.get(report.record, 0)
        )

        return reports

    async def _start_one(
        self,
        loaded: LoadedAgent,
        record: Record,
        workflow: Workflow,
        settings: RunSettings,
    ) -> PendingRun:
        scope = anyio.CancelScope()
        if self._cancelling:
            scope.cancel()
        self._run_scopes.add(scope)
        self._in_flight += 1
        started = time.monotonic()
        try:
            return await start_record(
                loaded.agent,
                loaded.variables,
                record,
                workflow,
                settings,
                cancel_scope=scope,
                blocks=loaded.blocks,
            )
        except Exception as error:
            # A state store that failed when the lock was taken.
            logger.exception(
                "run_failed",
                agent=loaded.agent.name,
                mnemonic=loaded.agent.mnemonic,
                workflow=workflow.name,
                record=record.id,
            )
            report = RunReport(
                agent=loaded.agent.name,
                mnemonic=loaded.agent.mnemonic,
                workflow=workflow.name,
                record=record.id,
                outcome=Outcome.ERROR,
                reason=f"internal error: {error}",
            )
            return PendingRun({"agent": loaded.agent.name}, started, report=report)
        finally:
            self._run_scopes.discard(scope)

    async def _finish_one(self, run: PendingRun, publish: OnReport) -> None:
        try:
            report = await run.finish()
        except Exception as error:
            # A state store that failed at the resolution: the lock stays in
            # the store until its lease expires and it is recovered as
            # interrupted.
            logger.exception("resolution_failed", **run.context)
            report = RunReport(
                agent=run.context["agent"],
                mnemonic=run.context["mnemonic"],
                workflow=run.context["workflow"],
                record=run.context["record"],
                outcome=Outcome.ERROR,
                reason=f"internal error: {error}",
                run_id=run.context["run_id"],
            )
            self._remember_unresolved(report.run_id)
        else:
            if report.reason == LEASE_LOST:
                self._remember_unresolved(report.run_id)
        finally:
            self._in_flight -= 1
            self._runs_done += 1
        publish(report)

    def _remember_unresolved(self, run_id: str | None) -> None:
        """Note a run reported in error whose lock another process may recover."""
        if run_id is None:
            return
        self._reported_unresolved[run_id] = None
        if len(self._reported_unresolved) > UNRESOLVED_REMEMBERED:
            # Locks recovered by other processes are never seen here.
            del self._reported_unresolved[next(iter(self._reported_unresolved))]

    def stop_starting(self) -> None:
        """Start no new run; cycles return once their runs in flight end.

        A cycle that has not started its runs yet (recovering abandoned
        locks, listing records) is cancelled.
        """
        self._stopping = True
        for scope in list(self._preparing):
            scope.cancel()

    def cancel_runs(self) -> int:
        """Stop starting runs and cancel Check and Run of the runs in flight.

        Their Cleanup and resolution still run, shielded. Returns how many
        runs had not yet reached Cleanup, so that cancelling stops them.
        """
        self.stop_starting()
        self._cancelling = True
        cancelled = len(self._run_scopes)
        for scope in list(self._run_scopes):
            scope.cancel()
        # A state store that is down, busy or full would keep runs retrying
        # their lock or resolution forever, and the process from exiting.
        if self._give_up is None:
            delay = self.config.daemon.cleanup_timeout + STORE_WAIT_AFTER_CANCEL
            loop = asyncio.get_running_loop()
            self._give_up = loop.call_later(delay, self._abandon_store_waits)

        return cancelled

    def _abandon_store_waits(self) -> None:
        """Cancel the runs still waiting on the state store after `cancel_runs`.

        Their writes were never confirmed, so each is reported as an error,
        never as committed. A lock that was written stays held until it is
        recovered as interrupted.
        """
        if not self._store_waits:
            return
        logger.error(
            "state_store_abandoned",
            runs=len(self._store_waits),
            waited_s=self.config.daemon.cleanup_timeout + STORE_WAIT_AFTER_CANCEL,
        )
        for scope in list(self._store_waits):
            scope.cancel()

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            runs_in_flight=self._in_flight,
            runs_done=self._runs_done,
            last_error=self._last_error,
        )


async def _wait_resolutions(tasks: set[asyncio.Task[None]]) -> None:
    """Wait, shielded, until every resolution task has ended.

    `_finish_one` catches every `Exception`; anything else a task raised
    (a `KeyboardInterrupt`, say) is raised here, once all have ended.
    """
    if not tasks:
        return
    with anyio.CancelScope(shield=True):
        done, _ = await asyncio.wait(set(tasks))
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def _same_cycle(started: LoadedAgent, version: LoadedAgent | None) -> bool:
    """Return whether `version` may go on in a cycle begun with `started`."""
    return (
        version is not None
        and version.scheduled
        and version.agent.workflow == started.agent.workflow
        and version.agent.mnemonic == started.agent.mnemonic
    )
